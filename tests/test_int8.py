"""The int8 (CPU) and fp16 (CUDA) scorers: each served only within its gate, recorded in
the sealed manifest."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import polars as pl
import pytest
import torch
from conftest import AS_OF
from test_model import (
    BIG_ITEMS,
    BIG_LENGTH,
    HELD_A,
    HELD_C,
    N_ITEMS,
    PARITY_CFG,
    PLANTED_CFG,
    PROVIDERS,
    TEXT_DIM,
    A,
    B,
    C,
    D,
    _random_encoder,
    _random_histories,
    _reference_top,
    _write_planted,
    big_catalog,
    big_queries,
)

from nightrec import embed, ingest, quantize, registry, score, snapshot, train
from nightrec.config import (
    ContractError,
    Fp16Config,
    Int8Config,
    ScoreConfig,
    Settings,
    cuda_in_onnxruntime,
)
from nightrec.model import Encoder

# enough held-out examples on the planted set (about 100) for the gate to measure on
HELD_CFG = dataclasses.replace(PLANTED_CFG, valid_share=0.2, min_valid=20)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("planted-int8")
    settings = Settings.from_env(home=root / "home", models_dir=root / "models")
    _write_planted(settings.landing)
    ingest.ingest(settings)
    snap = snapshot.snapshot(settings, AS_OF)
    embed.embed(settings, snap)
    return {"settings": settings, "snapshot": snap}


def _lists(settings: Settings, stats: dict) -> pl.DataFrame:
    folder = score.shard_dir(settings, stats["run_id"], 0, 1)
    parts = sorted(folder.glob("part-*.parquet"))
    lists = pl.concat([pl.read_parquet(p) for p in parts]).sort("user_id", "rank")
    return lists.drop(score.RUN_COLUMNS)  # the run's own id and model differ between runs


def test_int8_within_tolerance_serves_and_is_recorded(planted) -> None:
    settings, snap = planted["settings"], planted["snapshot"]
    version = train.train(settings, snap, AS_OF, HELD_CFG, Int8Config(enabled=True))
    folder, manifest = registry.load_version(settings.models_dir, version)
    record = manifest["int8"]
    assert record["used"] is True, record
    assert record["metric"] == "ndcg@10" and record["tolerance"] == 0.01
    assert record["examples"] == manifest["metrics"]["valid_examples"] >= 50
    assert record["drop"] <= 0.01 and record["masked_equal"] and record["products_int8"] >= 1
    # the record rounds each figure to 6 decimals
    drop = (record["fp32"] - record["int8"]) / record["fp32"]
    assert record["drop"] == pytest.approx(drop, abs=2e-6)
    assert record["fp32"] > 0.3 and record["speedup"] > 0  # a learnt model, measured
    # checksummed and sealed like every file of the version
    assert manifest["files"][registry.SCORER_INT8] == registry.sha256(folder / "scorer_int8.onnx")
    # the text encoder's drift gate (fp32 ONNX here, bf16 on a CPU with native bf16) beside it
    text = manifest["text_int8"]
    assert text["used"] is False
    assert text["runtime"] == ("torch-bf16" if embed.auto_bf16(embed.text_device()) else "onnx")
    assert text["drift_gate"]["min_cosine"] >= text["drift_gate"]["threshold"] == 0.999
    # an int8 request is another version than the plain one; int8 off keeps today's id
    embed_info = json.loads((snap / "embed.json").read_text())
    plain = train.fingerprint(snap, HELD_CFG, embed_info["encoder"])
    assert version != f"v{AS_OF:%Y%m%d}-{plain}"
    assert train.fingerprint(snap, HELD_CFG, embed_info["encoder"], Int8Config()) == plain

    stats = score.score(settings, snap, "int8", ScoreConfig(top_n=5, provider="cpu"), version)
    assert stats["scorer"] == registry.SCORER_INT8
    recs = _lists(settings, stats)
    first = dict(zip(*recs.filter(pl.col("rank") == 1)[["user_id", "item_id"]], strict=True))
    assert [first[u] for u in HELD_A] == [B] * len(HELD_A)
    assert [first[u] for u in HELD_C] == [D] * len(HELD_C)
    assert A not in set(recs.filter(pl.col("user_id").is_in(HELD_A))["item_id"])
    assert C not in set(recs.filter(pl.col("user_id").is_in(HELD_C))["item_id"])
    # the gate measured the CPU: another provider scores with fp32
    assert registry.scorer_file(folder, manifest, cpu=False).name == registry.SCORER


def test_int8_without_held_out_examples_is_refused_and_output_unchanged(planted) -> None:
    """PLANTED_CFG holds out ~30 examples (< min_valid): no measurement, so no int8."""
    settings, snap = planted["settings"], planted["snapshot"]
    today = train.train(settings, snap, AS_OF, PLANTED_CFG)
    asked = train.train(settings, snap, AS_OF, PLANTED_CFG, Int8Config(enabled=True))
    m_today = registry.verify(settings.models_dir / today)
    m_asked = registry.verify(settings.models_dir / asked)
    # int8 auto (the default) builds nothing for a catalog this small
    assert m_today["int8"]["used"] is False and "not built (auto" in m_today["int8"]["reason"]
    assert m_asked["int8"]["used"] is False and "no held-out" in m_asked["int8"]["reason"]
    assert registry.SCORER_INT8 not in m_asked["files"]
    assert not (settings.models_dir / asked / registry.SCORER_INT8).exists()
    cfg = ScoreConfig(top_n=5, provider="cpu")
    one = score.score(settings, snap, "fp32-today", cfg, today)
    two = score.score(settings, snap, "fp32-asked", cfg, asked)
    assert one["scorer"] == two["scorer"] == registry.SCORER
    assert _lists(settings, one).equals(_lists(settings, two))


def _random_model() -> Encoder:
    torch.manual_seed(0)
    text = torch.randn(N_ITEMS + 1, TEXT_DIM)
    text[0] = 0.0
    model = Encoder(text, PARITY_CFG).eval()
    with torch.no_grad():
        for p in model.user_mlp.parameters():
            p.mul_(3.0)
    return model


def _export(
    model: Encoder,
    models: Path,
    name: str,
    int8: Int8Config,
    held,
    fp16: Fp16Config = Fp16Config(enabled="off"),
) -> Path:
    index = pl.DataFrame(
        {"item_id": [f"i{i:02d}" for i in range(1, N_ITEMS + 1)], "idx": np.arange(1, N_ITEMS + 1)}
    )
    example = _random_histories(np.random.default_rng(0), 8, PARITY_CFG.max_history)
    return registry.export(
        model,
        models,
        name,
        index,
        dataclasses.asdict(PARITY_CFG),
        {},
        example,
        int8,
        held,
        fp16=fp16,
    )


def _fp32_top1(folder: Path, hist: np.ndarray) -> np.ndarray:
    """The fp32 scorer's first item per history: as a target, fp32's NDCG@10 is exactly 1."""
    sess = ort.InferenceSession(str(folder / registry.SCORER), providers=["CPUExecutionProvider"])
    bias = np.zeros(N_ITEMS + 1, dtype=np.float32)
    bias[0] = -np.inf
    return sess.run(None, registry.scorer_inputs(hist, hist, bias, 1))[1][:, 0]


def _onnxruntime_int8(src: Path, dst: Path, cfg: Int8Config) -> None:
    """ONNX Runtime's own dynamic quantization, as ``quantize`` ran it before it built the
    int8 graph itself: the reference it is held to."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = dst.with_name(f"pre-{dst.name}")
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    quantize_dynamic(
        str(pre),
        str(dst),
        weight_type=QuantType.QInt8,
        per_channel=cfg.per_channel,
        reduce_range=cfg.reduce_range,
        op_types_to_quantize=["MatMul", "Gemm"],
    )


def _int8_weights(path: Path) -> list[tuple]:
    """(shape, type, bytes) of every quantized weight, scale and zero point, sorted."""
    import onnx

    suffixes = ("_quantized", "_scale", "_zero_point")
    return sorted(
        (tuple(t.dims), t.data_type, t.raw_data or onnx.numpy_helper.to_array(t).tobytes())
        for t in onnx.load(str(path)).graph.initializer
        if t.name.endswith(suffixes)
    )


@pytest.mark.parametrize(
    ("encoder", "pair", "int8"),
    [
        ("pool", True, Int8Config(enabled="on")),
        ("attention", False, Int8Config(enabled="on")),
        ("pool", False, Int8Config(enabled="on", per_channel=False, reduce_range=False)),
    ],
)
def test_int8_graph_is_onnx_runtimes_bit_for_bit(
    tmp_path: Path, encoder: str, pair: bool, int8: Int8Config
) -> None:
    """``quantize`` builds the int8 graph itself (ONNX Runtime's per-column loop and
    pre-processing took 12.3 s for the 1M-user model, 49k items): the same int8 weights,
    scales and zero points as ONNX Runtime's ``quantize_dynamic`` after its
    pre-processing, and the same outputs bit for bit, for
    both user encoders and a pair, per column or per tensor, 7 or 8 bits, with an item
    whose vector is all zeros (a column whose scale would be 0: 1 instead)."""
    cfg = dataclasses.replace(PARITY_CFG, user_encoder=encoder)
    torch.manual_seed(0)
    text = torch.randn(N_ITEMS + 1, TEXT_DIM)
    text[0] = text[5] = 0.0
    model = _random_encoder(text, cfg)
    if pair:
        model.pair_with(_random_encoder(text, cfg))
    with torch.no_grad():  # item 5's vector: no text, no id part, no bias
        for member in (model, model.twin) if pair else (model,):
            member.proj.bias.zero_()
            member.item_id.weight[5] = 0.0
    index = pl.DataFrame(
        {"item_id": [f"i{i:02d}" for i in range(1, N_ITEMS + 1)], "idx": np.arange(1, N_ITEMS + 1)}
    )
    hist = _random_histories(np.random.default_rng(2), 64, cfg.max_history)
    folder = registry.export(
        model, tmp_path, "v", index, dataclasses.asdict(cfg), {}, hist[:8], Int8Config("off"), None
    )
    ours, theirs = tmp_path / "ours.onnx", tmp_path / "theirs.onnx"
    record = quantize.quantize(folder / registry.SCORER, ours, int8)
    _onnxruntime_int8(folder / registry.SCORER, theirs, int8)
    # the same products quantized: the user MLP's (and the blocks'), the item matrix
    import onnx

    reference = [n.op_type for n in onnx.load(str(theirs)).graph.node].count("MatMulInteger")
    assert record["products_int8"] == reference >= (5 if pair else 3)
    assert _int8_weights(ours) == _int8_weights(theirs)
    bias = np.zeros(N_ITEMS + 1, dtype=np.float32)
    bias[0] = -np.inf
    runs = []
    for path in (ours, theirs):
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        runs.append(sess.run(None, registry.scorer_inputs(hist, hist, bias, N_ITEMS - 5)))
    for got, want in zip(*runs, strict=True):
        assert np.array_equal(got, want)


def _graph_of_edge_cases(path: Path, relu: str = "r") -> None:
    """A hand-built graph with the products ``quantize`` must and must not touch (x: [B, 8]):
    y1 (of ``relu``, Relu(x)) and y2 read one weight W; y3 a Gemm with ``transB`` and a
    bias; then, all left fp32: y4 a Gemm with ``alpha`` 0.5, y5 a constant on the left, y6
    a weight that is also a graph input (a caller may feed it), y7 one behind a Reshape.
    ``relu`` = "W_quantized" takes the name ``quantize`` would give W's int8 copy."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(9)

    def init(name: str, shape: tuple[int, ...]) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    inits = [
        init("W", (8, 6)),
        init("W2", (5, 8)),
        init("b2", (5,)),
        init("C", (3, 8)),
        init("Wfed", (8, 4)),
        init("Wflat", (32,)),
        numpy_helper.from_array(np.array([8, 4], dtype=np.int64), "shape"),
    ]
    node = helper.make_node
    nodes = [
        node("Relu", ["x"], [relu]),
        node("MatMul", [relu, "W"], ["y1"]),
        node("MatMul", ["x", "W"], ["y2"]),
        node("Gemm", ["x", "W2", "b2"], ["y3"], transB=1),
        node("Gemm", ["x", "W"], ["y4"], alpha=0.5),
        node("Transpose", ["x"], ["xT"], perm=[1, 0]),
        node("MatMul", ["C", "xT"], ["y5"]),
        node("MatMul", ["x", "Wfed"], ["y6"]),
        node("Reshape", ["Wflat", "shape"], ["Wr"]),
        node("MatMul", ["x", "Wr"], ["y7"]),
    ]
    widths = {"y1": 6, "y2": 6, "y3": 5, "y4": 6, "y6": 4, "y7": 4}
    vi = helper.make_tensor_value_info
    outputs = [vi(y, TensorProto.FLOAT, ["B", w]) for y, w in widths.items()]
    outputs.insert(4, vi("y5", TensorProto.FLOAT, [3, "B"]))
    graph = helper.make_graph(
        nodes,
        "edges",
        [vi("x", TensorProto.FLOAT, ["B", 8]), vi("Wfed", TensorProto.FLOAT, [8, 4])],
        outputs,
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def test_int8_leaves_what_it_cannot_quantize_and_matches_onnx_runtime_where_it_does(
    tmp_path: Path,
) -> None:
    import onnx

    src, ours, theirs = tmp_path / "src.onnx", tmp_path / "ours.onnx", tmp_path / "theirs.onnx"
    _graph_of_edge_cases(src)
    cfg = Int8Config(enabled="on")
    record = quantize.quantize(src, ours, cfg)
    _onnxruntime_int8(src, theirs, cfg)
    ops = [n.op_type for n in onnx.load(str(ours)).graph.node]
    # y1, y2 (one int8 weight for both) and y3; the other four products as they were
    assert record == {"products_int8": 3, "products": 7}
    assert ops.count("MatMulInteger") == 3 and ops.count("DynamicQuantizeLinear") == 2
    assert "Wfed" in [t.name for t in onnx.load(str(ours)).graph.initializer]
    # a tensor already named as W's int8 copy would be (ONNX Runtime's quantizer fails
    # there): the copy takes another name, and the outputs are the same bit for bit
    clash, clash_ours = tmp_path / "clash.onnx", tmp_path / "clash-ours.onnx"
    _graph_of_edge_cases(clash, relu="W_quantized")
    assert quantize.quantize(clash, clash_ours, cfg) == record
    names = [t.name for t in onnx.load(str(clash_ours)).graph.initializer]
    assert len(names) == len(set(names)) and "W_quantized_1" in names
    x = np.random.default_rng(4).standard_normal((16, 8)).astype(np.float32)
    fed = np.random.default_rng(5).standard_normal((8, 4)).astype(np.float32)

    def run(path: Path, feed: dict) -> dict:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed), strict=True))

    got = run(ours, {"x": x, "Wfed": fed})
    want = run(theirs, {"x": x})
    fp32 = run(src, {"x": x, "Wfed": fed})
    for y, value in run(clash_ours, {"x": x, "Wfed": fed}).items():
        assert np.array_equal(value, got[y]), y
    for y in ("y1", "y2", "y3"):  # quantized: ONNX Runtime's outputs, bit for bit
        assert np.array_equal(got[y], want[y]), y
        assert not np.array_equal(got[y], fp32[y]), y
    for y in ("y4", "y5", "y6", "y7"):  # left fp32: the fed Wfed is read, not its default
        np.testing.assert_allclose(got[y], fp32[y], rtol=1e-6, atol=1e-6, err_msg=y)
    np.testing.assert_allclose(got["y6"], x @ fed, rtol=1e-5, atol=1e-5)


def test_int8_of_a_graph_with_nothing_to_quantize_is_refused_and_fp32_kept(
    tmp_path: Path,
) -> None:
    """No product with a constant weight: no int8 file passed off as one (the gate would
    find it as good as fp32, since it is fp32), and the record says why."""
    import onnx
    from onnx import TensorProto, helper

    src, dst = tmp_path / "src.onnx", tmp_path / "int8.onnx"
    vi = helper.make_tensor_value_info
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "none",
        [vi("x", TensorProto.FLOAT, ["B", 4]), vi("w", TensorProto.FLOAT, [4, 3])],
        [vi("y", TensorProto.FLOAT, ["B", 3])],
    )
    opset = [helper.make_opsetid("", 17)]
    onnx.save(helper.make_model(graph, opset_imports=opset, ir_version=8), str(src))
    with pytest.raises(ValueError, match="no matrix product"):
        quantize.quantize(src, dst, Int8Config(enabled="on"))
    held_out = (np.ones((2, 3), dtype=np.int64), np.ones(2, dtype=np.int64))
    record = quantize.build(src, dst, Int8Config(enabled="on"), held_out, 4, 3)
    assert record["used"] is False and not dst.exists()
    assert record["reason"].startswith("int8 failed: no matrix product")


@pytest.mark.parametrize("reduce_range", [True, False])
def test_int8_columns_are_onnx_runtimes_quantize_data(reduce_range: bool) -> None:
    """The weights alone, at a size where rounding shows: 2,000 columns of every magnitude
    (and a zero column), each against ONNX Runtime's ``quantize_data`` of that column."""
    import onnx
    from onnxruntime.quantization.quant_utils import quantize_data

    rng = np.random.default_rng(5)
    w = (rng.standard_normal((96, 2000)) * 10.0 ** rng.uniform(-6, 3, 2000)).astype(np.float32)
    w[:, 7] = 0.0
    w[:, 8] = np.abs(w[:, 8])  # one-signed columns: the range still holds 0
    cfg = Int8Config(reduce_range=reduce_range)
    q, scale = quantize._int8_columns(w, cfg)
    for j in range(w.shape[1]):
        zero, want_scale, want_q = quantize_data(
            w[:, j], onnx.TensorProto.INT8, True, reduce_range=reduce_range
        )
        assert zero == 0 and scale[j].tobytes() == np.float32(want_scale).tobytes(), j
        assert np.array_equal(q[:, j], want_q), j
    flat_q, flat_scale = quantize._int8_columns(w, dataclasses.replace(cfg, per_channel=False))
    _, want_scale, want_q = quantize_data(
        w.ravel(), onnx.TensorProto.INT8, True, reduce_range=reduce_range
    )
    assert flat_scale.shape == () and flat_scale == np.float32(want_scale)
    assert np.array_equal(flat_q.ravel(), want_q)


def test_int8_beyond_tolerance_is_refused_and_fp32_kept(tmp_path: Path) -> None:
    model = _random_model()
    hist = _random_histories(np.random.default_rng(3), 400, PARITY_CFG.max_history)
    plain = _export(model, tmp_path, "v-plain", Int8Config(), None)
    target = _fp32_top1(plain, hist)
    strict = _export(
        model, tmp_path, "v-strict", Int8Config(enabled=True, tolerance=0.0), (hist, target)
    )
    manifest = registry.verify(strict)
    record = manifest["int8"]
    # the premise: int8 moves some first places of an untrained model with near ties
    assert record["fp32"] == 1.0 and record["drop"] > 0, record
    assert record["used"] is False and "> tolerance" in record["reason"]
    assert set(manifest["files"]) == {registry.SCORER, "encoder.pt", "items.parquet"}
    assert sorted(p.name for p in strict.iterdir()) == sorted([*manifest["files"], "manifest.json"])
    assert registry.scorer_file(strict, manifest, cpu=True).name == registry.SCORER
    # the fp32 scorer is today's: the same outputs as a version exported without int8
    assert np.array_equal(_fp32_top1(strict, hist), target)
    # ... and the same measurement under a tolerance above the drop uses int8
    loose = Int8Config(enabled=True, tolerance=min(1.0, record["drop"] * 2))
    kept = registry.verify(_export(model, tmp_path, "v-loose", loose, (hist, target)))["int8"]
    assert kept["used"] is True and kept["drop"] == record["drop"]


def test_int8_scorer_file_is_verified(planted, tmp_path: Path) -> None:
    settings, snap = planted["settings"], planted["snapshot"]
    version = train.train(settings, snap, AS_OF, HELD_CFG, Int8Config(enabled=True))
    source = settings.models_dir / version
    assert registry.verify(source)["int8"]["used"] is True

    def copy(name: str) -> Path:
        import shutil

        dest = tmp_path / name / version
        shutil.copytree(source, dest)
        return dest

    tampered = copy("tampered")
    with (tampered / registry.SCORER_INT8).open("ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ContractError, match="checksum mismatch"):
        registry.load_version(tampered.parent, version)
    gone = copy("gone")
    (gone / registry.SCORER_INT8).unlink()
    with pytest.raises(ContractError, match="listed files missing"):
        registry.load_version(gone.parent, version)
    # a (re-sealed) manifest that claims int8 without listing its file is refused by score
    unlisted = copy("unlisted")
    (unlisted / registry.SCORER_INT8).unlink()
    manifest = json.loads((unlisted / registry.MANIFEST).read_text())
    del manifest["files"][registry.SCORER_INT8]
    registry.write_manifest(unlisted, manifest)
    with pytest.raises(ContractError, match="does not list scorer_int8.onnx"):
        score.score(
            dataclasses.replace(settings, models_dir=unlisted.parent),
            snap,
            "unlisted",
            ScoreConfig(top_n=5, provider="cpu"),
            version,
        )


def test_int8_config_bounds() -> None:
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ContractError, match="int8 tolerance"):
            Int8Config(enabled=True, tolerance=bad)
    off = Int8Config(enabled="off")
    record = quantize.build(Path("unused"), Path("unused"), off, None, 3, 64)
    assert record["used"] is False and record["reason"].startswith("not asked")
    # auto (the default): by the cells of the item matrix; the flag of before still reads
    auto = Int8Config()
    assert auto.enabled == "auto" and auto.auto_cells == 1_000_000
    assert auto.wanted(5_209, 192, cuda=False) and not auto.wanted(5_208, 192, cuda=False)
    # where CUDA serves (the fp32 or fp16 scorer), auto builds no int8 one; on still does
    assert not auto.wanted(10**9, 256, cuda=True)
    assert Int8Config(enabled="on").wanted(3, 1, cuda=True) and not off.wanted(10**9, 256)
    assert auto.wanted(5_209, 192) is not cuda_in_onnxruntime()  # asked when not told
    assert Int8Config(enabled=True).enabled == "on" and Int8Config(enabled=False) == off
    for bad in (dict(enabled="yes"), dict(auto_cells=0), dict(auto_cells=True)):
        with pytest.raises(ContractError, match="int8"):
            Int8Config(**bad)  # type: ignore[arg-type]


def test_int8_auto_builds_only_where_the_item_matrix_is_large_enough(planted) -> None:
    """auto's threshold on the planted catalog: at its cells the int8 scorer is built (and
    gated), one cell more and the version is the plain one, without an int8 file. Where
    ONNX Runtime has CUDA (which serves fp32 or fp16, never int8) auto builds none."""
    settings, snap = planted["settings"], planted["snapshot"]
    embed_info = json.loads((snap / "embed.json").read_text())
    items = pl.read_parquet(snap / "items.parquet").height
    width = HELD_CFG.dim * (2 if HELD_CFG.ensemble else 1)
    cells = (items + 1) * width
    fp16 = Fp16Config()  # train's default: part of the id where CUDA is here
    plain = train.fingerprint(snap, HELD_CFG, embed_info["encoder"], None, fp16)
    below = Int8Config(auto_cells=cells + 1)
    assert train.fingerprint(snap, HELD_CFG, embed_info["encoder"], below, fp16) == plain
    at = Int8Config(auto_cells=cells)
    if cuda_in_onnxruntime():
        assert train.fingerprint(snap, HELD_CFG, embed_info["encoder"], at, fp16) == plain
        record = quantize.build(Path("unused"), Path("unused"), at, None, items + 1, width)
        assert record["used"] is False and "CUDA" in record["reason"], record
        return
    assert train.fingerprint(snap, HELD_CFG, embed_info["encoder"], at, fp16) != plain

    built = train.train(settings, snap, AS_OF, HELD_CFG, at)
    folder, manifest = registry.load_version(settings.models_dir, built)
    record = manifest["int8"]
    assert record["enabled"] == "auto" and record["used"] is True, record
    assert record["drop"] <= 0.01 and (folder / registry.SCORER_INT8).is_file()
    assert registry.scorer_file(folder, manifest, cpu=True).name == registry.SCORER_INT8

    skipped = train.train(settings, snap, AS_OF, HELD_CFG, below)
    assert skipped == f"v{AS_OF:%Y%m%d}-{plain}"
    folder, manifest = registry.load_version(settings.models_dir, skipped)
    assert manifest["int8"]["used"] is False and not (folder / registry.SCORER_INT8).exists()
    assert registry.scorer_file(folder, manifest, cpu=True).name == registry.SCORER


def test_fp16_within_its_gate_is_kept_for_cuda_and_auto_builds_it_only_with_cuda(planted) -> None:
    settings, snap = planted["settings"], planted["snapshot"]
    version = train.train(settings, snap, AS_OF, HELD_CFG, fp16=Fp16Config(enabled="on"))
    folder, manifest = registry.load_version(settings.models_dir, version)
    record = manifest["fp16"]
    assert record["used"] is True, record
    assert record["masked_equal"] and record["drop"] <= 0.01
    # top 100, or the whole catalog when smaller
    wide = next(key for key in record if key.startswith("overlap@") and key != "overlap@10")
    assert record[wide] >= record["min_overlap"] == 0.98
    assert record["examples"] == manifest["metrics"]["valid_examples"] >= 50
    assert record["provider"] in ("CPUExecutionProvider", "CUDAExecutionProvider")
    assert record["products"] >= 1 and record["casts"] >= 2  # fp32 in and out, fp16 inside
    assert manifest["files"][registry.SCORER_FP16] == registry.sha256(folder / "scorer_fp16.onnx")
    # CUDA serves it, the CPU does not (emulated fp16 is slower there than fp32)
    assert registry.scorer_file(folder, manifest, cpu=False).name == registry.SCORER_FP16
    assert registry.scorer_file(folder, manifest, cpu=True).name == registry.SCORER
    stats = score.score(settings, snap, "fp16-cpu", ScoreConfig(top_n=5, provider="cpu"), version)
    assert stats["scorer"] == registry.SCORER
    # its lists are the planted ones: run here on the CPU provider, as CUDA would serve it
    sess = ort.InferenceSession(
        str(folder / registry.SCORER_FP16), providers=["CPUExecutionProvider"]
    )
    items = pl.read_parquet(folder / "items.parquet")
    idx = dict(zip(items["item_id"], items["idx"], strict=True))
    hist = np.zeros((2, HELD_CFG.max_history), dtype=np.int64)
    hist[0, -1], hist[1, -1] = idx[A], idx[C]
    bias = np.zeros(items.height + 1, dtype=np.float32)
    bias[0] = -np.inf
    top = sess.run(None, registry.scorer_inputs(hist, hist, bias, 3))[1]
    names = items.sort("idx")["item_id"].to_list()
    assert [names[top[0, 0] - 1], names[top[1, 0] - 1]] == [B, D]
    assert idx[A] not in top[0] and idx[C] not in top[1]
    # auto: built only where ONNX Runtime has CUDA, and then part of the version id
    embed_info = json.loads((snap / "embed.json").read_text())
    plain = train.fingerprint(snap, HELD_CFG, embed_info["encoder"])
    auto = train.fingerprint(snap, HELD_CFG, embed_info["encoder"], fp16=Fp16Config())
    has_cuda = cuda_in_onnxruntime()
    assert (auto != plain) == has_cuda
    assert version != f"v{AS_OF:%Y%m%d}-{plain}"
    if not has_cuda:
        record = quantize.build_fp16(Path("unused"), Path("unused"), Fp16Config(), None, 3)
        assert record["used"] is False and "no CUDA" in record["reason"]


def test_fp16_beyond_its_gate_is_refused_and_fp32_kept(tmp_path: Path) -> None:
    model = _random_model()
    hist = _random_histories(np.random.default_rng(3), 400, PARITY_CFG.max_history)
    plain = _export(model, tmp_path, "v-plain", Int8Config(), None)
    target = _fp32_top1(plain, hist)
    strict = Fp16Config(enabled="on", tolerance=0.0, min_overlap=1.0)
    folder = _export(model, tmp_path, "v-strict", Int8Config(), (hist, target), strict)
    manifest = registry.verify(folder)
    record = manifest["fp16"]
    # the premise: fp16 rounding moves some first places of an untrained model's near ties
    assert record["fp32"] == 1.0 and record["drop"] > 0, record
    assert record["used"] is False and "> tolerance" in record["reason"]
    assert registry.SCORER_FP16 not in manifest["files"]
    assert not (folder / registry.SCORER_FP16).exists()
    assert registry.scorer_file(folder, manifest, cpu=False).name == registry.SCORER
    loose = Fp16Config(enabled="on", tolerance=min(1.0, record["drop"] * 2), min_overlap=0.5)
    kept = _export(model, tmp_path, "v-loose", Int8Config(), (hist, target), loose)
    assert registry.verify(kept)["fp16"]["used"] is True
    for bad in (dict(enabled="yes"), dict(tolerance=-1.0), dict(min_overlap=2.0)):
        with pytest.raises(ContractError, match="fp16"):
            Fp16Config(**bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_fp16_scorer_matches_brute_force_within_half_precision(
    tmp_path: Path, provider: str
) -> None:
    """The scoring contract on the fp16 graph, on every provider this host has: a two-stage
    catalog with neighbour terms, against a NumPy fp32 reference over every item; never a
    seen, inactive or padding item; the same lists however the users are split."""
    draw = np.random.default_rng(1)
    held = (
        draw.integers(1, BIG_ITEMS + 1, (200, BIG_LENGTH)),
        draw.integers(1, BIG_ITEMS + 1, 200),
    )
    any_gate = Fp16Config(enabled="on", tolerance=1.0, min_overlap=0.0)  # the contract only
    model, folder, rng = big_catalog(tmp_path, True, held_out=held, fp16=any_gate)
    assert registry.verify(folder)["fp16"]["used"] is True
    sess = ort.InferenceSession(str(folder / registry.SCORER_FP16), providers=[provider])
    assert sess.get_providers()[0] == provider
    hist, seen, bias, full = big_queries(model, rng)
    never = set(np.flatnonzero(bias < 0))
    for k in (1, 100):
        got_s, got_i, _ = sess.run(None, registry.scorer_inputs(hist, seen, bias, k))
        want_s, want_i = _reference_top(full, k)
        # half precision: an fp16 ulp is ~1e-3 of the value; two half-ulps of the largest
        tol = 1e-3 * np.abs(want_s[np.isfinite(want_s)]).max()
        assert np.all(np.isfinite(got_s) == np.isfinite(want_s))
        assert np.allclose(got_s, want_s, atol=tol, rtol=0)
        gaps = np.abs(np.diff(want_s, axis=1)) > 2 * tol
        apart = np.ones_like(want_s, dtype=bool)  # no other item within fp16's rounding
        apart[:, 1:] &= gaps
        apart[:, :-1] &= gaps
        # not vacuous: every first place stands apart; in the dense top 100s (gaps ~2 tol)
        # some 500 cells do
        assert apart.mean() > (0.9 if k == 1 else 0.05)
        assert np.array_equal(got_i[apart], want_i[apart])
        overlap = np.mean([len(set(a) & set(b)) / k for a, b in zip(got_i, want_i, strict=True)])
        assert overlap >= 0.95
        for row in range(len(hist)):
            assert not set(got_i[row]) & (set(seen[row]) | never)
        # shard invariance: the users scored in two other splits give the same rows
        halves = [sess.run(None, registry.scorer_inputs(hist[s], seen[s], bias, k)) for s in
                  (slice(0, 23), slice(23, None))]  # fmt: skip
        assert np.array_equal(np.concatenate([h[1] for h in halves]), got_i)
