#!/usr/bin/env bash
# Runs the PROXY protocol fuzzer for 60 seconds (or the seconds given) from the seed corpus.
# Needs a nightly toolchain and cargo-fuzz: rustup toolchain install nightly;
# cargo install cargo-fuzz.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
cargo +nightly fuzz run --fuzz-dir fuzz proxy_protocol fuzz/corpus/proxy_protocol -- \
  -max_total_time="$seconds" -max_len=2048
