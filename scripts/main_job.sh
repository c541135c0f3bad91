#!/usr/bin/env bash
# The main job on shipped data: a small prune-ratio sweep of the two committed trained fixtures
# (fixtures/delta_net, fixtures/gated_deltanet; scripts/train_fixtures.sh made them) into the
# embedded SQLite results database, calibrated on WikiText-2 validation text and evaluated on
# WikiText-2 test, LAMBADA and PIQA (first 3 items each: a smoke-sized sweep; scripts/paper_sweep.sh
# is the full comparison), then the query tables, rank diagnostics and the HTML report. Also makes
# a random model with `init` to show the checkpoint tools. Outputs go to ${OUT_DIR:-build/main_job}.
set -euo pipefail
cd "$(dirname "$0")/.."
RP=${RP:-build/rankprune}
DATA=${RANKPRUNE_DATA_DIR:-../shared/data}
OUT=${OUT_DIR:-build/main_job}
rm -rf "$OUT" && mkdir -p "$OUT"
DB="$OUT/results.db"

"$RP" init --arch gated_deltanet --out "$OUT/random_gdn" --hidden-size 256 --num-layers 2 --num-heads 4 \
  --head-k-dim 64 --head-v-dim 128 --seed 0 --tokenizer "$DATA/tokenizers/mistral_v1.model"
"$RP" info --model "$OUT/random_gdn" | tail -3
"$RP" info --model fixtures/delta_net

common=(--data "$DATA/text/wikitext2/wiki.valid.tokens" --seq-len 256 --sequences 32 --batch-size 8
        --tasks wikitext,lambada_openai,piqa --limit 3 --eval-seq-len 256 --data-dir "$DATA" --db "$DB"
        --stats-cache "$OUT/stats_cache")
"$RP" sweep --model fixtures/delta_net --methods drrqr,l1,random,pca --ratios 0.25,0.5,0.75 \
  --save-pruned "$OUT/pruned" "${common[@]}"
"$RP" sweep --model fixtures/gated_deltanet --methods drrqr,l1,random --ratios 0.5 "${common[@]}"
# Resumable and idempotent: the same command again has nothing to do.
"$RP" sweep --model fixtures/gated_deltanet --methods drrqr,l1,random --ratios 0.5 "${common[@]}"

"$RP" info --model "$OUT/pruned/drrqr-0.5-seed0" | tail -2
"$RP" generate --model "$OUT/pruned/drrqr-0.5-seed0" --prompt "The history of the" --max-new 16
"$RP" query --db "$DB" --task wikitext --metric token_perplexity
"$RP" query --db "$DB" --task wikitext --metric word_perplexity --best
"$RP" query --db "$DB" --jobs | tail -1
"$RP" analyze --model fixtures/delta_net --data "$DATA/text/wikitext2/wiki.valid.tokens" --seq-len 512 \
  --sequences 8 --every 64 --out "$OUT/analyze_delta_net.json"
"$RP" report --db "$DB" --analysis "$OUT/analyze_delta_net.json" --out "$OUT/report.html"
echo "main job: done; results in $DB, report in $OUT/report.html"
