#!/bin/sh
# Runs each fuzz target for a bounded time (default 60 s). Needs a nightly
# toolchain and cargo-fuzz (`cargo install cargo-fuzz`). Without nightly, the
# same properties are checked by `cargo test -p cachefs --test fuzz_images`.
set -e
cd "$(dirname "$0")"
T="${1:-60}"
for t in decoders open_image; do
    cargo +nightly fuzz run "$t" -- -max_total_time="$T"
done
