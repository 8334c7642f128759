#!/bin/sh
# `pip install ./python` as the README says, offline, into a fresh venv that sees Debian's numpy
# and torch (--system-site-packages), reusing BUILD_DIR's module (SLOWLINK_BUILD_DIR) so the test
# takes seconds; then the installed package is imported from outside the source tree and used.
# The source is copied first so that pip's build files never land in the clone.
# Usage: pip_install_test.sh BUILD_DIR SOURCE_DIR
set -eu
build=$(cd "$1" && pwd)
source=$(cd "$2" && pwd)
work=$(mktemp -d /tmp/ps_pip_test.XXXXXX)
trap 'rm -rf "$work"' EXIT

cp -r "$source/python" "$work/python"
/usr/bin/python3 -m venv --system-site-packages "$work/venv"
SLOWLINK_BUILD_DIR="$build" "$work/venv/bin/pip" install --no-index "$work/python" \
  > "$work/pip.log" 2>&1 || { cat "$work/pip.log"; exit 1; }
cd "$work"
"$work/venv/bin/python" - <<'PY'
import os, sys
import numpy
import slowlink, slowlink.torch
where = os.path.dirname(slowlink.__file__)
assert where.startswith(sys.prefix), where  # the venv's copy, not the build tree's
assert os.path.exists(os.path.join(where, "_native.pyi"))
assert os.path.exists(os.path.join(where, "py.typed"))
codec = slowlink.Codec("fp16")
values = numpy.linspace(-1, 1, 7, dtype=numpy.float32)
assert numpy.allclose(codec.decode(codec.encode(values), 7), values, atol=1e-3)
print("pip install ./python: OK,", where)
PY
