#!/usr/bin/env bash
# The main job on shipped data: make a small DeltaNet and Gated DeltaNet with the Mistral tokenizer
# the fla-hub checkpoints use, describe them, calibrate on WikiText-2 validation text, prune half of
# the query/key channels with drrqr, and generate from the pruned model. (Issue 5 widens this to a
# small sweep with the SQLite default.) Outputs go to ${OUT_DIR:-build/main_job}.
set -euo pipefail
cd "$(dirname "$0")/.."
RP=${RP:-build/rankprune}
DATA=${RANKPRUNE_DATA_DIR:-../shared/data}
OUT=${OUT_DIR:-build/main_job}
rm -rf "$OUT" && mkdir -p "$OUT"

"$RP" init --arch delta_net --out "$OUT/delta_net" --hidden-size 256 --num-layers 2 --num-heads 4 \
  --head-k-dim 64 --head-v-dim 64 --seed 0 --tokenizer "$DATA/tokenizers/mistral_v1.model"
"$RP" info --model "$OUT/delta_net"
"$RP" generate --model "$OUT/delta_net" --prompt "The key to state reduction is" --max-new 16
"$RP" init --arch gated_deltanet --out "$OUT/gated_deltanet" --hidden-size 256 --num-layers 2 --num-heads 4 \
  --head-k-dim 64 --head-v-dim 128 --seed 0 --tokenizer "$DATA/tokenizers/mistral_v1.model"
"$RP" info --model "$OUT/gated_deltanet"
"$RP" generate --model "$OUT/gated_deltanet" --prompt "The key to state reduction is" --max-new 16
for arch in delta_net gated_deltanet; do
  "$RP" calibrate --model "$OUT/$arch" --data "$DATA/text/wikitext2/wiki.valid.tokens" --seq-len 256 \
    --sequences 32 --seed 0 --batch-size 8 --out "$OUT/$arch.stats.safetensors"
  "$RP" prune --model "$OUT/$arch" --stats "$OUT/$arch.stats.safetensors" --method drrqr --ratio 0.5 \
    --out "$OUT/$arch-drrqr-0.5"
  "$RP" info --model "$OUT/$arch-drrqr-0.5" | tail -2
  "$RP" generate --model "$OUT/$arch-drrqr-0.5" --prompt "The key to state reduction is" --max-new 16
done
echo "main job: done (random weights: the text is noise until issue 6's trained fixtures)"
