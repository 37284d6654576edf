"""Two real PostgreSQL streaming replicas of the local server, for the replica-router tests.

``ReplicaCluster.start()`` clones the primary (``SCALEKIT_POSTGRES_DSN``, a server on
127.0.0.1) twice, in parallel, with ``pg_basebackup -R -X stream`` into
``scalekit-replica-<name>-XXXX/data`` (under /dev/shm when it has 1 GiB free, else /tmp),
and starts each copy as a hot standby on a free port of 127.0.0.1 (0.3 s on tmpfs here).
``replicas[0]`` applies the primary's commits as soon as they arrive; ``replicas[1]``
applies each commit 3 s after it was made (``recovery_min_apply_delay``), so a read routed
to it sees stale data. The replicas use no permanent replication slot: while one streams,
its walreceiver's temporary slot keeps the WAL it has yet to receive; while it is being
built, or stopped by ``Replica.stop()``, a temporary slot of a session of this process
does (see ``_WalKeeper``). Nothing is left on the primary when this process ends.

What it needs and changes on this machine:

* the programs of the primary's major version (``/usr/lib/postgresql/<major>/bin``, else
  ``pg_basebackup`` and ``pg_ctl`` on PATH);
* to run as root (the servers then run as the ``postgres`` OS user, through ``runuser``) or
  as ``postgres``; anything else raises ``ClusterUnavailable``;
* a ``host replication <user> 127.0.0.1/32 trust`` line in the primary's pg_hba.conf: added
  once, under a ``# added by scalekit tests`` comment, when the server has no replication
  rule at all, and the configuration reloaded.

``close()`` stops the servers (immediate mode) and removes their directories; it also runs
at interpreter exit, and a later ``start()`` removes the directories (and servers) of a run
whose process has died.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg
    from psycopg.rows import TupleRow

__all__ = [
    "DEFAULT_PRIMARY_DSN",
    "ClusterUnavailable",
    "PgTools",
    "Replica",
    "ReplicaCluster",
    "lsn_to_int",
]

DEFAULT_PRIMARY_DSN = os.environ.get(
    "SCALEKIT_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)
TEMP_PREFIX = "scalekit-replica-"
HBA_COMMENT = "# added by scalekit tests: streaming replicas"
CONNECT_TIMEOUT = 2  # seconds; libpq treats anything lower as 2
START_TIMEOUT = 60  # seconds pg_ctl waits for a server to start or stop
STREAMING_TIMEOUT = 15.0  # seconds a started replica has to be streaming from the primary
POLL_INTERVAL = 0.02
MEMORY_ROOT_MIN_FREE = 1 << 30  # bytes free on /dev/shm to put the replicas there

# A hot standby refuses to start with a smaller value of these than its primary has
# ("Hot Standby Parameter Settings" in the PostgreSQL manual), so they are copied.
PRIMARY_MINIMUMS = (
    "max_connections",
    "max_locks_per_transaction",
    "max_prepared_transactions",
    "max_wal_senders",
    "max_worker_processes",
)
STOP_MODES = ("smart", "fast", "immediate")


class ClusterUnavailable(RuntimeError):
    """This machine cannot run replicas (an environment problem, not a bug): skip."""


def lsn_to_int(lsn: str) -> int:
    """A WAL position as an int: ``"16/B374D848"`` is ``(0x16 << 32) | 0xB374D848``."""
    high, slash, low = lsn.strip().partition("/")
    if not slash or not high or not low:
        raise ValueError(f"not a WAL position: {lsn!r}")
    return (int(high, 16) << 32) | int(low, 16)


def int_to_lsn(value: int) -> str:
    """The inverse of ``lsn_to_int``, for messages."""
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def _connect(dsn: str, **options: Any) -> psycopg.Connection[TupleRow]:
    import psycopg

    return psycopg.connect(dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT, **options)


def _fetch_one(connection: psycopg.Connection[TupleRow], sql: str) -> tuple[Any, ...]:
    row = connection.execute(sql).fetchone()
    if row is None:
        raise RuntimeError(f"no row from {sql!r}")
    return row


def _query_one(dsn: str, sql: str) -> tuple[Any, ...]:
    with _connect(dsn) as connection:
        return _fetch_one(connection, sql)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:])


def _free_ports(count: int) -> list[int]:
    """Ports of 127.0.0.1 nobody listens on now, all different."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _temp_roots() -> list[Path]:
    """Where replica directories go: memory first (when there is room), then disk."""
    # root's TMPDIR may be a directory the postgres user cannot enter
    disk = Path("/tmp") if os.geteuid() == 0 else Path(tempfile.gettempdir())
    memory = Path("/dev/shm")
    if memory.is_dir() and os.access(memory, os.W_OK | os.X_OK) and memory != disk:
        return [memory, disk]
    return [disk]


def _temp_root() -> Path:
    # pg_basebackup writes some 50 MB per replica: 1.6 s on an ext4 /tmp, 0.07 s on tmpfs
    *memory, disk = _temp_roots()
    for root in memory:
        with contextlib.suppress(OSError):
            stat = os.statvfs(root)
            if stat.f_bavail * stat.f_frsize >= MEMORY_ROOT_MIN_FREE:
                return root
    return disk


def _version_key(name: str) -> tuple[int, ...] | None:
    parts = name.split(".")
    return tuple(int(part) for part in parts) if all(p.isdigit() for p in parts) else None


@dataclass(frozen=True)
class PgTools:
    """Where the server programs are, and how to run them as the servers' OS user."""

    bin_dir: Path
    run_as: tuple[str, ...] = ()  # command prefix, such as ("runuser", "-u", "postgres", "--")
    uid: int | None = None  # chown what the helper writes to this user (None: no chown)
    gid: int | None = None

    @classmethod
    def detect(cls, major: int | None = None) -> PgTools:
        """The programs of PostgreSQL ``major`` (else the newest found) and the user to run as."""
        bin_dir = cls._find_bin_dir(major)
        try:
            postgres_user: pwd.struct_passwd | None = pwd.getpwnam("postgres")
        except KeyError:
            postgres_user = None
        euid = os.geteuid()
        if euid == 0:
            if postgres_user is None:
                raise ClusterUnavailable(
                    "running as root, but there is no 'postgres' OS user to run the replicas "
                    "as (PostgreSQL refuses to run as root)"
                )
            runuser = shutil.which("runuser")
            if runuser is None:
                raise ClusterUnavailable(
                    "running as root without the runuser program, so the replicas cannot "
                    "run as the postgres OS user"
                )
            prefix = (runuser, "-u", "postgres", "--")
            return cls(bin_dir, prefix, postgres_user.pw_uid, postgres_user.pw_gid)
        if postgres_user is not None and euid == postgres_user.pw_uid:
            return cls(bin_dir)
        try:
            me = pwd.getpwuid(euid).pw_name
        except KeyError:
            me = f"uid {euid}"
        raise ClusterUnavailable(
            f"the replicas run as the postgres OS user: run the tests as root or postgres, "
            f"not as {me}"
        )

    @staticmethod
    def _find_bin_dir(major: int | None) -> Path:
        found: dict[tuple[int, ...], Path] = {}
        for bin_dir in Path("/usr/lib/postgresql").glob("*/bin"):
            key = _version_key(bin_dir.parent.name)
            programs = (bin_dir / "pg_basebackup", bin_dir / "pg_ctl")
            if key is not None and all(program.is_file() for program in programs):
                found[key] = bin_dir
        if major is not None and (major,) in found:
            return found[(major,)]
        if found:
            newest = max(found)
            if major is None:
                return found[newest]
            versions = ", ".join(".".join(map(str, key)) for key in sorted(found))
            raise ClusterUnavailable(
                f"the primary runs PostgreSQL {major}, but /usr/lib/postgresql only has "
                f"the programs of {versions}"
            )
        basebackup, pg_ctl = shutil.which("pg_basebackup"), shutil.which("pg_ctl")
        if basebackup is None or pg_ctl is None:
            raise ClusterUnavailable(
                "pg_basebackup and pg_ctl are neither in /usr/lib/postgresql/*/bin nor on PATH"
            )
        bin_dir = Path(pg_ctl).resolve().parent
        version = subprocess.run(
            [str(bin_dir / "pg_ctl"), "--version"], capture_output=True, text=True, check=False
        ).stdout
        match = re.search(r"(\d+)", version)
        if major is not None and (match is None or int(match.group(1)) != major):
            raise ClusterUnavailable(
                f"the primary runs PostgreSQL {major}, but {bin_dir / 'pg_ctl'} is "
                f"{version.strip() or 'of an unknown version'}"
            )
        return bin_dir

    def run(self, program: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        """Run one of the programs as the servers' user; never raises for its exit status."""
        command = [*self.run_as, str(self.bin_dir / program), *args]
        return subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd="/",  # the user may not be allowed into the current directory
            env={**os.environ, "LC_ALL": "C"},  # English messages, a locale that exists
            check=False,
        )

    def own(self, path: Path, mode: int | None = None) -> None:
        """Give ``path`` to the servers' user (and ``mode``)."""
        if self.uid is not None and self.gid is not None:
            os.chown(path, self.uid, self.gid)
        if mode is not None:
            path.chmod(mode)


def _failure(what: str, result: subprocess.CompletedProcess[str], log: Path | None) -> str:
    message = (
        f"{what} failed (exit status {result.returncode}): {' '.join(map(str, result.args))}\n"
        f"{(result.stdout + result.stderr).strip()}"
    )
    if log is not None:
        message += f"\nlast lines of {log}:\n{_tail(log)}"
    return message


@dataclass(frozen=True)
class _Primary:
    """What building a replica needs to know about the primary."""

    dsn: str
    port: int
    user: str
    dbname: str
    major: int
    hba_file: Path
    ident_file: Path
    settings: Mapping[str, str]

    @classmethod
    def read(cls, dsn: str) -> _Primary:
        import psycopg
        from psycopg.conninfo import conninfo_to_dict

        params = conninfo_to_dict(dsn)
        host = str(params.get("host") or "")
        if host not in ("127.0.0.1", "localhost"):
            raise ClusterUnavailable(
                f"replicas can only be made of a server on 127.0.0.1, not of {host or dsn!r}"
            )
        user = str(params.get("user") or "postgres")
        try:
            connection = _connect(dsn)
        except psycopg.OperationalError as exc:
            raise ClusterUnavailable(f"cannot connect to the primary {dsn}: {exc}") from exc
        with connection:
            rows = connection.execute(
                "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)",
                [list(PRIMARY_MINIMUMS)],
            ).fetchall()
            return cls(
                dsn=dsn,
                port=int(params.get("port") or 5432),
                user=user,
                dbname=str(params.get("dbname") or user),
                major=int(_fetch_one(connection, "SHOW server_version_num")[0]) // 10000,
                hba_file=Path(_fetch_one(connection, "SHOW hba_file")[0]),
                ident_file=Path(_fetch_one(connection, "SHOW ident_file")[0]),
                settings={str(name): str(setting) for name, setting in rows},
            )

    @property
    def hba_line(self) -> str:
        return f"host replication {self.user} 127.0.0.1/32 trust"

    def can_replicate(self) -> bool:
        """Whether pg_hba.conf, as loaded, lets a replication connection in."""
        import psycopg

        try:
            _connect(self.dsn, replication="true").close()
        except psycopg.OperationalError:
            return False
        return True

    def ensure_replication_allowed(self, timeout: float = 10.0) -> None:
        """Add (once) the pg_hba.conf line that pg_basebackup and the replicas need."""
        with _connect(self.dsn) as connection:
            rules = _fetch_one(
                connection,
                "SELECT count(*) FROM pg_hba_file_rules"
                " WHERE 'replication' = ANY(database) AND error IS NULL",
            )[0]
            if rules == 0:
                self._append_hba_line()
                connection.execute("SELECT pg_reload_conf()")
            # pg_hba_file_rules reads the file, not what the server has loaded: the reload
            # is asynchronous, so wait until a replication connection is let in.
            deadline = time.monotonic() + timeout
            reloaded = rules == 0
            while not self.can_replicate():
                if not reloaded:  # the rule is in the file, maybe not loaded yet
                    connection.execute("SELECT pg_reload_conf()")
                    reloaded = True
                if time.monotonic() > deadline:
                    raise ClusterUnavailable(
                        f"the primary refuses replication connections of {self.user} from "
                        f"127.0.0.1; {self.hba_file} has replication rules, none admitting it"
                    )
                time.sleep(0.05)

    def _append_hba_line(self) -> None:
        try:
            with self.hba_file.open("r+") as hba:
                fcntl.flock(hba, fcntl.LOCK_EX)  # another test run may be doing the same
                text = hba.read()
                if self.hba_line not in (line.strip() for line in text.splitlines()):
                    separator = "\n" if text and not text.endswith("\n") else ""
                    hba.write(f"{separator}{HBA_COMMENT}\n{self.hba_line}\n")
        except OSError as exc:
            raise ClusterUnavailable(
                f"cannot add {self.hba_line!r} to {self.hba_file}: {exc}"
            ) from exc


class _WalKeeper:
    """A primary session holding a temporary physical replication slot.

    The primary keeps its WAL from its last checkpoint on while this session lasts (until
    ``close()``, or this process dies): no checkpoint can remove WAL that a replica being
    built, or stopped for a while, will ask for. Without it, two ``pg_basebackup -c fast``
    at once fail now and then with "requested WAL segment ... has already been removed":
    the checkpoint (and segment switch) of one removes the WAL the other has yet to
    stream, since its own temporary slot is only made after its backup has started.
    """

    def __init__(self, primary_dsn: str, label: str) -> None:
        self._connection = _connect(primary_dsn)
        name = f"scalekit_keep_{os.getpid()}_{label}_{uuid.uuid4().hex[:8]}"
        try:
            self._connection.execute(
                "SELECT pg_create_physical_replication_slot(%s, true, true)", [name]
            )
        except BaseException:
            self._connection.close()
            raise

    @classmethod
    def open(cls, primary_dsn: str, label: str) -> _WalKeeper | None:
        """A keeper, or None where the primary cannot make one (no free slot, say)."""
        import psycopg

        try:
            return cls(primary_dsn, label)
        except psycopg.Error:
            return None  # the race it prevents is rare: go on without

    def close(self) -> None:
        self._connection.close()  # drops the temporary slot


@dataclass
class Replica:
    """One hot standby of the primary, streaming from it."""

    name: str
    port: int
    data_dir: Path
    apply_delay: float = 0.0
    user: str = "postgres"
    dbname: str = "test"
    tools: PgTools | None = field(default=None, repr=False, compare=False)
    # while stopped, the primary keeps the WAL the replica will ask for when started again
    primary_dsn: str | None = field(default=None, repr=False, compare=False)
    _keeper: _WalKeeper | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def dsn(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{self.dbname}"

    @property
    def url(self) -> str:
        """The SQLAlchemy URL (psycopg 3 driver)."""
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{self.dbname}"

    @property
    def log_file(self) -> Path:
        return self.data_dir.parent / "server.log"

    @property
    def _tools(self) -> PgTools:
        if self.tools is None:
            self.tools = PgTools.detect()
        return self.tools

    def running(self) -> bool:
        """Whether the server of ``data_dir`` is running (``pg_ctl status``)."""
        if not self.data_dir.is_dir():
            return False
        status = self._tools.run("pg_ctl", "-D", str(self.data_dir), "status", timeout=30)
        return status.returncode == 0

    def stop(self, mode: str = "immediate") -> None:
        """Stop the server (``pg_ctl stop -m mode``); nothing happens if it is not running.

        Until ``start()``, the primary keeps the WAL the replica will need to catch up.
        """
        if mode not in STOP_MODES:
            raise ValueError(f"mode must be one of {STOP_MODES}, not {mode!r}")
        if not self.running():
            return
        if self._keeper is None and self.primary_dsn is not None:
            self._keeper = _WalKeeper.open(self.primary_dsn, self.name)
        self._stop(mode)

    def _stop(self, mode: str) -> None:
        if not self.running():
            return
        result = self._tools.run(
            "pg_ctl",
            *("-D", str(self.data_dir), "-m", mode, "-w", "-t", str(START_TIMEOUT), "stop"),
            timeout=START_TIMEOUT + 10,
        )
        if result.returncode != 0 and self.running():
            raise RuntimeError(_failure(f"stopping {self.name}", result, self.log_file))

    def start(self) -> None:
        """Start the (stopped) server, and wait until it streams from the primary again."""
        if not self.running():
            result = self._pg_ctl_start()
            if result.returncode != 0:
                raise RuntimeError(_failure(f"starting {self.name}", result, self.log_file))
        self._wait_streaming()
        self._release_wal()

    def _release_wal(self) -> None:
        if self._keeper is not None:
            self._keeper.close()
            self._keeper = None

    def replay_lsn(self) -> int:
        """How far this replica has applied the primary's WAL (``pg_last_wal_replay_lsn()``)."""
        with _connect(self.dsn) as connection:
            return self._replay_lsn(connection)

    def wait_replayed(self, lsn: int, timeout: float = 30.0) -> None:
        """Wait until this replica has applied the WAL up to ``lsn``, else ``TimeoutError``."""
        deadline = time.monotonic() + timeout
        with _connect(self.dsn) as connection:
            while (replayed := self._replay_lsn(connection)) < lsn:
                if time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"{self.name} has replayed the WAL up to {int_to_lsn(replayed)}, not "
                        f"{int_to_lsn(lsn)}, after {timeout:.1f} s"
                    )
                time.sleep(POLL_INTERVAL)

    @staticmethod
    def _replay_lsn(connection: psycopg.Connection[TupleRow]) -> int:
        lsn = _fetch_one(connection, "SELECT pg_last_wal_replay_lsn()::text")[0]
        return 0 if lsn is None else lsn_to_int(lsn)

    def _build(self, primary: _Primary) -> None:
        """Clone the primary into ``data_dir``, configure and start the copy."""
        result = self._tools.run(
            "pg_basebackup",
            *("-h", "127.0.0.1", "-p", str(primary.port), "-U", primary.user),
            *("-D", str(self.data_dir), "-R", "-X", "stream", "-c", "fast", "--no-sync"),
            timeout=300,
        )
        if result.returncode != 0:
            raise RuntimeError(_failure(f"pg_basebackup for {self.name}", result, None))
        self._configure(primary)
        for attempt in range(3):
            result = self._pg_ctl_start()
            if result.returncode == 0:
                break
            log = _tail(self.log_file)
            if attempt == 2 or "could not bind" not in log:
                raise RuntimeError(_failure(f"starting {self.name}", result, self.log_file))
            # something took the port since it was picked: pick another one
            self.port = _free_ports(1)[0]
            self._write_config(primary)
        self._wait_streaming()

    def _configure(self, primary: _Primary) -> None:
        # The copied postgresql.auto.conf holds the primary's ALTER SYSTEM settings (a port,
        # say), which would win over postgresql.conf: keep only what -R added to it.
        auto_conf = self.data_dir / "postgresql.auto.conf"
        kept = [
            line
            for line in auto_conf.read_text().splitlines()
            if line.startswith(("#", "primary_"))
        ]
        auto_conf.write_text("\n".join(kept) + "\n")
        for source in (primary.hba_file, primary.ident_file):
            target = self.data_dir / source.name
            shutil.copyfile(source, target)
            self._tools.own(target, 0o600)
        self._write_config(primary)

    def _write_config(self, primary: _Primary) -> None:
        settings = {
            "port": str(self.port),
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.data_dir}'",
            "cluster_name": f"'scalekit-{self.name}'",  # names the processes in ps
            "hot_standby": "on",
            "hot_standby_feedback": "on",
            "recovery_min_apply_delay": f"'{round(self.apply_delay * 1000)}ms'",
            "wal_receiver_status_interval": "1s",
            "wal_retrieve_retry_interval": "200ms",  # reconnect quickly after a restart
            # a slot on the primary while streaming: it keeps the WAL not yet received
            **({"wal_receiver_create_temp_slot": "on"} if primary.major >= 13 else {}),
            "fsync": "off",
            "shared_buffers": "16MB",
            "logging_collector": "off",
            "log_line_prefix": "'%m [%p] '",
            **{name: primary.settings[name] for name in PRIMARY_MINIMUMS},
        }
        conf = self.data_dir / "postgresql.conf"
        conf.write_text(
            "# a throwaway streaming replica made by tests/replication/pg_cluster.py\n"
            + "".join(f"{name} = {value}\n" for name, value in settings.items())
        )
        self._tools.own(conf, 0o600)

    def _pg_ctl_start(self) -> subprocess.CompletedProcess[str]:
        return self._tools.run(
            "pg_ctl",
            *("-D", str(self.data_dir), "-l", str(self.log_file)),
            *("-w", "-t", str(START_TIMEOUT), "start"),
            timeout=START_TIMEOUT + 10,
        )

    def _wait_streaming(self, timeout: float = STREAMING_TIMEOUT) -> None:
        """Wait until the replica takes queries, is in recovery and streams from the primary."""
        import psycopg

        deadline = time.monotonic() + timeout
        sql = "SELECT pg_is_in_recovery(), (SELECT status FROM pg_stat_wal_receiver)"
        while True:
            try:
                state: object = _query_one(self.dsn, sql)
                if state == (True, "streaming"):
                    return
            except psycopg.OperationalError as exc:
                state = exc
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{self.name} is not streaming from the primary after {timeout:.0f} s "
                    f"(recovery, receiver status: {state!r}); last lines of {self.log_file}:\n"
                    f"{_tail(self.log_file)}"
                )
            time.sleep(0.05)

    def _destroy(self) -> None:
        """Stop the server however possible, and remove its directory."""
        try:
            self._stop("immediate")
        except Exception:
            self._kill()
        with contextlib.suppress(Exception):
            self._release_wal()
        base = self.data_dir.parent
        if base.name.startswith(TEMP_PREFIX):  # never remove a directory not made here
            shutil.rmtree(base, ignore_errors=True)

    def _kill(self) -> None:
        """SIGQUIT (immediate shutdown), then SIGKILL, the postmaster of ``data_dir``."""
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return
        if str(self.data_dir).encode() not in command:  # a stale file, the pid reused
            return
        for sig in (signal.SIGQUIT, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            deadline = time.monotonic() + 5
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if not _pid_alive(pid):
                return


def _reap_orphans(tools: PgTools) -> None:
    """Stop and remove the replicas of test runs whose process has died (killed, say)."""
    for base in (path for root in _temp_roots() for path in root.glob(f"{TEMP_PREFIX}*")):
        try:
            pid: int | None = int((base / "owner.pid").read_text())
        except (OSError, ValueError):
            pid = None
        if pid is not None and _pid_alive(pid):
            continue
        try:
            if pid is None and time.time() - base.stat().st_mtime < 3600:
                continue  # being made right now, probably
        except OSError:
            continue
        Replica(base.name, 0, base / "data", tools=tools)._destroy()


class ReplicaCluster:
    """The primary and its replicas: ``[fast replica (no delay), lagging replica (3 s)]``."""

    def __init__(self, primary_dsn: str, replicas: Sequence[Replica] = ()) -> None:
        self.primary_dsn = primary_dsn
        scheme, sep, rest = primary_dsn.partition("://")
        if sep and scheme in ("postgresql", "postgres"):
            self.primary_url = f"postgresql+psycopg://{rest}"
        else:  # a key=value DSN
            from psycopg.conninfo import conninfo_to_dict

            params = conninfo_to_dict(primary_dsn)
            self.primary_url = (
                f"postgresql+psycopg://{params.get('user', 'postgres')}@"
                f"{params.get('host', '127.0.0.1')}:{params.get('port', 5432)}/"
                f"{params.get('dbname', 'test')}"
            )
        self.replicas: list[Replica] = list(replicas)
        self._closed = False

    @classmethod
    def start(
        cls, primary_dsn: str = DEFAULT_PRIMARY_DSN, delays: tuple[float, ...] = (0.0, 3.0)
    ) -> ReplicaCluster:
        """Build and start one replica per apply delay, all streaming when this returns.

        Raises ``ClusterUnavailable`` when this machine cannot do it (no programs, wrong
        OS user, a primary elsewhere); anything else is a real failure.
        """
        primary = _Primary.read(primary_dsn)
        tools = PgTools.detect(primary.major)
        primary.ensure_replication_allowed()
        _reap_orphans(tools)
        cluster = cls(primary_dsn)
        atexit.register(cluster.close)
        keeper: _WalKeeper | None = None
        try:
            keeper = _WalKeeper.open(primary_dsn, "build")
            ports = _free_ports(len(delays))
            for number, (delay, port) in enumerate(zip(delays, ports, strict=True), 1):
                name = f"replica{number}"
                base = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{name}-", dir=_temp_root()))
                (base / "owner.pid").write_text(f"{os.getpid()}\n")
                tools.own(base, 0o700)
                replica = Replica(name, port, base / "data", delay, primary.user, primary.dbname)
                replica.tools, replica.primary_dsn = tools, primary_dsn
                cluster.replicas.append(replica)
            with ThreadPoolExecutor(max_workers=max(1, len(delays))) as pool:
                builds = [pool.submit(replica._build, primary) for replica in cluster.replicas]
                for build in builds:
                    build.result()
        except BaseException:
            cluster.close()
            raise
        finally:
            if keeper is not None:
                keeper.close()  # the replicas' own temporary slots keep their WAL now
        return cluster

    def primary_lsn(self) -> int:
        """The primary's current WAL write position (``pg_current_wal_lsn()``)."""
        return lsn_to_int(_query_one(self.primary_dsn, "SELECT pg_current_wal_lsn()::text")[0])

    def wait_caught_up(self, timeout: float = 30.0) -> None:
        """Wait until every running replica has applied all the primary has written so far.

        A replica with an apply delay takes that long after the last commit.
        """
        target = self.primary_lsn()
        deadline = time.monotonic() + timeout
        for replica in self.replicas:
            if replica.running():
                replica.wait_replayed(target, timeout=max(0.0, deadline - time.monotonic()))

    def close(self) -> None:
        """Stop every replica (immediate mode) and remove its directory; idempotent."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        for replica in self.replicas:
            replica._destroy()
