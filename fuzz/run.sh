#!/usr/bin/env bash
# Runs weir's fuzzers from their seed corpora: each target for 60 seconds (or the seconds
# given). Targets: proxy_protocol (the PROXY protocol parser), config (the config parser
# and validator), import (weir import's HAProxy reader), plugin_output (the checks on what
# plugins return).
#   fuzz/run.sh                 every target, 60 s each
#   fuzz/run.sh 300 config      one target, 300 s
# Needs a nightly toolchain and cargo-fuzz: rustup toolchain install nightly;
# cargo install cargo-fuzz. A crash is saved under fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(proxy_protocol config import plugin_output)
fi
for target in "${targets[@]}"; do
  # New inputs go to a scratch corpus under target/; the committed seeds stay as they are.
  work=target/fuzz-corpus/$target
  mkdir -p "$work"
  echo "== $target: ${seconds}s"
  cargo +nightly fuzz run --fuzz-dir fuzz "$target" "$work" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -max_len=65536
done
