"""The CPU top-N kernel (``nightrec.topk``): ONNX Runtime's TopK order exactly, and the
split scorer's lists bit for bit the fused graph's (fp32 and int8, with and without the
neighbour scatter, small and large catalogs, one worker or several)."""

from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import polars as pl
import pytest
import torch
from test_model import BIG_ITEMS, _reference_top, big_catalog, big_queries

from nightrec import quantize, registry, score, topk
from nightrec.config import (
    ONNX_IR_VERSION,
    ContractError,
    Int8Config,
    ScoreConfig,
    TrainConfig,
)
from nightrec.model import Encoder


def _scattered(scores, idx, w, add):
    """The reference scatter: ``idx`` in order, one cell at a time (as ScatterElements)."""
    out = scores.copy()
    for r in range(out.shape[0]):
        for j, v in zip(idx[r], w[r], strict=True):
            out[r, j] = out[r, j] + v if add else v
    return out


@pytest.mark.parametrize("width", [3, 64, 130, 1000, 4001])
@pytest.mark.parametrize("add", [True, False])
def test_select_rows_is_the_brute_force_top_k_with_ties_to_the_lower_index(
    width: int, add: bool
) -> None:
    rng = np.random.default_rng(width)
    rows = 12
    # few distinct values: ties inside and across the kernel's blocks and at the k-th place
    scores = rng.integers(-3, 4, (rows, width)).astype(np.float32)
    scores[rng.random(scores.shape) < 0.2] = -np.inf  # dropped items tie too
    scores[rng.random(scores.shape) < 0.1] = -0.0  # ties with 0.0, as in TopK
    scores[0] = 2.0  # a row of one value: the lowest indices win
    scores[1] = rng.normal(size=width).astype(np.float32)  # no ties
    scores[2] = -np.inf  # a row with nothing rankable
    idx = rng.integers(0, width, (rows, 2 * width + 3))  # repeats: applied in order
    w = rng.normal(size=idx.shape).astype(np.float32)
    w[rng.random(w.shape) < 0.3] = -np.inf
    full = _scattered(scores, idx, w, add)
    for k in sorted({1, min(5, width), min(100, width), width}):
        got_s, got_i = topk.select_rows(scores.copy(), idx, w, add, k)
        want_s, want_i = _reference_top(full, k)
        assert np.array_equal(got_i, want_i), k
        assert np.array_equal(got_s, want_s)
        # the very scores the rows hold (a -0.0 stays -0.0)
        assert np.array_equal(np.signbit(got_s), np.signbit(np.take_along_axis(full, got_i, 1)))


def test_select_rows_scatters_into_the_given_rows_and_checks_its_input() -> None:
    scores = np.zeros((2, 8), np.float32)
    idx = np.array([[1, 1], [7, 0]])
    w = np.array([[2.0, 3.0], [1.0, 4.0]], np.float32)
    top_s, top_i = topk.select_rows(scores, idx, w, True, 2)
    assert top_i.tolist() == [[1, 0], [0, 7]]
    assert top_s.tolist() == [[5.0, 0.0], [4.0, 1.0]]
    assert scores[0, 1] == 5.0  # in place: the caller's score matrix is the kernel's memory
    with pytest.raises(ValueError, match="top 9 asked of rows of 8"):
        topk.select_rows(scores, idx, w, True, 9)
    with pytest.raises(ValueError, match="scatter index outside 0..7"):
        topk.select_rows(scores, idx + 7, w, True, 2)
    with pytest.raises(ValueError, match="C-contiguous"):
        topk.select_rows(scores.astype(np.float64), idx, w, True, 2)
    nan = np.zeros((3, 8), np.float32)
    nan[1, :] = np.nan
    with pytest.raises(ValueError, match="row 1 has fewer than 2 comparable scores"):
        topk.select_rows(nan, np.zeros((3, 0), np.int64), np.zeros((3, 0), np.float32), True, 2)


def _same_outputs(split, fused, hist, seen, bias, k, strength=None) -> None:
    """``score.run_scorer`` through both: the fused graph in calls of ``split.rows`` users
    (as the CPU called it), the split scorer on the whole batch (it cuts the same parts)."""
    widths = (seen > 0).sum(1)
    want = score.run_scorer(fused, hist, seen, widths, bias, k, split.rows, strength)
    got = score.run_scorer(split, hist, seen, widths, bias, k, 10**6, strength)
    for name, a, b in zip(("top_scores", "top_index", "because"), got, want, strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b), name


@pytest.mark.parametrize("fused", [False, True])
def test_split_scorer_gives_the_fused_graphs_lists_bit_for_bit(tmp_path: Path, fused: bool) -> None:
    """On a catalog big enough for the graph's two-stage top N, fp32 and int8: the
    kernel's top scores, indices and "because" items are the fused graph's."""
    model, folder, rng = big_catalog(tmp_path, fused)
    hist, seen, bias, _ = big_queries(model, rng)
    strength = rng.integers(0, 3, hist.shape)
    int8 = tmp_path / "scorer_int8.onnx"  # as the CPU serves it where its gate passed
    quantize.quantize(folder / registry.SCORER, int8, Int8Config(enabled="on"))
    for path in (folder / registry.SCORER, int8):
        ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        # the int8 scorer quantizes the user vectors of each call together: its lists are
        # the graph's for the same rows per call (16 here), whatever the number of workers
        for threads in (1, 2, 3):
            split = topk.SplitScorer(path, threads, 16)
            try:
                for k in (1, 100, 1000):
                    _same_outputs(split, ref, hist, seen, bias, k, strength)
                _same_outputs(split, ref, hist[:1], seen[:1], bias, 7)  # one user
                _same_outputs(split, ref, hist[:40], seen[:40], bias, 7)  # a short last part
            finally:
                split.close()
    # most of the catalog dropped: the scatter is nearly catalog-wide, rows end in -inf
    bias[rng.choice(np.arange(1, BIG_ITEMS + 1), 3990, replace=False)] = -np.inf
    split = topk.SplitScorer(folder / registry.SCORER, 2, 16)
    ref = ort.InferenceSession(str(folder / registry.SCORER), providers=["CPUExecutionProvider"])
    _same_outputs(split, ref, hist, seen, bias, 20)
    split.close()


def small_catalog(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """An untrained encoder over 40 items (too few for the graph's two-stage top N),
    exported to ``tmp_path``: its scorer file, 30 histories of 4 and a bias that drops
    items 5 and 6 (and the padding)."""
    torch.manual_seed(3)
    text = torch.randn(41, 8)
    text[0] = 0.0
    cfg = TrainConfig(dim=8, max_history=4)
    model = Encoder(text, cfg).eval()
    ids = np.arange(1, 41)
    index = pl.DataFrame({"item_id": [f"i{i:03d}" for i in ids], "idx": ids})
    rng = np.random.default_rng(2)
    sample = rng.integers(1, 41, (4, 4))
    folder = registry.export(model, tmp_path, "v-small", index, dataclasses.asdict(cfg), {}, sample)
    bias = np.zeros(41, np.float32)
    bias[[0, 5, 6]] = -np.inf
    return folder / registry.SCORER, rng.integers(0, 41, (30, 4)), bias


def test_split_scorer_on_a_small_catalog_one_topk_in_the_graph(tmp_path: Path) -> None:
    """A catalog too small for the graph's two stages (one TopK): the same lists."""
    path, hist, bias = small_catalog(tmp_path)
    assert not any(n.op_type == "ReduceMax" for n in onnx.load(str(path)).graph.node)
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    split = topk.SplitScorer(path, 2, 8)
    for k in (1, 10, 40):
        _same_outputs(split, ref, hist, hist, bias, k)
    split.close()


def test_a_graph_that_cannot_be_split_is_served_whole(tmp_path: Path, caplog) -> None:
    """No scatter in the graph (not a nightrec scorer shape): the fused graph serves, and
    the log says so; "graph" and CUDA never split."""
    x = onnx.helper.make_tensor_value_info("history", onnx.TensorProto.FLOAT, [None, 3])
    y = onnx.helper.make_tensor_value_info("top_scores", onnx.TensorProto.FLOAT, [None, 3])
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["history"], ["top_scores"])], "g", [x], [y]
    )
    path = tmp_path / "plain.onnx"
    opset = [onnx.helper.make_opsetid("", 17)]
    onnx.save(onnx.helper.make_model(graph, opset_imports=opset, ir_version=ONNX_IR_VERSION), path)
    with pytest.raises(topk.Unsplittable):
        topk.SplitScorer(path, 2, 8)
    with caplog.at_level(logging.WARNING, logger="nightrec.score"):
        sess, mode = score.open_scorer(path, ["CPUExecutionProvider"], "kernel", 2, 8)
    assert mode == "graph" and isinstance(sess, ort.InferenceSession)
    assert any("cannot use the top-N kernel" in r.getMessage() for r in caplog.records)
    assert score.open_scorer(path, ["CPUExecutionProvider"], "graph", 2, 8)[1] == "graph"


def test_without_numba_the_fused_graph_serves(tmp_path: Path, monkeypatch, caplog) -> None:
    """Numba is a dependency, but a stripped environment (the GPU check machine carries
    only some wheels) must still score: the fused graph, with a warning."""
    model, folder, rng = big_catalog(tmp_path, True)
    import nightrec

    monkeypatch.setitem(sys.modules, "nightrec.topk", None)  # import fails
    monkeypatch.delattr(nightrec, "topk")
    with caplog.at_level(logging.WARNING, logger="nightrec.score"):
        sess, mode = score.open_scorer(
            folder / registry.SCORER, ["CPUExecutionProvider"], "kernel", 2, 8
        )
    assert mode == "graph" and isinstance(sess, ort.InferenceSession)
    assert any("no top-N kernel" in r.getMessage() for r in caplog.records)


def test_score_config_topk_is_checked() -> None:
    assert ScoreConfig().topk == "kernel"
    with pytest.raises(ContractError, match="topk must be kernel or graph, got 'fast'"):
        ScoreConfig(topk="fast")


def test_the_kernels_workers_fit_their_working_memory() -> None:
    """One worker per CPU while their score matrices fit ``work_memory_mb``; fewer where
    not (the int8 part holds two matrices); never none."""
    cfg = ScoreConfig(model_batch=256, work_memory_mb=2048)
    assert score.kernel_workers(16, cfg, 100_001, int8=False) == 16  # 98 MiB each
    assert score.kernel_workers(16, cfg, 100_001, int8=True) == 10  # 195 MiB each
    assert score.kernel_workers(16, cfg, 1_000_001, int8=False) == 2  # 977 MiB each
    assert score.kernel_workers(16, cfg, 1_000_001, int8=True) == 1
    assert score.kernel_workers(16, cfg, 10_000_001, int8=True) == 1  # over budget: still one
    assert score.kernel_workers(2, cfg, 50_001, int8=True) == 2
    with pytest.raises(ContractError, match="work_memory_mb"):
        ScoreConfig(work_memory_mb=0)
