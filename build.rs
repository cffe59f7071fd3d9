//! With the `cuda` feature: compiles east's own CUDA kernels (`src/train/engine/adamw.cu`) to PTX with
//! nvcc, for the compute capability in `CUDA_COMPUTE_CAP` (as candle's kernels are built; e.g.
//! 86 for an A6000, 90 for H100/H200). One number: `scripts/build-cuda.sh` turns a list
//! (`80,86,89,90`) into its lowest, since PTX for `sm_NN` runs on every capability >= NN.
//! Without the feature it does nothing. `NVCC` names the compiler (default:
//! `nvcc` on the PATH; `scripts/build-cuda.sh` provides one).

use std::path::PathBuf;
use std::process::Command;

const KERNELS: &[&str] = &["src/train/engine/adamw.cu"];

fn main() {
    for k in KERNELS {
        println!("cargo::rerun-if-changed={k}");
    }
    println!("cargo::rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo::rerun-if-env-changed=NVCC");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let cap = match std::env::var("CUDA_COMPUTE_CAP") {
        Ok(c) if c.trim().chars().all(|ch| ch.is_ascii_digit()) && !c.trim().is_empty() => c.trim().to_string(),
        Ok(c) => panic!("CUDA_COMPUTE_CAP={c:?}: expected digits, e.g. 90 for H100/H200"),
        Err(_) => panic!("the cuda feature needs CUDA_COMPUTE_CAP (e.g. 90 for H100/H200); scripts/build-cuda.sh sets it"),
    };
    let nvcc = std::env::var("NVCC").unwrap_or_else(|_| "nvcc".into());
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    for k in KERNELS {
        let stem = PathBuf::from(k)
            .file_stem()
            .expect("kernel file name")
            .to_owned();
        let ptx = out_dir.join(stem).with_extension("ptx");
        let status = Command::new(&nvcc)
            .args([
                "--ptx",
                "-O3",
                "-std=c++17",
                &format!("--gpu-architecture=sm_{cap}"),
                "-o",
            ])
            .arg(&ptx)
            .arg(k)
            .status()
            .unwrap_or_else(|e| {
                panic!("cannot run {nvcc} to compile {k}: {e} (set NVCC, or put nvcc on the PATH)")
            });
        if !status.success() {
            panic!("{nvcc} failed to compile {k} ({status})");
        }
    }
}
