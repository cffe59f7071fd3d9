#!/usr/bin/env bash
# llama.cpp's server against east's native sampler on the same workload: one GSM8K question,
# n = 128 completions of at most 256 new tokens at T = 0.7, the bundled SmolLM2-135M GGUF.
# One request of n completions takes minutes here: server.timeout_s is raised for it.
# Both runs are `east sample` (the openai backend counts tokens with east's tokenizer), back
# to back; prints tokens/s of each and the ratio. A benchmark, not a test: minutes on 2 cores.
#
#   scripts/bench-serve.sh            (builds east --release and llama-server if needed)
#   EAST_BENCH_N=128 EAST_BENCH_TOKENS=256 change the workload
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
n="${EAST_BENCH_N:-128}"
tokens="${EAST_BENCH_TOKENS:-256}"
model=models/SmolLM2-135M-Instruct.Q4_1.gguf
scripts/fetch-model.sh
server_bin="$(scripts/install-llama-server.sh)"
cargo build --release --locked --bin east >&2
east=target/release/east
work="$(mktemp -d)"
server_pid=""
cleanup() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
# one slot per completion, each with room for the prompt and the new tokens
"$server_bin" -m "$model" --host 127.0.0.1 --port "$port" -np "$n" -c $((n * (tokens + 128))) \
  >"$work/server.log" 2>&1 &
server_pid=$!
until curl -sf "http://127.0.0.1:$port/v1/models" >/dev/null; do
  kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.log" >&2; exit 1; }
  sleep 0.5
done

echo "load before: $(uptime)"
common=(--model "$model" --dataset gsm8k --limit 1 --n "$n" --max-new-tokens "$tokens" --temperature 0.7)
served_line="$("$east" sample "${common[@]}" --backend openai --url "http://127.0.0.1:$port/v1" --set server.timeout_s=7200 \
  --out "$work/served.jsonl" 2>/dev/null | tail -n1)"
kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=""
native_line="$("$east" sample "${common[@]}" --out "$work/native.jsonl" 2>/dev/null | tail -n1)"
echo "load after: $(uptime)"
echo "llama-server: $served_line"
echo "east native:  $native_line"
rate() { sed -E 's/.*\(([0-9.]+) tokens\/s\).*/\1/' <<<"$1"; }
python3 - "$(rate "$served_line")" "$(rate "$native_line")" <<'PY'
import sys
s, e = float(sys.argv[1]), float(sys.argv[2])
print(f"llama-server {s:.0f} tokens/s, east native {e:.0f} tokens/s, ratio llama-server/east {s/e:.2f}")
PY
