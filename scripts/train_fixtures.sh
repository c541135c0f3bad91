#!/usr/bin/env bash
# Trains the two small fixtures of issue 6 (docs/training.md): a DeltaNet and a Gated DeltaNet on
# WikiText-2 validation + Tiny Shakespeare with the Llama-2 tokenizer, exported in bf16 (each folder
# <= 10 MiB), and copies the fla checkpoints plus their training logs into fixtures/<arch>/.
#
# Resumable: training state lives in $WORK/<arch>; re-running after an interruption continues from
# the last checkpoint (every 100 steps) and reproduces the uninterrupted result.
# About 20 minutes per model on the 2-core CPU at ~1,800 tokens/s (1,000 steps x 8 x 256 tokens).
#
# Environment: RANKPRUNE (binary, default build/rankprune), DATA_DIR (default ../shared/data),
# WORK (default build/fixtures_train), OUT (default fixtures), STEPS (default 1000),
# WARMUP (default 50), THREADS (default 0 = all cores), ARCHS (default "delta_net gated_deltanet").
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${RANKPRUNE:-build/rankprune}
DATA_DIR=${DATA_DIR:-../shared/data}
WORK=${WORK:-build/fixtures_train}
OUT=${OUT:-fixtures}
STEPS=${STEPS:-1000}
THREADS=${THREADS:-0}
ARCHS=${ARCHS:-"delta_net gated_deltanet"}

for arch in $ARCHS; do
  "$BIN" train --arch "$arch" \
    --hidden-size 128 --num-layers 4 --num-heads 2 --head-k-dim 64 --head-v-dim 64 \
    --intermediate-size 256 --tie-embeddings true \
    --tokenizer "$DATA_DIR/tokenizers/llama2.model" \
    --data "$DATA_DIR/text/wikitext2/wiki.valid.tokens" "$DATA_DIR/text/tinyshakespeare/input.txt" \
    --seq-len 256 --batch-size 8 --steps "$STEPS" \
    --lr 3e-3 --min-lr-ratio 0.1 --warmup "${WARMUP:-50}" --weight-decay 0.1 --grad-clip 1.0 --seed 0 \
    --checkpoint-every 100 --log-every 20 --save-dtype bf16 --threads "$THREADS" \
    --out "$WORK/$arch"
  mkdir -p "$OUT/$arch"
  for f in config.json model.safetensors tokenizer.model train_log.jsonl train_state.json; do
    cp "$WORK/$arch/$f" "$OUT/$arch/$f.tmp" && mv "$OUT/$arch/$f.tmp" "$OUT/$arch/$f"
  done
  du -b "$OUT/$arch"/* | sort -n
done
