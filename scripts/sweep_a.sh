#!/usr/bin/env bash
# Sweep the exponent a of the power mapping over the paper's grid on one config: every value is
# its own run (runs/<name>_a<a>), all sharing one round of samples through the samples cache,
# plus a vanilla run (uniform weights, a = 0 in the figure) that also evaluates the base model.
# Ends with one report comparing them (accuracy against a, Figure 3).
#
#   scripts/sweep_a.sh configs/gsm8k_1b.toml [--set key=value ...]
#   A="-1 0.5 1 1.5 2" scripts/sweep_a.sh configs/demo.toml     # a custom grid
#
# EAST=path/to/east picks the binary (default: target/release/east, built if missing).
set -euo pipefail
config="${1:?usage: scripts/sweep_a.sh CONFIG [--set key=value ...]}"
shift
source "$(dirname "$0")/lib/east-bin.sh"
grid="${A:--3 -2.5 -2 -1.5 -1.25 -1 -0.5 0.1 0.2 0.5 0.7 1 1.5 2 2.5 3}"
name="$("$east" config --config "$config" "$@" --get run.name)"
dir="$("$east" config --config "$config" "$@" --get run.dir)"

runs=("$dir/${name}_vanilla")
"$east" run --config "$config" "$@" --set 'weight.metric="uniform"' --set "run.name=\"${name}_vanilla\""
for a in $grid; do
    "$east" run --config "$config" "$@" --set "weight.a=$a" --set "run.name=\"${name}_a$a\"" --set run.eval_base=false
    runs+=("$dir/${name}_a$a")
done
"$east" report "${runs[@]}" --out "$dir/${name}_sweep_report"
echo "report: $dir/${name}_sweep_report/report.md"
