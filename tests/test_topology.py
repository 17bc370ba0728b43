"""The production topology, natively: a real PostgreSQL 15 metadata DB and the separate
Airflow 3 services (api-server, scheduler, dag-processor, triggerer) as their own process
groups, driven only through the REST API with a JWT, the way a user or an app drives them.

It runs what docker-compose.yml runs, minus Docker and Celery (LocalExecutor here): the
migrated Postgres schema, the warehouse pool, the shared JWT secret, the Execution API URL,
the DAG unpaused by PATCH and triggered with a conf, Param validation (HTTP 400), and the
published serving table at the end. A few minutes on 2 cores.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # the venv's bin: airflow, nightrec
DAG_ID = "nightly_recommendations"
USERS, ITEMS, TOP_N = 80, 30, 5
CONF = {"as_of": "2026-11-01", "top_n": TOP_N, "provider": "cpu"}
RUN_TIMEOUT_S = 480

# 127.0.0.1 only, never through a proxy from the environment
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _pg_bin(name: str) -> str | None:
    """A PostgreSQL binary from PATH, else from Debian's versioned folder."""
    if found := shutil.which(name):
        return found
    versions = glob.glob(f"/usr/lib/postgresql/*/bin/{name}")
    return max(versions, key=lambda p: int(Path(p).parts[-3]), default=None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 40, width: int = 600) -> str:
    try:
        return "\n".join(
            line[:width] for line in path.read_text(errors="replace").splitlines()[-lines:]
        )
    except OSError as exc:
        return f"({path}: {exc})"


class Postgres:
    """A throwaway PostgreSQL cluster; as root it runs as the ``postgres`` user."""

    def __init__(self) -> None:
        self.initdb, self.pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
        if not (self.initdb and self.pg_ctl):
            pytest.skip("PostgreSQL binaries (initdb, pg_ctl) not found; .ci/run installs them")
        # its own folder under /tmp: pytest's tmp_path is private to root, postgres cannot
        # enter it
        self.dir = Path(tempfile.mkdtemp(prefix="nightrec-pg-"))
        self.port = _free_port()
        self.as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")
        self.started = False

    def _run(self, *args: str) -> None:
        out = subprocess.run(
            [*self.as_postgres, *args],
            capture_output=True,
            text=True,
            timeout=120,
            env={"PATH": os.environ["PATH"], "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"},
        )
        assert out.returncode == 0, f"{args}\n{out.stdout}\n{out.stderr}"

    def start(self) -> str:
        self._run(self.initdb, "-D", f"{self.dir}/db", "-A", "trust", "-U", "airflow")
        options = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c max_connections=200 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self.started = True
        self._run(self.pg_ctl, "-D", f"{self.dir}/db", "-o", options, "-l", f"{self.dir}/log",
                  "-w", "start")  # fmt: skip
        return f"postgresql+psycopg2://airflow@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        if self.started:
            with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
                self._run(self.pg_ctl, "-D", f"{self.dir}/db", "-m", "fast", "-w", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)


class Services:
    """Airflow processes, each the leader of its own process group."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs = env, logs
        self.procs: dict[str, subprocess.Popen] = {}

    def run(self, *args: str, timeout: int = 300) -> str:
        out = subprocess.run(
            [str(BIN / "airflow"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.logs,
        )
        assert out.returncode == 0, f"airflow {args}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
        return out.stdout

    def start(self, name: str, *args: str) -> None:
        with open(self.logs / f"{name}.log", "wb") as log:
            self.procs[name] = subprocess.Popen(
                [str(BIN / "airflow"), *args],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.logs,
                start_new_session=True,  # setsid: the service and its children in one group
            )

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            assert proc.poll() is None, f"{name} exited ({proc.returncode}):\n{self.tail(name)}"

    def tail(self, name: str, lines: int = 40, width: int = 600) -> str:
        return _tail(self.logs / f"{name}.log", lines, width)

    def stop(self, grace_s: float = 20) -> None:
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        for proc in self.procs.values():
            # the leader is reaped; anything left in its group gets KILL
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)


class Api:
    """The REST API v2 through stdlib urllib, with a JWT once ``login`` ran."""

    def __init__(self, base: str) -> None:
        self.base, self.token = base, None

    def call(self, method: str, path: str, body: object = None) -> tuple[int, object]:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with _OPENER.open(req, timeout=30) as resp:
                raw = resp.read()
                return resp.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            raw = exc.read().decode(errors="replace")
            with contextlib.suppress(ValueError):
                return exc.code, json.loads(raw)
            return exc.code, raw

    def login(self, username: str, password: str) -> None:
        status, body = self.call(
            "POST", "/auth/token", {"username": username, "password": password}
        )
        assert status in (200, 201), (status, body)
        self.token = body["access_token"]


def _wait(what: str, until, services: Services, timeout_s: float, every_s: float = 2.0):
    """Poll ``until()`` until it returns something truthy; fail early if a service died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        services.check_alive()
        with contextlib.suppress(OSError):  # connection refused while a server starts
            if result := until():
                return result
        time.sleep(every_s)
    logs = "\n".join(f"--- {n} ---\n{services.tail(n, 20)}" for n in services.procs)
    pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}\n{logs}")


def _published(serving: Path) -> tuple[int, int, list[str]]:
    """(users, rows, run ids) of the first serving DuckDB under ``serving`` that has a
    recommendations table or view; the serving folder's layout may change."""
    import duckdb

    errors = []
    for path in sorted(serving.rglob("*.duckdb")):
        try:
            with duckdb.connect(str(path), read_only=True) as con:
                return con.execute(
                    "select count(distinct user_id), count(*), list(distinct run_id) "
                    "from recommendations"
                ).fetchone()
        except duckdb.Error as exc:
            errors.append(f"{path}: {exc}")
    raise AssertionError(f"no serving DuckDB with recommendations under {serving}: {errors}")


def _log_digest(path: Path, lines: int = 25) -> str:
    """The last lines of a task log (JSON lines) as `level event`, with exception details."""
    out = []
    for raw in _tail(path, 2000, width=100_000).splitlines():
        try:
            rec = json.loads(raw)
        except ValueError:
            out.append(raw[:300])
            continue
        if rec.get("level") == "debug":
            continue
        line = f"{rec.get('level', '?')}: {str(rec.get('event', ''))[:300]}"
        for err in rec.get("error_detail") or []:
            line += f"\n    {err.get('exc_type')}: {str(err.get('exc_value'))[:500]}"
            frames = err.get("frames") or []
            line += "".join(
                f"\n      {f.get('filename')}:{f.get('lineno')} {f.get('name')}"
                for f in frames[-4:]
            )
        out.append(line)
    return "\n".join(out[-lines:])


def _diagnose(api: Api, run_id: str, airflow_home: Path, services: Services) -> str:
    """Task states, the logs of the tasks that did not succeed, DAG parse logs, scheduler."""
    parts, unfinished = [], set()
    status, body = api.call("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances")
    if status == 200:
        for ti in body["task_instances"]:
            parts.append(
                f"{ti['task_id']}[{ti['map_index']}]: {ti['state']} (try {ti['try_number']})"
            )
            if ti["state"] != "success":
                unfinished.add(ti["task_id"])
    else:
        parts.append(f"taskInstances: HTTP {status} {body}")
    logs = airflow_home / "logs"
    for log in sorted(logs.rglob("*.log")):
        rel = log.relative_to(logs).as_posix()
        task = next((p[len("task_id=") :] for p in log.parts if p.startswith("task_id=")), None)
        if (task in unfinished and run_id in rel) or rel.startswith("dag_processor/"):
            parts.append(f"--- {rel} ---\n{_log_digest(log)}")
    parts.append(f"--- scheduler ---\n{services.tail('scheduler', 20, width=300)}")
    return "\n".join(parts)


def test_topology_postgres_and_separate_services(tmp_path):
    airflow_home, home, models = tmp_path / "airflow", tmp_path / "home", tmp_path / "models"
    airflow_home.mkdir()
    api_port = _free_port()
    password = secrets.token_urlsafe(16)
    passwords_file = airflow_home / "passwords.json"
    passwords_file.write_text(json.dumps({"admin": password}))
    env = {
        "PATH": f"{BIN}:/usr/local/bin:/usr/bin:/bin",  # its children die silently without it
        "HOME": str(tmp_path),
        "LANG": "C.UTF-8",
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
        # one secret for every component, as in docker-compose.yml
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(64),
        "AIRFLOW__API__SECRET_KEY": secrets.token_hex(32),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(api_port),
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{api_port}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords_file),
        # only the run this test triggers: unpausing must not add a scheduled run
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
        "NIGHTREC_HOME": str(home),
        "NIGHTREC_MODELS_DIR": str(models),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        # two cores shared by five services: one thread per task process avoids spin-waits
        "OMP_NUM_THREADS": "1",
    }
    synth = subprocess.run(
        [str(BIN / "nightrec"), "-q", "synth", "--users", str(USERS), "--items", str(ITEMS)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert synth.returncode == 0, synth.stderr

    postgres = Postgres()
    services = Services(env, tmp_path)
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    try:
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = postgres.start()
        services.run("db", "migrate")
        services.run("pools", "set", "nightrec_warehouse", "1", "tasks that open the warehouse")
        timings["postgres + migrate"] = time.monotonic() - t0

        services.start("api-server", "api-server")
        services.start("scheduler", "scheduler")
        services.start("dag-processor", "dag-processor")
        services.start("triggerer", "triggerer")
        api = Api(f"http://127.0.0.1:{api_port}")
        _wait("the api-server", lambda: api.call("GET", "/api/v2/version")[0] == 200, services, 180)
        api.login("admin", password)
        status, _ = api.call("GET", "/api/v2/dags")
        assert status == 200

        def dag_parsed():
            status, errors = api.call("GET", "/api/v2/importErrors")
            for err in errors.get("import_errors", []) if status == 200 else []:
                if err["filename"].endswith(f"{DAG_ID}.py"):
                    pytest.fail(
                        f"{err['filename']} does not import:\n{err.get('stack_trace', err)}"
                    )
            return api.call("GET", f"/api/v2/dags/{DAG_ID}")[0] == 200

        _wait(f"the dag-processor to serialize {DAG_ID}", dag_parsed, services, 180)
        timings["services up"] = time.monotonic() - t0

        status, body = api.call("PATCH", f"/api/v2/dags/{DAG_ID}", {"is_paused": False})
        assert status == 200 and body["is_paused"] is False, (status, body)

        # a conf that breaks a Param's schema is refused before any run exists
        status, body = api.call(
            "POST",
            f"/api/v2/dags/{DAG_ID}/dagRuns",
            {"logical_date": None, "conf": {"top_n": 5000}},
        )
        assert status == 400 and "top_n" in str(body), (status, body)

        status, run = api.call(
            "POST", f"/api/v2/dags/{DAG_ID}/dagRuns", {"logical_date": None, "conf": CONF}
        )
        assert status == 200, (status, run)
        run_id = run["dag_run_id"]

        def finished():
            status, body = api.call("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}")
            return (
                body["state"] if status == 200 and body["state"] in ("success", "failed") else None
            )

        state = _wait(f"run {run_id}", finished, services, RUN_TIMEOUT_S, every_s=5)
        timings["dag run"] = time.monotonic() - t0
        assert state == "success", _diagnose(api, run_id, airflow_home, services)

        status, body = api.call("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances")
        assert status == 200
        tis = body["task_instances"]
        states = {(ti["task_id"], ti["map_index"]): ti["state"] for ti in tis}
        assert set(states.values()) <= {"success", "skipped"}, states
        # a retry passes the run but hides a bug (or a tree changing under the test): say so
        for ti in tis:
            if ti["try_number"] > 1:
                first = next(
                    (airflow_home / "logs").rglob(
                        f"run_id={run_id}/task_id={ti['task_id']}/**/attempt=1.log"
                    ),
                    None,
                )
                warnings.warn(
                    f"{ti['task_id']} succeeded only at try {ti['try_number']}; the first "
                    f"try's log ends:\n{_log_digest(first, 8) if first else '(no log)'}",
                    stacklevel=1,
                )

        users, rows, run_ids = _published(home / "serving")
        assert users == USERS and rows == USERS * TOP_N
        assert run_ids == [run_id]
        print("topology timings (s, cumulative):", {k: round(v) for k, v in timings.items()})
    finally:
        services.stop()
        postgres.stop()
