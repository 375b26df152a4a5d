#!/bin/sh
# Install the Debian 12 packages xplaind needs, only those missing.
#   scripts/deps.sh build   compiler and libraries to build and run
#   scripts/deps.sh test    plus everything the test suite uses
# Runs apt-get (as root, or through sudo when available).
set -eu

BUILD="cmake make gcc pkg-config libc6-dev libzmq3-dev libmsgpack-dev libopenblas-dev
       libinih-dev libsystemd-dev libmicrohttpd-dev"
TEST="libcriterion-dev groff-base man-db python3 python3-pytest python3-zmq python3-msgpack python3-numpy python3-networkx
      python3-torch python3-sklearn python3-hypothesis python3-venv python3-pip python3-setuptools
      python3-wheel python3-yaml chromium clang-14 libclang-rt-14-dev llvm-14 systemd
      prometheus prometheus-alertmanager"

case "${1:-build}" in
build) want="$BUILD" ;;
test) want="$BUILD $TEST" ;;
*) echo "usage: $0 build|test" >&2; exit 2 ;;
esac

missing=""
for p in $want; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done
[ -z "$missing" ] && exit 0

SUDO=""
if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "deps: need root to install:$missing" >&2; exit 1; }
    SUDO=sudo
fi
echo "deps: installing:$missing"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
# shellcheck disable=SC2086
$SUDO apt-get install -y -q --no-install-recommends $missing
