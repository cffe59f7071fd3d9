#!/usr/bin/env bash
# The two-command quickstart, part one: fetch the bundled model if missing, build east, run one
# full EAST round on SmolLM2-135M on the CPU (configs/demo.toml), and write the report.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
scripts/fetch-model.sh
cargo build --release --locked
east="${CARGO_TARGET_DIR:-target}/release/east"
"$east" run --config configs/demo.toml "$@"
"$east" report runs/demo --out runs/demo/report
echo
echo "report: $root/runs/demo/report/report.md"
