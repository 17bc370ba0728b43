"""The text encoder on ONNX Runtime: the same vectors as PyTorch, a checked export, a
drift gate that refuses what drifts."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from conftest import AS_OF, write_csv
from test_ingest import CATALOG, ITEMS_HEADER

from nightrec import embed, snapshot
from nightrec.config import ContractError, EmbedConfig, Settings
from nightrec.ingest import ingest
from nightrec.registry import sha256

TITLES = [
    "Hydrating Face Serum with Hyaluronic Acid",
    "Argan Repair Shampoo",
    "x",
    "Matte Velvet Lipstick, long lasting, 12 shades " * 8,  # longer than max_length
]


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    settings = Settings.from_env(home=tmp_path_factory.mktemp("home"))
    model_dir = settings.text_model_path()
    key = embed.encoder_fingerprint(model_dir)
    path = embed.export_onnx(settings, model_dir, key, quantize=False)
    cfg = EmbedConfig()
    base = embed.TextEncoder(model_dir, cfg)
    return settings, base, embed.OnnxTextEncoder(base, path)


def test_onnx_vectors_equal_pytorch_vectors(encoders) -> None:
    _, torch_enc, onnx_enc = encoders
    a, b = torch_enc.encode(TITLES), onnx_enc.encode(TITLES)
    assert a.shape == b.shape == (len(TITLES), 384)
    assert np.allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    assert (a * b).sum(1).min() > 0.9999
    assert not np.allclose(b[0], b[1], atol=1e-2)  # different texts, different vectors


def test_export_is_checked_by_checksum_and_redone_when_changed(encoders) -> None:
    settings, torch_enc, _ = encoders
    model_dir = settings.text_model_path()
    key = embed.encoder_fingerprint(model_dir)
    path = embed.export_onnx(settings, model_dir, key, quantize=False)
    stamp = path.stat().st_mtime_ns
    assert embed.export_onnx(settings, model_dir, key, quantize=False) == path
    assert path.stat().st_mtime_ns == stamp  # verified, reused
    with path.open("r+b") as fh:  # a flipped byte: exported again, not loaded
        fh.seek(100)
        byte = fh.read(1)
        fh.seek(100)
        fh.write(bytes([byte[0] ^ 0xFF]))
    embed.export_onnx(settings, model_dir, key, quantize=False)
    assert path.with_suffix(".sha256").read_text().strip() == sha256(path)
    assert path.stat().st_mtime_ns != stamp


def test_embed_step_on_onnx_records_its_runtime_and_matches_torch(tmp_path) -> None:
    runs = {}
    for runtime in ("onnx", "torch"):
        settings = Settings.from_env(home=tmp_path / runtime)
        write_csv(settings.landing / "items" / "items-1.csv", ITEMS_HEADER, CATALOG)
        ingest(settings)
        snap = snapshot.snapshot(settings, AS_OF)
        assert embed.embed(settings, snap, EmbedConfig(runtime=runtime))["encoded"] == 5
        meta = json.loads((snap / "embed.json").read_text())
        runs[runtime] = (np.load(snap / embed.EMBEDDINGS_FILE), meta)
    onnx_meta = runs["onnx"][1]
    assert onnx_meta["runtime"]["runtime"] == "onnx"
    assert onnx_meta["runtime"]["drift_gate"]["min_cosine"] >= EmbedConfig().min_cosine
    assert runs["torch"][1]["runtime"]["runtime"] == "torch"
    assert onnx_meta["encoder"] == runs["torch"][1]["encoder"]  # the same cache key
    assert (runs["onnx"][0] * runs["torch"][0]).sum(1).min() > 0.9999


def test_drift_gate_refuses_an_encoder_that_drifts(encoders) -> None:
    settings, _, _ = encoders
    model_dir = settings.text_model_path()
    key = embed.encoder_fingerprint(model_dir)
    # int8 moves MiniLM's vectors far more than the gate allows (cosine ~0.9-0.96)
    strict = EmbedConfig(quantize=True)
    with pytest.raises(ContractError, match="drifts from PyTorch"):
        embed.pick_encoder(settings, model_dir, key, strict, TITLES)
    # a gate loose enough lets it through, under its own cache key
    loose = dataclasses.replace(strict, min_cosine=0.5)
    enc, cache_key, info = embed.pick_encoder(settings, model_dir, key, loose, TITLES)
    assert cache_key == key + "-int8" and info["runtime"] == "onnx-int8"
    assert info["drift_gate"]["min_cosine"] < EmbedConfig().min_cosine
    assert info["drift_gate"]["threshold"] == 0.5  # the decision's bound, recorded with it
