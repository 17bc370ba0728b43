"""The int8 scorer: ``scorer.onnx`` dynamically quantized, served only within a tolerance.

``Int8Config.enabled`` asks for it (``auto``, the default: where the scorer's item matrix
is large enough for int8 to pay and ONNX Runtime has no CUDA to serve fp32 or fp16,
``Int8Config.wanted``); ``registry.export`` then quantizes the fp32 scorer (weights int8
per output column, activations quantized on the fly by ONNX Runtime) into
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
and the item-vector lookups stay fp32. The speed-up is CPU only, and grows with the item
matrix: none at 5k items x 64 wide, 1.10-1.33x at 20k-50k items 64-192 wide
(``bench/ranking.py``), where the product is most of the scorer's time. ``score`` runs
the int8 scorer on the CPU provider only: on CUDA the fp32 (or fp16) scorer serves.

The text encoder has its own int8 variant behind a drift gate (``embed``,
``EmbedConfig.quantize``); ``text_record`` copies its decision into the manifest.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from nightrec.config import Fp16Config, Int8Config, cuda_in_onnxruntime

log = logging.getLogger(__name__)

METRIC, K = "ndcg@10", 10
MAX_EXAMPLES = 4096  # held-out examples ranked through both scorers
TIMED_K = 100  # the top N timed: ScoreConfig.top_n's default
REPEATS = 3  # timed passes per scorer (median), after one warm-up pass over every example
TIMED_EXAMPLES = 1024  # examples per timed pass (the speed-up is a record, not the gate)
INTEGER_OPS = ("MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat")
# ops the fp16 scorer keeps in fp32 (Casts around them): ONNX Runtime's CPU ScatterElements
# has no fp16 add, and the gate may measure on the CPU
FP16_KEPT_FP32 = ("ScatterElements",)


def quantize(src: Path, dst: Path, cfg: Int8Config) -> dict:
    """Write ``dst``: ``src`` with int8 weights in its constant matrix products.

    The graph ONNX Runtime's ``quantize_dynamic`` writes for them (int8 weights, per
    output column with ``cfg.per_channel``, 7-bit with ``cfg.reduce_range``; activations
    quantized on the fly), built here directly: for the 1M-user model (49k items) ONNX
    Runtime's per-column Python loop and its pre-processing took 12.3 s, this 1.8 s.
    ``tests/test_int8.py`` holds the two to the same int8 weights and the same outputs, bit
    for bit, for the graphs nightrec exports.

    A product is quantized where its second operand is a 2-D float constant: an
    initializer that is not also a graph input (a caller may feed that one), or one seen
    through a Transpose (the item matrix); a Gemm (``alpha`` = ``beta`` = 1, no ``transA``)
    becomes that product plus its bias. Each becomes ``DynamicQuantizeLinear`` (once per
    activation) → ``MatMulInteger`` → ``Cast`` → ``Mul`` by the product of the two scales,
    which ONNX Runtime fuses when the session loads. Other constant chains (Reshape, Cast,
    Identity, 3-D weights), which ONNX Runtime's pre-processing would fold, stay fp32: a
    graph with no product quantized is refused (``ValueError``), not passed off as int8.
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    fed = {t.name for t in graph.input}  # an initializer listed as an input is a default only
    consts = {t.name: t for t in graph.initializer if t.name not in fed}
    arrays: dict[str, np.ndarray] = {}  # initializers read so far, each converted once
    taken = {t.name for t in (*graph.input, *graph.output, *graph.initializer)}
    taken |= {name for node in graph.node for name in (*node.input, *node.output)}
    made: dict[str, np.ndarray] = {}  # constants seen through a Transpose, by tensor name
    # (float constant, transposed) -> its int8 initializers' names
    weights: dict[tuple[str, bool], tuple[str, ...]] = {}
    activations: dict[str, tuple[str, ...]] = {}  # tensor -> (quantized, scale, zero)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    n_int8 = 0

    def constant(name: str) -> np.ndarray | None:
        if name in made:
            return made[name]
        t = consts.get(name)
        if t is None or t.data_type != onnx.TensorProto.FLOAT:
            return None
        if name not in arrays:
            arrays[name] = numpy_helper.to_array(t)
        return arrays[name]

    def fresh(base: str, *suffixes: str) -> tuple[str, ...]:
        """``base_<suffix>`` for each suffix, or ``base_<suffix>_1``… where the graph
        already has that name."""
        names = []
        for suffix in suffixes:
            name = new = f"{base}_{suffix}"
            n = 0
            while new in taken:
                n += 1
                new = f"{name}_{n}"
            taken.add(new)
            names.append(new)
        return tuple(names)

    def int8_weight(name: str, transposed: bool, w: np.ndarray) -> tuple[str, ...]:
        if (name, transposed) not in weights:
            q, scale = _int8_columns(w, cfg)
            base = f"{name}_Transposed" if transposed else name
            names = fresh(base, "quantized", "scale", "zero_point")
            zero = np.zeros(scale.shape, dtype=np.int8)
            inits.extend(
                numpy_helper.from_array(a, n) for a, n in zip((q, scale, zero), names, strict=True)
            )
            weights[name, transposed] = names
        return weights[name, transposed]

    def product(a: str, w_name: str, w: np.ndarray, out: str, transposed: bool = False) -> None:
        if a not in activations:
            activations[a] = fresh(a, "quantized", "scale", "zero_point")
            nodes.append(helper.make_node("DynamicQuantizeLinear", [a], list(activations[a])))
        a_q, a_scale, a_zero = activations[a]
        w_q, w_scale, w_zero = int8_weight(w_name, transposed, w)
        scales, acc, acc_float = fresh(out, "scales", "int32", "int32_float")
        nodes.append(helper.make_node("Mul", [a_scale, w_scale], [scales]))
        nodes.append(helper.make_node("MatMulInteger", [a_q, w_q, a_zero, w_zero], [acc]))
        nodes.append(helper.make_node("Cast", [acc], [acc_float], to=onnx.TensorProto.FLOAT))
        nodes.append(helper.make_node("Mul", [acc_float, scales], [out]))

    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        source = constant(node.input[0]) if node.input else None
        if node.op_type == "Transpose" and source is not None:  # a constant: folded
            made[node.output[0]] = np.transpose(source, attrs.get("perm"))
            continue
        w = constant(node.input[1]) if len(node.input) > 1 else None
        if w is None or w.ndim != 2:
            nodes.append(node)
            continue
        if node.op_type == "MatMul":
            product(node.input[0], node.input[1], w, node.output[0])
        elif node.op_type == "Gemm" and (
            attrs.get("alpha", 1.0) == 1.0
            and attrs.get("beta", 1.0) == 1.0
            and not attrs.get("transA", 0)
        ):
            transposed = bool(attrs.get("transB", 0))
            w = w.T if transposed else w
            bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
            out = fresh(node.output[0], "MatMul")[0] if bias else node.output[0]
            product(node.input[0], node.input[1], np.ascontiguousarray(w), out, transposed)
            if bias:
                nodes.append(helper.make_node("Add", [out, bias], [node.output[0]]))
        else:
            nodes.append(node)
            continue
        n_int8 += 1
    if n_int8 == 0:
        raise ValueError(
            "no matrix product with a 2-D float constant weight (an initializer, or one seen "
            "through a Transpose) to quantize"
        )
    # constants still read by a kept node (a folded Transpose that fed one) stay constants
    read = _names_read(nodes) | {t.name for t in (*graph.input, *graph.output)}
    inits.extend(numpy_helper.from_array(a, n) for n, a in made.items() if n in read)
    kept = [t for t in graph.initializer if t.name in read]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend([*kept, *inits])
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    products = sum(n.op_type in ("MatMul", "Gemm", *INTEGER_OPS) for n in nodes)
    return {"products_int8": n_int8, "products": products}


def _names_read(nodes) -> set[str]:
    """Every tensor name ``nodes`` read, their subgraphs' (If, Loop, Scan) included."""
    from onnx import AttributeProto

    read: set[str] = set()
    for node in nodes:
        read.update(node.input)
        for attr in node.attribute:
            graphs = [attr.g] if attr.type == AttributeProto.GRAPH else list(attr.graphs)
            for g in graphs:
                read |= _names_read(g.node)
    return read


def _int8_columns(w: np.ndarray, cfg: Int8Config) -> tuple[np.ndarray, np.ndarray]:
    """(int8 weights, fp32 scales) of ``w`` [K, N]: symmetric, one scale per column with
    ``cfg.per_channel`` (else one), as ONNX Runtime's quantizer computes them."""
    w = w.astype(np.float32, copy=False)
    q_max = 64.0 if cfg.reduce_range else 127.0  # 7-bit: [-64, 64]; else [-127, 127]
    axis = 0 if cfg.per_channel else None
    low = np.minimum(w.min(axis=axis), np.float32(0))
    high = np.maximum(w.max(axis=axis), np.float32(0))
    top = np.maximum(np.abs(low), np.abs(high))
    wide = top.astype(np.float64) * 2.0 / (2.0 * q_max)  # its range over the int range
    scale = np.where(wide < np.finfo(np.float32).tiny, 1.0, wide).astype(np.float32)
    q = np.clip(np.round(w / scale), -128, 127).astype(np.int8)
    return q, np.atleast_1d(scale) if cfg.per_channel else scale.reshape(())


def half(src: Path, dst: Path) -> dict:
    """Write ``dst``: ``src`` in fp16 (its item matrix and every float op but the scatter,
    which ONNX Runtime's CPU kernels lack in fp16), with fp32 inputs and outputs."""
    import warnings

    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    with warnings.catch_warnings():  # "values truncated to fp16": what fp16 means
        warnings.simplefilter("ignore")
        model = convert_float_to_float16(
            onnx.load(str(src)),
            keep_io_types=True,
            op_block_list=[*DEFAULT_OP_BLOCK_LIST, *FP16_KEPT_FP32],
        )
    onnx.save(model, str(dst))
    ops = [n.op_type for n in model.graph.node]
    return {"products": sum(op in ("MatMul", "Gemm") for op in ops), "casts": ops.count("Cast")}


def _session(path: Path, providers: list[str] | None = None):
    import onnxruntime as ort

    providers = providers or ["CPUExecutionProvider"]
    return ort.InferenceSession(str(path), ort.SessionOptions(), providers=providers)


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


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Mean share of each row of ``a`` [n, k] that the same row of ``b`` holds."""
    k = a.shape[1]
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a, b, strict=True)]))


def _wide(n_index: int) -> str:
    """The record's key of the top-N overlap (``TIMED_K``, or every item when fewer)."""
    return f"overlap@{min(TIMED_K, n_index - 1)}"


def _seconds(sess, hist: np.ndarray, codes: np.ndarray, bias: np.ndarray, k: int):
    """(median seconds of a pass over ``TIMED_EXAMPLES`` of ``hist``, the warm-up pass's
    (scores, indices) over all of them)."""
    first = _rank(sess, hist, codes, bias, k)
    times = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        _rank(sess, hist[:TIMED_EXAMPLES], codes[:TIMED_EXAMPLES], bias, k)
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), first


def compare(
    fp32: Path,
    other: Path,
    hist: np.ndarray,
    target: np.ndarray,
    n_index: int,
    codes: np.ndarray | None = None,
    name: str = "int8",
    providers: list[str] | None = None,
) -> dict:
    """Both scorers on held-out examples (``hist`` [n, L], ``target`` [n], strength
    ``codes`` [n, L] or None): NDCG@10 of each (``other``'s under ``name``), its relative
    drop, the mean overlap of their top 10s and top 100s, whether they mask the same
    entries, and the median seconds of a top-100 pass, on ``providers`` (None: the CPU)."""
    bias = np.zeros(n_index, dtype=np.float32)
    bias[0] = -np.inf  # every item active; padding never ranked
    s32, s_other = _session(fp32, providers), _session(other, providers)
    codes = np.zeros_like(hist) if codes is None else codes
    # one top-100 pass per scorer (the timing's warm-up): its first 10 are the top 10, as
    # the scorer sorts by score, ties by the lower index, whatever N it is asked for
    timed = min(TIMED_K, n_index - 1)
    t32, wide32 = _seconds(s32, hist, codes, bias, timed)
    t_o, wide_o = _seconds(s_other, hist, codes, bias, timed)
    k = min(K, n_index - 1)
    top32, top_o = wide32[1][:, :k], wide_o[1][:, :k]
    a, b = _ndcg(top32, target), _ndcg(top_o, target)
    # relative drop; the other better is a negative drop; a model that never hits cannot drop
    drop = (a - b) / a if a > 0 else 0.0
    return {
        "metric": METRIC,
        "fp32": round(a, 6),
        name: round(b, 6),
        "drop": round(drop, 6),
        "overlap@10": round(_overlap(top32, top_o), 4),
        _wide(n_index): round(_overlap(wide32[1], wide_o[1]), 4),
        "masked_equal": bool((np.isfinite(wide32[0]) == np.isfinite(wide_o[0])).all()),
        "examples": len(target),
        "provider": s_other.get_providers()[0],
        "fp32_ms": round(t32 * 1000, 3),
        f"{name}_ms": round(t_o * 1000, 3),
        "speedup": round(t32 / t_o, 3) if t_o > 0 else None,
    }


def build(
    fp32: Path,
    int8: Path,
    cfg: Int8Config,
    held_out: tuple[np.ndarray, ...] | None,
    n_index: int,
    width: int,
) -> dict:
    """Quantize ``fp32`` into ``int8`` and keep it only within ``cfg.tolerance``, where
    ``cfg`` wants it for an item matrix of ``n_index`` rows, ``width`` wide.

    Returns the manifest's ``int8`` record; ``int8`` exists afterwards only if ``used``.
    """
    cuda = cfg.enabled == "auto" and cuda_in_onnxruntime()
    if not cfg.wanted(n_index, width, cuda):
        record = {"used": False, "metric": METRIC, "tolerance": cfg.tolerance}
        if cfg.enabled == "off":
            return {**record, "reason": "not asked (int8 off)"}
        if n_index * width < cfg.auto_cells:
            why = f"auto: item matrix {n_index} x {width} < {cfg.auto_cells:,} cells"
        else:
            why = (
                "auto: ONNX Runtime has CUDA here, which serves the fp32 or fp16 scorer; "
                "int8=on builds it where the scores are made on a CPU elsewhere"
            )
        return {**record, "enabled": cfg.enabled, "reason": f"not built ({why})"}
    return _gated(
        "int8",
        lambda: quantize(fp32, int8, cfg),
        fp32,
        int8,
        held_out,
        n_index,
        {
            "tolerance": cfg.tolerance,
            "enabled": cfg.enabled,
            "per_channel": cfg.per_channel,
            "reduce_range": cfg.reduce_range,
        },
        None,  # the CPU: int8 serves there only
    )


def build_fp16(
    fp32: Path,
    fp16: Path,
    cfg: Fp16Config,
    held_out: tuple[np.ndarray, ...] | None,
    n_index: int,
) -> dict:
    """Convert ``fp32`` into ``fp16`` and keep it only where it ranks like fp32 (the same
    masked entries, top-100 overlap >= ``cfg.min_overlap``, NDCG@10 drop <= ``cfg.tolerance``),
    measured on the provider that would serve it (CUDA when ONNX Runtime has it here).

    Returns the manifest's ``fp16`` record; ``fp16`` exists afterwards only if ``used``.
    """
    from nightrec.score import choose_providers

    gate = {"tolerance": cfg.tolerance, "min_overlap": cfg.min_overlap, "enabled": cfg.enabled}
    if not cfg.wanted():
        reason = "off" if cfg.enabled == "off" else "auto, and no CUDA in ONNX Runtime here"
        return {"used": False, "metric": METRIC, **gate, "reason": f"not built ({reason})"}
    return _gated(
        "fp16",
        lambda: half(fp32, fp16),
        fp32,
        fp16,
        held_out,
        n_index,
        gate,
        choose_providers("auto"),
    )


def _gated(
    name: str,
    make: Callable[[], dict],
    fp32: Path,
    out: Path,
    held_out: tuple[np.ndarray, ...] | None,
    n_index: int,
    gate: dict,
    providers: list[str] | None,
) -> dict:
    """Make ``out`` (int8 or fp16) from ``fp32``, rank the held-out examples through both,
    and keep ``out`` only within ``gate``; returns the manifest's record of it."""
    record: dict = {"used": False, "metric": METRIC, **gate}
    if held_out is None or len(held_out[1]) == 0:
        return {**record, "reason": "no held-out examples to measure the drop on: fp32 kept"}
    # (histories, targets[, strengths]): without strengths none are read
    hist, target, *rest = (part[:MAX_EXAMPLES] for part in held_out)
    codes = rest[0] if rest else None
    started = time.perf_counter()
    try:
        record.update(make())
        record.update(compare(fp32, out, hist, target, n_index, codes, name, providers))
    except Exception as exc:  # a graph the converter cannot take: fp32 still serves
        out.unlink(missing_ok=True)
        log.warning("%s: making the scorer failed (%s); fp32 kept", name, exc)
        return {**record, "reason": f"{name} failed: {str(exc)[:200]}"}
    wide = _wide(n_index)
    if not record["masked_equal"]:
        reason = f"{name} masks other entries than fp32"
    elif record["drop"] > gate["tolerance"]:
        reason = f"{METRIC} drop {record['drop']:.4%} > tolerance {gate['tolerance']:.4%}"
    elif "min_overlap" in gate and record[wide] < gate["min_overlap"]:
        reason = f"{wide} {record[wide]:.4f} < {gate['min_overlap']}"
    else:
        reason = f"{METRIC} drop {record['drop']:.4%} <= tolerance {gate['tolerance']:.4%}"
        if "min_overlap" in gate:
            reason += f", {wide} {record[wide]:.4f} >= {gate['min_overlap']}"
        record["used"] = True
    if not record["used"]:
        out.unlink()
    record["reason"] = reason
    record["seconds"] = round(time.perf_counter() - started, 2)
    log.info(
        "%s: scorer %s: %s %.4f (fp32 %.4f) over %d held-out examples, %s; "
        "top-10 overlap %.3f, %.2fx the fp32 speed on %s",
        name,
        "used" if record["used"] else "not used",
        METRIC,
        record[name],
        record["fp32"],
        record["examples"],
        reason,
        record["overlap@10"],
        record["speedup"] or 0.0,
        record["provider"],
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
