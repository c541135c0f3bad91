#!/usr/bin/env bash
# The main job on shipped data: make a small DeltaNet and a small Gated DeltaNet (random weights,
# the Mistral tokenizer the fla-hub checkpoints use), run a small prune-ratio sweep on each into
# the embedded SQLite results database (calibration on WikiText-2 validation text; evaluation on
# WikiText-2 test, LAMBADA and PIQA, first 3 items each), print the query tables and write the HTML
# report. Outputs go to ${OUT_DIR:-build/main_job}. Random weights: the numbers are noise; the
# trained fixtures of issue 6 make them mean something.
set -euo pipefail
cd "$(dirname "$0")/.."
RP=${RP:-build/rankprune}
DATA=${RANKPRUNE_DATA_DIR:-../shared/data}
OUT=${OUT_DIR:-build/main_job}
rm -rf "$OUT" && mkdir -p "$OUT"
DB="$OUT/results.db"

"$RP" init --arch delta_net --out "$OUT/delta_net" --hidden-size 256 --num-layers 2 --num-heads 4 \
  --head-k-dim 64 --head-v-dim 64 --seed 0 --tokenizer "$DATA/tokenizers/mistral_v1.model"
"$RP" init --arch gated_deltanet --out "$OUT/gated_deltanet" --hidden-size 256 --num-layers 2 --num-heads 4 \
  --head-k-dim 64 --head-v-dim 128 --seed 0 --tokenizer "$DATA/tokenizers/mistral_v1.model"
"$RP" info --model "$OUT/delta_net"

common=(--data "$DATA/text/wikitext2/wiki.valid.tokens" --seq-len 256 --sequences 32 --batch-size 8
        --tasks wikitext,lambada_openai,piqa --limit 3 --eval-seq-len 256 --data-dir "$DATA" --db "$DB")
"$RP" sweep --model "$OUT/delta_net" --methods drrqr,qrcp,l1,wanda,random,pca --ratios 0.25,0.5,0.75 \
  --save-pruned "$OUT/pruned" "${common[@]}"
"$RP" sweep --model "$OUT/gated_deltanet" --methods drrqr,l1,random --ratios 0.5 "${common[@]}"
# Resumable and idempotent: the same command again has nothing to do.
"$RP" sweep --model "$OUT/gated_deltanet" --methods drrqr,l1,random --ratios 0.5 "${common[@]}"

"$RP" info --model "$OUT/pruned/drrqr-0.5-seed0" | tail -2
"$RP" query --db "$DB" --task wikitext --metric token_perplexity
"$RP" query --db "$DB" --task piqa --metric acc --best
"$RP" query --db "$DB" --jobs | tail -1
"$RP" report --db "$DB" --out "$OUT/report.html"
echo "main job: done; results in $DB, report in $OUT/report.html"
