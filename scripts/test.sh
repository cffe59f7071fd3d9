#!/usr/bin/env bash
# Runs east's test suite: fetches the bundled test model (SmolLM2-135M GGUF) if missing, then
# every unit, integration and property test. This is what CI (.ci/run) calls.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
scripts/fetch-model.sh
cargo test --locked "$@"
