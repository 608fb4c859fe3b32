#!/usr/bin/env bash
# Runs the PROXY protocol fuzzer for 60 seconds (or the seconds given) from the seed corpus.
# Needs a nightly toolchain and cargo-fuzz: rustup toolchain install nightly;
# cargo install cargo-fuzz.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
# New inputs go to a scratch corpus under target/; the committed seeds stay as they are.
work=target/fuzz-corpus/proxy_protocol
mkdir -p "$work"
cargo +nightly fuzz run --fuzz-dir fuzz proxy_protocol "$work" fuzz/corpus/proxy_protocol -- \
  -max_total_time="$seconds" -max_len=2048
