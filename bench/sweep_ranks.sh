#!/usr/bin/env bash
# Evaluation throughput of a sweep on this machine: 1 rank x 1 thread, 1 rank x 2 threads and
# 2 ranks x 1 thread (mpirun), on the same jobs; also checks that the 2-rank metrics are the
# 1-rank metrics bit for bit. Prints a table.
#
#   bash bench/sweep_ranks.sh [hidden=512] [layers=4] [limit=200] [tasks=hellaswag,piqa]
#
# The model is a random delta_net (mistral tokenizer, 32000 pieces); the sweep is the baseline and
# l1 at ratio 0.5 (no calibration), so the figures are evaluation only: the seconds are the
# sweep's own "N job(s) done in X s" (the scheduling phase, after model load and planning).
set -euo pipefail
cd "$(dirname "$0")/.."
RP=${RP:-build/rankprune}
DATA=${RANKPRUNE_DATA_DIR:-../shared/data}
H=${1:-512}; L=${2:-4}; LIMIT=${3:-200}; TASKS=${4:-hellaswag,piqa}
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT
"$RP" init --arch delta_net --out "$DIR/m" --hidden-size "$H" --num-layers "$L" --num-heads 8 \
  --head-k-dim $((H / 8)) --head-v-dim $((H / 8)) --dtype f32 --tokenizer "$DATA/tokenizers/mistral_v1.model" >/dev/null
n_tasks=$(awk -F, '{print NF}' <<<"$TASKS")
items=$((2 * n_tasks * LIMIT))  # 2 variants x tasks x items

# run NAME LABEL THREADS [LAUNCHER...]: one sweep into its own database; prints its line.
run() {
  local name=$1 label=$2 threads=$3; shift 3
  local log="$DIR/$name.log" db="$DIR/$name.db"
  "$@" "$RP" sweep --model "$DIR/m" --methods l1 --ratios 0.5 --tasks "$TASKS" --limit "$LIMIT" \
    --data-dir "$DATA" --threads "$threads" --db "$db" >"$log" 2>&1 || { cat "$log"; exit 1; }
  local secs
  secs=$(sed -n 's/^sweep: [0-9]* job(s) done in \([0-9.e+-]*\) s.*/\1/p' "$log")
  echo "$secs" >"$DIR/$name.secs"
  printf "  %-20s %8.2f s %9.2f items/s" "$label" "$secs" "$(echo "$items / $secs" | bc -l)"
  if [[ -f $DIR/r1t1.secs ]]; then printf "   %.2fx of 1 rank x 1 thread" "$(echo "$(cat "$DIR/r1t1.secs") / $secs" | bc -l)"; fi
  echo
}
metrics() { sqlite3 "$1" "select v.method, j.task, m.name, printf('%.17g', m.value) from metrics m join jobs j on j.id = m.job_id join variants v on v.id = j.variant_id order by 1, 2, 3"; }

echo "bench/sweep_ranks.sh: delta_net hidden $H, $L layers (32000 vocab), tasks $TASKS, --limit $LIMIT: $items items, $(nproc) cores"
run r1t1 "1 rank x 1 thread" 1
run r1t2 "1 rank x 2 threads" 2
run r2t1 "2 ranks x 1 thread" 1 mpirun --allow-run-as-root --oversubscribe -np 2
if [[ "$(metrics "$DIR/r1t1.db")" == "$(metrics "$DIR/r2t1.db")" && "$(metrics "$DIR/r1t1.db")" == "$(metrics "$DIR/r1t2.db")" ]]; then
  echo "  metrics: identical to 17 digits in all three runs"
else
  echo "  metrics: DIFFER between runs"; exit 1
fi
