#!/usr/bin/env bash
# Builds east with the `cuda` feature, for the GPUs and the driver of the machine it runs on, or,
# on a machine without a GPU (no nvidia-smi), for compute capabilities 8.0, 8.6, 8.9 and 9.0
# (A100, A6000/A40/RTX 30xx, L40S/L4/RTX 40xx, H100/H200) under a driver for CUDA 13.0 (>= 580).
# Puts the stripped binaries, xz-compressed, in gpu/bin/ (ignored by git) and the CPU references
# in gpu/ref/ for scripts/gpu-check.sh to carry to a GPU machine.
#
# Usage: scripts/build-cuda.sh [cargo build args…]   (default: --bin east --bin east-gpu-check)
#        scripts/build-cuda.sh --plan                      what it would build, and with what
#        scripts/build-cuda.sh --check-targets [BINARY…]  the GPU code each binary embeds
#        eval "$(scripts/build-cuda.sh --print-env)"       toolkit and library paths of the last build
# Env:   CUDA_COMPUTE_CAP  capabilities to build for: 86, or a list 80,86,89,90 (8.6 is read as
#                          86); default: the GPUs nvidia-smi lists, else 80,86,89,90
#        EAST_CUDA_VERSION 13 or 12: the toolkit; default: what the driver runs (nvidia-smi's
#                          "CUDA Version": 13.x -> 13, 12.x -> 12), else 13
#        EAST_CUDA_HOME    a CUDA 12 toolkit (default: CUDA_HOME, CUDA_PATH, nvcc on the PATH,
#                          /usr/local/cuda); CUDA 12 builds only, see below
#        CARGO_BUILD_JOBS, EAST_CUDA_DIR (default .cuda), CARGO_TARGET_DIR (default target/cuda,
#        target/cuda12 for CUDA 12)
#
# Toolkit. The driver JIT-compiles candle's kernels, which are PTX, when they are first loaded, and
# a driver only reads PTX of its own CUDA version or older: PTX from CUDA 13.0's nvcc (PTX ISA 9.0)
# does not load under a CUDA 12.x driver (< 580), hence two toolkits.
#  - 13: CUDA 13.0's nvcc, headers and the libraries candle links against, from PyPI, pinned,
#    into a virtual environment under .cuda/ (ignored). 13.0 exactly: PTX from a newer nvcc would
#    not load on a CUDA 13.0 driver. At run time: libcublas.so.13 (which loads libcublasLt.so.13),
#    libcurand.so.10, libcudart.so.13 (PyTorch's cu130 wheels bring them; or pip install
#    nvidia-cublas nvidia-curand nvidia-cuda-runtime, 13.x).
#  - 12: PyPI has no CUDA 12 compiler: nvidia-cuda-nvcc-cu12 (12.1.105, 12.2.140, 12.4.131, 12.6.85,
#    12.8.93, 12.9.86 checked) ships ptxas, libnvvm and headers but no nvcc, cicc or cudafe++. So a
#    CUDA 12 build uses a CUDA 12 toolkit already on the machine (clusters with such drivers have
#    one: `module load cuda/12.x`), no newer than the driver's CUDA version. At run time:
#    libcublas.so.12 (which loads libcublasLt.so.12), libcurand.so.10, libcudart.so.12 (the
#    toolkit's lib64, PyTorch's cu12x wheels, or pip install nvidia-cublas-cu12 nvidia-curand-cu12
#    nvidia-cuda-runtime-cu12).
# candle 0.11 builds cudarc with `dynamic-linking`, so these libraries and the driver's libcuda.so.1
# are linked (DT_NEEDED), not dlopen'ed: they must be on the loader path where the binary runs.
# Without a driver (this kind of machine) the build links against lib64/stubs/libcuda.so, a stub
# (soname libcuda.so.1) exporting every driver function cudarc declares and returning
# CUDA_ERROR_STUB_LIBRARY; the CPU paths of the binary still run against it.
#
# Compute capabilities. Two builds see CUDA_COMPUTE_CAP, and each takes one capability:
#  - candle-kernels (cudaforge) compiles its kernels to PTX, loaded at run time: `.target sm_86`
#    for 86; 90 and newer get the arch-specific suffix (sm_90a, sm_100a), whose PTX loads on
#    exactly that capability and no other. It also compiles its quantized (GGUF) matmul and MoE
#    kernels to SASS in a static library (libmoe.a): sm_86 code runs on 8.6 and 8.9 (SASS runs on
#    the same major and a higher minor), not on 8.0 or 9.0. east never calls those: it
#    dequantizes GGUF weights on the CPU when loading.
#  - east's build.rs compiles src/train/engine/adamw.cu to PTX (plain sm_NN, no suffix).
#  PTX for sm_NN is JIT-compiled by the driver for any GPU of capability >= NN, so for a list the
#  script builds for its lowest capability: one binary that runs on all of them. What the lower
#  target loses, in candle 0.11's PTX kernels (__CUDA_ARCH__ thresholds 530, 600, 610, 700, 800, 890): below 8.9 the fp8 (F8E4M3) kernels
#  are left out (east has no fp8 path); below 8.0 the bf16 kernels are, which east's CUDA path
#  computes in, so capabilities below 80 are refused. Nothing is gated between 8.0 and 8.6: for an
#  A6000, 80,86,89,90 compiles the same kernel source as 86, and the driver compiles either PTX
#  for the GPU it runs on. A list whose lowest is 90 or more cannot be one binary (the suffix above): build per GPU.
set -euo pipefail
caller="$PWD"
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

cuda_dir="${EAST_CUDA_DIR:-$root/.cuda}"
default_caps="80,86,89,90"
pins13=(
    nvidia-cuda-nvcc==13.0.88
    nvidia-cuda-crt==13.0.88
    nvidia-nvvm==13.0.88
    nvidia-cuda-cccl==13.0.85
    nvidia-cuda-runtime==13.0.96
    nvidia-cuda-nvrtc==13.0.88
    nvidia-cublas==13.0.2.14
    nvidia-curand==10.4.0.35
)

die() { echo "build-cuda.sh: $*" >&2; exit 1; }
say() { echo "== $*" >&2; }

# --- what the machine has: nvidia-smi's compute capabilities and the driver's CUDA version -----
have_gpu() { command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; }

# "8.6\n8.0" -> "80,86"
gpu_caps() {
    nvidia-smi --query-gpu=compute_cap --format=csv,noheader | tr -d ' .' | { grep -E '^[0-9]+$' || true; } |
        sort -un | paste -sd, -
}

# the newest CUDA the driver runs, "12.2": nvidia-smi's header, else from the driver's branch
driver_cuda() {
    local v major
    v="$(nvidia-smi | grep -oE 'CUDA Version: *[0-9]+\.[0-9]+' | grep -oE '[0-9]+\.[0-9]+' | head -n 1 || true)"
    if [ -n "$v" ]; then echo "$v"; return; fi
    major="$(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -n 1 | cut -d. -f1)"
    case "$major" in
        5[89][0-9] | [6-9][0-9][0-9]) echo 13.0 ;; 575) echo 12.9 ;; 570) echo 12.8 ;;
        565) echo 12.7 ;; 560) echo 12.6 ;; 555) echo 12.5 ;; 550) echo 12.4 ;; 545) echo 12.3 ;;
        535) echo 12.2 ;; 530) echo 12.1 ;; 525) echo 12.0 ;; *) echo 11.0 ;;
    esac
}

# "12.4" -> 1204, to compare versions
vnum() { local a="${1%%.*}" b="${1#*.}"; echo $((a * 100 + ${b%%.*})); }

# "80, 8.6,sm_89" -> "80,86,89" (sorted, unique); dies on anything else
parse_caps() {
    local c out=()
    IFS=, read -r -a items <<<"$1"
    for c in "${items[@]}"; do
        c="$(echo "$c" | tr -d ' ')"
        c="${c#sm_}"
        [[ "$c" =~ ^[0-9]+\.[0-9]$ ]] && c="${c/./}"
        [[ "$c" =~ ^[0-9]{2,3}$ ]] || die "CUDA_COMPUTE_CAP=$1: '$c' is not a compute capability (e.g. 86 or 8.6)"
        out+=("$c")
    done
    [ ${#out[@]} -gt 0 ] || die "CUDA_COMPUTE_CAP is empty"
    printf '%s\n' "${out[@]}" | sort -un | paste -sd, -
}

# --- the toolkits -------------------------------------------------------------------------------
# CUDA 13.0 from PyPI into .cuda/venv; prints the toolkit folder
install_cuda13() {
    local venv="$cuda_dir/venv" stamp="$cuda_dir/installed.txt"
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "${pins13[*]}" ]; then
        say "installing CUDA 13.0 toolkit wheels into $venv"
        rm -rf "$venv"
        mkdir -p "$cuda_dir"
        python3 -m venv "$venv"
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps "${pins13[@]}" >&2
        echo "${pins13[*]}" >"$stamp"
    fi
    "$venv/bin/python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))'
}

# a CUDA 12 toolkit on this machine; prints its folder
find_cuda12() {
    local c
    for c in "${EAST_CUDA_HOME:-}" "${CUDA_HOME:-}" "${CUDA_PATH:-}" \
        "$(dirname "$(dirname "$(command -v nvcc 2>/dev/null || echo /x/x)")")" /usr/local/cuda; do
        if [ -n "$c" ] && [ -x "$c/bin/nvcc" ] && "$c/bin/nvcc" --version | grep -q 'release 12\.'; then
            echo "$c"
            return
        fi
    done
    die "EAST_CUDA_VERSION=12 needs a CUDA 12 toolkit (nvcc 12.x) on this machine and none was found
  (looked at EAST_CUDA_HOME, CUDA_HOME, CUDA_PATH, nvcc on the PATH, /usr/local/cuda).
  PyPI has none: nvidia-cuda-nvcc-cu12 ships ptxas and headers but no nvcc. On a cluster:
  'module load cuda/12.x' (no newer than the driver's CUDA version), then rerun; or set
  EAST_CUDA_HOME; or build with EAST_CUDA_VERSION=13 for a driver >= 580."
}

# lib64/ with the linker names of the libraries, and the driver stub in lib64/stubs/ (in the
# toolkit folder for the PyPI one, in .cuda/ for a toolkit of the machine's, which is left alone)
link_names_and_stub() {
    local tk="$1" stubs="$2" lib real
    if [ "$tk" = "$stubs" ]; then
        mkdir -p "$tk/lib64"
        for lib in cublas cublasLt curand nvrtc cudart; do
            real="$(cd "$tk/lib" && ls "lib$lib.so."* | grep -E "^lib$lib\.so\.[0-9]+$" | head -n 1)"
            ln -sf "../lib/$real" "$tk/lib64/$real"
            ln -sf "../lib/$real" "$tk/lib64/lib$lib.so"
        done
    fi
    mkdir -p "$stubs/lib64/stubs"
    local so="$stubs/lib64/stubs/libcuda.so" src="$cuda_dir/libcuda_stub.c"
    if [ ! -f "$so" ] || [ "$0" -nt "$so" ]; then
        local cudarc_src
        cudarc_src="$(cargo metadata --format-version 1 --locked --features cuda 2>/dev/null |
            python3 -c 'import json,sys,os; m=json.load(sys.stdin); print(next(os.path.dirname(p["manifest_path"]) for p in m["packages"] if p["name"]=="cudarc"))')"
        {
            echo "/* Stub of the CUDA driver library for linking only; generated by scripts/build-cuda.sh. */"
            grep -ohE '^pub unsafe fn cu[A-Za-z0-9_]+\(' "$cudarc_src/src/driver/sys/mod.rs" |
                sed -E 's/^pub unsafe fn ([A-Za-z0-9_]+)\(/\1/' | sort -u |
                sed -E 's/.*/int &(void) { return 34; \/* CUDA_ERROR_STUB_LIBRARY *\/ }/'
        } >"$src"
        cc -shared -fPIC -O1 -Wl,-soname,libcuda.so.1 -o "$so" "$src"
        ln -sf libcuda.so "$stubs/lib64/stubs/libcuda.so.1"
    fi
}

# the environment a build (and a CPU run of its binary) needs
print_env() {
    local tk="$1" stubs="$2"
    echo "export CUDA_ROOT='$tk' CUDA_HOME='$tk' CUDA_PATH='$tk'"
    echo "export PATH='$tk/bin':\"\$PATH\""
    echo "export LIBRARY_PATH='$stubs/lib64/stubs'\${LIBRARY_PATH:+:\$LIBRARY_PATH}"
    echo "export LD_LIBRARY_PATH='$tk/lib64:$stubs/lib64/stubs'\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
}

# --- --check-targets: the GPU code a binary embeds ----------------------------------------------
# candle's and east's PTX are text in the binary (one `.version`/`.target` header per module);
# the quantized-matmul SASS is in the ELF section .nv_fatbin (fatbin entries: kind 1 PTX, 2 ELF,
# and the sm number).
check_targets() {
    (cd "$caller" && python3 - "$@") <<'PY'
import re, struct, sys
from collections import Counter

# PTX ISA version -> the CUDA release that introduced it (the oldest driver that loads it)
ISA = {"7.8": "11.8", "8.0": "12.0", "8.1": "12.1", "8.2": "12.2", "8.3": "12.3", "8.4": "12.4",
       "8.5": "12.5", "8.6": "12.7", "8.7": "12.8", "8.8": "12.9", "9.0": "13.0", "9.1": "13.1"}

def section(data, name):
    if data[:4] != b"\x7fELF" or data[4] != 2:
        return None
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    def sh(i):
        return struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize)
    strtab = sh(shstrndx)
    for i in range(shnum):
        s = sh(i)
        start = strtab[4] + s[0]
        if data[start:data.index(b"\0", start)].decode() == name:
            return data[s[4]:s[4] + s[5]]
    return None

def fatbin_entries(sec):
    out, off = Counter(), 0
    while off + 16 <= len(sec):
        magic, _ver, hsize, fsize = struct.unpack_from("<IHHQ", sec, off)
        if magic != 0xBA55ED50:
            off += 8
            continue
        e, end = off + hsize, off + hsize + fsize
        while e + 32 <= end:
            kind, _u, ehsize, size = struct.unpack_from("<HHIQ", sec, e)
            arch, = struct.unpack_from("<I", sec, e + 28)
            out[("PTX" if kind == 1 else "SASS" if kind == 2 else f"kind {kind}", arch)] += 1
            e += ehsize + size
        off = end
    return out

ok = True
for path in sys.argv[1:]:
    data = open(path, "rb").read()
    ptx = Counter(re.findall(rb"\.version (\d+\.\d+)\s+\.target (sm_\w+)", data))
    print(f"{path}:")
    if not ptx:
        print("  no PTX modules")
        ok = False
    for (ver, target), n in sorted(ptx.items()):
        v = ver.decode()
        print(f"  PTX  .target {target.decode():8} {n:3} modules  (.version {v}: needs a driver for CUDA >= {ISA.get(v, '?')})")
    fat = section(data, ".nv_fatbin")
    for (kind, arch), n in sorted(fatbin_entries(fat or b"").items()):
        print(f"  fatbin {kind:4} sm_{arch:<6} {n:3} entries")
    if fat is None:
        print("  no .nv_fatbin section")
sys.exit(0 if ok else 1)
PY
}

# --- the build this run is for ------------------------------------------------------------------
last="${CARGO_TARGET_DIR:-$root/target/cuda}/east-cuda-build.env"
case "${1:-}" in
    --print-env)
        # the last build's toolkit (CUDA 12 builds: CARGO_TARGET_DIR=target/cuda12), else CUDA 13.0
        if [ -f "$last" ]; then
            # shellcheck disable=SC1090
            . "$last"
        else
            tk="$(install_cuda13)"
            stubs="$tk"
            link_names_and_stub "$tk" "$stubs"
        fi
        print_env "$tk" "$stubs"
        exit 0
        ;;
    --check-targets)
        shift
        if [ $# -eq 0 ]; then
            for d in "${CARGO_TARGET_DIR:-$root/target/cuda}" "$root/target/cuda12"; do
                for b in east east-gpu-check; do
                    [ -f "$d/release/$b" ] && set -- "$@" "$d/release/$b"
                done
            done
            [ $# -gt 0 ] || die "no binary in target/cuda*/release: build first, or name one"
        fi
        check_targets "$@"
        exit $?
        ;;
esac

plan=0
if [ "${1:-}" = "--plan" ]; then plan=1; shift; fi
gpu=""; drv=""
if have_gpu; then
    gpu="$(gpu_caps)"
    drv="$(driver_cuda)"
    say "nvidia-smi: compute capability ${gpu//,/ }, driver for CUDA $drv"
fi
caps="$(parse_caps "${CUDA_COMPUTE_CAP:-${gpu:-$default_caps}}")"
lowest="${caps%%,*}"
[ "$lowest" -ge 80 ] || die "compute capability $lowest: east's CUDA path computes in bf16, and candle's bf16 kernels exist for sm_80 and newer only"
if [ "$caps" != "$lowest" ] && [ "$lowest" -ge 90 ]; then
    die "CUDA_COMPUTE_CAP=$caps: candle compiles 9.0 and newer as arch-specific code (sm_${lowest}a), which runs on compute capability $lowest only; build one binary per capability, or add 89 or lower to the list"
fi

want="${EAST_CUDA_VERSION:-}"
if [ -z "$want" ]; then
    if [ -z "$drv" ]; then want=13
    elif [ "$(vnum "$drv")" -ge 1300 ]; then want=13
    elif [ "$(vnum "$drv")" -ge 1200 ]; then want=12
    else die "the driver runs CUDA $drv; east needs a driver for CUDA 12.x (>= 525) or 13.x (>= 580)"
    fi
fi
case "$want" in
    13 | 13.0)
        tk="$(install_cuda13)"
        stubs="$tk"
        export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target/cuda}"
        ;;
    12 | 12.*)
        tk="$(find_cuda12)"
        stubs="$cuda_dir/stub12"
        export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target/cuda12}"
        ;;
    *) die "EAST_CUDA_VERSION=$want: expected 13 or 12" ;;
esac
link_names_and_stub "$tk" "$stubs"
eval "$(print_env "$tk" "$stubs")"
nvcc_release="$(nvcc --version | grep -oE 'release [0-9]+\.[0-9]+' | cut -d' ' -f2)"
if [ -n "$drv" ] && [ "$(vnum "$nvcc_release")" -gt "$(vnum "$drv")" ]; then
    echo "!! nvcc $nvcc_release is newer than this driver's CUDA $drv: its PTX will not load here" >&2
fi
if [ "${caps##*,}" -ge 100 ] && [ "$(vnum "$nvcc_release")" -lt 1208 ]; then
    die "compute capability ${caps##*,} needs CUDA >= 12.8 (nvcc $nvcc_release); leave it out: PTX for $lowest runs there"
fi

# --- the build, for the lowest capability (see the header) ---------------------------------
export CUDA_COMPUTE_CAP="$lowest"
if [ $# -eq 0 ]; then
    set -- --bin east --bin east-gpu-check
fi
suffix=""; [ "$lowest" -ge 90 ] && suffix=a
if [ "$lowest" -ge 90 ]; then runs="compute capability ${lowest:0:-1}.${lowest: -1} only"
else runs="compute capability ${lowest:0:-1}.${lowest: -1} and newer (the driver JIT-compiles the PTX)"; fi
say "nvcc $nvcc_release ($tk); for ${caps//,/ }: CUDA_COMPUTE_CAP=$lowest, PTX sm_$lowest$suffix, runs on $runs; target $CARGO_TARGET_DIR"
if [ "${nvcc_release%%.*}" = 13 ]; then
    runtime="libcublas.so.13 (+ libcublasLt.so.13) libcurand.so.10 libcudart.so.13 (PyTorch's cu130 wheels, or pip: nvidia-cublas nvidia-curand nvidia-cuda-runtime, 13.x)"
else
    runtime="libcublas.so.12 (+ libcublasLt.so.12) libcurand.so.10 libcudart.so.12 (the toolkit's lib64, PyTorch's cu12x wheels, or pip: nvidia-cublas-cu12 nvidia-curand-cu12 nvidia-cuda-runtime-cu12)"
fi
say "at run time: the driver's libcuda.so.1 (CUDA >= $nvcc_release) and $runtime"
[ "$plan" = 0 ] || exit 0
start=$(date +%s)
cargo build --locked --release --features cuda "$@"
say "cargo build took $(($(date +%s) - start)) s"
{
    echo "tk='$tk' stubs='$stubs' caps='$caps' nvcc_release='$nvcc_release'"
} >"$CARGO_TARGET_DIR/east-cuda-build.env"

# stripped copies, and xz-compressed ones in gpu/bin/ for the GPU machine: the stripped binaries
# are 65-81 MB (candle's PTX and the kernel images of its quantized matmuls are most of it),
# compressed 9-13 MB, and at most 64 MiB travel with the working tree
mkdir -p "$CARGO_TARGET_DIR/stripped" "$root/gpu/bin"
for bin in east east-gpu-check; do
    if [ -x "$CARGO_TARGET_DIR/release/$bin" ]; then
        s="$CARGO_TARGET_DIR/stripped/$bin"
        strip -o "$s" "$CARGO_TARGET_DIR/release/$bin"
        xz -T0 -6 -c "$s" >"$root/gpu/bin/$bin.xz.tmp" && mv "$root/gpu/bin/$bin.xz.tmp" "$root/gpu/bin/$bin.xz"
        rm -f "$root/gpu/bin/$bin"
        say "$bin: $(du -h "$s" | cut -f1) stripped, gpu/bin/$bin.xz $(du -h "$root/gpu/bin/$bin.xz" | cut -f1); needs at run time:" \
            "$(readelf -d "$s" | grep -oE 'lib[a-zA-Z0-9_]+\.so[.0-9]*' | tr '\n' ' ')"
    fi
done
check_targets "$CARGO_TARGET_DIR/stripped/east" >&2 || true

# CPU references for gpu-check.sh's agreement steps, made by the binary just built (on the CPU:
# this also shows that the CUDA build runs here, against the driver stub)
check="$CARGO_TARGET_DIR/stripped/east-gpu-check"
if [ -x "$check" ]; then
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    mkdir -p "$root/gpu/ref"
    for fam in tiny tiny-qwen2 tiny-qwen3 tiny-mistral; do
        "$check" make-model --shape "$fam" --seed 7 --out "$tmp/$fam" >/dev/null
        "$check" logits --model "$tmp/$fam" --device cpu --dtype f32 --out "$root/gpu/ref/$fam-logits-cpu.json" >/dev/null
        "$check" train-bench --model "$tmp/$fam" --device cpu --dtype f32 --work "$tmp/tw" --steps 3 --batch 4 \
            --micro-batch 2 --len 64 --lr 1e-3 --out "$root/gpu/ref/$fam-train-cpu.json" >/dev/null
    done
    say "CPU references in gpu/ref/: $(ls "$root/gpu/ref" | tr '\n' ' '); gpu/ is $(du -sh "$root/gpu" | cut -f1)"
fi
