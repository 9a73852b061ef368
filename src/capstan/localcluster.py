"""Private server topologies on loopback, from Debian packages and the Elasticsearch that
scripts/services fetched from Maven Central: a PostgreSQL primary with a streaming replica, a
Redis primary + replica + three Sentinels, a three-node RabbitMQ cluster, a three-node
Elasticsearch cluster.

Each server runs on free ports in its own directory, so stopping one disturbs nothing else and
never the shared servers of scripts/services. The tests under tests/scale kill them;
`python -m capstan.localcluster up DIR` starts all four for `scripts/stack up --scale` and
writes the CAPSTAN_* URLs that reach them to DIR/env; `down DIR` stops them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

PG_BIN = Path("/usr/lib/postgresql/15/bin")


class ServerMissing(RuntimeError):
    """A server binary is not installed (scripts/services up installs them)."""


def missing(message: str) -> None:
    raise ServerMissing(message)


def free_port() -> int:
    """A port free now and outside the kernel's ephemeral range. A port the kernel handed out
    for bind(0) comes from the range it also gives outgoing connections, so a server that takes
    seconds to bind it (a JVM) could find it taken by some client's socket meanwhile."""
    low, _high = _ephemeral_range()
    for _ in range(200):
        port = random.randrange(max(1024, low - 12_000), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # every try taken: let the kernel choose
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def wait_port(port: int, *, timeout: float = 30.0, what: str = "server") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port}")


def _as_postgres(*args: str | Path) -> list[str]:
    # initdb and postgres refuse to run as root; scripts/services runs them as `postgres` too.
    command = [str(a) for a in args]
    return command if os.geteuid() != 0 else ["runuser", "-u", "postgres", "--", *command]


class PostgresNode:
    """One PostgreSQL server: a data directory and a port."""

    def __init__(self, root: Path, name: str) -> None:
        self.data = root / name
        self.port = free_port()
        self.root = root

    @property
    def url(self) -> str:
        return f"postgresql://capstan:capstan@127.0.0.1:{self.port}/capstan"

    def start(self) -> None:
        subprocess.run(
            _as_postgres(
                PG_BIN / "pg_ctl", "-D", self.data, "-l", self.data.with_suffix(".log"),
                "-o", f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1",
                "-w", "-t", "60", "start",
            ),
            check=True,
            stdout=subprocess.DEVNULL,
        )  # fmt: skip

    def kill(self) -> None:
        """Stop at once, as a crash would (immediate mode: no checkpoint, no goodbye)."""
        subprocess.run(
            _as_postgres(PG_BIN / "pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop"),
            check=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def sql(self, statement: str) -> str:
        """Run one statement as the superuser; its output, unaligned."""
        done = subprocess.run(
            _as_postgres(
                PG_BIN / "psql", "-X", "-A", "-t", "-h", self.root, "-p", str(self.port),
                "-U", "postgres", "-d", "capstan", "-c", statement,
            ),
            check=True,
            capture_output=True,
            text=True,
        )  # fmt: skip
        return done.stdout.strip()


class PostgresPair:
    """A primary and a hot standby streaming from it (pg_basebackup -R)."""

    def __init__(self, *, synchronous: bool = False) -> None:
        self.synchronous = synchronous
        if not (PG_BIN / "pg_basebackup").exists():
            missing(f"PostgreSQL 15 is not installed at {PG_BIN} (scripts/services up does it)")
        # Not pytest's tmp_path: its parents are 0700 root, and the servers run as postgres.
        self.root = Path(tempfile.mkdtemp(prefix="capstan-pg-"))
        self.root.chmod(0o755)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        self.primary = PostgresNode(self.root, "primary")
        self.replica = PostgresNode(self.root, "replica")

    def start(self) -> None:
        subprocess.run(
            _as_postgres(
                PG_BIN / "initdb", "-D", self.primary.data, "-U", "postgres", "-E", "UTF8",
                "--locale=C.UTF-8", "--auth=trust", "--no-sync",
            ),
            check=True,
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        conf = self.primary.data / "postgresql.conf"
        with conf.open("a") as f:
            f.write("wal_level = replica\nmax_wal_senders = 5\nhot_standby = on\nfsync = off\n")
        with (self.primary.data / "pg_hba.conf").open("a") as f:
            f.write("host replication all 127.0.0.1/32 trust\n")
        self.primary.start()
        subprocess.run(
            _as_postgres(
                PG_BIN / "psql", "-X", "-q", "-h", self.root, "-p", str(self.primary.port),
                "-U", "postgres", "-d", "postgres",
                "-c", "CREATE ROLE capstan LOGIN SUPERUSER PASSWORD 'capstan'",
                "-c", "CREATE DATABASE capstan OWNER capstan",
            ),
            check=True,
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        subprocess.run(
            _as_postgres(
                PG_BIN / "pg_basebackup", "-D", self.replica.data, "-h", "127.0.0.1",
                "-p", str(self.primary.port), "-U", "postgres", "-X", "stream", "-R",
                # A fast checkpoint: the default spread one waits minutes on an idle server.
                "--checkpoint=fast", "--no-sync",
            ),
            check=True,
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        self.replica.start()
        if self.synchronous:
            # Only now that the replica streams (a commit before would wait for it forever):
            # a commit is acknowledged once the replica has it, so promotion loses nothing.
            with conf.open("a") as f:
                f.write("synchronous_standby_names = '*'\n")
            self.primary.sql("SELECT pg_reload_conf()")

    @property
    def url(self) -> str:
        """Both servers, as libpq lists them: whichever accepts writes is used."""
        return (
            f"postgresql://capstan:capstan@127.0.0.1:{self.primary.port},"
            f"127.0.0.1:{self.replica.port}/capstan?target_session_attrs=read-write"
        )

    def stop(self) -> None:
        self.replica.kill()
        self.primary.kill()
        shutil.rmtree(self.root, ignore_errors=True)


class RedisNode:
    """One redis-server (or sentinel) process on a free port, config in its own file."""

    def __init__(self, root: Path, name: str, config: str, *, sentinel: bool = False) -> None:
        self.port = free_port()
        self.dir = root / name
        self.dir.mkdir()
        self.conf = self.dir / "redis.conf"
        # Sentinels rewrite their file (they record the promoted primary there).
        self.conf.write_text(
            f'port {self.port}\nbind 127.0.0.1\ndir {self.dir}\nsave ""\nappendonly no\n' + config
        )
        self.sentinel = sentinel
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            missing("redis-server is not installed (scripts/services up installs it)")
        command = [str(binary), str(self.conf)] + (["--sentinel"] if self.sentinel else [])
        # Its own session: it outlives `python -m capstan.localcluster up` and a closed terminal.
        self.proc = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_port(self.port, what="redis-server")

    def kill(self) -> None:
        """kill -9."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def command(self, *args: str) -> str:
        """One command through redis-cli; its raw output."""
        done = subprocess.run(
            ["redis-cli", "-p", str(self.port), *args], check=True, capture_output=True, text=True
        )
        return done.stdout.strip()


class SentinelGroup:
    """A Redis primary, one replica and three Sentinels watching them as `service`."""

    service = "capstan"

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="capstan-sentinel-"))
        self.primary = RedisNode(self.root, "primary", "")
        self.replica = RedisNode(self.root, "replica", f"replicaof 127.0.0.1 {self.primary.port}\n")
        watch = (
            f"sentinel monitor {self.service} 127.0.0.1 {self.primary.port} 2\n"
            f"sentinel down-after-milliseconds {self.service} 1000\n"
            f"sentinel failover-timeout {self.service} 10000\n"
        )
        self.sentinels = [
            RedisNode(self.root, f"sentinel{i}", watch, sentinel=True) for i in range(3)
        ]

    def url(self, db: int = 0) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.service}/{db}"

    def master_port(self) -> int:
        """The primary's port as the first live sentinel reports it."""
        for sentinel in self.sentinels:
            if sentinel.proc is None:
                continue
            reply = sentinel.command("SENTINEL", "get-master-addr-by-name", self.service)
            return int(reply.split()[1])
        raise RuntimeError("no sentinel is running")

    def start(self) -> None:
        self.primary.start()
        self.replica.start()
        for sentinel in self.sentinels:
            sentinel.start()

    def stop(self) -> None:
        for node in (*self.sentinels, self.replica, self.primary):
            node.kill()
        shutil.rmtree(self.root, ignore_errors=True)


RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")


class RabbitNode:
    """A private RabbitMQ node (its own node name, ports and data), run as `rabbitmq`: it
    shares epmd and the Erlang cookie with the node of scripts/services, nothing else."""

    def __init__(self, name: str | None = None, config: str = "") -> None:
        if not (RABBIT_BIN / "rabbitmq-server").exists():
            missing("rabbitmq-server is not installed (scripts/services up installs it)")
        self.root = Path(tempfile.mkdtemp(prefix="capstan-rabbit-"))
        self.port = free_port()
        self.dist_port = free_port()
        self.name = name or f"capstan-{self.root.name[-8:].lower()}@localhost"
        (self.root / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
            "loopback_users = none\n"
            "default_user = capstan\ndefault_pass = capstan\n" + config
        )
        (self.root / "enabled_plugins").write_text("[].\n")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://capstan:capstan@127.0.0.1:{self.port}/"

    def launch(self) -> None:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": "/var/lib/rabbitmq",
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": str(self.root / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.root / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(self.root / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.root / "log"),
            "RABBITMQ_PID_FILE": str(self.root / "node.pid"),
        }
        if os.geteuid() == 0:
            shutil.chown(self.root, "rabbitmq", "rabbitmq")
            for child in self.root.iterdir():
                shutil.chown(child, "rabbitmq", "rabbitmq")
            command = ["runuser", "-u", "rabbitmq", "--", str(RABBIT_BIN / "rabbitmq-server")]
        else:
            command = [str(RABBIT_BIN / "rabbitmq-server")]
        with (self.root / "startup.log").open("wb") as log:
            # Its own session: kill() takes the whole process group (runuser, erl, beam).
            self.proc = subprocess.Popen(
                command, env=env, cwd=self.root, stdout=log, stderr=log, start_new_session=True
            )

    def start(self) -> None:
        self.launch()
        self.wait()

    def wait(self) -> None:
        wait_port(self.port, timeout=180, what=f"rabbitmq node {self.name}")

    def kill(self) -> None:
        """kill -9 of the node's every process."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.proc = None

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.root, ignore_errors=True)


class RabbitCluster:
    """Three private RabbitMQ nodes forming one cluster (classic config peer discovery)."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        names = [f"capstan-{tag}-{i}@localhost" for i in range(1, 4)]
        peers = "".join(
            f"cluster_formation.classic_config.nodes.{i} = {n}\n" for i, n in enumerate(names, 1)
        )
        config = "cluster_formation.peer_discovery_backend = classic_config\n" + peers
        self.nodes = [RabbitNode(name, config) for name in names]

    @property
    def url(self) -> str:
        """Every node, as CAPSTAN_BROKER_URL lists them."""
        return ",".join(node.url for node in self.nodes)

    def start(self) -> None:
        for node in self.nodes:
            node.launch()
        for node in self.nodes:
            node.wait()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


ES_USER = "capstan-es"  # scripts/services creates it: Elasticsearch refuses to run as root
ES_HEAP = "512m"


def es_home() -> Path:
    """The distribution scripts/services fetched from Maven Central (the same version)."""
    services = Path(os.environ.get("CAPSTAN_SERVICES_DIR", "/var/tmp/capstan-services"))
    version = os.environ.get("CAPSTAN_ES_VERSION", "8.19.21")
    home = services / "elasticsearch" / f"elasticsearch-{version}"
    if not (home / ".capstan-complete").exists():
        missing(f"Elasticsearch {version} is not installed at {home} (scripts/services up does it)")
    return home


def java_home() -> Path:
    """A JDK 17+ the way scripts/services finds one (ES_JAVA_HOME, else OpenJDK 17 or 21)."""
    if os.environ.get("ES_JAVA_HOME"):
        candidates = [Path(os.environ["ES_JAVA_HOME"])]
    else:
        jvm = Path("/usr/lib/jvm")
        candidates = [
            jvm / "java-17-openjdk-amd64",
            *sorted(jvm.glob("java-17-openjdk-*")),
            *sorted(jvm.glob("java-21-openjdk-*")),
        ]
    for candidate in candidates:
        if (candidate / "bin" / "java").exists():
            return candidate
    missing("no JDK 17+ for Elasticsearch (scripts/services up installs one; or ES_JAVA_HOME)")
    raise AssertionError  # unreachable: missing() raises


class ElasticNode:
    """One Elasticsearch node: its own config, data, logs and ports, the shared distribution.

    Runs in the foreground (no -d) in its own session, so kill() takes the launcher and the
    server JVM together, as a crash would; launch() again starts it on the same data."""

    def __init__(self, root: Path, name: str) -> None:
        self.name = name
        self.dir = root / name
        self.http_port = free_port()
        self.transport_port = free_port()
        self.settings: list[str] = []
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def prepare(self, home: Path, settings: list[str]) -> None:
        for sub in ("data", "logs", "tmp"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        # A private copy of the distribution's config: a node may write its keystore there.
        shutil.copytree(home / "config", self.dir / "config", dirs_exist_ok=True)
        self.settings = [
            *settings,
            f"node.name={self.name}",
            f"path.data={self.dir / 'data'}",
            f"path.logs={self.dir / 'logs'}",
            "http.host=127.0.0.1",
            f"http.port={self.http_port}",
            "transport.host=127.0.0.1",
            f"transport.port={self.transport_port}",
        ]
        if os.geteuid() == 0:
            for path in (self.dir, *self.dir.rglob("*")):
                shutil.chown(path, ES_USER, ES_USER)

    def launch(self) -> None:
        home, jdk = es_home(), java_home()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.dir),
            "ES_JAVA_HOME": str(jdk),
            "ES_JAVA_OPTS": f"-Xms{ES_HEAP} -Xmx{ES_HEAP}",
            "ES_PATH_CONF": str(self.dir / "config"),
            "ES_TMPDIR": str(self.dir / "tmp"),
        }
        command = [str(home / "bin" / "elasticsearch"), *(f"-E{s}" for s in self.settings)]
        if os.geteuid() == 0:
            command = ["runuser", "-u", ES_USER, "--", *command]
        with (self.dir / "startup.log").open("ab") as log:
            self.proc = subprocess.Popen(
                command,
                env=env,
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )

    def wait(self, timeout: float = 180.0) -> None:
        """Until the node listens for HTTP; at once RuntimeError if it exited (a bad setting)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is None or self.proc.poll() is not None:
                log = (self.dir / "startup.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"elasticsearch node {self.name} exited:\n{log}")
            try:
                wait_port(self.http_port, timeout=1.0, what=f"elasticsearch node {self.name}")
                return
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise

    def kill(self) -> None:
        """kill -9 of the launcher and the server JVM."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.proc = None


class ElasticCluster:
    """Three Elasticsearch nodes forming one cluster on loopback, security off as the node of
    scripts/services; each is master-eligible and holds data, so any one may be lost."""

    def __init__(self, size: int = 3) -> None:
        home = es_home()
        java_home()
        if os.geteuid() == 0:
            try:
                pwd.getpwnam(ES_USER)
            except KeyError:
                missing(f"user {ES_USER} does not exist (scripts/services up elasticsearch)")
        self.root = Path(tempfile.mkdtemp(prefix="capstan-es-"))
        self.root.chmod(0o755)
        tag = uuid.uuid4().hex[:6]
        self.nodes = [ElasticNode(self.root, f"capstan-es-{tag}-{i}") for i in range(1, size + 1)]
        common = [
            # Its own name: a node of another cluster (the shared one) can never join.
            f"cluster.name=capstan-{tag}",
            "discovery.seed_hosts=" + ",".join(f"127.0.0.1:{n.transport_port}" for n in self.nodes),
            # Read on the cluster's very first start only.
            "cluster.initial_master_nodes=" + ",".join(n.name for n in self.nodes),
            "xpack.security.enabled=false",
            "cluster.routing.allocation.disk.threshold_enabled=false",
            "action.destructive_requires_name=false",
        ]
        for node in self.nodes:
            node.prepare(home, common)

    @property
    def url(self) -> str:
        """Every node, as CAPSTAN_SEARCH_URL lists them."""
        return ",".join(node.url for node in self.nodes)

    def launch(self) -> None:
        for node in self.nodes:
            node.launch()

    def wait(self, timeout: float = 300.0) -> None:
        """Until every running node listens and the cluster is green with all of them."""
        deadline = time.monotonic() + timeout
        running = [n for n in self.nodes if n.proc is not None]
        for node in running:
            node.wait(max(1.0, deadline - time.monotonic()))
        self.wait_health(len(running), "green", timeout=max(1.0, deadline - time.monotonic()))

    def start(self) -> None:
        try:
            self.launch()
            self.wait()
        except BaseException:
            self.stop()  # no JVM left behind by a cluster that did not form
            raise

    def health(self) -> dict[str, object] | None:
        """GET /_cluster/health from the first running node that answers; None if none does."""
        for node in self.nodes:
            if node.proc is None:
                continue
            try:
                with urllib.request.urlopen(f"{node.url}/_cluster/health", timeout=2) as answer:
                    body: dict[str, object] = json.load(answer)
                    return body
            except (OSError, ValueError):
                continue
        return None

    def wait_health(self, nodes: int, status: str, *, timeout: float = 120.0) -> dict[str, object]:
        """Poll until `nodes` nodes are in the cluster and it is `status` (or better)."""
        order = ["red", "yellow", "green"]
        deadline = time.monotonic() + timeout
        last: dict[str, object] | None = None
        while time.monotonic() < deadline:
            last = self.health()
            if (
                last is not None
                and last.get("number_of_nodes") == nodes
                and order.index(str(last.get("status"))) >= order.index(status)
            ):
                return last
            time.sleep(0.2)
        raise RuntimeError(f"elasticsearch cluster not {status} with {nodes} nodes: {last}")

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()
        shutil.rmtree(self.root, ignore_errors=True)


# --- `python -m capstan.localcluster up|down DIR` (scripts/stack up --scale) ----------------


def up(directory: Path) -> None:
    """Start the four topologies; DIR/env (shell syntax) says where, DIR/state.json how to
    stop them. The replica replicates asynchronously here: see docs/deployment.md."""
    directory.mkdir(parents=True, exist_ok=True)
    pair, group, cluster, search = (
        PostgresPair(),
        SentinelGroup(),
        RabbitCluster(),
        ElasticCluster(),
    )
    try:
        search.launch()  # the JVMs boot while the others start
        pair.start()
        group.start()
        cluster.start()
        search.wait()
    except BaseException:
        # Nothing left running that `down` would not know of.
        search.stop()
        cluster.stop()
        group.stop()
        pair.stop()
        raise
    assert all(node.proc is not None for node in (*group.sentinels, group.primary, group.replica))
    state = {
        "postgres": [str(pair.primary.data), str(pair.replica.data)],
        "pids": [n.proc.pid for n in (*group.sentinels, group.replica, group.primary) if n.proc],
        "groups": [n.proc.pid for n in cluster.nodes if n.proc]
        + [n.proc.pid for n in search.nodes if n.proc],
        "roots": [
            str(pair.root),
            str(group.root),
            *(str(n.root) for n in cluster.nodes),
            str(search.root),
        ],
    }
    (directory / "state.json").write_text(json.dumps(state, indent=2))
    sentinels = ",".join(f"127.0.0.1:{s.port}" for s in group.sentinels)
    (directory / "env").write_text(
        f"PG_PRIMARY_PORT={pair.primary.port}\n"
        f"PG_REPLICA_PORT={pair.replica.port}\n"
        f"SENTINEL_HOSTS={sentinels}\n"
        f"SENTINEL_SERVICE={group.service}\n"
        f"REDIS_PRIMARY_PORT={group.primary.port}\n"
        f"RABBIT_URLS={cluster.url}\n"
        f"ES_URLS={search.url}\n"
    )


def down(directory: Path) -> None:
    """Stop what `up` started (by its recorded process ids and data directories)."""
    state_file = directory / "state.json"
    if not state_file.exists():
        return
    state = json.loads(state_file.read_text())
    for data in state["postgres"]:
        subprocess.run(
            _as_postgres(PG_BIN / "pg_ctl", "-D", data, "-m", "fast", "-w", "stop"),
            check=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    for pid in state["pids"]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    for group in state["groups"]:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
    for root in state["roots"]:
        shutil.rmtree(root, ignore_errors=True)
    state_file.unlink()
    (directory / "env").unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m capstan.localcluster", description=__doc__)
    parser.add_argument("command", choices=["up", "down"])
    parser.add_argument("directory", type=Path)
    args = parser.parse_args()
    (up if args.command == "up" else down)(args.directory)


if __name__ == "__main__":
    main()
