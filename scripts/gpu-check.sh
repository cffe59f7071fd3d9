#!/usr/bin/env bash
# The prepared GPU check of east (issue 6), for a CUDA machine with no Rust and no network:
# PyTorch + transformers (+ PEFT) in its python3, the NVIDIA driver, and the CUDA libraries
# that PyTorch's wheels bring (CUDA 13, or 12 for a binary built with EAST_CUDA_VERSION=12).
# Build first, on any machine, with scripts/build-cuda.sh: it puts the stripped binary in
# gpu/bin/ and the CPU references in gpu/ref/ (gpu/ is ignored by git, so name it in the device
# tool's `carry`).
#
#   scripts/gpu-check.sh [--budget SECONDS] [--skip-8b] [--only REGEX] [--profile]
#   scripts/gpu-check.sh --dry-run-cpu     # the same steps on the CPU with small shapes
#
# Steps (each with its own timeout; steps that would start after the budget are skipped):
#  1. agreement on a seeded small model of each family (Llama, Qwen2, Qwen3, Mistral) against
#     the CPU reference made at build time: logits of a prompt (prefill and the training
#     forward; max |Δ|) and greedy continuations of two prompts in one left-padded batch, in f32
#     (must match) and bf16 (reported); 3 SFT steps in f32 (loss and gradient norm against the
#     CPU engine's).
#  2. Llama-3.2-1B shape, random bf16 weights: east sampling (n = 128, 256 new tokens, EOS
#     disabled) and transformers generate; 10 SFT steps of 16 × 512 tokens, full fine-tuning,
#     east (f32 masters, bf16 compute) and PyTorch (f32 weights, bf16 autocast).
#  3. Llama-3.1-8B shape: east and transformers sampling; 10 LoRA steps (r = 16, α = 16).
# --profile adds, after step 1: the training ops of the 1B shape one by one (forward and
# backward ms, `east-gpu-check op-bench`) and the 1B SFT steps with the engine's phases timed.
# Peak GPU memory is the most nvidia-smi reported in use while the step ran (polled every
# 100 ms; it includes the CUDA context), for east and PyTorch alike; PyTorch's own peak
# allocated/reserved figures are in its lines too.
#
# Output: $OUT/results.jsonl (one JSON line per step), $OUT/gpu-check.log (everything), and a
# summary table on stdout. OUT defaults to gpu/out. Models are written to $EAST_GPU_WORK
# (default /tmp/east-gpu-check; the 8B one is 16 GB).
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

budget=480
dry=0
skip8b=0
profile=0
only="."
while [ $# -gt 0 ]; do
    case "$1" in
        --budget) budget="$2"; shift 2 ;;
        --dry-run-cpu) dry=1; shift ;;
        --skip-8b) skip8b=1; shift ;;
        --profile) profile=1; shift ;;
        --only) only="$2"; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done

OUT="${OUT:-$root/gpu/out}"
mkdir -p "$OUT"
ref="${EAST_GPU_REF:-$root/gpu/ref}"
work="${EAST_GPU_WORK:-/tmp/east-gpu-check}"
py="${PYTHON:-python3}"
results="$OUT/results.jsonl"
log="$OUT/gpu-check.log"
: >"$results"
: >"$log"
mkdir -p "$work/bin"
start=$(date +%s)
say() { echo "$*" | tee -a "$log" >&2; }

# The binaries travel xz-compressed (gpu/bin/*.xz, from scripts/build-cuda.sh).
unpack() {
    local name="$1" src="$root/gpu/bin/$1"
    if [ -x "$src" ]; then echo "$src"; return; fi
    [ -f "$src.xz" ] || return 1
    if command -v xz >/dev/null; then
        xz -dc "$src.xz" >"$work/bin/$name"
    else
        "$py" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$src.xz" "$work/bin/$name"
    fi
    chmod +x "$work/bin/$name"
    echo "$work/bin/$name"
}
bin="${EAST_GPU_CHECK_BIN:-$(unpack east-gpu-check)}"
east_cli="${EAST_BIN:-$(unpack east || true)}"
if [ -z "$bin" ]; then
    say "!! no gpu/bin/east-gpu-check(.xz): run scripts/build-cuda.sh first"
    exit 1
fi

if [ "$dry" = 1 ]; then
    dev=cpu; s1=mini; s8=mini
    sample_args=(--n 8 --tokens 16 --prompt-len 32)
    # the autograd engine, as on CUDA (the CPU's default is the hand-written CPU engine)
    engine=(--engine autograd)
    train_args=(--steps 3 --batch 4 --len 64)
    op_args=(--dtype f32 --rows 1 --len 16)
    lora_args=(--steps 3 --batch 4 --len 64 --lora --lora-rank 16 --lora-alpha 16)
    mb_full=2; mb_lora=2
else
    dev=cuda; s1=1b; s8=8b
    engine=()
    sample_args=(--n 128 --tokens 256 --prompt-len 128)
    # micro-batches sized from the autograd engine's activations (~3 GB per 512-token row of
    # the 1B, ~7 GB of the 8B); a step that runs out of memory is retried with half
    mb_full=8; mb_lora=4
    train_args=(--steps 10 --batch 16 --len 512)
    op_args=(--rows 8 --len 512)
    lora_args=(--steps 10 --batch 16 --len 512 --lora --lora-rank 16 --lora-alpha 16)
fi

# --- libraries: the driver's libcuda and the CUDA 13 (or 12) libraries of PyTorch's wheels ------
if [ "$dry" = 0 ]; then
    extra=""
    for d in $("$py" - 2>/dev/null <<'PY'
import os
try:
    import nvidia
    for p in nvidia.__path__:
        for sub in ("cu13/lib", "cublas/lib", "curand/lib", "cuda_nvrtc/lib", "cuda_runtime/lib"):
            if os.path.isdir(os.path.join(p, sub)):
                print(os.path.join(p, sub))
except Exception:
    pass
try:
    import torch
    print(os.path.join(os.path.dirname(torch.__file__), "lib"))
except Exception:
    pass
PY
    ) /usr/local/cuda/lib64 /usr/local/nvidia/lib64 /usr/local/nvidia/lib; do
        [ -d "$d" ] && extra="$extra:$d"
    done
    export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH}$extra"
    # a library still missing (images differ in where they keep CUDA): look for it on disk
    for lib in $(ldd "$bin" 2>/dev/null | awk '/not found/ {print $1}'); do
        found="$(find /usr /opt /root "$("$py" -c 'import sys; print(sys.prefix)' 2>/dev/null || echo /usr)" \
            -xdev -name "$lib" 2>/dev/null | head -n 1)"
        if [ -n "$found" ]; then
            echo "found $lib at $found" >&2
            export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$(dirname "$found")"
        fi
    done
else
    # the CPU dry run: a cuda-built binary needs the toolkit's libraries and the driver stub
    if [ -x scripts/build-cuda.sh ] && [ -d .cuda/venv ]; then
        eval "$(scripts/build-cuda.sh --print-env)"
    fi
fi

# the driver compiles candle's PTX kernels on first use: keep them all in its disk cache so
# each later process finds them compiled
export CUDA_CACHE_MAXSIZE="${CUDA_CACHE_MAXSIZE:-4294967296}"

say "== east gpu-check $(date -u +%FT%TZ) on $(hostname); budget ${budget}s; device $dev"
if [ "$dry" = 0 ]; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv 2>&1 | tee -a "$log" >&2
fi
missing="$(ldd "$bin" 2>&1 | grep -E 'not found' || true)"
if [ -n "$missing" ] || ! "$bin" --help >/dev/null 2>>"$log"; then
    say "!! $bin cannot run here:"
    ldd "$bin" 2>&1 | tee -a "$log" >&2
    exit 1
fi
ldd "$bin" | grep -E 'cuda|cublas|curand|nvrtc|cudart' | tee -a "$log" >&2

# --- one step: timeout, GPU memory poll, JSON line + step metadata ------------------------------
# run_step NAME TIMEOUT CMD...: appends CMD's last stdout line (JSON) to results, with
# "step", "rc", "wall_s" and "peak_gpu_mib" added.
run_step() {
    local name="$1" limit="$2"
    shift 2
    if ! [[ "$name" =~ $only ]]; then return 0; fi
    local now left
    now=$(date +%s)
    left=$((budget - (now - start)))
    if [ "$left" -lt 20 ]; then
        say "-- $name: skipped (budget spent)"
        echo "{\"step\": \"$name\", \"skipped\": \"budget\"}" >>"$results"
        return 0
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    say "-- $name (timeout ${limit}s): $*"
    local mem="$work/$name.mem" poll=""
    : >"$mem"
    if [ "$dev" = cuda ] && command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >"$mem" 2>/dev/null &
        poll=$!
    fi
    local t0 t1 rc
    t0=$(date +%s.%N)
    timeout --kill-after=10 "$limit" "$@" >"$work/$name.out" 2>"$work/$name.err"
    rc=$?
    t1=$(date +%s.%N)
    [ -n "$poll" ] && kill "$poll" 2>/dev/null && wait "$poll" 2>/dev/null
    { echo "   stderr (last 15 lines):"; tail -n 15 "$work/$name.err" | sed 's/^/   | /'; } >>"$log"
    [ "$rc" != 0 ] && tail -n 5 "$work/$name.err" | sed 's/^/   | /' >&2
    "$py" - "$name" "$rc" "$t0" "$t1" "$mem" "$work/$name.out" >>"$results" <<'PY'
import json, sys
name, rc, t0, t1, mem, out = sys.argv[1:]
lines = [l for l in open(out).read().splitlines() if l.strip().startswith("{")]
try:
    rec = json.loads(lines[-1]) if lines else {}
except json.JSONDecodeError:
    rec = {}
vals = [float(x) for x in open(mem).read().split() if x.replace(".", "", 1).isdigit()]
rec = {"step": name, "rc": int(rc), "wall_s": round(float(t1) - float(t0), 2),
       "peak_gpu_mib": max(vals) if vals else None, **rec}
if int(rc) == 124 or int(rc) == 137:
    rec["timed_out"] = True
print(json.dumps(rec))
PY
    say "   rc=$rc $(tail -n 1 "$results" | cut -c1-400)"
    return "$rc"
}

oom() { grep -qiE 'out of memory|OUT_OF_MEMORY|CUDA_ERROR_OUT_OF_MEMORY' "$work/$1.err"; }

# --- 1. agreement ----------------------------------------------------------------------------
# one small model per family: tiny (Llama), tiny-qwen2 (q/k/v biases, tied), tiny-qwen3 (q/k
# norms, head_dim 128), tiny-mistral (explicit head_dim, a sliding window longer than the rows)
tiny="$work/tiny"
for fam in tiny tiny-qwen2 tiny-qwen3 tiny-mistral; do
    m="$work/$fam"
    run_step "make-$fam" 60 "$bin" make-model --shape "$fam" --seed 7 --out "$m"
    if [ ! -f "$ref/$fam-logits-cpu.json" ]; then
        say "!! no CPU reference for $fam in $ref (scripts/build-cuda.sh makes it); its agreement skipped"
        continue
    fi
    # the Llama's steps keep their names (agree-f32, …) as before; the others get the family's
    sfx=""; [ "$fam" = tiny ] || sfx="-${fam#tiny-}"
    run_step "agree-f32$sfx" 90 "$bin" logits --model "$m" --device $dev --dtype f32 --reference "$ref/$fam-logits-cpu.json"
    run_step "agree-bf16$sfx" 90 "$bin" logits --model "$m" --device $dev --dtype bf16 --reference "$ref/$fam-logits-cpu.json"
    run_step "agree-train-f32$sfx" 120 "$bin" train-bench --model "$m" --device $dev --dtype f32 --work "$work/tw" \
        --steps 3 --batch 4 --micro-batch 2 --len 64 --lr 1e-3 "${engine[@]}" --reference "$ref/$fam-train-cpu.json"
done

# the east CLI itself on the GPU: sampling two GSM8K questions with the tiny model
if [ -n "$east_cli" ]; then
    rm -rf "$work/cli"
    run_step cli-sample 90 "$east_cli" sample --model "$tiny" --dataset gsm8k --limit 2 --n 4 --max-new-tokens 16 \
        --device $dev --out "$work/cli/samples.jsonl"
fi

# --- 2. 1B shape -----------------------------------------------------------------------------
m1="$work/$s1"
run_step "make-$s1" 120 "$bin" make-model --shape "$s1" --seed 7 --out "$m1"
run_step "east-sample-$s1" 180 "$bin" sample-bench --model "$m1" --device $dev "${sample_args[@]}"
# the same with every step's logits copied to the host, to show what sampling on the device saves
run_step "east-sample-host-$s1" 180 "$bin" sample-bench --model "$m1" --device $dev "${sample_args[@]}" --sampler host
run_step "torch-sample-$s1" 180 "$py" scripts/reference/torch_gpu_bench.py --model "$m1" --device $dev sample "${sample_args[@]}"
mb=$mb_full
if [ "$profile" = 1 ]; then
    run_step "op-bench" 120 "$bin" op-bench --device $dev "${op_args[@]}"
    run_step "east-train-full-$s1-profile" 180 "$bin" train-bench --model "$m1" --device $dev --work "$work/tw" \
        "${train_args[@]}" --micro-batch $mb "${engine[@]}" --profile
fi
run_step "east-train-full-$s1" 240 "$bin" train-bench --model "$m1" --device $dev --work "$work/tw" "${train_args[@]}" --micro-batch $mb "${engine[@]}"
if [ $? != 0 ] && oom "east-train-full-$s1" && [ "$mb" -gt 1 ]; then
    mb=$((mb / 2))
    run_step "east-train-full-$s1-mb$mb" 240 "$bin" train-bench --model "$m1" --device $dev --work "$work/tw" "${train_args[@]}" --micro-batch $mb "${engine[@]}"
fi
run_step "torch-train-full-$s1" 180 "$py" scripts/reference/torch_gpu_bench.py --model "$m1" --device $dev train "${train_args[@]}" --micro-batch $mb
[ "$s1" != "$s8" ] && rm -rf "$m1"

# --- 3. 8B shape -----------------------------------------------------------------------------
if [ "$skip8b" = 0 ]; then
    m8="$work/$s8"
    [ -d "$m8" ] || run_step "make-$s8" 150 "$bin" make-model --shape "$s8" --seed 7 --out "$m8"
    run_step "east-sample-$s8" 180 "$bin" sample-bench --model "$m8" --device $dev "${sample_args[@]}"
    mb=$mb_lora
    run_step "east-train-lora-$s8" 300 "$bin" train-bench --model "$m8" --device $dev --work "$work/tw" "${lora_args[@]}" --micro-batch $mb "${engine[@]}"
    if [ $? != 0 ] && oom "east-train-lora-$s8" && [ "$mb" -gt 1 ]; then
        mb=$((mb / 2))
        run_step "east-train-lora-$s8-mb$mb" 300 "$bin" train-bench --model "$m8" --device $dev --work "$work/tw" "${lora_args[@]}" --micro-batch $mb "${engine[@]}"
    fi
    run_step "torch-sample-$s8" 180 "$py" scripts/reference/torch_gpu_bench.py --model "$m8" --device $dev sample "${sample_args[@]}"
    run_step "torch-train-lora-$s8" 240 "$py" scripts/reference/torch_gpu_bench.py --model "$m8" --device $dev train "${lora_args[@]}" --micro-batch $mb
    rm -rf "$m8"
fi

# --- summary ---------------------------------------------------------------------------------
say "== total $(($(date +%s) - start)) s"
"$py" - "$results" "$s1" "$s8" <<'PY' | tee -a "$log"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
s1, s8 = sys.argv[2], sys.argv[3]
print(f"{'step':<28} {'rc':>3} {'wall s':>7} {'peak GPU MiB':>12}  result")
for r in rows:
    c = r.get("check", "")
    if r.get("skipped"):
        res = "skipped (" + r["skipped"] + ")"
    elif r.get("rc") not in (0, None) and "tokens_per_s" not in r and "agree" not in r:
        res = "FAILED" + (" (timeout)" if r.get("timed_out") else "")
    elif c == "logits":
        res = (f"{'AGREE' if r.get('agree') else 'DISAGREE'} {r.get('dtype')}: max|Δ| prefill {r.get('max_abs_delta_prefill', float('nan')):.2e}, "
               f"all positions {r.get('max_abs_delta_all_positions', float('nan')):.2e} (|logit| ≤ {r.get('max_abs_logit', float('nan')):.1f}); "
               f"greedy rows equal {r.get('greedy_rows_equal')}")
    elif "agree" in r:
        res = (f"{'AGREE' if r['agree'] else 'DISAGREE'}: loss rel Δ {r.get('max_rel_delta_loss', float('nan')):.1e}, "
               f"grad-norm rel Δ {r.get('max_rel_delta_grad_norm', float('nan')):.1e} ({r.get('engine')} vs {r.get('reference_engine')})")
    elif "tokens_per_s" in r:
        extra = ""
        if "median_decode_step_ms" in r:
            extra = f", decode step {r['median_decode_step_ms']:.1f} ms"
        if "median_step_s" in r:
            extra = f", step {r['median_step_s']:.2f} s, micro-batch {r.get('micro_batch')}"
        if "peak_reserved_mib" in r:
            extra += f", torch peak reserved {r['peak_reserved_mib']:.0f} MiB"
        if r.get("phases"):
            extra += "; phases s: " + ", ".join(f"{k} {v['s']:.2f}" for k, v in r["phases"].items())
        res = f"{r['tokens_per_s']:.0f} tokens/s{extra}"
    elif c == "op-bench":
        res = "fwd/bwd ms: " + "; ".join(f"{k} {v['fwd_ms']:.2f}/{v['bwd_ms']:.2f}" for k, v in r.get("ops", {}).items())
    elif c == "make-model":
        res = f"{r.get('params', 0) / 1e9:.2f} B params, {r.get('bytes', 0) / 2**30:.1f} GiB in {r.get('seconds', 0):.1f} s"
    else:
        res = json.dumps(r)[:120]
    peak = r.get("peak_gpu_mib")
    print(f"{r['step']:<28} {r.get('rc', ''):>3} {r.get('wall_s', ''):>7} {peak if peak is not None else '-':>12}  {res}")
by = {r["step"]: r for r in rows}
done = set()
for a, b, what in [(f"east-sample-{s1}", f"torch-sample-{s1}", f"{s1} sampling"), (f"east-train-full-{s1}", f"torch-train-full-{s1}", f"{s1} full SFT"),
                   (f"east-sample-{s8}", f"torch-sample-{s8}", f"{s8} sampling"), (f"east-train-lora-{s8}", f"torch-train-lora-{s8}", f"{s8} LoRA SFT")]:
    ea = next((by[k] for k in by if k.startswith(a) and "tokens_per_s" in by[k]), None)
    tb = by.get(b)
    if ea and tb and tb.get("tokens_per_s") and what not in done:
        done.add(what)
        print(f"{what}: east/PyTorch = {ea['tokens_per_s'] / tb['tokens_per_s']:.2f}")
dev_s, host_s = by.get(f"east-sample-{s1}"), by.get(f"east-sample-host-{s1}")
if dev_s and host_s and dev_s.get("tokens_per_s") and host_s.get("tokens_per_s"):
    print(f"{s1} sampling, logits reduced on the device / copied to the host = {dev_s['tokens_per_s'] / host_s['tokens_per_s']:.2f}")
PY
