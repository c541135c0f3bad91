#!/usr/bin/env bash
# The paper's comparison at fixture scale (issues 6, 14; docs/results.md): every selection method at
# ratios 0.25 / 0.5 / 0.75 (three seeds for random) on a trained fixture, calibrated on WikiText-2
# validation text, evaluated on WikiText-2 test (word and token perplexity; the first 4 documents)
# and LAMBADA (first 200 items), into one SQLite database; then the tables and the HTML report.
#
#   bash scripts/paper_sweep.sh [fixtures/delta_net fixtures/gated_deltanet]
#
# Resumable: re-running skips finished jobs. Environment: RANKPRUNE (default build/rankprune),
# DATA_DIR (default ../shared/data), DB (default fixtures/results.db), THREADS (default 0).
set -euo pipefail
cd "$(dirname "$0")/.."
RP=${RANKPRUNE:-build/rankprune}
DATA=${DATA_DIR:-../shared/data}
DB=${DB:-fixtures/results.db}
THREADS=${THREADS:-0}
MODELS=("$@")
[ ${#MODELS[@]} -gt 0 ] || MODELS=(fixtures/delta_net fixtures/gated_deltanet)

for m in "${MODELS[@]}"; do
  common=(--model "$m" --data "$DATA/text/wikitext2/wiki.valid.tokens" --seq-len 512 --sequences 64
          --batch-size 4 --seed 0 --methods drrqr,qrcp,l1,wanda,random,pca,taylor --ratios 0.25,0.5,0.75
          --random-seeds 0,1,2 --data-dir "$DATA" --db "$DB" --stats-cache build/stats_cache
          --eval-seq-len 512 --threads "$THREADS")
  "$RP" sweep "${common[@]}" --tasks wikitext --limit 4
  "$RP" sweep "${common[@]}" --tasks lambada_openai --limit 200
done
"$RP" query --db "$DB" --task wikitext --metric token_perplexity --format markdown
"$RP" query --db "$DB" --task wikitext --metric word_perplexity --format markdown
"$RP" query --db "$DB" --task lambada_openai --format markdown
"$RP" report --db "$DB" --out "${DB%.db}.html"
