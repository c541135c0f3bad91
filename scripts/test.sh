#!/usr/bin/env bash
# Runs the whole test suite of an existing build (ctest, 2 jobs).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
ctest --test-dir "$BUILD_DIR" --output-on-failure -j2 "$@"
