"""The model registry: one folder per version, a ``current`` pointer, checksums.

A version folder holds ``scorer.onnx`` (the fused top-N graph), ``encoder.pt`` (the
PyTorch weights), ``items.parquet`` (item_id of each model index), ``scorer_int8.onnx``
when the int8 scorer passed its gate (``quantize``; the manifest's ``int8`` says),
``scorer_fp16.onnx`` when the half-precision scorer for the GPU passed its own (``fp16``) and
``manifest.json`` (config, data cut-off, metrics, package versions, parity, and the
sha256 of every file). It is written under a temporary name and renamed into place;
``current`` is a symlink swapped atomically, and only after the parity check passed.

The manifest seals the folder: ``manifest_sha256`` is the sha256 of the manifest's
canonical JSON (every other field), and with ``NIGHTREC_MODEL_KEY`` set, ``signature``
is an HMAC-SHA256 of the same bytes. ``verify`` accepts exactly the listed files.
"""

from __future__ import annotations

import hashlib
import hmac
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

from nightrec.config import ContractError, Fp16Config, Int8Config, safe_id

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SCORER = "scorer.onnx"
SCORER_INT8 = "scorer_int8.onnx"  # only where manifest["int8"]["used"] (``quantize``)
SCORER_FP16 = "scorer_fp16.onnx"  # only where manifest["fp16"]["used"]; served on CUDA
CURRENT = "current"
PARITY_ATOL = 1e-4
PACKAGES = ("torch", "onnx", "onnxruntime", "transformers", "duckdb", "polars", "numpy")
REQUIRED = (SCORER, "encoder.pt", "items.parquet")  # every version has these, listed
DIGEST = "manifest_sha256"  # sha256 of the canonical JSON of the manifest minus DIGEST, SIGNATURE
SIGNATURE = "signature"  # HMAC-SHA256 of the same bytes with NIGHTREC_MODEL_KEY, when set
KEY_ENV = "NIGHTREC_MODEL_KEY"
MIN_KEY_BYTES = 16


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


def scorer_inputs(
    history: np.ndarray,
    exclude: np.ndarray,
    bias: np.ndarray,
    k: int,
    strength: np.ndarray | None = None,
) -> dict:
    """The scorer's feed; ``strength`` None: no strength known (codes 0)."""
    return {
        "history": history,
        "exclude": exclude,
        "item_bias": bias,
        "k_like": np.zeros(k, dtype=np.float32),
        "strength": np.zeros_like(history) if strength is None else strength,
    }


def feed(sess: Any, inputs: dict) -> dict:
    """``inputs`` that ``sess`` takes: a scorer exported before strengths has no
    ``strength`` input (and reads none)."""
    names = {i.name for i in sess.get_inputs()}
    return {k: v for k, v in inputs.items() if k in names}


def export(
    model: Any,
    models_dir: Path,
    version: str,
    item_index: pl.DataFrame,
    config: dict,
    extra: dict,
    example_history: np.ndarray,
    int8: Int8Config = Int8Config(),
    held_out: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    example_strength: np.ndarray | None = None,
    fp16: Fp16Config = Fp16Config(),
) -> Path:
    """Export ``model`` (an Encoder) as a version folder and check ONNX/PyTorch parity.

    ``example_strength``: codes beside ``example_history`` (None: 0). ``int8`` enabled:
    the int8 scorer is measured on ``held_out`` (histories [n, L], targets [n],
    strengths [n, L]) and kept only within its tolerance (``quantize.build``); the
    manifest's ``int8`` records the decision either way. ``fp16``: the same for the
    half-precision scorer that CUDA serves (``quantize.build_fp16``; built where ``fp16``
    wants it: by default where ONNX Runtime has CUDA).
    """
    import torch

    from nightrec.model import TopNScorer
    from nightrec.ops import quiet_third_party

    quiet_third_party()

    safe_id(version, "model version")
    final = models_dir / version
    tmp = models_dir / f".{version}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    models_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp.mkdir()
    scorer = TopNScorer(model).eval()
    n = scorer.n_index
    bias = np.zeros(n, dtype=np.float32)
    bias[0] = -np.inf
    # export example: batch 2, 3 excluded, k 5; parity below uses other sizes
    if example_strength is None:
        example_strength = np.zeros_like(example_history)
    hist = torch.from_numpy(example_history[:2])
    ex = torch.from_numpy(example_history[:2, -3:].copy())
    codes = torch.from_numpy(example_strength[:2])
    started = time.perf_counter()
    dims = {
        "batch": torch.export.Dim("batch", min=1),
        "exclude": torch.export.Dim("exclude", min=1),
        "k": torch.export.Dim("k", min=1),
    }
    torch.onnx.export(
        scorer,
        (hist, ex, torch.from_numpy(bias), torch.zeros(5), codes),
        str(tmp / SCORER),
        dynamo=True,
        external_data=False,
        optimize=True,
        verbose=False,
        input_names=["history", "exclude", "item_bias", "k_like", "strength"],
        output_names=["top_scores", "top_index", "because_index"],
        dynamic_shapes={
            "history": {0: dims["batch"]},
            "exclude": {0: dims["batch"], 1: dims["exclude"]},
            "item_bias": None,
            "k_like": {0: dims["k"]},
            "strength": {0: dims["batch"]},
        },
    )
    parity = check_parity(scorer, tmp / SCORER, example_history, bias, example_strength)
    from nightrec import quantize

    width = scorer.item_matrix.shape[1]
    int8_record = quantize.build(tmp / SCORER, tmp / SCORER_INT8, int8, held_out, n, width)
    fp16_record = quantize.build_fp16(tmp / SCORER, tmp / SCORER_FP16, fp16, held_out, n)
    torch.save(model.state_dict(), tmp / "encoder.pt")
    item_index.write_parquet(tmp / "items.parquet")
    files = {p.name: sha256(p) for p in sorted(tmp.iterdir())}
    manifest = {
        "version": version,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": config,
        **extra,
        "parity": parity,
        "int8": int8_record,
        "fp16": fp16_record,
        "packages": _versions(),
        "files": files,
    }
    write_manifest(tmp, manifest)
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


def check_parity(
    scorer: Any,
    onnx_path: Path,
    histories: np.ndarray,
    bias: np.ndarray,
    strengths: np.ndarray | None = None,
) -> dict:
    """Run PyTorch and ONNX Runtime on a batch shaped unlike the export example; fail if apart."""
    import onnxruntime as ort
    import torch

    b = min(len(histories), 7)
    hist = np.ascontiguousarray(histories[:b])
    ex = np.ascontiguousarray(histories[:b, -4:])  # 4 excluded, unlike the 3 of the export
    codes = np.zeros_like(hist) if strengths is None else np.ascontiguousarray(strengths[:b])
    k = min(11, len(bias) - 1)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(None, scorer_inputs(hist, ex, bias, k, codes))
    with torch.no_grad():
        want = [
            t.numpy()
            for t in scorer(
                torch.from_numpy(hist),
                torch.from_numpy(ex),
                torch.from_numpy(bias),
                torch.zeros(k),
                torch.from_numpy(codes),
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


def scorer_file(version_dir: Path, manifest: dict, cpu: bool) -> Path:
    """The scorer to run: on the CPU the int8 one where its gate passed (manifest
    ``int8.used``: the gate measured it there), on another provider (CUDA) the fp16 one
    where its gate passed (``fp16.used``); else ``scorer.onnx``."""
    kind, name = ("int8", SCORER_INT8) if cpu else ("fp16", SCORER_FP16)
    record = manifest.get(kind) or {}
    if not (isinstance(record, dict) and record.get("used") is True):
        other = manifest.get("fp16" if cpu else "int8") or {}
        if isinstance(other, dict) and other.get("used") is True:
            log.info(
                "score: the %s scorer serves on %s only; here fp32 scores",
                "fp16" if cpu else "int8",
                "CUDA" if cpu else "the CPU",
            )
        return version_dir / SCORER
    if name not in manifest.get("files", {}):
        raise ContractError(
            f"model version {version_dir.name!r}: its manifest says the {kind} scorer is used "
            f"but does not list {name}"
        )
    return version_dir / name


def model_key() -> bytes | None:
    """The deployment's model signing key (``NIGHTREC_MODEL_KEY``), or None when unset."""
    raw = os.environ.get(KEY_ENV, "")
    if not raw:
        return None
    key = raw.encode()
    if len(key) < MIN_KEY_BYTES:
        raise ContractError(
            f"{KEY_ENV} is shorter than {MIN_KEY_BYTES} bytes: use a random secret "
            "(e.g. `openssl rand -hex 32`)"
        )
    return key


def _canonical(manifest: dict) -> bytes:
    """The bytes that the digest and the signature cover: every field but those two."""
    body = {k: v for k, v in manifest.items() if k not in (DIGEST, SIGNATURE)}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def seal(manifest: dict) -> dict:
    """``manifest`` with its digest, and its signature when ``NIGHTREC_MODEL_KEY`` is set."""
    body = _canonical(manifest)
    out = {k: v for k, v in manifest.items() if k not in (DIGEST, SIGNATURE)}
    out[DIGEST] = hashlib.sha256(body).hexdigest()
    key = model_key()
    if key is not None:
        out[SIGNATURE] = hmac.new(key, body, hashlib.sha256).hexdigest()
    return out


def write_manifest(version_dir: Path, manifest: dict) -> dict:
    """Seal ``manifest`` and write it as the folder's ``manifest.json``; returns it sealed."""
    sealed = seal(manifest)
    (version_dir / MANIFEST).write_text(json.dumps(sealed, indent=2, sort_keys=True))
    return sealed


def verify(version_dir: Path) -> dict:
    """Check a version folder against its sealed manifest; returns the manifest.

    Refused, with a message naming the version and what is wrong: a manifest that is
    missing, not JSON, unsealed or changed since export (its digest); with
    ``NIGHTREC_MODEL_KEY`` set, one that is unsigned or signed with another key (anyone who
    can write the folder can recompute a digest, only the key holder can sign); a
    ``version`` other than the folder's name; a file list without scorer.onnx, encoder.pt or
    items.parquet; a file in the folder that is not listed, or listed and missing; a
    listed file that is not a regular file or whose sha256 differs.
    """
    where = f"model version {version_dir.name!r} ({version_dir})"
    path = version_dir / MANIFEST
    if path.is_symlink() or not path.is_file():
        raise ContractError(f"{version_dir} is not a model version (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ContractError(f"{where}: {MANIFEST} is not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict):
        raise ContractError(f"{where}: {MANIFEST} is not a JSON object")
    body = _canonical(manifest)
    digest = manifest.get(DIGEST)
    if not isinstance(digest, str):
        raise ContractError(f"{where}: {MANIFEST} has no {DIGEST} (unsealed): re-export it")
    if not hmac.compare_digest(digest, hashlib.sha256(body).hexdigest()):
        raise ContractError(f"{where}: {MANIFEST} was changed after export ({DIGEST} mismatch)")
    key = model_key()
    if key is not None:
        signature = manifest.get(SIGNATURE)
        if not isinstance(signature, str):
            raise ContractError(f"{where}: {MANIFEST} is not signed, and {KEY_ENV} is set")
        if not hmac.compare_digest(signature, hmac.new(key, body, hashlib.sha256).hexdigest()):
            raise ContractError(
                f"{where}: bad {MANIFEST} signature (changed, or signed with another key "
                f"than {KEY_ENV})"
            )
    if manifest.get("version") != version_dir.name:
        raise ContractError(
            f"{where}: {MANIFEST} is for version {manifest.get('version')!r}, "
            "not for this folder (renamed or copied?)"
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise ContractError(f"{where}: {MANIFEST} has no valid 'files' list")
    unlisted = [name for name in REQUIRED if name not in files]
    if unlisted:
        raise ContractError(f"{where}: {MANIFEST} does not list {', '.join(unlisted)}")
    present = {p.name for p in version_dir.iterdir()} - {MANIFEST}
    if present - set(files):
        raise ContractError(f"{where}: files not in {MANIFEST}: {sorted(present - set(files))}")
    if set(files) - present:
        raise ContractError(f"{where}: listed files missing: {sorted(set(files) - present)}")
    for name, want in sorted(files.items()):
        file = version_dir / name
        if file.is_symlink() or not file.is_file():
            raise ContractError(f"{where}: {name} is not a regular file")
        if sha256(file) != want:
            raise ContractError(f"checksum mismatch for {file}: the model version is corrupt")
    return manifest


def promote(models_dir: Path, version: str, force: bool = False) -> bool:
    """Point ``current`` at ``version`` if its data is not older than the current model's.

    ``current`` only moves forward in data time (``as_of`` in the manifest): a backfill or
    a re-run of an old date trains and keeps its own version without replacing the live
    one, unless ``force`` (the ``promote`` Param). Returns whether ``current`` moved.
    The compare-and-swap holds a lock so two runs cannot interleave.
    """
    from nightrec.locks import file_lock

    safe_id(version, "model version")
    target = models_dir / version
    if not (target / MANIFEST).is_file():
        raise ContractError(f"cannot promote {version}: no such version in {models_dir}")
    link = models_dir / CURRENT
    with file_lock(models_dir / ".promote.lock"):
        new_as_of = verify(target).get("as_of", "")
        if link.exists() and not force:
            live = link.resolve()
            try:
                live_as_of = verify(live).get("as_of", "")
            except ContractError as exc:  # a corrupt live version must not block a good one
                log.warning("promote: the live version fails verification (%s); replacing", exc)
                live_as_of = ""
            if live.name != version and live_as_of > new_as_of:
                log.info(
                    "promote: %s (as_of %s) is older than the live %s (as_of %s); "
                    "kept, not promoted",
                    version,
                    new_as_of,
                    live.name,
                    live_as_of,
                )
                return False
        tmp = models_dir / f".{CURRENT}.{os.getpid()}"
        if tmp.is_symlink():
            tmp.unlink()
        tmp.symlink_to(version, target_is_directory=True)
        os.replace(tmp, link)
    log.info("promote: models/current -> %s (as_of %s)%s", version, new_as_of, " (forced)" * force)
    return True


def load_version(models_dir: Path, version: str | None = None) -> tuple[Path, dict]:
    """A version folder (``current`` when None) and its manifest, verified by checksum."""
    if version is None:
        return load_current(models_dir)
    target = models_dir / safe_id(version, "model version")
    if not target.is_dir():
        raise ContractError(f"no model version {version} in {models_dir}")
    return target, verify(target)


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
