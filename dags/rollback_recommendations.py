"""
### Roll back recommendations

Serve an earlier published version: choose it in the `version` Param (the versions kept
under `NIGHTREC_HOME/serving/versions`, listed when this file is parsed), or leave
`previous` to serve the version that was live before the current one. Readers of
`serving/serving.duckdb` and `serving/current.json` see the change at once; the next
nightly run for a date not older than the chosen version serves its own output again.
Same as `nightrec rollback [--version ID]`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pendulum
from airflow.sdk import Asset, Param, dag, task

RECOMMENDATIONS = Asset("nightrec_recommendations")


def _kept_versions() -> list[str]:
    """Serving versions on disk, newest first (a cheap directory listing at parse time)."""
    folder = Path(os.environ.get("NIGHTREC_HOME", "var")) / "serving" / "versions"
    try:
        names = [p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
    except OSError:
        return []
    return sorted(names, reverse=True)


def on_failure(context) -> None:
    """One clear summary line in the log, and the deployment's notifier (if configured)."""
    from nightrec.ops import report_failure

    report_failure(context)


@dag(
    dag_id="rollback_recommendations",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["nightrec", "operations"],
    doc_md=__doc__,
    default_args={"owner": "nightrec", "retries": 0, "on_failure_callback": on_failure},
    params={
        "version": Param(
            "previous",
            type="string",
            enum=["previous", *_kept_versions()],
            title="Serving version",
            description="The version to serve; `previous`: the one live before the current.",
        ),
    },
)
def rollback_recommendations():
    @task(outlets=[RECOMMENDATIONS])
    def rollback(**context) -> str:
        from airflow.sdk.exceptions import AirflowFailException

        from nightrec.config import ContractError, Settings, apply_umask
        from nightrec.ops import check_conf
        from nightrec.publish import rollback

        version = context["params"]["version"]
        apply_umask()
        try:
            check_conf(context["dag_run"].conf, ["version"])
            return rollback(Settings.from_env(), None if version == "previous" else version)
        except ContractError as exc:
            raise AirflowFailException(str(exc)) from exc

    rollback()


rollback_recommendations()
