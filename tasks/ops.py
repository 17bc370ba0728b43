"""Operations glue without Airflow: conf checks, failure summaries, the deployment's notifier,
and quiet third-party logs. The DAG files call these from their thin wrappers.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import urllib.request
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

from nightrec.config import ContractError

log = logging.getLogger(__name__)

NOISY = (
    "onnxscript",
    "onnx_ir",
    "torch.onnx",
    "torch._dynamo",
    "torch.export",
    "transformers",
    "httpx",
    "filelock",
    "urllib3",
    "huggingface_hub",
)


def check_conf(conf: Mapping[str, Any] | None, allowed: Iterable[str]) -> None:
    """Refuse a run conf with keys that are not Params (a typo like ``topn`` must not pass)."""
    unknown = sorted(set(conf or {}) - set(allowed))
    if unknown:
        raise ContractError(
            f"unknown conf key(s) {', '.join(map(repr, unknown))}; "
            f"the Params are: {', '.join(sorted(allowed))}"
        )


def failure_summary(
    dag_id: str, task_id: str | None, run_id: str, try_number: int | None, error: object
) -> dict:
    """One line a person on call can act on, plus the fields a notifier may want."""
    text = (
        f"nightrec FAILED: dag {dag_id}, task {task_id or '-'}, run {run_id}, "
        f"try {try_number or '-'}: {type(error).__name__ if error else 'error'}: "
        f"{str(error)[:500] if error else 'see the task log'}"
    )
    return {
        "text": text,
        "dag_id": dag_id,
        "task_id": task_id,
        "run_id": run_id,
        "try_number": try_number,
        "error": str(error)[:2000] if error else None,
    }


def report_failure(context: Mapping[str, Any]) -> dict:
    """An Airflow failure callback's body: log one summary line and call the notifier.

    ``context`` is the task context Airflow passes to ``on_failure_callback``; read as a
    plain mapping so this module stays free of Airflow imports.
    """
    ti = context.get("task_instance") or context.get("ti")
    dag = context.get("dag")
    summary = failure_summary(
        str(getattr(dag, "dag_id", None) or getattr(ti, "dag_id", "?")),
        getattr(ti, "task_id", None),
        str(context.get("run_id", "?")),
        getattr(ti, "try_number", None),
        context.get("exception"),
    )
    log.error(summary["text"])
    notify(summary)
    return summary


def notify(summary: dict) -> bool:
    """Send ``summary`` to the deployment's notifier; never raises.

    ``NIGHTREC_NOTIFY_URL``: POST the summary as JSON (e.g. a Slack/Teams/Alertmanager
    webhook relay). ``NIGHTREC_NOTIFY_COMMAND``: run this command with the JSON on stdin.
    Neither set: the summary is only logged.
    """
    sent = False
    url = os.environ.get("NIGHTREC_NOTIFY_URL")
    if url:
        if not url.startswith(("http://", "https://")):
            log.error("notify: NIGHTREC_NOTIFY_URL must be http(s), got %r", url[:40])
        else:
            body = json.dumps(summary).encode()
            req = urllib.request.Request(
                url, data=body, headers={"Content-Type": "application/json"}, method="POST"
            )
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - http(s) only
                    sent = 200 <= resp.status < 300
            except OSError as exc:
                log.error("notify: POST to the notifier failed: %s", exc)
    command = os.environ.get("NIGHTREC_NOTIFY_COMMAND")
    if command:
        try:
            done = subprocess.run(
                command, shell=True, input=json.dumps(summary).encode(), timeout=30, check=False
            )
            sent = sent or done.returncode == 0
        except (OSError, subprocess.SubprocessError) as exc:
            log.error("notify: command failed: %s", exc)
    return sent


def quiet_third_party() -> None:
    """Third-party INFO chatter (ONNX export passes, model loading bars) down to warnings."""
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.WARNING)
    # the exporter's registry notes (torchvision ops absent) and its deprecation notices
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning, module="copyreg")
    warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx\..*")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass
