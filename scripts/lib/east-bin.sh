# Sourced by the recipe scripts (sweep_a.sh, figure4.sh): sets $east to the binary they run,
# $EAST if given, else target/release/east of this checkout, built first if missing.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
east="${EAST:-$root/target/release/east}"
if [ ! -x "$east" ]; then
    (cd "$root" && cargo build --release --locked)
fi
