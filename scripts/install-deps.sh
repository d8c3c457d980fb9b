#!/bin/sh
# Installs every Debian package softmoe needs to build, test and train.
# Idempotent: packages already present are left alone. Run as root or with sudo.
set -eu

PKGS="build-essential pkg-config
libopenblas-openmp-dev
libhdf5-dev hdf5-tools
libinih-dev
libarchive-dev libzstd-dev
libzip-dev
libpng-dev libjpeg62-turbo-dev zlib1g-dev
check
libopenmpi-dev openmpi-bin
libdnnl-dev
time
jq
dataset-fashion-mnist"

# Optional extras for contributors: the PyTorch reference script and plots.
if [ "${WITH_PYTHON:-0}" = 1 ]; then
    PKGS="$PKGS python3-torch python3-numpy python3-matplotlib python3-h5py"
fi
# make fuzz: clang with libFuzzer (make test replays the corpus with gcc).
if [ "${WITH_FUZZ:-0}" = 1 ]; then
    PKGS="$PKGS clang"
fi

missing=""
for p in $PKGS; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done

if [ -z "$missing" ]; then
    echo "deps: all packages present"
    exit 0
fi

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
echo "deps: installing$missing"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing
