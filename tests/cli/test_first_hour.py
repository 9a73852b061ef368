"""A new user's first hour, driven through the `capstan` command as they would type it (real
processes, embedded mode unless marked): mistakes get one line, never a traceback."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import click
import httpx
import pytest
import typer.main

from capstan import db as capstan_db
from capstan.cli.main import app
from tests.conftest import free_port

CAPSTAN = [sys.executable, "-m", "capstan.cli.main"]


def user_env(home: Path, data_dir: Path | None = None) -> dict[str, str]:
    """The caller's environment without CAPSTAN_*, with a private state dir (the record of the
    last `capstan dev`) and, when given, CAPSTAN_DATA_DIR."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPSTAN_")}
    env["XDG_STATE_HOME"] = str(home / "state")
    env["CAPSTAN_LOG_LEVEL"] = "WARNING"
    if data_dir is not None:
        env["CAPSTAN_DATA_DIR"] = str(data_dir)
    return env


def capstan(
    *args: str, env: dict[str, str], cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CAPSTAN, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def one_line_error(done: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    # Typer draws usage errors in a box: read the words, not the frame or the wrapping.
    flat = " ".join(done.stderr.translate(str.maketrans("", "", "│╭╮╰╯─")).split())
    for needle in needles:
        assert needle in flat, (needle, done.stderr)


@contextmanager
def dev_server(env: dict[str, str], data_dir: Path, port: int) -> Iterator[str]:
    dev = subprocess.Popen(
        [*CAPSTAN, "dev", "--port", str(port), "--data-dir", str(data_dir)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{base}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                if dev.poll() is not None:
                    raise AssertionError(f"capstan dev exited: {dev.communicate()[1]}") from None
                time.sleep(0.1)
        else:
            raise AssertionError("capstan dev did not become ready")
        yield base
    finally:
        dev.send_signal(signal.SIGINT)
        dev.communicate(timeout=30)


# --- small gaps -------------------------------------------------------------------------------


def test_version_prints_the_package_version(tmp_path: Path) -> None:
    import capstan as package

    done = capstan("--version", env=user_env(tmp_path))
    assert (done.returncode, done.stdout.strip()) == (0, f"capstan {package.__version__}")


def _commands(group: click.Command, path: str = "capstan") -> Iterator[tuple[str, click.Command]]:
    yield path, group
    if isinstance(group, click.Group):
        for name, command in group.commands.items():
            yield from _commands(command, f"{path} {name}")


def test_every_command_option_and_argument_has_help() -> None:
    missing = [
        f"{path} {param.name}"
        for path, command in _commands(typer.main.get_command(app))
        for param in command.params
        if param.name != "help" and not getattr(param, "help", None)
    ]
    assert missing == []


def test_usage_mistakes_are_one_line_errors(tmp_path: Path) -> None:
    env = user_env(tmp_path, tmp_path / "data")
    assert capstan("tenants", "create", "dev", env=env).returncode == 0
    one_line_error(
        capstan("tasks", "submit", "text.summarize", "--input", "[1,2]", env=env),
        2,
        "--input",
        "must be a JSON object",
        "not an array",
    )
    one_line_error(capstan("tasks", "submit", "", env=env), 2, "TYPE", "at least 1 character")
    one_line_error(
        capstan("tasks", "submit", "text.summarize", "--idempotency-key", "", env=env),
        2,
        "--idempotency-key",
    )
    one_line_error(capstan("tenants", "create", " ", env=env), 2, "cannot be empty")
    one_line_error(
        capstan("events", "replay", "--since", "2026-01-01", env=env),
        2,
        "embedded mode",
        "CAPSTAN_BROKER_URL=amqp://",
    )


def test_an_unreachable_server_is_one_line_naming_its_setting(tmp_path: Path) -> None:
    env = user_env(tmp_path) | {
        "CAPSTAN_DATABASE_URL": f"postgresql://u:p@127.0.0.1:{free_port()}/x"
    }
    one_line_error(
        capstan("tenants", "create", "acme", env=env),
        1,
        "the database is unreachable",
        "CAPSTAN_DATABASE_URL",
        "capstan doctor",
    )


MIGRATIONS = Path(capstan_db.__file__).parent / "migrations" / "versions"


def test_migrate_says_what_it_applied_then_that_nothing_was_left(tmp_path: Path) -> None:
    env = user_env(tmp_path, tmp_path / "data")
    first = capstan("migrate", env=env)
    again = capstan("migrate", env=env)
    assert first.returncode == again.returncode == 0
    revisions = len(list(MIGRATIONS.glob("0*.py")))
    assert f"applied {revisions} migration(s)" in first.stderr and "0001" in first.stderr
    assert "up to date" not in first.stderr
    assert "already up to date: nothing to apply" in again.stderr


@pytest.mark.postgres
def test_migrate_takes_a_libpq_host_list(tmp_path: Path, postgres_url: str) -> None:
    """The scale-out form of CAPSTAN_DATABASE_URL (`h1:p1,h2:p2/db?target_session_attrs=
    read-write`, what `scripts/stack up --scale` sets): migrate reaches the primary and says so
    without the password (it failed on SQLAlchemy's URL parser)."""
    userinfo, _, rest = postgres_url.partition("@")
    hostport, _, database = rest.partition("/")
    url = f"{userinfo}@{hostport},{hostport}/{database}?target_session_attrs=read-write"
    env = user_env(tmp_path, tmp_path / "data") | {"CAPSTAN_DATABASE_URL": url}
    done = capstan("migrate", env=env)
    assert done.returncode == 0, done.stderr
    assert "already up to date" in done.stderr and f"{hostport},{hostport}" in done.stderr
    assert userinfo.partition("//")[2] + "@" not in done.stderr  # user:password@


# --- ports ---------------------------------------------------------------------------------


def test_dev_on_a_busy_port_says_so_before_any_banner(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = capstan("dev", "--port", str(port), env=user_env(tmp_path, tmp_path / "data"))
    one_line_error(done, 2, f"cannot listen on 127.0.0.1:{port}", "--port")
    assert "dev key" not in done.stderr and "{" not in done.stderr


def test_a_role_on_a_busy_metrics_port_names_capstan_metrics_port(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = user_env(tmp_path, tmp_path / "data") | {"CAPSTAN_METRICS_PORT": str(port)}
        done = capstan("relay", env=env, timeout=60)
    one_line_error(done, 2, f"cannot serve /metrics on 127.0.0.1:{port}", "CAPSTAN_METRICS_PORT")


def test_each_role_has_its_own_default_metrics_port() -> None:
    from capstan.roles import ROLE_METRICS_PORTS, with_metrics_port
    from capstan.settings import Settings

    ports = {role: with_metrics_port(Settings(), role).metrics_port for role in ROLE_METRICS_PORTS}
    assert len(set(ports.values())) == len(ports) == 4
    assert with_metrics_port(Settings(metrics_port=9400), "worker").metrics_port == 9400


# --- one data dir, one server -----------------------------------------------------------------


def test_commands_anywhere_in_the_project_use_its_data_dir(tmp_path: Path) -> None:
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    (project / "src" / "deep").mkdir(parents=True)
    elsewhere.mkdir()
    env = user_env(tmp_path)

    made = capstan("tenants", "create", "first", env=env, cwd=project)
    assert made.returncode == 0 and "creating a new, empty one" in made.stderr
    assert (project / ".capstan" / "capstan.db").exists()

    # From a subdirectory: the same database (a duplicate name is refused there).
    again = capstan("tenants", "create", "first", env=env, cwd=project / "src" / "deep")
    one_line_error(again, 1, "already exists")
    assert not (project / "src" / "deep" / ".capstan").exists()

    # Outside any project, with no `capstan dev` on record: a loud warning, a new data dir.
    outside = capstan("tenants", "create", "first", env=env, cwd=elsewhere)
    assert outside.returncode == 0 and "warning: no Capstan data dir" in outside.stderr


def test_outside_the_project_commands_use_the_last_dev_data_dir(tmp_path: Path) -> None:
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    env = user_env(tmp_path)
    with dev_server(env, project / ".capstan", free_port()):
        made = capstan("tenants", "create", "acme", env=env, cwd=elsewhere)
    assert made.returncode == 0, made.stderr
    assert f"using the data dir of the last `capstan dev`: {project / '.capstan'}" in made.stderr
    assert not (elsewhere / ".capstan").exists()


def test_a_second_dev_on_the_same_data_dir_is_refused(tmp_path: Path) -> None:
    env = user_env(tmp_path)
    with dev_server(env, tmp_path / "data", free_port()) as base:
        second = capstan(
            "dev", "--port", str(free_port()), "--data-dir", str(tmp_path / "data"), env=env
        )
    one_line_error(second, 2, f"another capstan dev ({base})", "--data-dir")


def _audited(data_dir: Path, task_id: str) -> list[str]:
    with sqlite3.connect(data_dir / "capstan.db") as db:
        rows = db.execute(
            "SELECT type FROM audit_log WHERE subject = ? ORDER BY seq", (f"tasks/{task_id}",)
        )
        return lifecycle(r[0] for r in rows)


def lifecycle(types: Iterable[str]) -> list[str]:
    """The task's state changes (progress ticks are events too, as many as the timing gives)."""
    return [t for t in types if t != "capstan.task.progress"]


TEXT = (
    "Capstan stores documents in PostgreSQL. It caches them in Redis. Workers consume "
    "RabbitMQ queues. The weather was pleasant."
)


def test_tasks_submit_wait_goes_through_the_running_dev_server(tmp_path: Path) -> None:
    """The README's `capstan tasks submit ... --wait` beside `scripts/dev`: the server's worker
    runs it and its events reach the server's audit log (GET /v1/events)."""
    data_dir = tmp_path / "data"
    env = user_env(tmp_path, data_dir)
    with dev_server(env, data_dir, free_port()) as base:
        done = capstan(
            "tasks", "submit", "text.summarize", "--input", json.dumps({"text": TEXT}), "--wait",
            env=env,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        task = json.loads(done.stdout)
        assert f"for the capstan dev at {base}" in done.stderr
        key = (data_dir / "dev-api-key").read_text().strip()
        wanted = ["capstan.task.queued", "capstan.task.started", "capstan.task.succeeded"]
        for _ in range(200):
            feed = httpx.get(
                f"{base}/v1/events",
                params={"subject": f"tasks/{task['id']}"},
                headers={"Authorization": f"Bearer {key}"},
            ).json()
            if lifecycle(i["event"]["type"] for i in feed["items"]) == wanted:
                break
            time.sleep(0.05)
        assert lifecycle(i["event"]["type"] for i in feed["items"]) == wanted
    assert task["status"] == "succeeded" and task["worker_id"]


def test_tasks_submit_wait_without_a_server_still_audits_its_events(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = user_env(tmp_path, data_dir)
    assert capstan("tenants", "create", "dev", env=env).returncode == 0
    done = capstan(
        "tasks", "submit", "text.summarize", "--input", json.dumps({"text": TEXT}), "--wait",
        env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    task = json.loads(done.stdout)
    assert "no capstan dev runs on" in done.stderr and task["status"] == "succeeded"
    assert _audited(data_dir, task["id"]) == [
        "capstan.task.queued",
        "capstan.task.started",
        "capstan.task.succeeded",
    ]


# --- capstan doctor -------------------------------------------------------------------------


def _doctor(env: dict[str, str], cwd: Path | None = None) -> tuple[int, dict[str, dict[str, str]]]:
    done = capstan("doctor", "--json", env=env, cwd=cwd)
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, {c["name"]: c for c in json.loads(done.stdout)}


def test_doctor_embedded_says_what_to_do_then_all_good(tmp_path: Path) -> None:
    env = user_env(tmp_path)
    code, checks = _doctor(env, cwd=tmp_path)
    assert code == 1 and checks["database"]["status"] == "fail"
    assert "scripts/dev" in checks["database"]["fix"]

    env["CAPSTAN_DATA_DIR"] = str(tmp_path / "data")
    (tmp_path / "data").mkdir()
    code, checks = _doctor(env)
    assert (code, checks["migrations"]["status"]) == (1, "fail")
    assert checks["migrations"]["fix"] == "run `capstan migrate`"

    assert capstan("migrate", env=env).returncode == 0
    code, checks = _doctor(env)
    assert code == 0, checks
    assert checks["settings"]["detail"].startswith("embedded mode")
    assert checks["migrations"]["status"] == "ok"


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.rabbitmq
@pytest.mark.elasticsearch
def test_doctor_production_checks_each_server_and_names_the_setting_to_fix(
    tmp_path: Path, postgres_url: str, redis_url: str
) -> None:
    from tests.conftest import service_url

    env = user_env(tmp_path, tmp_path / "data") | {
        "CAPSTAN_DATABASE_URL": postgres_url,
        "CAPSTAN_CACHE_URL": redis_url,
        "CAPSTAN_BROKER_URL": service_url("rabbitmq"),
        "CAPSTAN_SEARCH_URL": service_url("elasticsearch"),
    }
    code, checks = _doctor(env)
    assert code == 0, checks
    assert checks["database"]["detail"].startswith("PostgreSQL ")
    assert checks["cache"]["detail"].startswith("Redis 7")
    assert checks["broker"]["detail"].startswith("RabbitMQ ")
    assert checks["search"]["detail"].startswith("Elasticsearch 8")
    assert ":capstan@" not in json.dumps(checks) and "***" in checks["database"]["detail"]

    env["CAPSTAN_CACHE_URL"] = f"redis://127.0.0.1:{free_port()}/0"
    code, checks = _doctor(env)
    assert (code, checks["cache"]["status"]) == (1, "fail")
    assert "CAPSTAN_CACHE_URL" in checks["cache"]["fix"]
