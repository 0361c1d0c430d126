#!/usr/bin/env bash
# Build `agff-lens --features cuda` on a machine WITHOUT a GPU or a CUDA install, so that the
# binary needs no CUDA library at link time and loads the driver, cuBLAS and cuRAND at run time.
#
#   scripts/build-cuda.sh            # CUDA 13.0 wheels, sm_90a (H100/H200), target/cuda
#   scripts/build-cuda.sh test --no-fail-fast   # the tests with the cuda feature on
#
# Knobs (environment):
#   AGFF_CUDA_VENV      venv holding the NVIDIA wheels        (default /tmp/agff-cuda-venv)
#   AGFF_CUDA_VERSION   13.0 | 13.4: which pinned wheel set   (default 13.0, see below)
#   AGFF_CUDA_WHEELS    a folder of already downloaded wheels, used with --no-index
#   CUDA_COMPUTE_CAP    GPU architecture for nvcc             (default 90 = sm_90a)
#   CARGO_TARGET_DIR    cargo's target folder                 (default target/cuda)
#
# Paths like "cudarc build.rs:93" below are in ~/.cargo/registry/src/*/cudarc-0.19.10 etc.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

VENV="${AGFF_CUDA_VENV:-/tmp/agff-cuda-venv}"
CUDA_SET="${AGFF_CUDA_VERSION:-13.0}"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/cuda}"

# ---------------------------------------------------------------------------------------------
# 1. nvcc and headers from PyPI.
# Only CUDA 13 wheels carry the nvcc driver program: nvidia-cuda-nvcc-cu12 (12.4.131, 12.6.85,
# 12.8.93, 12.9.86 checked) ships ptxas and libnvvm only. The cu13 wheels all unpack into one
# tree, site-packages/nvidia/cu13/{bin,include,include/cccl,lib,nvvm}, which is what nvcc.profile
# expects (-I$(TOP)/include, -isystem $(TOP)/include/cccl), so no extra include flags are needed.
#   nvcc     bin/nvcc, ptxas, cudafe++, fatbinary, nvlink
#   nvvm     nvvm/bin/cicc (nvcc's front end) + libdevice
#   crt      include/crt/*.h (host_defines.h, ...), included by cuda_runtime.h
#   runtime  cuda.h, cuda_runtime.h, cuda_fp8.h, mma.h ... and lib/libcudart_static.a (step 3)
#   cccl     cub/, thrust/, cuda/std (candle-kernels src/moe/moe_utils.cuh) and nv/target
# The version decides the PTX ISA of candle's kernels (cudaforge builds them with --ptx and
# candle loads them with cuModuleLoadData, candle-core src/cuda_backend/device.rs:330/350, i.e.
# the DRIVER JIT-compiles them): nvcc 13.0 writes `.version 9.0` (needs a driver >= 580, i.e.
# CUDA 13.0), nvcc 13.4 writes `.version 9.4` (needs a CUDA 13.4 driver). Hence 13.0 by default.
# cudarc 0.19.10 accepts 13.0..13.4 only (cudarc build.rs:11-31, :178-183): 13.5 is refused.
# --no-deps: nvidia-cuda-nvcc declares nvvm/runtime/crt unpinned and would pull the newest.
case "$CUDA_SET" in
  13.0) WHEELS=(nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88
                nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85) ;;
  13.4) WHEELS=(nvidia-cuda-nvcc==13.4.92 nvidia-nvvm==13.4.92 nvidia-cuda-crt==13.4.92
                nvidia-cuda-runtime==13.4.92 nvidia-cuda-cccl==13.3.5.0.6) ;;
  *) echo "AGFF_CUDA_VERSION must be 13.0 or 13.4, not $CUDA_SET" >&2; exit 2 ;;
esac

if [[ ! -x "$VENV/bin/python" ]]; then
  python3 -m venv "$VENV"
fi
pip_src=()
if [[ -n "${AGFF_CUDA_WHEELS:-}" ]]; then
  pip_src=(--no-index --find-links "$AGFF_CUDA_WHEELS")
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
  "${pip_src[@]}" "${WHEELS[@]}"

CU="$("$VENV/bin/python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')"
[[ -x "$CU/bin/nvcc" && -x "$CU/nvvm/bin/cicc" && -f "$CU/include/cuda_runtime.h" ]] || {
  echo "incomplete CUDA wheel tree at $CU" >&2; exit 1; }

# cudarc's build script runs plain `nvcc --version` from PATH to pick its bindings
# (cuda-version-from-build-system, candle-core Cargo.toml:185; cudarc build.rs:158-183).
export PATH="$CU/bin:$PATH"
# cudaforge (candle-kernels' build helper) looks for NVCC first, then PATH, then CUDA_HOME
# (cudaforge-0.1.6 src/toolkit.rs:108-136); CUDA_COMPUTE_CAP skips nvidia-smi
# (src/compute_cap.rs:217-224) and "90" becomes sm_90a (src/compute_cap.rs:36-80).
export NVCC="$CU/bin/nvcc"
# Only used by cudarc for link search paths / header lookups (build.rs:3-9, :335-402, :493),
# which the patched cudarc below no longer calls; set for any other tool that looks.
export CUDA_HOME="$CU" CUDA_PATH="$CU"
nvcc --version | sed -n 4p

# ---------------------------------------------------------------------------------------------
# 2. cudarc: dynamic LOADING instead of the dynamic LINKING candle-core asks for.
# candle-core 0.11.1 enables cudarc's "dynamic-linking" (Cargo.toml:174-189), whose build script
# emits rustc-link-lib=dylib=cuda, nvrtc, curand, cublas, cublasLt (cudarc build.rs:150-151,
# :186-249). No feature or env var undoes that: enabling "dynamic-loading" as well panics
# (build.rs:93-94), "fallback-dynamic-loading" only acts when no other mode is on (build.rs:96-104),
# and the build script reads no switch (only CUDARC_CUDA_VERSION and the CUDA_* paths).
# The Rust sources only test cfg(feature = "dynamic-loading") (e.g. src/driver/sys/mod.rs:10,
# :8439-8453; libloading in culib(), :16879), never "dynamic-linking". So a copy of cudarc whose
# build.rs always emits the dynamic-loading cfg and skips dynamic_linking() gives a binary that
# dlopen()s the libraries on first use.
# The copy replaces crates.io's through a `paths` override given with --config: unlike [patch],
# it leaves Cargo.lock untouched (checked with `cargo tree --locked`), and no project file changes.
CUDARC_SRC="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.10 2>/dev/null | head -1 || true)"
if [[ -z "$CUDARC_SRC" ]]; then
  cargo fetch --locked
  CUDARC_SRC="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.10 | head -1)"
fi
CUDARC_PATCHED="$VENV/src/cudarc-0.19.10"
# Made once: a fresh copy every run would change mtimes and rebuild all of candle.
if [[ ! -f "$CUDARC_PATCHED/.agff-dynamic-loading" ]]; then
  rm -rf "$CUDARC_PATCHED"
  mkdir -p "$(dirname "$CUDARC_PATCHED")"
  cp -Rp "$CUDARC_SRC" "$CUDARC_PATCHED"
  "$VENV/bin/python" - "$CUDARC_PATCHED/build.rs" <<'PY'
import pathlib, sys
p = pathlib.Path(sys.argv[1])
s = p.read_text()
edits = [
    # build.rs:96-104: emit the dynamic-loading cfg unless static linking was asked for.
    ('''    #[cfg(all(
        feature = "fallback-dynamic-loading",
        not(any(
            feature = "dynamic-loading",
            feature = "dynamic-linking",
            feature = "static-linking"
        ))
    ))]
    println!("cargo:rustc-cfg=feature=\\"dynamic-loading\\"");''',
     '''    // agff-lens: load the CUDA libraries at run time even when `dynamic-linking` is on.
    #[cfg(not(any(feature = "dynamic-loading", feature = "static-linking")))]
    println!("cargo:rustc-cfg=feature=\\"dynamic-loading\\"");'''),
    # build.rs:150-151: no rustc-link-lib=dylib=cuda/nvrtc/curand/cublas/cublasLt.
    ('''    #[cfg(feature = "dynamic-linking")]
    dynamic_linking(major, minor);''',
     '''    // agff-lens: `dynamic-linking` links nothing (the libraries are dlopen()ed).'''),
]
for old, new in edits:
    if s.count(old) != 1:
        sys.exit(f"cudarc build.rs is not the expected 0.19.10 text near: {old[:60]!r}")
    s = s.replace(old, new)
p.write_text(s)
PY
  touch "$CUDARC_PATCHED/.agff-dynamic-loading"
fi

# ---------------------------------------------------------------------------------------------
# 3. cudart: linked statically.
# candle-kernels' build.rs compiles the MoE/GGUF kernels into libmoe.a (nvcc -c, cudaforge
# src/builder.rs:407-440, :494-499) and then emits rustc-link-lib=moe, dylib=cudart and stdc++
# (candle-kernels build.rs:75-81) with no search path. candle-core calls into libmoe
# (src/quantized/fast_mmq.rs:88, fast_mmvq.rs:100), so its objects are linked, and they need
# __cudaRegisterFatBinary, __cudaLaunchKernel_ptsz, __cudaPush/PopCallConfiguration... from cudart.
# rustc passes `-Wl,-Bdynamic -lcudart`; GNU ld then takes libcudart.so, or failing that
# libcudart.a, from each -L folder in turn. A folder holding only libcudart.a -> the wheel's
# libcudart_static.a therefore links cudart into the binary: no libcudart.so.13 NEEDED, nothing
# to ship, and -ldl/-lpthread/-lrt are part of glibc >= 2.34. (cudart still dlopen()s
# libcuda.so.1 itself, and only when a MoE/GGUF kernel is first launched.)
CUDART_DIR="$VENV/cudart-static"
mkdir -p "$CUDART_DIR"
ln -sfn "$CU/lib/libcudart_static.a" "$CUDART_DIR/libcudart.a"
export RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }-L native=$CUDART_DIR"

# ---------------------------------------------------------------------------------------------
# 4. Build. --locked: the override must not (and does not) touch Cargo.lock.
# With arguments, run that cargo command in the same set-up instead (e.g. `test
# --no-fail-fast`: the test suite with the cuda feature on, in the dev profile).
if [[ $# -gt 0 ]]; then
  cargo "$@" --locked --features cuda --config "paths=[\"$CUDARC_PATCHED\"]"
  exit $?
fi
cargo build --release --locked --features cuda --config "paths=[\"$CUDARC_PATCHED\"]"

# ---------------------------------------------------------------------------------------------
# 5. Checks and a stripped, compressed copy for a device run.
BIN="$CARGO_TARGET_DIR/release/agff-lens"
OUT="$CARGO_TARGET_DIR/release/agff-lens-cuda"
cudarc_out="$(ls -t "$CARGO_TARGET_DIR"/release/build/cudarc-*/output | head -1)"
echo "cudarc build script ($cudarc_out):"
grep -E 'rustc-cfg|rustc-link-lib|CUDA_(MAJOR|MINOR)_VERSION' "$cudarc_out" | sed 's/^/  /'
if grep -q 'rustc-link-lib' "$cudarc_out" || ! grep -q 'feature="dynamic-loading"' "$cudarc_out"; then
  echo "cudarc is NOT in dynamic-loading mode: the paths override was not used" >&2; exit 1
fi

# Symbols and debug info stripped (108 MB when measured: 38 MB of code, 33 MB of sm_90a
# fatbinary for the MoE/GGUF kernels, 24 MB of read-only data, mostly the PTX of candle's
# kernels), then xz: about 21 MB, which fits the 64 MiB a device run carries.
strip --strip-all -o "$OUT" "$BIN"
xz -T2 -6 -f -k "$OUT"
size_of() { stat -c %s "$1"; }
echo "binary:   $BIN  $(size_of "$BIN") bytes"
echo "stripped: $OUT  $(size_of "$OUT") bytes"
echo "xz:       $OUT.xz  $(size_of "$OUT.xz") bytes ($(( $(size_of "$OUT.xz") / 1048576 )) MiB; a device run carries 64 MiB in all)"

echo "NEEDED:"
readelf -d "$OUT" | awk '/NEEDED/ {print "  " $NF}'
if readelf -d "$OUT" | grep -E 'NEEDED.*(libcuda|libcudart|libcublas|libcurand|libnvrtc)'; then
  echo "a CUDA library is still a link-time dependency" >&2; exit 1
fi
echo "ldd:"
ldd "$OUT" | sed 's/^/ /'
echo "newest symbol versions required (the GPU machine's glibc/libstdc++ must have them):"
objdump -T "$OUT" | grep -oE '(GLIBC|GLIBCXX|CXXABI)_[0-9.]+' | sort -u -V |
  awk -F_ '{last[$1]=$0} END {for (k in last) print "  " last[k]}'
echo "run time: libcuda.so.1 (driver, CUDA ${CUDA_SET} or newer), libcublas.so.13 (+libcublasLt.so.13)"
echo "and libcurand.so.10 on the loader path (LD_LIBRARY_PATH or ld.so.cache); no libcudart needed."
