"""The int8 scorer: ``scorer.onnx`` dynamically quantized, served only within a tolerance.

``Int8Config.enabled`` asks for it; ``registry.export`` then quantizes the fp32 scorer
(weights int8 per output column, activations quantized on the fly by ONNX Runtime) into
``scorer_int8.onnx`` and ranks the fit's held-out examples (``train.holdout``: never
trained on) through both ONNX Runtime sessions. The int8 file is kept, checksummed like
every file of the version, only if the relative drop of their NDCG@10,
``(fp32 - int8) / fp32``, is at most ``Int8Config.tolerance`` and it masks exactly the
entries fp32 masks; otherwise it is deleted and fp32 serves, unchanged. Either way the
manifest's ``int8`` records what was measured and chosen::

    {used, metric, fp32, int8, drop, tolerance, overlap@10, examples, speedup, ...}

What gets quantized: the matrix products with a constant weight, i.e. the user MLP's two
Gemm and the product of the user vectors with the frozen item matrix (its Transpose is
folded first, so that it is a constant); the "because" similarity (two gathered matrices)
and the item-vector lookups stay fp32. The speed-up is CPU only, and small at the
default dim 64: the fused graph then spends most of its time outside those products
(top-N, scatter, gathers); ``bench/ranking.py`` measures it. ``score`` runs the int8
scorer on the CPU provider only: on CUDA the fp32 scorer serves.

The text encoder has its own int8 variant behind a drift gate (``embed``,
``EmbedConfig.quantize``); ``text_record`` copies its decision into the manifest.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from nightrec.config import Int8Config

log = logging.getLogger(__name__)

METRIC, K = "ndcg@10", 10
MAX_EXAMPLES = 4096  # held-out examples ranked through both scorers
TIMED_K = 100  # the top N timed: ScoreConfig.top_n's default
REPEATS = 5  # timed passes per scorer (median), after one warm-up pass
INTEGER_OPS = ("MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat")


def quantize(src: Path, dst: Path, cfg: Int8Config) -> dict:
    """Write ``dst``: ``src`` with int8 weights in its constant matrix products."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = dst.with_name(f".{dst.name}.pre")
    try:
        # ONNX Runtime's basic optimisations fold Transpose(item_matrix) into a constant:
        # without it the largest product has no constant weight and stays fp32
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_dynamic(
            str(pre),
            str(dst),
            weight_type=QuantType.QInt8,
            per_channel=cfg.per_channel,
            reduce_range=cfg.reduce_range,
            op_types_to_quantize=["MatMul", "Gemm"],
        )
    finally:
        pre.unlink(missing_ok=True)
    ops = [n.op_type for n in onnx.load(str(dst)).graph.node]
    products = sum(op in ("MatMul", "Gemm", *INTEGER_OPS) for op in ops)
    return {"products_int8": sum(op in INTEGER_OPS for op in ops), "products": products}


def _session(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), ort.SessionOptions(), providers=["CPUExecutionProvider"])


def _rank(sess, hist: np.ndarray, codes: np.ndarray, bias: np.ndarray, k: int, batch: int = 128):
    """(top scores, top indices), [n, k] each; a history's own items are excluded."""
    from nightrec.registry import scorer_inputs

    outs = []
    for lo in range(0, len(hist), batch):
        h, c = hist[lo : lo + batch], codes[lo : lo + batch]
        outs.append(sess.run(None, scorer_inputs(h, h, bias, k, c)))
    return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])


def _ndcg(top: np.ndarray, target: np.ndarray) -> float:
    hit = top == target[:, None]  # [n, k]
    gain = np.where(hit.any(1), 1.0 / np.log2(hit.argmax(1) + 2.0), 0.0)
    return float(gain.mean()) if len(gain) else 0.0


def _seconds(sess, hist: np.ndarray, codes: np.ndarray, bias: np.ndarray, k: int) -> float:
    """Median seconds of one pass over ``hist`` (after a warm-up pass)."""
    _rank(sess, hist, codes, bias, k)
    times = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        _rank(sess, hist, codes, bias, k)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def compare(
    fp32: Path,
    int8: Path,
    hist: np.ndarray,
    target: np.ndarray,
    n_index: int,
    codes: np.ndarray | None = None,
) -> dict:
    """Both scorers on held-out examples (``hist`` [n, L], ``target`` [n], strength
    ``codes`` [n, L] or None): NDCG@10 of
    each, its relative drop, the mean overlap of their top 10s, whether they mask the same
    entries, and the median seconds of a top-100 pass (CPU)."""
    bias = np.zeros(n_index, dtype=np.float32)
    bias[0] = -np.inf  # every item active; padding never ranked
    s32, s8 = _session(fp32), _session(int8)
    k = min(K, n_index - 1)
    codes = np.zeros_like(hist) if codes is None else codes
    sc32, top32 = _rank(s32, hist, codes, bias, k)
    sc8, top8 = _rank(s8, hist, codes, bias, k)
    a, b = _ndcg(top32, target), _ndcg(top8, target)
    # relative drop; int8 better is a negative drop; a model that never hits cannot drop
    drop = (a - b) / a if a > 0 else 0.0
    overlap = np.mean([len(set(x) & set(y)) / k for x, y in zip(top32, top8, strict=True)])
    timed = min(TIMED_K, n_index - 1)
    t32, t8 = _seconds(s32, hist, codes, bias, timed), _seconds(s8, hist, codes, bias, timed)
    return {
        "metric": METRIC,
        "fp32": round(a, 6),
        "int8": round(b, 6),
        "drop": round(drop, 6),
        "overlap@10": round(float(overlap), 4),
        "masked_equal": bool((np.isfinite(sc32) == np.isfinite(sc8)).all()),
        "examples": len(target),
        "fp32_ms": round(t32 * 1000, 3),
        "int8_ms": round(t8 * 1000, 3),
        "speedup": round(t32 / t8, 3) if t8 > 0 else None,
    }


def build(
    fp32: Path,
    int8: Path,
    cfg: Int8Config,
    held_out: tuple[np.ndarray, ...] | None,
    n_index: int,
) -> dict:
    """Quantize ``fp32`` into ``int8`` and keep it only within ``cfg.tolerance``.

    Returns the manifest's ``int8`` record; ``int8`` exists afterwards only if ``used``.
    """
    record: dict = {"used": False, "metric": METRIC, "tolerance": cfg.tolerance}
    if not cfg.enabled:
        return {**record, "reason": "not asked (int8 off)"}
    if held_out is None or len(held_out[1]) == 0:
        return {**record, "reason": "no held-out examples to measure the drop on: fp32 kept"}
    # (histories, targets[, strengths]): without strengths none are read
    hist, target, *codes = (part[:MAX_EXAMPLES] for part in held_out)
    started = time.perf_counter()
    try:
        ops = quantize(fp32, int8, cfg)
        record.update(compare(fp32, int8, hist, target, n_index, *codes))
    except Exception as exc:  # a graph the quantizer cannot take: fp32 still serves
        int8.unlink(missing_ok=True)
        log.warning("int8: quantizing the scorer failed (%s); fp32 kept", exc)
        return {**record, "reason": f"quantization failed: {str(exc)[:200]}"}
    record.update(ops, per_channel=cfg.per_channel, reduce_range=cfg.reduce_range)
    if not record["masked_equal"]:
        reason = "int8 masks other entries than fp32"
    elif record["drop"] > cfg.tolerance:
        reason = f"{METRIC} drop {record['drop']:.4%} > tolerance {cfg.tolerance:.4%}"
    else:
        reason = f"{METRIC} drop {record['drop']:.4%} <= tolerance {cfg.tolerance:.4%}"
        record["used"] = True
    if not record["used"]:
        int8.unlink()
    record["reason"] = reason
    record["seconds"] = round(time.perf_counter() - started, 2)
    log.info(
        "int8: scorer %s: %s %.4f (fp32 %.4f) over %d held-out examples, %s; "
        "top-10 overlap %.3f, %.2fx the fp32 speed on CPU",
        "used" if record["used"] else "not used",
        METRIC,
        record["int8"],
        record["fp32"],
        record["examples"],
        reason,
        record["overlap@10"],
        record["speedup"] or 0.0,
    )
    return record


def text_record(embed_info: dict) -> dict:
    """The text encoder's int8 decision (``embed``'s drift gate), from ``embed.json``.

    ``drift_gate`` is there when this snapshot's texts were encoded now; texts all reused
    from the cache were encoded by an earlier run under the same cache key.
    """
    runtime = embed_info.get("runtime") or {}
    out: dict = {"used": str(embed_info.get("encoder", "")).endswith("-int8")}
    if runtime.get("runtime"):
        out["runtime"] = runtime["runtime"]
    if "drift_gate" in runtime:
        out["metric"] = "min cosine to PyTorch"
        out["drift_gate"] = runtime["drift_gate"]
    return out
