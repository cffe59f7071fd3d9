#!/usr/bin/env bash
# llama.cpp's server against east's native sampler on the same workload: one GSM8K question,
# n = 128 completions of at most 256 new tokens at T = 0.7, the bundled SmolLM2-135M GGUF.
# Both runs are `east sample` (the openai backend counts tokens with east's tokenizer), back
# to back; prints the load, tokens/s of each and the ratio. A benchmark, not a test: minutes
# on 2 cores. With EAST_BENCH_BATCHED=1, llama.cpp's own llama-batched-bench (built beside the
# server) runs the same shape afterwards, for reference.
#
# What both engines are given, so that they do the same work:
# - the same prompt (east renders it and sends the text; add_special_tokens is false) and
#   the same sampling: temperature 0.7, top_p 1, and east's request switches off llama.cpp's
#   default top_k = 40 and min_p = 0.05 (top_k = -1, min_p = 0), the samplers east's native
#   decoder does not have; llama.cpp's other samplers (penalties, DRY, XTC, typical,
#   top-n-sigma) are off by default. The engines' random number generators differ.
# - one request of n completions (llama.cpp's server accepts n; it evaluates the prompt once
#   and copies it to the n - 1 other slots), so all n slots decode together: server.concurrency
#   does not matter for one question.
# - `-np n` slots, each with room for the prompt (< 512 tokens) and the new tokens
#   (`-c n * (tokens + 512)`, one KV stream per slot); `-b 2048 -ub 512` (defaults: a decode
#   step of n ≤ 512 tokens is one micro-batch); continuous batching (default).
# - threads: EAST_BENCH_THREADS (default: all cores) for `-t` and `-tb`; east's decoder uses
#   all cores. ggml's threads meet at a barrier after every operation of the graph, so on a
#   machine whose cores are busy with other work one descheduled thread stalls the step:
#   with a load average of 10 on 2 cores, `-t 2` decoded 3.8 tokens/s and `-t 1` 15.3 (32 x 32).
#   Say which one a number was measured with.
# east itself only waits for the answer while the server works (one blocking request).
#
#   scripts/bench-serve.sh            (builds east --release and llama-server if needed)
#   EAST_BENCH_N=128 EAST_BENCH_TOKENS=256 EAST_BENCH_THREADS=2 change the workload and threads;
#   EAST_BENCH_EAST=path/to/east uses that (release) binary instead of building one
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
n="${EAST_BENCH_N:-128}"
tokens="${EAST_BENCH_TOKENS:-256}"
threads="${EAST_BENCH_THREADS:-$(nproc)}"
model=models/SmolLM2-135M-Instruct.Q4_1.gguf
scripts/fetch-model.sh
server_bin="$(scripts/install-llama-server.sh)"
east="${EAST_BENCH_EAST:-}"
if [ -z "$east" ]; then
  cargo build --release --locked --bin east >&2
  east=target/release/east
fi
work="$(mktemp -d)"
server_pid=""
cleanup() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
"$server_bin" -m "$model" --host 127.0.0.1 --port "$port" -np "$n" -c $((n * (tokens + 512))) \
  -t "$threads" -tb "$threads" -b 2048 -ub 512 --cont-batching >"$work/server.log" 2>&1 &
server_pid=$!
until curl -sf "http://127.0.0.1:$port/v1/models" >/dev/null; do
  kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.log" >&2; exit 1; }
  sleep 0.5
done

echo "workload: 1 question x $n completions x $tokens new tokens, T = 0.7; llama-server -t $threads"
echo "load before: $(uptime)"
common=(--model "$model" --dataset gsm8k --limit 1 --n "$n" --max-new-tokens "$tokens" --temperature 0.7)
served_line="$("$east" sample "${common[@]}" --backend openai --url "http://127.0.0.1:$port/v1" --set server.timeout_s=7200 \
  --out "$work/served.jsonl" 2>/dev/null | tail -n1)"
kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=""
echo "load between: $(uptime)"
native_line="$("$east" sample "${common[@]}" --out "$work/native.jsonl" 2>/dev/null | tail -n1)"
echo "load after: $(uptime)"
echo "llama-server: $served_line"
echo "east native:  $native_line"
rate() { sed -E 's/.*\(([0-9.]+) tokens\/s\).*/\1/' <<<"$1"; }
python3 - "$(rate "$served_line")" "$(rate "$native_line")" <<'PY'
import sys
s, e = float(sys.argv[1]), float(sys.argv[2])
print(f"llama-server {s:.1f} tokens/s, east native {e:.1f} tokens/s, ratio llama-server/east {s/e:.2f}")
PY

if [ "${EAST_BENCH_BATCHED:-0}" = 1 ]; then
  # the prompt length the native run decoded from, for the same shape
  prompt="$(python3 -c 'import json,sys; print(next(json.loads(l)["prompt_tokens"] for l in open(sys.argv[1]) if "prompt_tokens" in l))' "$work/native.log.jsonl")"
  bin_dir="$(dirname "$(find "$(dirname "$server_bin")/pkg" -type f -name llama-batched-bench | head -n1)")"
  echo "llama-batched-bench (prompt of $prompt tokens, $n sequences, $tokens tokens each; S_TG is the decode rate):"
  LD_LIBRARY_PATH="$(dirname "$server_bin")/lib:$bin_dir" "$bin_dir/llama-batched-bench" -m "$model" \
    -c $((n * (prompt + tokens + 64))) -npp "$prompt" -ntg "$tokens" -npl "$n" -t "$threads" -tb "$threads" 2>/dev/null | grep -E '^\|'
  echo "load after batched-bench: $(uptime)"
fi
