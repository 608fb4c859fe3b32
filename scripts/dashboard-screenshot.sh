#!/usr/bin/env bash
# Renders weir's statistics page as a person sees it: runs `weir demo`, sends it some
# traffic, drains one server, and has headless Chromium screenshot http://127.0.0.1:8404/.
# Needs Debian's chromium package (apt-get install chromium).
# Usage: scripts/dashboard-screenshot.sh [out.png]   (default: target/dashboard.png)
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-target/dashboard.png}")
chromium=$(command -v chromium || command -v chromium-browser || true)
[ -n "$chromium" ] || { echo "chromium not found: apt-get install chromium" >&2; exit 1; }

cargo build --quiet --bin weir
target/debug/weir demo >/dev/null 2>&1 &
weir=$!
profile=$(mktemp -d)
trap 'kill $weir 2>/dev/null; rm -rf "$profile"' EXIT
for _ in $(seq 100); do
  curl -fs -o /dev/null http://127.0.0.1:8404/ && break
  sleep 0.1
done

for _ in $(seq 30); do curl -s -o /dev/null http://127.0.0.1:8080/hello; done
curl -s -o /dev/null http://127.0.0.1:8080/missing
curl -s -o /dev/null -X POST -H 'content-type: application/json' \
  -d '{"state": "drain"}' http://127.0.0.1:8404/api/backends/app/servers/web2/state

"$chromium" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$profile" --window-size=1500,800 --hide-scrollbars \
  --screenshot="$out" http://127.0.0.1:8404/ >/dev/null 2>&1
echo "$out"
