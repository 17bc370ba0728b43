"""Deployment artefacts: the compose file through a real Compose parser, no secret with a
default anywhere, the Dockerfile's shape, and the wheel installed and run outside the repo.

``docker-compose config`` (Debian's docker-compose 1.29, or the ``docker compose`` plugin)
parses, validates and interpolates the file without a Docker daemon; its output is the
fully resolved file (anchors merged, ``${VAR}`` filled in) that these tests inspect.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
DOCKERFILE = REPO / "Dockerfile"

SECRETS = (
    "POSTGRES_PASSWORD",
    "REDIS_PASSWORD",
    "AIRFLOW_FERNET_KEY",
    "AIRFLOW_JWT_SECRET",
    "AIRFLOW_API_SECRET_KEY",
    "AIRFLOW_ADMIN_PASSWORD",
    "NIGHTREC_MODEL_KEY",
)
AIRFLOW_SERVICES = (
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-worker",
    "airflow-worker-gpu",
    "airflow-triggerer",
    "airflow-init",
)
LONG_RUNNING = tuple(s for s in AIRFLOW_SERVICES if s != "airflow-init")
WORKERS = ("airflow-worker", "airflow-worker-gpu")
HOME = "/opt/nightrec/var"
MODELS = "/opt/nightrec/models"
# every Airflow container must agree on these, or tasks cannot find the API, the DB or
# each other's files
SHARED_ENV = (
    "AIRFLOW__CORE__EXECUTOR",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
    "AIRFLOW__CELERY__BROKER_URL",
    "AIRFLOW__CELERY__RESULT_BACKEND",
    "AIRFLOW__CORE__FERNET_KEY",
    "AIRFLOW__API_AUTH__JWT_SECRET",
    "AIRFLOW__API__SECRET_KEY",
    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
    "AIRFLOW__CORE__AUTH_MANAGER",
    "NIGHTREC_HOME",
    "NIGHTREC_MODEL_KEY",
    "NIGHTREC_MODELS_DIR",
    "NIGHTREC_GPU_QUEUE",
    "HF_HUB_OFFLINE",
)


# --- Compose --------------------------------------------------------------------------------


def _compose_command() -> list[str]:
    """``docker-compose`` (installed with apt when missing and we are root), else the plugin."""
    if shutil.which("docker-compose") is None and os.geteuid() == 0 and shutil.which("apt-get"):
        for cmd in (
            ["apt-get", "update", "-qq"],
            ["apt-get", "install", "-y", "-qq", "docker-compose"],
        ):
            subprocess.run(cmd, capture_output=True, timeout=600, check=False)
    if exe := shutil.which("docker-compose"):
        return [exe]
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    ):
        return [docker, "compose"]
    pytest.skip(
        "no Compose parser: docker-compose is not on PATH and could not be installed "
        "(apt-get install docker-compose needs root and apt); .ci/run installs it"
    )


@pytest.fixture(scope="module")
def compose() -> list[str]:
    return _compose_command()


def _env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def _dummy_secrets() -> dict[str, str]:
    values = {name: f"dummy-{name.lower().replace('_', '-')}-0123456789" for name in SECRETS}
    values["AIRFLOW_FERNET_KEY"] = base64.urlsafe_b64encode(b"k" * 32).decode()
    return values


def _write_env(path: Path, **overrides: str) -> Path:
    """.env.example with the given values filled in (unknown names appended)."""
    lines, seen = [], set()
    for line in ENV_EXAMPLE.read_text().splitlines():
        name = line.partition("=")[0].strip()
        if not line.lstrip().startswith("#") and name in overrides:
            line = f"{name}={overrides[name]}"
            seen.add(name)
        lines.append(line)
    lines += [f"{k}={v}" for k, v in overrides.items() if k not in seen]
    path.write_text("\n".join(lines) + "\n")
    return path


def _config(compose: list[str], env_file: Path, *extra: str) -> subprocess.CompletedProcess:
    # a bare environment: a secret exported in the caller's shell must not hide a missing one
    env = {"PATH": os.environ["PATH"], "HOME": str(env_file.parent)}
    return subprocess.run(
        [*compose, "--env-file", str(env_file), "-f", str(COMPOSE_FILE), "config", *extra],
        capture_output=True,
        text=True,
        env=env,
        cwd=env_file.parent,
        timeout=120,
    )


@pytest.fixture(scope="module")
def resolved(compose, tmp_path_factory) -> dict:
    """The compose file as Compose resolves it with every secret set (and the GPU on)."""
    env = _write_env(
        tmp_path_factory.mktemp("compose") / "env",
        **_dummy_secrets(),
        COMPOSE_PROFILES="gpu",
        NIGHTREC_GPU_QUEUE="gpu",
    )
    quiet = _config(compose, env, "-q")
    assert quiet.returncode == 0, quiet.stderr
    out = _config(compose, env)
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # KEY=VALUE list form
        env = dict(item.partition("=")[::2] for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def _mounts(service: dict) -> dict[str, str]:
    """Mount target -> source, from short ("src:dst:rw") or long ({source, target}) syntax."""
    mounts = {}
    for vol in service.get("volumes") or []:
        if isinstance(vol, dict):
            mounts[vol["target"]] = vol.get("source", "")
        else:
            source, target = vol.split(":")[:2]
            mounts[target] = source
    return mounts


def _command(service: dict) -> str:
    cmd = service.get("command") or ""
    return " ".join(cmd) if isinstance(cmd, list) else str(cmd)


def _guarded_secrets() -> set[str]:
    """The secrets airflow-init checks before anything else starts."""
    found = re.search(r"for name in ([A-Z0-9_ ]+); do", COMPOSE_FILE.read_text())
    assert found, "airflow-init checks the secrets"
    return set(found.group(1).split())


def test_env_example_lists_every_secret_empty():
    values = _env_example()
    for name in SECRETS:
        assert values.get(name) == "", f".env.example must list {name} with an empty value"
    text = COMPOSE_FILE.read_text()
    required = _guarded_secrets()
    assert required == set(SECRETS), "every required variable is a secret and listed"
    for name in SECRETS:
        assert f"${{{name}}}" in text, f"{name} is used without a default"
        assert not re.search(rf"\$\{{{name}:", text), f"{name} has a default or modifier"
    assert values.get("NIGHTREC_GPU_QUEUE") == "" and "NIGHTREC_GPU_QUEUE=gpu" in (
        ENV_EXAMPLE.read_text()
    ), ".env.example documents NIGHTREC_GPU_QUEUE=gpu"


def _init_check(compose: list[str], env_file: Path) -> subprocess.CompletedProcess:
    """Run airflow-init's secret check, as Compose resolves it, with its resolved environment."""
    out = _config(compose, env_file)
    assert out.returncode == 0, out.stderr  # the file always parses, secrets or not
    init = yaml.safe_load(out.stdout)["services"]["airflow-init"]
    # `config` prints the file's `$$` escapes as they are; the container's shell sees `$`
    script = init["command"][-1].split("# -- secrets checked --")[0].replace("$$", "$")
    env = {"PATH": os.environ["PATH"], **_env(init)}
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env)


def test_compose_refuses_to_start_without_each_secret(compose, tmp_path):
    # .env.example as shipped: every secret empty -> airflow-init stops, naming them
    as_is = _init_check(compose, ENV_EXAMPLE)
    assert as_is.returncode != 0
    assert any(name in as_is.stderr for name in SECRETS), as_is.stderr
    # each secret on its own: all others set, this one empty -> refused, naming it
    for name in SECRETS:
        env = _write_env(tmp_path / f"env-{name}", **{**_dummy_secrets(), name: ""})
        out = _init_check(compose, env)
        assert out.returncode != 0, f"{name} has a default somewhere in docker-compose.yml"
        assert name in out.stderr, out.stderr
    # all set: the check passes
    full = _init_check(compose, _write_env(tmp_path / "env-all", **_dummy_secrets()))
    assert full.returncode == 0, full.stderr
    # every Airflow service waits for airflow-init to finish successfully
    services = yaml.safe_load(_config(compose, tmp_path / "env-all").stdout)["services"]
    for name in AIRFLOW_SERVICES:
        if name != "airflow-init":
            cond = services[name]["depends_on"]["airflow-init"]["condition"]
            assert cond == "service_completed_successfully", name


def test_compose_services_commands_and_healthchecks(resolved):
    services = resolved["services"]
    assert set(services) >= {"postgres", "redis", *AIRFLOW_SERVICES}
    assert _command(services["airflow-apiserver"]) == "api-server"
    ports = services["airflow-apiserver"]["ports"]
    assert any(
        int(p["target"]) == 8080 if isinstance(p, dict) else str(p).endswith(":8080") for p in ports
    ), ports
    assert _command(services["airflow-scheduler"]) == "scheduler"
    assert _command(services["airflow-dag-processor"]) == "dag-processor"
    assert _command(services["airflow-triggerer"]) == "triggerer"
    # the CPU worker serves the default queue, the GPU worker only the queue `gpu`
    assert _command(services["airflow-worker"]) == "celery worker"
    assert _command(services["airflow-worker-gpu"]) == "celery worker --queues gpu"

    health = {name: services[name].get("healthcheck", {}) for name in services}
    for name in ("postgres", "redis", *LONG_RUNNING):
        assert health[name].get("test"), f"{name} has no healthcheck"
    api_test = health["airflow-apiserver"]["test"]
    assert any("/api/v2/version" in part for part in api_test), api_test

    # airflow-init migrates, creates the admin and the warehouse pool
    init = services["airflow-init"]
    init_env = _env(init)
    assert init_env["_AIRFLOW_DB_MIGRATE"] == "true"
    assert init_env["_AIRFLOW_WWW_USER_CREATE"] == "true"
    assert init_env["_AIRFLOW_WWW_USER_PASSWORD"] == _dummy_secrets()["AIRFLOW_ADMIN_PASSWORD"]
    assert re.search(
        r"airflow pools set nightrec_warehouse 1 \"tasks that open the nightrec\s+warehouse\"",
        _command(init),
    ), _command(init)
    assert "restart" not in init or init["restart"] in ("no", "on-failure")


def test_compose_startup_order(resolved):
    services = resolved["services"]
    init_deps = {k: v["condition"] for k, v in services["airflow-init"]["depends_on"].items()}
    assert init_deps == {"postgres": "service_healthy", "redis": "service_healthy"}
    for name in LONG_RUNNING:
        deps = {k: v["condition"] for k, v in services[name]["depends_on"].items()}
        assert deps["postgres"] == deps["redis"] == "service_healthy", name
        assert deps["airflow-init"] == "service_completed_successfully", name
    for name in WORKERS:  # workers talk to the Execution API from their first task
        assert services[name]["depends_on"]["airflow-apiserver"]["condition"] == "service_healthy"


def test_compose_gpu_worker(resolved):
    services = resolved["services"]
    gpu = services["airflow-worker-gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "deploy" not in services["airflow-worker"]
    # its own image, built with onnxruntime-gpu and CUDA torch
    assert gpu["build"]["args"]["NIGHTREC_ACCELERATOR"] == "gpu"
    assert services["airflow-worker"]["build"]["args"]["NIGHTREC_ACCELERATOR"] == "cpu"
    assert gpu["image"] != services["airflow-worker"]["image"]
    # the DAG routes embed/train/score by NIGHTREC_GPU_QUEUE: every service sees "gpu" here
    for name in AIRFLOW_SERVICES:
        assert _env(services[name])["NIGHTREC_GPU_QUEUE"] == "gpu", name


def test_compose_same_environment_and_volumes_everywhere(resolved):
    services = resolved["services"]
    envs = {name: _env(services[name]) for name in AIRFLOW_SERVICES}
    reference = envs["airflow-scheduler"]
    for name, env in envs.items():
        for key in SHARED_ENV:
            assert env.get(key) == reference.get(key), f"{name}: {key} differs"
    dummy = _dummy_secrets()
    assert reference["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert reference["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == (
        "http://airflow-apiserver:8080/execution/"
    )
    assert reference["AIRFLOW__API_AUTH__JWT_SECRET"] == dummy["AIRFLOW_JWT_SECRET"]
    assert reference["AIRFLOW__CORE__FERNET_KEY"] == dummy["AIRFLOW_FERNET_KEY"]
    assert reference["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == (
        f"postgresql+psycopg2://airflow:{dummy['POSTGRES_PASSWORD']}@postgres/airflow"
    )
    assert dummy["REDIS_PASSWORD"] in reference["AIRFLOW__CELERY__BROKER_URL"]
    assert reference["NIGHTREC_HOME"] == HOME and reference["NIGHTREC_MODELS_DIR"] == MODELS
    assert _env(services["postgres"])["POSTGRES_PASSWORD"] == dummy["POSTGRES_PASSWORD"]

    # landing, warehouse home, serving and models: the same volume at the same path in
    # every Airflow container, so a task finds its files whichever worker runs it
    shared = (HOME, f"{HOME}/landing", f"{HOME}/serving", MODELS)
    mounts = {name: _mounts(services[name]) for name in AIRFLOW_SERVICES}
    for name in AIRFLOW_SERVICES:
        for target in shared:
            assert target in mounts[name], f"{name} does not mount {target}"
            assert mounts[name][target] == mounts["airflow-worker"][target], (name, target)
    named = set(resolved.get("volumes") or {})
    for target in shared:
        source = mounts["airflow-worker"][target]
        assert source in named or source.startswith(("/", ".")), source


def test_compose_gpu_off_by_default(compose, tmp_path):
    """With .env.example's defaults (secrets filled in) every task stays on the CPU queue."""
    out = _config(compose, _write_env(tmp_path / "env", **_dummy_secrets()))
    assert out.returncode == 0, out.stderr
    services = yaml.safe_load(out.stdout)["services"]
    assert services["airflow-worker-gpu"]["profiles"] == ["gpu"]
    for name in AIRFLOW_SERVICES:
        assert _env(services[name])["NIGHTREC_GPU_QUEUE"] == "", name


# --- no secret with a default, anywhere ---------------------------------------------------------

_SECRET_NAME = r"[A-Za-z0-9_]*(?:PASSWORD|PASSWD|SECRET|TOKEN|FERNET|_KEY)[A-Za-z0-9_]*"
_SHELL_DEFAULT = re.compile(r"\$\{(" + _SECRET_NAME + r"):?[-=]")  # ${X:-v} ${X-v} ${X:=v}
_PY_DEFAULT = re.compile(
    r"(?:environ\.get|getenv)\(\s*[\"'](" + _SECRET_NAME + r")[\"']\s*,\s*[\"'][^\"']+"
)
_ASSIGNMENT = re.compile(
    r"^\s*(?:export\s+|ENV\s+|ARG\s+)?(" + _SECRET_NAME + r")\s*[?:]?=\s*(\S+)"
)
_URL_PASSWORD = re.compile("://" + r"[A-Za-z0-9_.%-]+:([^@\s/]+)@")
_REFERENCE = r"\$\{[A-Z0-9_]+(?::\?[^}]*)?\}"  # ${VAR} or ${VAR:?message}: no default


def _repo_files() -> list[Path]:
    """Tracked and untracked-but-not-ignored files: what a commit of this tree would hold."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=False,
    )
    if out.returncode == 0:
        names = [n for n in out.stdout.decode().split("\0") if n]
    else:  # not a git checkout
        skip = {".git", ".venv", "var", "models", "__pycache__"}
        names = [
            str(p.relative_to(REPO))
            for p in REPO.rglob("*")
            if p.is_file() and not skip & set(p.relative_to(REPO).parts)
        ]
    return [REPO / n for n in names if (REPO / n).is_file()]


def _secret_findings(root: Path, files: list[Path]) -> list[str]:
    """Lines that give a secret-named variable a default or a literal value."""
    findings = []
    for path in files:
        rel = path.relative_to(root).as_posix()
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        for lineno, line in enumerate(text.splitlines(), 1):
            where = f"{rel}:{lineno}: {line.strip()[:120]}"
            if _SHELL_DEFAULT.search(line) or _PY_DEFAULT.search(line):
                findings.append(where)
            for match in _URL_PASSWORD.finditer(line):
                if not re.fullmatch(_REFERENCE, match.group(1)):
                    findings.append(where)
            assignment = _ASSIGNMENT.match(line)
            if assignment and not rel.endswith(".py"):
                value = assignment.group(2).strip("\"'")
                if value and not value.startswith("${"):
                    findings.append(where)
        name = Path(rel).name
        if name == ".env" or (name.startswith(".env.") and name != ".env.example"):
            findings.append(f"{rel}: an env file in the tree (add it to .gitignore)")
        # compose: every secret-named environment entry is a reference with no default
        if re.fullmatch(r"(docker-)?compose[\w.-]*\.ya?ml", name):
            doc = yaml.safe_load(text) or {}
            blocks = [v for k, v in doc.items() if k.startswith("x-") and isinstance(v, dict)]
            blocks += list((doc.get("services") or {}).values())
            for block in blocks:
                env = block.get("environment") or {}
                for key, value in env.items() if isinstance(env, dict) else ():
                    if re.fullmatch(_SECRET_NAME, key) and not re.search(_REFERENCE, str(value)):
                        findings.append(f"{rel}: {key} is not a ${{VAR}} without a default")
    return findings


def test_secret_checker_finds_defaults(tmp_path):
    bad = {
        "docker-compose.yml": "services:\n  db:\n    environment:\n      DB_PASSWORD: airflow\n",
        "x.yml": "url: postgresql://airflow:airflow@postgres/airflow\n",
        "y.yml": "pw: ${DB_PASSWORD:-changeme}\n",
        "Makefile": "export AIRFLOW_JWT_SECRET ?= insecure\n",
        "conf.py": "key = os.environ.get('API_SECRET_KEY', 'dev')\n",
        ".env": "NOTHING=1\n",
        ".env.example": "AIRFLOW_FERNET_KEY=abc\n",
    }
    for name, text in bad.items():
        (tmp_path / name).write_text(text)
    found = _secret_findings(tmp_path, [tmp_path / n for n in bad])
    for name in bad:
        assert any(f.startswith(name) for f in found), (name, found)
    (tmp_path / "ok.yml").write_text(
        "pw: ${DB_PASSWORD:?set it}\nurl: postgresql://u:${DB_PASSWORD:?set it}@db/x\n"
        "url2: postgresql://u:${DB_PASSWORD}@db/x\n"
    )
    (tmp_path / ".env.example").write_text("AIRFLOW_FERNET_KEY=\n# API_TOKEN=xyz\n")
    assert _secret_findings(tmp_path, [tmp_path / "ok.yml", tmp_path / ".env.example"]) == []


def test_no_secret_has_a_default_in_any_file():
    # this file holds the patterns and the dummy values of the checks above, by design
    files = [p for p in _repo_files() if p != Path(__file__).resolve()]
    findings = _secret_findings(REPO, files)
    assert findings == [], "secrets with defaults:\n" + "\n".join(findings)


# --- Dockerfile ---------------------------------------------------------------------------------


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1]
            continue
        joined.append(current + line)
        current = ""
    return [(s.split(None, 1)[0].upper(), s.split(None, 1)[1]) for s in joined]


def test_dockerfile_shape():
    steps = _dockerfile_instructions()
    args = dict(a.split("=", 1) for k, a in steps if k == "ARG" and "=" in a)
    froms = [a for k, a in steps if k == "FROM"]
    assert froms and all(f.startswith("apache/airflow:${AIRFLOW_VERSION}-python") for f in froms)
    assert args["AIRFLOW_VERSION"] == "3.3.2" and args["PYTHON_VERSION"] == "3.11"
    assert args["NIGHTREC_ACCELERATOR"] == "cpu" and args["TORCH_VERSION"] == "2.13.0"
    run = "\n".join(a for k, a in steps if k == "RUN")
    # a wheel, never an editable install; CPU torch from the PyTorch CPU index
    assert "pip wheel" in run and "nightrec-*.whl" in run and " -e " not in run
    assert args["TORCH_CPU_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    # onnxruntime-gpu only in the gpu branch, which drops onnxruntime from the requirements
    cpu_branch, gpu_branch = run.split("cpu)", 1)[1].split("gpu)", 1)
    assert "onnxruntime-gpu" not in cpu_branch
    assert "onnxruntime-gpu" in gpu_branch and "!= 'onnxruntime'" in gpu_branch
    copies = [a for k, a in steps if k == "COPY"]
    assert any(c.split()[-2:] == ["dags/", "/opt/airflow/dags/"] for c in copies), copies
    env = " ".join(a for k, a in steps if k == "ENV")
    assert f"NIGHTREC_HOME={HOME}" in env and f"NIGHTREC_MODELS_DIR={MODELS}" in env
    # every RUN is valid shell
    for kind, body in steps:
        if kind == "RUN":
            check = subprocess.run(["sh", "-n", "-c", body], capture_output=True, text=True)
            assert check.returncode == 0, (body[:200], check.stderr)
    ignored = set((REPO / ".dockerignore").read_text().split())
    assert {".env", ".venv", ".git", "var", "models"} <= ignored


# --- the wheel, installed and run outside the repository ------------------------------------------


def _source_tree(dest: Path) -> Path:
    """A copy of the files a commit would hold, so the build writes nothing into the repo."""
    for path in _repo_files():
        target = dest / path.relative_to(REPO)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    return dest


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kwargs)
    assert out.returncode == 0, f"{cmd}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


_PURELIB = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
_FIND_SPECS = (
    "import importlib.util as u; "
    "print(*(f'{m}={u.find_spec(m) is not None}' for m in ('nightrec', 'torch')))"
)


def test_wheel_installs_and_runs_outside_the_repo(tmp_path):
    # 1. build the wheel from a copy of the tree, offline
    dist = tmp_path / "dist"
    build = ["wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(dist)]
    _run([sys.executable, "-m", "pip", *build, str(_source_tree(tmp_path / "src"))])
    (wheel,) = dist.glob("nightrec-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "nightrec/sql/schema.sql" in names
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"nightrec"}, tops

    # 2. a fresh venv that sees the project's dependencies (torch, duckdb, ...) but not its
    #    editable nightrec: a folder named on a .pth line is appended to sys.path, but the
    #    .pth files inside it (the editable finder's among them) are not processed
    venv, cwd = tmp_path / "venv", tmp_path / "elsewhere"
    home, models = tmp_path / "home", tmp_path / "models"
    cwd.mkdir()
    env = {
        "PATH": f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "NIGHTREC_HOME": str(home),
        "NIGHTREC_MODELS_DIR": str(models),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    _run([sys.executable, "-m", "venv", str(venv)], env=env)
    py = str(venv / "bin" / "python")
    site = Path(_run([py, "-c", _PURELIB], env=env).stdout.strip())
    deps = site / "_project_dependencies.pth"
    deps.write_text(f"{sysconfig.get_paths()['purelib']}\n")
    bare = _run([py, "-c", _FIND_SPECS], cwd=cwd, env=env).stdout.split()
    assert bare == ["nightrec=False", "torch=True"], "the editable nightrec leaks through"
    # pip must not see the project's nightrec while it installs (it would try to replace it)
    deps.unlink()
    _run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], env=env)
    deps.write_text(f"{sysconfig.get_paths()['purelib']}\n")

    probe = (
        "import json, sys, importlib.util, nightrec, nightrec.config as c; "
        "print(json.dumps({'file': nightrec.__file__, 'sql': str(c.SQL_DIR), "
        "'editable': [m for m in sys.modules if 'editable' in m] "
        "+ [repr(f) for f in sys.meta_path if 'editable' in repr(f).lower()], "
        "'tasks': importlib.util.find_spec('tasks') is not None, "
        "'torch': importlib.util.find_spec('torch') is not None}))"
    )
    info = json.loads(_run([py, "-c", probe], cwd=cwd, env=env).stdout)
    assert Path(info["file"]).parent == site / "nightrec"
    assert Path(info["sql"]) == site / "nightrec" / "sql"
    assert info["editable"] == [] and info["torch"] is True
    assert info["tasks"] is False  # no generic top-level name in the installed wheel
    failed = subprocess.run([py, "-c", "import tasks"], cwd=cwd, env=env, capture_output=True)
    assert failed.returncode != 0 and b"ModuleNotFoundError" in failed.stderr

    installed_before = {p for p in site.rglob("*") if "__pycache__" not in p.parts}

    # 3. the whole pipeline from the console script, from a directory that is not the repo
    nightrec = str(venv / "bin" / "nightrec")
    _run(
        [nightrec, "-q", "synth", "--users", "60", "--items", "25", "--seed", "1"], cwd=cwd, env=env
    )
    _run(
        [nightrec, "-q", "run", "--as-of", "2026-11-01", "--top-n", "5", "--provider", "cpu"],
        cwd=cwd,
        env=env,
    )

    users, rows = _published_counts(home / "serving")
    assert users == 60 and rows == 60 * 5
    assert any(models.iterdir()), "no model version under NIGHTREC_MODELS_DIR"
    # no state inside the installed package or beside it, nor in the working directory
    installed_after = {p for p in site.rglob("*") if "__pycache__" not in p.parts}
    assert installed_after == installed_before, sorted(map(str, installed_after - installed_before))
    assert not (site / "var").exists() and not (site / "models").exists()
    assert not (site / "nightrec" / "var").exists() and not (site / "nightrec" / "models").exists()
    assert list(cwd.iterdir()) == []


def _published_counts(serving: Path) -> tuple[int, int]:
    """(users, rows) of the first serving DuckDB under ``serving`` with a recommendations
    table or view; the exact layout of the serving folder may change."""
    import duckdb

    errors = []
    for path in sorted(serving.rglob("*.duckdb")):
        try:
            with duckdb.connect(str(path), read_only=True) as con:
                return con.execute(
                    "select count(distinct user_id), count(*) from recommendations"
                ).fetchone()
        except duckdb.Error as exc:
            errors.append(f"{path}: {exc}")
    raise AssertionError(f"no serving DuckDB with recommendations under {serving}: {errors}")
