#!/usr/bin/env bash
# A stand-in for rankprune in tests/slurm/test_requeue_rules.sh. `sweep` prints a line, waits for
# USR1 (at most 60 s), then $FAKE_DELAY s more (a long last job), and exits $FAKE_RC (0 on the
# job's second start, after a requeue);
# `query --jobs --format json` lists one done job plus $FAKE_LEFT pending ones; others exit 0.
case ${1:-} in
  sweep)
    got=0
    trap 'got=1' USR1
    [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ] && { echo "fake sweep: restarted, done"; exit 0; }
    echo "fake sweep: waiting for USR1"
    for ((i = 0; i < 600 && got == 0; i++)); do sleep 0.1; done
    sleep "${FAKE_DELAY:-0}"
    echo "fake sweep: exiting ${FAKE_RC:-0}"
    exit "${FAKE_RC:-0}" ;;
  query)
    if [[ " $* " == *" --jobs "* ]]; then
      echo '[ { "state": "done" }'
      for ((i = 0; i < ${FAKE_LEFT:-0}; i++)); do echo ', { "state": "pending" }'; done
      echo ']'
    fi ;;
esac
exit 0
