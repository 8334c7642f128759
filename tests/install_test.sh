#!/bin/sh
# The client library as an installed package: `cmake --install` of BUILD_DIR into a temporary
# prefix, then examples/ configured and built as a project of its own with
# find_package(PsClient CONFIG), and the program it builds run far enough to refuse bad options.
# Usage: install_test.sh BUILD_DIR SOURCE_DIR
set -eu
build=$(cd "$1" && pwd)
source=$(cd "$2" && pwd)
work=$(mktemp -d /tmp/ps_install_test.XXXXXX)
trap 'rm -rf "$work"' EXIT

cmake --install "$build" --prefix "$work/prefix" > "$work/install.log"
for f in include/psclient/client/session.h include/psclient/ps/v1/ps.pb.h \
         lib/cmake/PsClient/PsClientConfig.cmake bin/ps-server bin/ps-worker; do
  [ -e "$work/prefix/$f" ] || { echo "FAIL: not installed: $f"; exit 1; }
done
launcher=""
command -v ccache > /dev/null && launcher="-DCMAKE_CXX_COMPILER_LAUNCHER=ccache"
cmake -S "$source/examples" -B "$work/examples" -DCMAKE_PREFIX_PATH="$work/prefix" $launcher \
  > "$work/configure.log" || { cat "$work/configure.log"; exit 1; }
cmake --build "$work/examples" -j2 > "$work/build.log" 2>&1 || { tail -50 "$work/build.log"; exit 1; }

# Built against the installed library: it runs, and refuses a missing --servers with the
# library's message.
set +e
out=$("$work/examples/own_model" 2>&1)
rc=$?
set -e
case "$out" in
  *"no server address given"*) ;;
  *) echo "FAIL: unexpected output (exit $rc): $out"; exit 1 ;;
esac
[ "$rc" -eq 1 ] || { echo "FAIL: exit code $rc"; exit 1; }
echo "install_test: OK (installed into a prefix, examples/ built with find_package(PsClient))"
