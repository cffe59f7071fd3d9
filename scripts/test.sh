#!/usr/bin/env bash
# Runs east's checks and test suite: fetches the bundled test model (SmolLM2-135M GGUF) if
# missing, builds llama.cpp's llama-server once (tests/serve.rs), checks formatting (cargo fmt) and lints (clippy, warnings are errors), then runs every
# unit, integration and property test. This is what CI (.ci/run) calls.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
scripts/fetch-model.sh
# llama.cpp's server for tests/serve.rs (built once into .tools/llama-server/, ~10-35 min)
scripts/install-llama-server.sh >/dev/null
cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked "$@"
