"""pip install ./python: builds slowlink._native with the project's own CMake (so there is one
build of the client library, not a second one here), then installs the package.

Offline, with Debian's setuptools: there is no pyproject.toml on purpose, so pip does not try to
download a build environment. SLOWLINK_BUILD_DIR=build reuses a tree `make build` already built.
"""
import glob
import os
import shutil
import subprocess
import sys
import sysconfig

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


class CMakeBuild(build_ext):
    """Builds the CMake target slowlink_native and copies the module where setuptools wants it."""

    def build_extension(self, ext):
        build_dir = os.environ.get("SLOWLINK_BUILD_DIR") or os.path.join(self.build_temp, "cmake")
        build_dir = os.path.abspath(build_dir)
        if not os.path.exists(os.path.join(build_dir, "CMakeCache.txt")):
            # For the interpreter pip runs under (its headers and module suffix).
            subprocess.check_call(["cmake", "-S", ROOT, "-B", build_dir,
                                   "-DCMAKE_BUILD_TYPE=Release",
                                   "-DPython3_EXECUTABLE=" + sys.executable])
        jobs = os.environ.get("JOBS", "2")
        subprocess.check_call(["cmake", "--build", build_dir, "--target", "slowlink_native",
                               "-j" + jobs])
        suffix = sysconfig.get_config_var("EXT_SUFFIX")
        built = glob.glob(os.path.join(build_dir, "python", "slowlink", "_native" + suffix))
        if not built:
            raise RuntimeError(f"no slowlink/_native{suffix} under {build_dir}/python (built for "
                               "another Python? set SLOWLINK_BUILD_DIR to a tree built for this one)")
        target = self.get_ext_fullpath(ext.name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(built[0], target)


setup(
    name="slowlink",
    version="0.1.0",
    description="Client of the ps-server parameter server: Local SGD / DiLoCo and compressed "
                "gradients over slow networks, with a PyTorch wrapper",
    packages=["slowlink"],
    package_dir={"slowlink": os.path.join(HERE, "slowlink")},
    package_data={"slowlink": ["py.typed", "_native.pyi"]},
    ext_modules=[Extension("slowlink._native", sources=[])],
    cmdclass={"build_ext": CMakeBuild},
    python_requires=">=3.9",
    install_requires=["numpy"],
    extras_require={"torch": ["torch>=1.13"]},
    zip_safe=False,
)
