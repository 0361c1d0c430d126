#!/usr/bin/env python3
"""Time Hugging Face transformers' Qwen3-VL embedding forward on CPU (the Python baseline for
`agff-lens bench model`).

One embedding = the Qwen3-VL-Embedding prompt with one image, run through Qwen3VLModel (vision
tower + DeepStack + language model, no lm_head), last-token pooled and L2-normalised -- what
QwenLM/Qwen3-VL-Embedding's Qwen3VLEmbedder does per input.  Preprocessing (resize, patchify,
tokenise) is done once, outside the timed region, and reported separately.

Usage (in a venv made from benches/requirements.txt, e.g. .venv/bin/python):
    # tiny fixture folder (config + weights + processor files):
    benches/torch_qwen3vl.py --model tests/fixtures/qwen3vl/tiny-a --reps 5
    # the real Qwen3-VL-2B architecture with random float32 weights (~8.5 GB of RAM):
    benches/torch_qwen3vl.py --builtin-2b --reps 3 --threads 2
    # a real image instead of the synthetic one (it is resized to --image-size first):
    benches/torch_qwen3vl.py --builtin-2b --image tests/fixtures/qwen3vl/images/chelsea.png
    # write the built-in 2B config.json so that the Rust side can use the identical config:
    benches/torch_qwen3vl.py --write-config /tmp/qwen3vl-2b/config.json

Output: one JSON line, e.g.
    {"seconds_per_image_median": 1.23, "threads": 2, "config": "...", "image_size": [448, 448],
     "tokens": 217, ...}

A folder without *.safetensors weights gets random weights from its config.json.  With
--builtin-2b the token ids of the text part are placeholders (timing does not depend on them):
the count, 21 text tokens + the image tokens, is a hand count (Qwen's pre-tokenizer regex, common
English words as single tokens; not checked against the real tokenizer.json) for the embedding
prompt "<|im_start|>system\\nRepresent the user's input.<|im_end|>\\n<|im_start|>user\\n
<|vision_start|><|image_pad|><|vision_end|><|im_end|>\\n<|im_start|>assistant\\n".
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import unicodedata
from pathlib import Path

# Qwen/Qwen3-VL-2B-Instruct config.json (the Qwen3-VL-Embedding-2B backbone has the same
# architecture), in the layout the Hub file uses (written by transformers 4.57: rope_theta and
# rope_scaling inside text_config, vision model_type "qwen3_vl").  Sources for the values:
#   * huggingface.co/Qwen/Qwen3-VL-2B-Instruct/blob/main/config.json as quoted in public code
#     (e.g. a Qwen3-VL port's planning notes: text hidden 2048, 28 layers, 16 q / 8 kv heads,
#     head_dim 128, tied embeddings, rope_theta 5000000, interleaved mrope [24,20,20]; vision
#     hidden 1024, depth 24, 16 heads, intermediate 4096, out 2048, 2304 positions, DeepStack
#     [5,11,17], patch 16, temporal 2, merge 2),
#   * pytorch/torchtitan torchtitan/experiments/qwen3_vl/__init__.py, qwen3_vl_configs["2B"]
#     (same numbers plus text intermediate_size 6144 and vocab 151936),
#   * the Qwen3-VL-4B-Instruct config.json quoted in public code for the key layout and the
#     fixed keys (token ids 151643/151645/151652-151656, gelu_pytorch_tanh, max positions 262144).
QWEN3_VL_2B_CONFIG = {
    "architectures": ["Qwen3VLForConditionalGeneration"],
    "image_token_id": 151655,
    "model_type": "qwen3_vl",
    "text_config": {
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 151643,
        "dtype": "bfloat16",
        "eos_token_id": 151645,
        "head_dim": 128,
        "hidden_act": "silu",
        "hidden_size": 2048,
        "initializer_range": 0.02,
        "intermediate_size": 6144,
        "max_position_embeddings": 262144,
        "model_type": "qwen3_vl_text",
        "num_attention_heads": 16,
        "num_hidden_layers": 28,
        "num_key_value_heads": 8,
        "rms_norm_eps": 1e-06,
        "rope_scaling": {"mrope_interleaved": True, "mrope_section": [24, 20, 20], "rope_type": "default"},
        "rope_theta": 5000000,
        "tie_word_embeddings": True,
        "use_cache": True,
        "vocab_size": 151936,
    },
    "tie_word_embeddings": True,
    "transformers_version": "4.57.0.dev0",
    "video_token_id": 151656,
    "vision_config": {
        "deepstack_visual_indexes": [5, 11, 17],
        "depth": 24,
        "hidden_act": "gelu_pytorch_tanh",
        "hidden_size": 1024,
        "in_channels": 3,
        "initializer_range": 0.02,
        "intermediate_size": 4096,
        "model_type": "qwen3_vl",
        "num_heads": 16,
        "num_position_embeddings": 2304,
        "out_hidden_size": 2048,
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    },
    "vision_end_token_id": 151653,
    "vision_start_token_id": 151652,
}

# Qwen/Qwen3-VL-2B-Instruct preprocessor_config.json (image part).
QWEN3_VL_PREPROCESSOR = {
    "size": {"longest_edge": 16777216, "shortest_edge": 65536},
    "patch_size": 16,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
}

DEFAULT_INSTRUCTION = "Represent the user's input."
# Special ids of the real Qwen tokenizer (the builtin path only needs these and a count).
QWEN_IM_START, QWEN_IM_END, QWEN_NEWLINE = 151644, 151645, 198


def build_prompt(instruction: str, has_image: bool, text: str | None) -> str:
    """Qwen3-VL-Embedding prompt (see tests/fixtures/make_qwen3vl.py for the derivation)."""
    if instruction:
        instruction = instruction.strip()
        if instruction and not unicodedata.category(instruction[-1]).startswith("P"):
            instruction += "."
    instruction = instruction or DEFAULT_INSTRUCTION
    user = ("<|vision_start|><|image_pad|><|vision_end|>" if has_image else "") + (text or "")
    if not user:
        user = "NULL"
    return (
        f"<|im_start|>system\n{instruction}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def parse_size(s: str) -> tuple[int, int]:
    w, h = s.lower().split("x")
    return int(w), int(h)


def make_image(args):
    from PIL import Image
    import numpy as np

    w, h = parse_size(args.image_size)
    if args.image:
        im = Image.open(args.image).convert("RGB")
        if im.size != (w, h):
            im = im.resize((w, h), Image.Resampling.BICUBIC)
        return im
    # deterministic synthetic picture: smooth gradients plus a little noise
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = 127.5 + 127.5 * np.sin(xx / 23.0)
    g = 127.5 + 127.5 * np.cos(yy / 31.0)
    b = 255.0 * (xx + yy) / (w + h)
    arr = np.stack([r, g, b], -1) + rng.normal(0, 8, (h, w, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--model", type=Path, help="folder with config.json (+ weights and processor files)")
    src.add_argument("--builtin-2b", action="store_true", help="built-in Qwen3-VL-2B config, random weights")
    ap.add_argument("--write-config", type=Path, metavar="PATH", help="write the built-in 2B config.json and exit")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--image", type=Path, help="image file (default: a synthetic picture)")
    ap.add_argument("--image-size", default="448x448", help="WxH the image is given at (default 448x448)")
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions (default 3)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    ap.add_argument("--attn", default="sdpa", help="attn_implementation (default sdpa, transformers' default)")
    ap.add_argument("--instruction", default=DEFAULT_INSTRUCTION)
    ap.add_argument("--text", default=None, help="optional text after the image")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--paced", action="store_true",
                    help="wait for a line on stdin before each forward (warm-ups included) and print "
                         "each one's time to stderr as a JSON line (benches/paired_qwen3vl.py)")
    args = ap.parse_args()

    if args.write_config:
        args.write_config.parent.mkdir(parents=True, exist_ok=True)
        args.write_config.write_text(json.dumps(QWEN3_VL_2B_CONFIG, indent=2, sort_keys=True) + "\n")
        print(json.dumps({"wrote": str(args.write_config)}))
        if not (args.model or args.builtin_2b):
            return 0
    if not (args.model or args.builtin_2b):
        ap.error("give --model DIR or --builtin-2b (or --write-config PATH)")

    import torch
    import transformers
    from transformers import Qwen3VLConfig, Qwen3VLModel

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    image = make_image(args)

    # ---------------- model ----------------
    t0 = time.perf_counter()
    if args.builtin_2b:
        config = Qwen3VLConfig(**json.loads(json.dumps(QWEN3_VL_2B_CONFIG)))
        config_name = "builtin:Qwen/Qwen3-VL-2B-Instruct (random weights)"
        weights = "random"
    else:
        config = Qwen3VLConfig.from_pretrained(args.model)
        config_name = str(args.model)
        weights = "checkpoint" if any(args.model.glob("*.safetensors")) else "random"
    config._attn_implementation = args.attn
    config.text_config._attn_implementation = args.attn
    config.vision_config._attn_implementation = args.attn
    if weights == "checkpoint":
        model = Qwen3VLModel.from_pretrained(args.model, attn_implementation=args.attn, dtype=torch.float32)
    else:
        model = Qwen3VLModel(config)
    model = model.to(torch.float32).eval()
    load_s = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters())

    # ---------------- inputs (untimed) ----------------
    t0 = time.perf_counter()
    prompt = build_prompt(args.instruction, True, args.text)
    if args.model and (args.model / "tokenizer.json").exists():
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(args.model)
        inputs = processor(text=[prompt], images=[image], return_tensors="pt")
        image_processor = type(processor.image_processor).__name__
    else:
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor

        if args.text:
            print("note: --text is ignored without a tokenizer (builtin config)", file=sys.stderr)
        ip = Qwen2VLImageProcessor(**QWEN3_VL_PREPROCESSOR)
        feats = ip(images=[image], return_tensors="pt")
        n_img = int(feats["image_grid_thw"].prod()) // ip.merge_size**2
        c = config
        t = 1000  # placeholder text token id
        head = [QWEN_IM_START, t, QWEN_NEWLINE] + [t] * 6 + [QWEN_IM_END, QWEN_NEWLINE]
        head += [QWEN_IM_START, t, QWEN_NEWLINE, c.vision_start_token_id]
        tail = [c.vision_end_token_id, QWEN_IM_END, QWEN_NEWLINE, QWEN_IM_START, t, QWEN_NEWLINE]
        ids = head + [c.image_token_id] * n_img + tail
        input_ids = torch.tensor([ids])
        mm = (input_ids == c.image_token_id).to(torch.int32)
        inputs = {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "pixel_values": feats["pixel_values"],
            "image_grid_thw": feats["image_grid_thw"],
            "mm_token_type_ids": mm,
        }
        image_processor = "Qwen2VLImageProcessor"
    preprocess_s = time.perf_counter() - t0
    inputs = {k: v for k, v in inputs.items() if k in
              ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids")}
    tokens = int(inputs["input_ids"].shape[1])
    vision_tokens = int((inputs["input_ids"] == config.image_token_id).sum())

    # ---------------- timed forward ----------------
    @torch.inference_mode()
    def embed():
        out = model(**inputs, use_cache=False)
        h = out.last_hidden_state
        last = inputs["attention_mask"][0].nonzero().max()
        return torch.nn.functional.normalize(h[0, last], p=2, dim=-1)

    def timed():
        if args.paced:
            sys.stdin.readline()  # the driver's go-ahead; end of input runs on unpaced
        t0 = time.perf_counter()
        out = embed()
        seconds = time.perf_counter() - t0
        if args.paced:
            print(json.dumps({"paced": "torch", "seconds": seconds}), file=sys.stderr, flush=True)
        return out, seconds

    for _ in range(args.warmup):
        emb, _ = timed()
    times = []
    for _ in range(args.reps):
        emb, seconds = timed()
        times.append(seconds)

    w, h = image.size
    result = {
        "seconds_per_image_median": statistics.median(times),
        "threads": args.threads,
        "config": config_name,
        "image_size": [w, h],
        "tokens": tokens,
        "vision_tokens": vision_tokens,
        "image_grid_thw": inputs["image_grid_thw"][0].tolist(),
        "seconds_all": times,
        "warmup": args.warmup,
        "weights": weights,
        "params": n_params,
        "dtype": "float32",
        "attn_implementation": args.attn,
        "image_processor": image_processor,
        "preprocess_seconds": preprocess_s,
        "load_seconds": load_s,
        "embedding_dim": int(emb.numel()),
        "embedding_norm": float(emb.norm()),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu": platform.processor() or platform.machine(),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
