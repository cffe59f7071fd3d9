#!/usr/bin/env bash
# Runs east's checks and test suite: fetches the bundled test model (SmolLM2-135M GGUF) if
# missing, checks formatting (cargo fmt) and lints (clippy, warnings are errors), then runs every
# unit, integration and property test. This is what CI (.ci/run) calls.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
scripts/fetch-model.sh
cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked "$@"
