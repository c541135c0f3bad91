#!/usr/bin/env bash
# Key pruning of the published RWKV-7 834K checkpoint (issue 14, docs/rwkv7.md): drrqr, l1 and
# random (seed 0) at ratios 0 / 0.25 / 0.5 / 0.75, calibrated on the first CALIB_SEQS x 512 bytes of
# WikiText-2 validation, evaluated as lm-eval's wikitext task over bytes (bits per byte) on the first
# documents of WikiText-2 raw test up to MAX_BYTES bytes; plus one key channel per head (drrqr,
# random). Writes docs/results/rwkv7.md (about 4 minutes on 2 cores).
#
#   bash scripts/rwkv7_table.sh
#
# Environment: RANKPRUNE (default build/rankprune), DATA_DIR (default ../shared/data), MAX_BYTES
# (default 100000), CALIB_SEQS (default 32), THREADS (default 0), OUT (default docs/results/rwkv7.md).
set -euo pipefail
cd "$(dirname "$0")/.."
RP=${RANKPRUNE:-build/rankprune}
DATA=${DATA_DIR:-../shared/data}
MAX_BYTES=${MAX_BYTES:-100000}
CALIB_SEQS=${CALIB_SEQS:-32}
THREADS=${THREADS:-0}
OUT=${OUT:-docs/results/rwkv7.md}
MODEL="$DATA/models/rwkv7-834K/tiny-rwkv-7v0-834K-FP32.bin"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
start=$(date +%s)

evaluate() {  # model file -> JSON line
  "$RP" rwkv7 eval --model "$1" --data-dir "$DATA" --max-bytes "$MAX_BYTES" --max-length 1024 \
    --batch-size 16 --threads "$THREADS" --json | jq -c .
}

base=$(evaluate "$MODEL")
declare -A bpb
for method in drrqr l1 random; do
  for ratio in 0 0.25 0.5 0.75; do
    p="$WORK/$method-$ratio.bin"
    "$RP" rwkv7 prune --model "$MODEL" --method "$method" --ratio "$ratio" --seed 0 --data-dir "$DATA" \
      --calib-sequences "$CALIB_SEQS" --seq-len 512 --threads "$THREADS" --out "$p" > /dev/null
    if [ "$ratio" = 0 ]; then
      # Ratio 0 keeps every channel: the file must be the original, byte for byte.
      cmp -s "$p" "$MODEL" || { echo "rwkv7_table: $method at ratio 0 changed the model" >&2; exit 1; }
      bpb[$method,$ratio]=$(jq -r .bits_per_byte <<<"$base")
    else
      bpb[$method,$ratio]=$(evaluate "$p" | jq -r .bits_per_byte)
    fi
    echo "$method $ratio ${bpb[$method,$ratio]}"
  done
done
# The extreme: one key channel per head (ratio 0.99 -> floor(0.64) -> 1), to show how much the
# state's key dimension matters to this model at all.
declare -A k1
for method in drrqr random; do
  p="$WORK/$method-k1.bin"
  "$RP" rwkv7 prune --model "$MODEL" --method "$method" --ratio 0.99 --seed 0 --data-dir "$DATA" \
    --calib-sequences "$CALIB_SEQS" --seq-len 512 --threads "$THREADS" --out "$p" > /dev/null
  k1[$method]=$(evaluate "$p" | jq -r .bits_per_byte)
  echo "$method K=1 ${k1[$method]}"
done
elapsed=$(( $(date +%s) - start ))

tmp="$OUT.tmp.$$"
{
  echo "# RWKV-7 834K: key pruning, WikiText-2 bits per byte"
  echo
  echo "Made by \`bash scripts/rwkv7_table.sh\` ($(date -u +%Y-%m-%d), ${elapsed} s on this machine)."
  echo "Model \`rwkv7-834K/tiny-rwkv-7v0-834K-FP32.bin\` (rwkv.cpp's test model, 12 layers, 1 head,"
  echo "key width 64). Calibration: the first $CALIB_SEQS x 512 bytes of \`wiki.valid.tokens\`, float64 Grams"
  echo "of r and the state's key. Evaluation: lm-eval wikitext over bytes, rolling windows of 1024,"
  echo "$(jq -r '"\(.documents) documents = \(.bytes) bytes"' <<<"$base") of \`wiki.test.raw\` (MAX_BYTES = $MAX_BYTES);"
  echo "byte_perplexity of the unpruned model $(jq -r '.byte_perplexity' <<<"$base" | xargs printf '%.4f')."
  echo "Ratio = fraction of the 64 key channels removed per head (kept: 64, 48, 32, 16). random: seed 0."
  echo
  echo "| method \\ ratio | 0 | 0.25 | 0.5 | 0.75 |"
  echo "| --- | ---: | ---: | ---: | ---: |"
  for method in drrqr l1 random; do
    printf "| %s |" "$method"
    for ratio in 0 0.25 0.5 0.75; do printf " %.4f |" "${bpb[$method,$ratio]}"; done
    echo
  done
  echo
  printf "One key channel per head (ratio 0.99): drrqr %.4f, random %.4f bits per byte.\n" "${k1[drrqr]}" "${k1[random]}"
} > "$tmp"
mv "$tmp" "$OUT"
cat "$OUT"
