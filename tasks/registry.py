"""The model registry: one folder per version, a ``current`` pointer, checksums.

A version folder holds ``scorer.onnx`` (the fused top-N graph), ``encoder.pt`` (the
PyTorch weights), ``items.parquet`` (item_id of each model index) and
``manifest.json`` (config, data cut-off, metrics, package versions, parity, and the
sha256 of every file). It is written under a temporary name and renamed into place;
``current`` is a symlink swapped atomically, and only after the parity check passed.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from nightrec.config import ContractError, safe_id

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SCORER = "scorer.onnx"
CURRENT = "current"
PARITY_ATOL = 1e-4
PACKAGES = ("torch", "onnx", "onnxruntime", "transformers", "duckdb", "polars", "numpy")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def scorer_inputs(history: np.ndarray, exclude: np.ndarray, bias: np.ndarray, k: int) -> dict:
    return {
        "history": history,
        "exclude": exclude,
        "item_bias": bias,
        "k_like": np.zeros(k, dtype=np.float32),
    }


def export(
    model: Any,
    models_dir: Path,
    version: str,
    item_index: pl.DataFrame,
    config: dict,
    extra: dict,
    example_history: np.ndarray,
) -> Path:
    """Export ``model`` (an Encoder) as a version folder and check ONNX/PyTorch parity."""
    import torch

    from nightrec.model import TopNScorer

    safe_id(version, "model version")
    final = models_dir / version
    tmp = models_dir / f".{version}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    scorer = TopNScorer(model).eval()
    n = scorer.item_matrix.shape[0]
    bias = np.zeros(n, dtype=np.float32)
    bias[0] = -np.inf
    # export example: batch 2, 3 excluded, k 5; parity below uses other sizes
    hist = torch.from_numpy(example_history[:2])
    ex = torch.from_numpy(example_history[:2, -3:].copy())
    started = time.perf_counter()
    dims = {
        "batch": torch.export.Dim("batch", min=1),
        "exclude": torch.export.Dim("exclude", min=1),
        "k": torch.export.Dim("k", min=1),
    }
    torch.onnx.export(
        scorer,
        (hist, ex, torch.from_numpy(bias), torch.zeros(5)),
        str(tmp / SCORER),
        dynamo=True,
        external_data=False,
        optimize=True,
        verbose=False,
        input_names=["history", "exclude", "item_bias", "k_like"],
        output_names=["top_scores", "top_index", "because_index"],
        dynamic_shapes={
            "history": {0: dims["batch"]},
            "exclude": {0: dims["batch"], 1: dims["exclude"]},
            "item_bias": None,
            "k_like": {0: dims["k"]},
        },
    )
    parity = check_parity(scorer, tmp / SCORER, example_history, bias)
    torch.save(model.state_dict(), tmp / "encoder.pt")
    item_index.write_parquet(tmp / "items.parquet")
    files = {p.name: sha256(p) for p in sorted(tmp.iterdir())}
    manifest = {
        "version": version,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": config,
        **extra,
        "parity": parity,
        "packages": _versions(),
        "files": files,
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    log.info(
        "export: %s (%d items) in %.1fs, parity max abs diff %.2e",
        version,
        n - 1,
        time.perf_counter() - started,
        parity["max_abs_diff"],
    )
    return final


def check_parity(scorer: Any, onnx_path: Path, histories: np.ndarray, bias: np.ndarray) -> dict:
    """Run PyTorch and ONNX Runtime on a batch shaped unlike the export example; fail if apart."""
    import onnxruntime as ort
    import torch

    b = min(len(histories), 7)
    hist = np.ascontiguousarray(histories[:b])
    ex = np.ascontiguousarray(histories[:b, -4:])  # 4 excluded, unlike the 3 of the export
    k = min(11, len(bias) - 1)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(None, scorer_inputs(hist, ex, bias, k))
    with torch.no_grad():
        want = [
            t.numpy()
            for t in scorer(
                torch.from_numpy(hist), torch.from_numpy(ex), torch.from_numpy(bias), torch.zeros(k)
            )
        ]
    finite = np.isfinite(want[0])
    diff = float(np.abs(got[0][finite] - want[0][finite]).max(initial=0.0))
    same_finite = bool((np.isfinite(got[0]) == finite).all())
    # ids may swap only where scores tie within tolerance, or among masked (-inf) entries,
    # whose order is arbitrary (a small catalog with k > unmasked items has several)
    with np.errstate(invalid="ignore"):
        close = np.abs(got[0] - want[0]) <= PARITY_ATOL
    ids_ok = bool(np.all((got[1] == want[1]) | close | ~finite))
    if diff > PARITY_ATOL or not same_finite or not ids_ok:
        raise RuntimeError(
            f"ONNX/PyTorch parity failed for {onnx_path}: max abs diff {diff:.2e} "
            f"(tolerance {PARITY_ATOL}), masked entries equal: {same_finite}, ids equal: {ids_ok}"
        )
    return {"batch": b, "k": k, "max_abs_diff": diff, "tolerance": PARITY_ATOL}


def verify(version_dir: Path) -> dict:
    """Read a version's manifest and check every file's sha256; returns the manifest."""
    path = version_dir / MANIFEST
    if not path.is_file():
        raise ContractError(f"{version_dir} is not a model version (no {MANIFEST})")
    manifest = json.loads(path.read_text())
    for name, digest in manifest["files"].items():
        file = version_dir / name
        if not file.is_file() or sha256(file) != digest:
            raise ContractError(f"checksum mismatch for {file}: the model version is corrupt")
    return manifest


def promote(models_dir: Path, version: str) -> None:
    """Point ``current`` at ``version`` with an atomic symlink swap."""
    safe_id(version, "model version")
    if not (models_dir / version / MANIFEST).is_file():
        raise ContractError(f"cannot promote {version}: no such version in {models_dir}")
    link = models_dir / CURRENT
    tmp = models_dir / f".{CURRENT}.{os.getpid()}"
    if tmp.is_symlink():
        tmp.unlink()
    tmp.symlink_to(version, target_is_directory=True)
    os.replace(tmp, link)


def load_current(models_dir: Path) -> tuple[Path, dict]:
    """The promoted version folder and its manifest, verified by checksum."""
    link = models_dir / CURRENT
    if not link.exists():
        raise ContractError(f"no promoted model in {models_dir}: run `nightrec train` first")
    target = link.resolve()
    return target, verify(target)


def current(models_dir: Path) -> Path:
    """The promoted version folder, verified by checksum."""
    return load_current(models_dir)[0]
