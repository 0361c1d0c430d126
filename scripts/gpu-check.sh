#!/usr/bin/env bash
# One-shot check of the CUDA build on a lent GPU machine (one NVIDIA H200 here; it reaches
# nothing outside, so it runs on what the run carries: this checkout and the binary made by
# scripts/build-cuda.sh). Writes one JSON file, $OUT/gpu-check.json, and the raw outputs
# beside it. Every step has its own time limit; the whole run stays under 8 minutes.
#
#   AGFF_BIN=target/cuda/release/agff-lens-cuda scripts/gpu-check.sh
#
# (AGFF_BIN may name the binary or, with `.xz` beside it only, its compressed copy.) As a
# device run (`run` with carry ["target/cuda/release/agff-lens-cuda.xz"]):
#   OUT=$OUT scripts/gpu-check.sh
#
# Steps:
#   1. the driver and which CUDA libraries the loader finds (cudarc dlopen()s libcuda.so.1,
#      libcublas.so.13 / libcublasLt.so.13 and libcurand.so.10 by name);
#   2. the tiny Qwen3-VL checkpoints (tests/fixtures/qwen3vl) embedded on cuda:0 and on the
#      CPU, image + text, every perspective: cosine per vector, f32 (goal >= 0.99999) and
#      bf16 on the GPU against f32 on the CPU (goal >= 0.999);
#   3. `bench model` at the 2B configuration (benches/qwen3vl-2b/config.json, random weights)
#      on cuda:0, f32 and bf16: a 448 px image, and a 12-megapixel photo at the embedder's
#      1,843,200-pixel cap (4000x3000 -> 1536x1152, 1,728 visual tokens), 1 and 1+K
#      perspectives;
#   4. `bench fusion` on cuda:0.
set -uo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
BIN="${AGFF_BIN:-target/cuda/release/agff-lens-cuda}"
OUT="${OUT:-/tmp/agff-gpu-check}"
mkdir -p "$OUT"
# The build's compressed copy (what a device run carries): unpack it beside the results.
if [[ ! -x "$BIN" && -f "$BIN.xz" ]]; then
  if command -v xz >/dev/null; then
    xz -dc "$BIN.xz" >"$OUT/agff-lens-cuda"
  else
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
      "$BIN.xz" "$OUT/agff-lens-cuda"
  fi
  chmod +x "$OUT/agff-lens-cuda"
  BIN="$OUT/agff-lens-cuda"
fi
RAW="$OUT/raw"
mkdir -p "$RAW"
export AGFF_LENS_CACHE="$OUT/cache"
started=$(date +%s)

# step NAME SECONDS CMD...: runs CMD with a time limit, stdout to raw/NAME.json (or .txt),
# stderr to raw/NAME.err, and records rc and seconds in raw/NAME.rc.
step() {
  local name="$1" limit="$2"
  shift 2
  local t0
  t0=$(date +%s%N)
  timeout "$limit" "$@" >"$RAW/$name.out" 2>"$RAW/$name.err"
  local rc=$?
  local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  printf '{"rc": %d, "ms": %d}\n' "$rc" "$ms" >"$RAW/$name.rc"
  echo "$name: rc $rc" >&2
  return 0
}

# 1. The machine.
step nvidia-smi 30 nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv,noheader
step libraries 60 bash -c 'ldconfig -p | grep -E "libcuda\.so|libcublas|libcublasLt|libcurand|libnvrtc" ;
  for d in /usr/local/cuda*/lib64 /usr/lib/x86_64-linux-gnu; do ls "$d" 2>/dev/null | grep -E "^lib(cuda|cublas|cublasLt|curand|nvrtc)\.so" | sed "s|^|$d/|"; done ;
  python3 -c "import nvidia, os; print(list(nvidia.__path__))" 2>/dev/null; true'
step ldd 30 ldd "$BIN"
step glibc 10 ldd --version

# If the CUDA libraries live in pip wheels on this machine, let the loader find them.
for d in $(python3 -c 'import nvidia, glob, os
for p in nvidia.__path__:
    for lib in glob.glob(os.path.join(p, "*", "lib")) + glob.glob(os.path.join(p, "cu*", "lib")):
        print(lib)' 2>/dev/null); do
  LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}"

# 2. Parity of the tiny checkpoints, CPU against cuda:0.
IMG=tests/fixtures/qwen3vl/images/chelsea.png
for model in tiny-a tiny-b; do
  dir="tests/fixtures/qwen3vl/$model"
  step "embed-$model-cpu-f32" 60 "$BIN" embed --model "$dir" --image "$IMG" --text "a cat on a sofa" --json --device cpu
  step "embed-$model-cuda-f32" 60 "$BIN" embed --model "$dir" --image "$IMG" --text "a cat on a sofa" --json --device cuda:0
  step "embed-$model-cuda-bf16" 60 "$BIN" embed --model "$dir" --image "$IMG" --text "a cat on a sofa" --json --device cuda:0 --dtype bf16
done

# 3. The 2B configuration on the GPU.
CFG=benches/qwen3vl-2b/config.json
for dt in f32 bf16; do
  step "bench-model-448-$dt" 90 "$BIN" bench model --config "$CFG" --device cuda:0 --dtype "$dt" --image-size 448 --reps 5 --json
  step "bench-model-12mp-$dt" 120 "$BIN" bench model --config "$CFG" --device cuda:0 --dtype "$dt" \
    --image-size 4000 --image-height 3000 --preprocess embedder --reps 3 --json
done

# 4. Fusion scoring on the GPU.
step bench-fusion 60 "$BIN" bench fusion --device cuda:0 --reps 7 --json

# One JSON with everything (python3 reads the raw outputs; without it, the raw files stay).
python3 - "$RAW" "$OUT/gpu-check.json" "$started" <<'PY' || echo "python3 missing or failed: see $RAW" >&2
import json, math, os, sys, time
raw, out, started = sys.argv[1], sys.argv[2], float(sys.argv[3])

def read(name, ext):
    try:
        with open(os.path.join(raw, f"{name}.{ext}")) as f:
            return f.read()
    except OSError:
        return None

def result(name):
    rc = read(name, "rc")
    text = read(name, "out")
    r = {"status": json.loads(rc) if rc else None}
    try:
        r["json"] = json.loads(text)
    except (TypeError, ValueError):
        r["text"] = (text or "")[-4000:]
    err = read(name, "err")
    if err:
        r["stderr_tail"] = err[-2000:]
    return r

def vectors(name):
    try:
        doc = json.loads(read(name, "out"))
    except (TypeError, ValueError):
        return None
    return [(it["kind"], p["name"], p["embedding"]) for it in doc["items"] for p in it["perspectives"]]

def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(y * y for y in b))
    return dot / (na * nb)

report = {"seconds": round(time.time() - started, 1), "machine": {}, "parity": {}, "bench": {}}
for name in ["nvidia-smi", "libraries", "ldd", "glibc"]:
    report["machine"][name] = result(name)
for model in ["tiny-a", "tiny-b"]:
    cpu = vectors(f"embed-{model}-cpu-f32")
    entry = {}
    for dt, goal in [("f32", 0.99999), ("bf16", 0.999)]:
        gpu = vectors(f"embed-{model}-cuda-{dt}")
        if cpu is None or gpu is None or len(cpu) != len(gpu):
            entry[dt] = {"error": result(f"embed-{model}-cuda-{dt}")}
            continue
        cos = {f"{k}/{n}": cosine(a, b) for (k, n, a), (_, _, b) in zip(cpu, gpu)}
        entry[dt] = {"min_cosine": min(cos.values()), "goal": goal,
                     "pass": min(cos.values()) >= goal, "cosines": cos}
    report["parity"][model] = entry
for name in ["bench-model-448-f32", "bench-model-448-bf16", "bench-model-12mp-f32",
             "bench-model-12mp-bf16", "bench-fusion"]:
    report["bench"][name] = result(name)
with open(out, "w") as f:
    json.dump(report, f, indent=1)
print(json.dumps({m: {d: v.get("min_cosine") for d, v in e.items()} for m, e in report["parity"].items()}))
PY
echo "wrote $OUT/gpu-check.json in $(( $(date +%s) - started )) s" >&2
