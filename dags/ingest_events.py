"""
### Ingest events

Load new landing files (`NIGHTREC_HOME/landing/{items,users,events}/`) into the DuckDB
warehouse on a schedule (`NIGHTREC_INGEST_CRON`, default every 30 minutes) or by hand.
Skips when no new file arrived; otherwise updates the Asset `nightrec_events`, which
`nightly_recommendations` can be scheduled on (`NIGHTREC_SCHEDULE=asset` or `both`).
Bad rows go to `rejected_rows` with file, row, field and reason; a file that cannot be
read is quarantined with its reason and the others still load.
"""

from __future__ import annotations

import datetime as dt
import os

import pendulum
from airflow.sdk import Asset, dag, task

WAREHOUSE_POOL = "nightrec_warehouse"
EVENTS = Asset("nightrec_events")


def on_failure(context) -> None:
    """One clear summary line in the log, and the deployment's notifier (if configured)."""
    from nightrec.ops import report_failure

    report_failure(context)


@dag(
    dag_id="ingest_events",
    schedule=os.environ.get("NIGHTREC_INGEST_CRON", "*/30 * * * *"),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["nightrec", "ingest"],
    doc_md=__doc__,
    default_args={
        "owner": "nightrec",
        "retries": 2,
        "retry_delay": dt.timedelta(minutes=1),
        "retry_exponential_backoff": True,
        "execution_timeout": dt.timedelta(hours=1),
        "on_failure_callback": on_failure,
    },
)
def ingest_events():
    @task(pool=WAREHOUSE_POOL, outlets=[EVENTS])
    def ingest() -> dict:
        import logging

        from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

        from nightrec.config import ContractError, Settings, apply_umask
        from nightrec.ingest import ingest

        apply_umask()
        try:
            totals = ingest(Settings.from_env()).totals
        except ContractError as exc:
            raise AirflowFailException(str(exc)) from exc
        if totals.get("files_quarantined"):
            from nightrec.ops import notify

            text = (
                f"nightrec ingest: {totals['files_quarantined']} landing file(s) quarantined; "
                "see table quarantined_files (the other files loaded)"
            )
            logging.getLogger("nightrec.ops").warning(text)
            notify({"text": text, "dag_id": "ingest_events", "totals": totals})
        if not totals["files_new"]:
            raise AirflowSkipException("no new landing files")
        return totals

    ingest()


ingest_events()
