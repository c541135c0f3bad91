#!/usr/bin/env bash
# Installs every Debian 12 package the build needs (skipping those already installed), then
# configures and builds rankprune into build/. Safe to run again: it only does what is missing.
#
#   bash scripts/setup.sh            # Release build in build/
#   BUILD_DIR=b2 bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD_DIR=${BUILD_DIR:-build}
PACKAGES=(
  build-essential cmake pkg-config git ccache time
  libtorch-dev                      # LibTorch 1.13 (CPU)
  libopenblas0-pthread libopenblas-dev  # a real BLAS: Debian's default reference BLAS is ~25x slower
  libboost-program-options-dev libsqlite3-dev
  liblapack-dev liblapacke-dev
  nlohmann-json3-dev libsentencepiece-dev libgtest-dev
  libopenmpi-dev openmpi-bin
  slurm-wlm munge sqlite3           # tests/slurm: a real local Slurm cluster; sqlite3 CLI reads the DBs
)

missing=()
for p in "${PACKAGES[@]}"; do
  [[ $p == \#* ]] && continue
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
else
  echo "setup: all Debian packages present"
fi

cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$BUILD_DIR" -j"$(nproc)"
echo "setup: built $BUILD_DIR/rankprune"
