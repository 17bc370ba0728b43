"""The text encoder on ONNX Runtime and in bf16: the same vectors as PyTorch fp32 (within
the drift gate), a checked export, a drift gate that refuses what drifts."""

from __future__ import annotations

import dataclasses
import json
import logging

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


def test_the_int8_export_keeps_onnx_runtimes_quantizer_out_of_the_log(
    encoders, tmp_path, caplog
) -> None:
    """ONNX Runtime's quantizer logs a line per tensor on the root logger; the export
    keeps them at DEBUG under nightrec.embed, and the root logger as it was."""
    settings, torch_enc, _ = encoders
    here = Settings.from_env(home=tmp_path / "home")
    model_dir = settings.text_model_path()
    key = embed.encoder_fingerprint(model_dir)
    filters = list(logging.getLogger().filters)
    with caplog.at_level(logging.DEBUG):
        path = embed.export_onnx(here, model_dir, key, quantize=True, torch_enc=torch_enc)
    assert path.name.endswith("-int8.onnx") and path.is_file()
    from_root = [r for r in caplog.records if r.name == "root"]
    assert from_root == []
    demoted = [r for r in caplog.records if r.getMessage().startswith("onnxruntime quantizer:")]
    assert demoted and all(
        r.name == "nightrec.embed" and r.levelno == logging.DEBUG for r in demoted
    )
    assert logging.getLogger().filters == filters
    with caplog.at_level(logging.DEBUG):
        logging.info("after the export")  # the root logger logs again
    assert [r.getMessage() for r in caplog.records if r.name == "root"] == ["after the export"]


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


def test_embed_step_on_onnx_records_its_runtime_and_matches_torch(tmp_path, monkeypatch) -> None:
    runs = {}
    configs = {
        "onnx": EmbedConfig(runtime="onnx", precision="fp32"),
        "torch": EmbedConfig(runtime="torch", precision="fp32"),
        "auto": None,  # the step's default: bf16 where this CPU multiplies it natively
        "bf16": EmbedConfig(precision="bf16"),
        "env-fp32": None,  # NIGHTREC_TEXT_PRECISION=fp32: the default turned off
    }
    for name, cfg in configs.items():
        if name == "env-fp32":
            monkeypatch.setenv("NIGHTREC_TEXT_PRECISION", "fp32")
        settings = Settings.from_env(home=tmp_path / name)
        write_csv(settings.landing / "items" / "items-1.csv", ITEMS_HEADER, CATALOG)
        ingest(settings)
        snap = snapshot.snapshot(settings, AS_OF)
        assert embed.embed(settings, snap, cfg)["encoded"] == 5
        meta = json.loads((snap / "embed.json").read_text())
        runs[name] = (np.load(snap / embed.EMBEDDINGS_FILE), meta)
    onnx_meta = runs["onnx"][1]
    assert onnx_meta["runtime"]["runtime"] == "onnx"
    assert onnx_meta["runtime"]["drift_gate"]["min_cosine"] >= EmbedConfig().min_cosine
    assert runs["torch"][1]["runtime"]["runtime"] == "torch"
    assert runs["bf16"][1]["runtime"]["runtime"] == "torch-bf16"
    auto = runs["auto"][1]["runtime"]["runtime"]
    assert auto == ("torch-bf16" if embed.auto_bf16(embed.text_device()) else "onnx")
    assert runs["env-fp32"][1]["runtime"]["runtime"] == "onnx"
    assert np.array_equal(runs["env-fp32"][0], runs["onnx"][0])
    # every runtime within the gate keeps the encoder's cache key
    assert len({meta["encoder"] for _, meta in runs.values()}) == 1
    assert (runs["onnx"][0] * runs["torch"][0]).sum(1).min() > 0.9999
    bf16_cos = (runs["bf16"][0] * runs["torch"][0]).sum(1)
    assert bf16_cos.min() >= EmbedConfig().min_cosine
    assert runs["bf16"][1]["runtime"]["drift_gate"]["min_cosine"] >= EmbedConfig().min_cosine
    assert not np.array_equal(runs["bf16"][0], runs["torch"][0])  # it did run in bf16


def test_bf16_encoder_is_within_the_gate_of_fp32_and_leaves_fp32_as_it_was(encoders) -> None:
    _, torch_enc, _ = encoders
    before = torch_enc.encode(TITLES)
    bf16 = embed.Bf16TextEncoder(torch_enc)
    assert {p.dtype for p in bf16.model.parameters()} == {torch_enc.torch.bfloat16}
    assert {p.dtype for p in torch_enc.model.parameters()} == {torch_enc.torch.float32}
    got = bf16.encode(TITLES)
    assert got.dtype == np.float32 and got.shape == before.shape
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)  # normalised in fp32
    cos = (got * before).sum(1)
    assert cos.min() >= EmbedConfig().min_cosine and cos.min() < 1.0 - 1e-7
    assert np.array_equal(torch_enc.encode(TITLES), before)  # the fp32 weights untouched


def test_bf16_is_used_only_through_the_drift_gate(encoders) -> None:
    settings, _, _ = encoders
    model_dir = settings.text_model_path()
    key = embed.encoder_fingerprint(model_dir)
    enc, cache_key, info = embed.pick_encoder(
        settings, model_dir, key, EmbedConfig(precision="bf16"), TITLES
    )
    assert isinstance(enc, embed.Bf16TextEncoder) and cache_key == key
    assert info["runtime"] == "torch-bf16" and info["drift_gate"]["texts"] == len(TITLES)
    # a gate bf16 cannot pass: asked for, refused with the measure; on auto, fp32 encodes
    strict = EmbedConfig(precision="bf16", min_cosine=1.0)
    with pytest.raises(ContractError, match="bf16 text encoder drifts"):
        embed.pick_encoder(settings, model_dir, key, strict, TITLES)
    # the decision is on the exact lowest cosine, not on the record's 6 decimals
    _, torch_enc, _ = encoders
    lowest = float(
        (embed.Bf16TextEncoder(torch_enc)._forward(TITLES) * torch_enc._forward(TITLES))
        .sum(1)
        .min()
    )
    exact = EmbedConfig(precision="bf16", min_cosine=lowest)
    assert embed.pick_encoder(settings, model_dir, key, exact, TITLES)[2]["runtime"] == "torch-bf16"
    above = dataclasses.replace(exact, min_cosine=float(np.nextafter(lowest, 2.0)))
    with pytest.raises(ContractError, match="bf16 text encoder drifts"):
        embed.pick_encoder(settings, model_dir, key, above, TITLES)
    auto = EmbedConfig(runtime="torch", min_cosine=1.0)
    enc, cache_key, info = embed.pick_encoder(settings, model_dir, key, auto, TITLES)
    assert type(enc) is embed.TextEncoder and info["runtime"] == "torch" and cache_key == key
    assert ("bf16_refused" in info) == embed.auto_bf16(embed.text_device())
    # fp32 never tries bf16; neither does int8 on auto
    for cfg in (EmbedConfig(precision="fp32"), EmbedConfig(quantize=True, min_cosine=0.5)):
        enc, _, info = embed.pick_encoder(settings, model_dir, key, cfg, TITLES)
        assert isinstance(enc, embed.OnnxTextEncoder) and "bf16_refused" not in info
    with pytest.raises(ContractError, match="exclude each other"):
        EmbedConfig(precision="bf16", quantize=True)


def test_a_bf16_encoder_that_fails_leaves_fp32_to_encode_on_auto(encoders, monkeypatch) -> None:
    """A model with a layer that has no bf16 kernel: auto encodes in fp32 and says why; an
    explicit bf16 is refused with the error. (The failure is injected: MiniLM has none.)"""
    settings, _, _ = encoders
    model_dir = settings.text_model_path()
    key = embed.encoder_fingerprint(model_dir)

    def no_kernel(self, texts):
        raise RuntimeError("\"addmm_impl_cpu_\" not implemented for 'BFloat16'")

    monkeypatch.setattr(embed.Bf16TextEncoder, "_forward", no_kernel)
    monkeypatch.setattr(embed, "auto_bf16", lambda device: True)  # as on a bf16 CPU
    enc, cache_key, info = embed.pick_encoder(
        settings, model_dir, key, EmbedConfig(precision="auto"), TITLES
    )
    assert isinstance(enc, embed.OnnxTextEncoder) and cache_key == key
    assert info["runtime"] == "onnx" and "not implemented" in info["bf16_refused"]["failed"]
    with pytest.raises(ContractError, match="no bf16 text encoder: it failed"):
        embed.pick_encoder(settings, model_dir, key, EmbedConfig(precision="bf16"), TITLES)


def test_text_precision_defaults_from_the_environment(monkeypatch) -> None:
    assert EmbedConfig().precision == "auto"
    monkeypatch.setenv("NIGHTREC_TEXT_PRECISION", " bf16 ")
    assert EmbedConfig().precision == "bf16"
    assert EmbedConfig(precision="fp32").precision == "fp32"  # an explicit value wins
    monkeypatch.setenv("NIGHTREC_TEXT_PRECISION", "fp16")
    with pytest.raises(ContractError, match="NIGHTREC_TEXT_PRECISION.*'fp16'"):
        EmbedConfig()


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
