#!/usr/bin/env bash
# Peak RSS of loading a bf16 checkpoint: weights are mmap'ed and used in place, so `info` and a
# short `logits` must not hold a second copy. Prints the figures and the issue's bound
# (1.2 x checkpoint size + 300 MB).
#   bash bench/memory_load.sh [hidden=1024] [layers=8]
set -euo pipefail
cd "$(dirname "$0")/.."
RP=${RP:-build/rankprune}
H=${1:-1024}; L=${2:-8}
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT
"$RP" init --arch delta_net --out "$DIR/m" --hidden-size "$H" --num-layers "$L" --num-heads 8 \
  --head-k-dim $((H / 8)) --head-v-dim $((H / 8)) --dtype bf16 >/dev/null
size=$(stat -c %s "$DIR/m/model.safetensors")
bound=$(( size * 12 / 10 / 1024 + 300 * 1024 ))
rss() { /usr/bin/time -f %M "$@" 2>&1 >/dev/null | tail -1; }
info_kb=$(rss "$RP" info --model "$DIR/m")
logits_kb=$(rss "$RP" logits --model "$DIR/m" --ids 1,2,3,4,5,6,7,8 --out "$DIR/l.npy")
echo "checkpoint: delta_net hidden $H, $L layers, bf16, $((size / 1024 / 1024)) MiB"
echo "peak RSS info:   $((info_kb / 1024)) MiB"
echo "peak RSS logits: $((logits_kb / 1024)) MiB (all weights touched, f32 compute)"
echo "bound (1.2 x size + 300 MB): $((bound / 1024)) MiB"
