#!/usr/bin/env bash
# Figure 4 of the paper: iterative self-training, EAST against vanilla SFT over the same rounds
# (the paper: T = 3, Llama-3.2-1B, GSM8K and MATH, Section 4.2 "Observation 3"). Two runs of one
# config, runs/<name>_iter_east and runs/<name>_iter_vanilla (uniform weights), sharing round 1's
# samples through the samples cache (later rounds sample from each run's own trained model), then
# one report of both: accuracy per round (accuracy_per_round.svg) with round 0 the base model.
#
#   scripts/figure4.sh configs/gsm8k_1b.toml [--set key=value ...]
#   ROUNDS=2 scripts/figure4.sh configs/demo.toml --set data.limit=16
#
# EAST=path/to/east picks the binary (default: target/release/east, built if missing).
set -euo pipefail
config="${1:?usage: scripts/figure4.sh CONFIG [--set key=value ...]}"
shift
source "$(dirname "$0")/lib/east-bin.sh"
rounds="${ROUNDS:-3}"
name="$("$east" config --config "$config" "$@" --get run.name)"
dir="$("$east" config --config "$config" "$@" --get run.dir)"
metric="$("$east" config --config "$config" "$@" --get weight.metric)"
if [ "$metric" = "uniform" ]; then
    echo "figure4.sh: $config sets weight.metric = \"uniform\"; Figure 4 compares EAST (a weighting metric) with vanilla" >&2
    exit 2
fi

"$east" run --config "$config" "$@" --set "run.rounds=$rounds" --set "run.name=\"${name}_iter_east\""
"$east" run --config "$config" "$@" --set "run.rounds=$rounds" --set 'weight.metric="uniform"' \
    --set "run.name=\"${name}_iter_vanilla\""
"$east" report "$dir/${name}_iter_east" "$dir/${name}_iter_vanilla" --out "$dir/${name}_iter_report"
echo "report: $dir/${name}_iter_report/report.md"
