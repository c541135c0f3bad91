#!/usr/bin/env bash
# Screenshots a `rankprune report` HTML file with headless Chromium.
#   scripts/screenshot_report.sh REPORT.html OUT.png [HEIGHT]
# HEIGHT is the window height in pixels (default 3000; the page is cut there). Installs the Debian
# package `chromium` with apt-get when no chromium binary is found. Fails when no PNG is produced.
set -euo pipefail

if [[ $# -lt 2 || $# -gt 3 ]]; then
  echo "usage: $0 REPORT.html OUT.png [HEIGHT]" >&2
  exit 2
fi
report=$1
out=$2
height=${3:-3000}

if [[ ! -f "$report" ]]; then
  echo "error: report file not found: $report" >&2
  exit 1
fi
if ! [[ "$height" =~ ^[0-9]+$ ]]; then
  echo "error: HEIGHT must be a number of pixels, got '$height'" >&2
  exit 2
fi

find_chromium() {
  local c
  for c in chromium chromium-browser google-chrome chrome; do
    if command -v "$c" >/dev/null 2>&1; then
      command -v "$c"
      return 0
    fi
  done
  return 1
}

if ! browser=$(find_chromium); then
  echo "chromium not found; installing the Debian package 'chromium' with apt-get ..." >&2
  sudo_cmd=()
  if [[ $(id -u) -ne 0 ]]; then sudo_cmd=(sudo); fi
  "${sudo_cmd[@]}" apt-get install -y chromium >&2 || {
    echo "apt-get install failed; running apt-get update and retrying ..." >&2
    "${sudo_cmd[@]}" apt-get update >&2
    "${sudo_cmd[@]}" apt-get install -y chromium >&2
  }
  browser=$(find_chromium) || { echo "error: chromium still not found after installing" >&2; exit 1; }
fi

abs_report=$(cd "$(dirname "$report")" && pwd)/$(basename "$report")
mkdir -p "$(dirname "$out")"
abs_out=$(cd "$(dirname "$out")" && pwd)/$(basename "$out")
rm -f "$abs_out"

echo "screenshot: $browser file://$abs_report -> $abs_out (1280x$height)" >&2
# A throwaway profile keeps the run independent of any user profile; chromium's own chatter on
# stderr (dbus, GPU) is noise, so it goes to a log shown only on failure.
profile=$(mktemp -d)
log=$(mktemp)
trap 'rm -rf "$profile" "$log"' EXIT
status=0
timeout 120 "$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars \
  --user-data-dir="$profile" --no-first-run --no-default-browser-check \
  --window-size="1280,$height" --screenshot="$abs_out" "file://$abs_report" >"$log" 2>&1 || status=$?

if [[ ! -s "$abs_out" ]]; then
  echo "error: no PNG produced at $abs_out (chromium exit status $status); chromium output:" >&2
  cat "$log" >&2
  exit 1
fi
echo "wrote $abs_out ($(stat -c %s "$abs_out") bytes)" >&2
