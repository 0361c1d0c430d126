#!/usr/bin/env python3
"""Paired timing of agff-lens (candle) against transformers (PyTorch) on the same Qwen3-VL
configuration, image by image.

This machine's speed drifts by up to 40 % within minutes (a shared virtual machine), so two
benchmarks run one after the other can disagree by more than the difference being
measured. This driver starts both, each with its model loaded and waiting
(`agff-lens bench model --paced`, `benches/torch_qwen3vl.py --paced`), then alternates
them: one embedding of one image by candle, then one by PyTorch, and so on, so each pair
of times was taken under the same conditions. It reports every pair's ratio and their
median. Both processes hold their weights at once (about 17 GB for the 2B configuration
in f32).

Usage (from the repository root, after `cargo build --release`):
    .venv/bin/python benches/paired_qwen3vl.py --pairs 8
    # options: --config benches/qwen3vl-2b/config.json --image-size 448 --threads 2
    #          --bin target/release/agff-lens --python .venv/bin/python

Output: one JSON line with "candle_seconds", "torch_seconds" (per pair), "ratios"
(candle/torch per pair), their medians, and candle's 1+K perspectives against one
("candle_multi_seconds", "multi_over_single" per rep and its median).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path


def start(cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, bufsize=1, env=env)


def step(proc: subprocess.Popen, name: str) -> float:
    """Lets `proc` run one embedding and returns its time in seconds."""
    proc.stdin.write("go\n")
    proc.stdin.flush()
    for line in proc.stderr:
        line = line.strip()
        if line.startswith('{"paced"'):
            return float(json.loads(line)["seconds"])
    raise SystemExit(f"{name} ended before reporting a time (exit {proc.wait()})")


def main() -> int:
    here = Path(__file__).resolve().parent
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=8, help="timed pairs (default 8)")
    ap.add_argument("--config", default=str(here / "qwen3vl-2b" / "config.json"))
    ap.add_argument("--image-size", type=int, default=448)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bin", default=str(here.parent / "target" / "release" / "agff-lens"))
    ap.add_argument("--python", default=sys.executable)
    args = ap.parse_args()
    if args.pairs < 1:
        ap.error("--pairs must be at least 1")
    if not Path(args.bin).is_file():
        ap.error(f"{args.bin} does not exist: run `cargo build --release` first")

    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    candle = start([args.bin, "bench", "model", "--config", args.config, "--image-size",
                    str(args.image_size), "--reps", str(args.pairs), "--paced", "--json"], env)
    torch = start([args.python, str(here / "torch_qwen3vl.py"), "--builtin-2b", "--image-size",
                   f"{args.image_size}x{args.image_size}", "--threads", str(args.threads),
                   "--reps", str(args.pairs), "--warmup", "1", "--paced"], env)
    try:
        # Warm-ups: candle's one perspective and 1+K, PyTorch's one.
        step(candle, "agff-lens")
        step(candle, "agff-lens")
        step(torch, "torch")
        candle_s, multi_s, torch_s = [], [], []
        for i in range(args.pairs):
            # candle runs one perspective then 1+K each rep; PyTorch goes right after
            # candle's single perspective on even pairs and right before it on odd ones,
            # so neither always follows the other.
            if i % 2 == 0:
                candle_s.append(step(candle, "agff-lens"))
                torch_s.append(step(torch, "torch"))
                multi_s.append(step(candle, "agff-lens"))
            else:
                torch_s.append(step(torch, "torch"))
                candle_s.append(step(candle, "agff-lens"))
                multi_s.append(step(candle, "agff-lens"))
        candle.stdin.close()
        torch.stdin.close()
        candle_report = json.loads(candle.stdout.read())
        torch_report = json.loads(torch.stdout.read())
    finally:
        for proc in (candle, torch):
            if proc.poll() is None and proc.stdin and not proc.stdin.closed:
                proc.stdin.close()
        candle.wait()
        torch.wait()
    ratios = [c / t for c, t in zip(candle_s, torch_s)]
    multi_ratios = [m / c for m, c in zip(multi_s, candle_s)]
    print(json.dumps({
        "config": args.config,
        "image_size": args.image_size,
        "threads": args.threads,
        "tokens": candle_report["tokens"],
        "torch_tokens": torch_report["tokens"],
        "candle_seconds": candle_s,
        "torch_seconds": torch_s,
        "ratios": ratios,
        "candle_median": statistics.median(candle_s),
        "torch_median": statistics.median(torch_s),
        "ratio_median": statistics.median(ratios),
        "candle_multi_seconds": multi_s,
        "multi_over_single": multi_ratios,
        "multi_over_single_median": statistics.median(multi_ratios),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
