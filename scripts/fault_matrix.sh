#!/usr/bin/env bash
# The whole write-fault matrix (docs/reliability.md): every command that writes, run with each of
# its write points failing in turn (first occurrence of every operation x file pair), with ENOSPC
# and with EIO, through tests/cli/test_write_faults.cpp. Writes the markdown table to
# $BUILD_DIR/fault_matrix.md (BUILD_DIR default: build). A few minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
cmake --build "$BUILD_DIR" -j"${JOBS:-2}" --target test_write_faults rankprune rp_write_fault
TABLE=$(pwd)/$BUILD_DIR/fault_matrix.md
{
  echo "| command | write point (index, operation, file) | errno | outcome | re-run |"
  echo "|---|---|---|---|---|"
} >"$TABLE"
RANKPRUNE_FAULT_FULL=1 RANKPRUNE_FAULT_TABLE=$TABLE "$BUILD_DIR/tests/test_write_faults" "$@"
echo "fault matrix: $TABLE ($(($(wc -l <"$TABLE") - 2)) rows)"
