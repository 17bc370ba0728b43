"""Test set-up: Airflow on a temporary SQLite home, nightrec state in temporary folders.

The Airflow environment must be set before anything imports airflow.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="nightrec-airflow-"))
os.environ.update(
    {
        "AIRFLOW_HOME": str(_AIRFLOW_HOME),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_AIRFLOW_HOME / 'airflow.db'}",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
)
# models train on the CPU, whose runs repeat bit for bit (what many tests compare), even on
# a GPU host; the CUDA training test asks for the GPU itself
os.environ.setdefault("NIGHTREC_TRAIN_DEVICE", "cpu")
# the tests' time budgets are their own, whatever the developer's shell sets
os.environ.pop("NIGHTREC_MAX_TRAIN_SECONDS", None)
os.environ.pop("NIGHTREC_TEXT_PRECISION", None)
sys.path.insert(0, str(REPO))

from nightrec.config import Settings  # noqa: E402

AS_OF = dt.date(2026, 11, 1)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """A fresh nightrec home and model registry in a temporary folder."""
    return Settings.from_env(home=tmp_path / "home", models_dir=tmp_path / "models")


@pytest.fixture
def rng():
    import numpy as np

    return np.random.default_rng(1234)


def write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *rows]) + "\n")
    return path
