"""A real, throw-away PostgreSQL 15 with pgaudit for the tests (a helper, not a test module).

`running_postgres(tmp_path)` initdb's a fresh cluster, starts `postgres` with pgaudit loaded
and every log destination on (stderr → pg.log, csvlog → pg.csv, jsonlog → pg.json), waits
until it accepts connections, creates the extension, and always stops the server again.

Why it looks the way it does:
* PostgreSQL refuses to run as root, and the tests run as root: initdb, postgres and pg_ctl run
  as the `postgres` OS user through `runuser`. The psql client may run as root (it connects
  over the unix socket with `-U`, and the cluster trusts local connections).
* pytest's tmp_path lives under /tmp/pytest-of-root, which is mode 0700, so the postgres user
  cannot reach it. The cluster therefore lives in its own temp dir (short, also keeping the
  unix socket path under the 107-byte limit), owned by postgres; when the server stops, its
  log files are copied into tmp_path so a failing test can still be looked at.
* It listens on 127.0.0.1 only, on a port that was free a moment before; a start that loses
  that race is retried on a new port.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from demo.procs import free_port

__all__ = [
    "BIN",
    "LOG_FILES",
    "LOG_LINE_PREFIX",
    "PgInstance",
    "PostgresError",
    "postgres_fixture",
    "running_postgres",
]

BIN = Path("/usr/lib/postgresql/15/bin")
LOG_LINE_PREFIX = "%m [%p] %q%u@%d "
# log_filename=pg.log: PostgreSQL swaps the ".log" suffix for ".csv" / ".json" for the other
# destinations.
LOG_FILES = {"stderr": "pg.log", "csvlog": "pg.csv", "jsonlog": "pg.json"}
PG_USER = "postgres"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0


class PostgresError(RuntimeError):
    """PostgreSQL could not be set up, started, or a statement failed."""


@dataclass
class PgInstance:
    port: int
    socket_dir: Path
    data_dir: Path
    log_dir: Path
    dsn: str

    def psql(
        self, sql: str, *, user: str = PG_USER, dbname: str = "postgres", verbatim: bool = False
    ) -> str:
        """Runs SQL through psql (one session) and returns its unaligned output.

        By default the SQL goes in on stdin: psql then sends each statement on its own, as an
        application would, so pgaudit logs each with its own text (with -c, a multi-statement
        string is one simple query and every audit line would carry the whole string). But
        psql's script reader drops blank lines inside a statement; `verbatim=True` sends `sql`
        unchanged with -c, as one query.
        """
        argv = [str(BIN / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                "-h", str(self.socket_dir), "-p", str(self.port), "-U", user, "-d", dbname]
        proc = subprocess.run(
            [*argv, "-c", sql] if verbatim else argv, input=None if verbatim else sql,
            capture_output=True, text=True, timeout=60, check=False,
        )
        if proc.returncode != 0:
            raise PostgresError(f"psql failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout

    def log_files(self, kind: str) -> list[Path]:
        """The existing log files of a destination: "stderr", "csvlog" or "jsonlog"."""
        if kind not in LOG_FILES:
            raise ValueError(f"unknown log kind {kind!r}; one of {sorted(LOG_FILES)}")
        path = self.log_dir / LOG_FILES[kind]
        return [path] if path.exists() else []


def _as_postgres(*argv: str) -> list[str]:
    return ["runuser", "-u", PG_USER, "--", *argv]


def _run(argv: list[str], what: str, cwd: Path, timeout: float = 120) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                          cwd=cwd)
    if proc.returncode != 0:
        raise PostgresError(f"{what} failed ({proc.returncode}): {proc.stderr or proc.stdout}")


def _require_programs() -> None:
    # A missing program is a failure with a clear cause, never a skip: scripts/bootstrap
    # installs postgresql-15 and postgresql-15-pgaudit.
    missing = [str(p) for p in (BIN / "initdb", BIN / "postgres", BIN / "pg_isready")
               if not p.exists()]
    if shutil.which("runuser") is None:
        missing.append("runuser")
    if missing:
        raise PostgresError(f"missing {', '.join(missing)}: run scripts/bootstrap")


def _server_argv(
    data_dir: Path, log_dir: Path, socket_dir: Path, port: int, extra: Sequence[str] = ()
) -> list[str]:
    settings = [arg for setting in extra for arg in ("-c", setting)]
    return _as_postgres(
        str(BIN / "postgres"), "-D", str(data_dir),
        "-c", "shared_preload_libraries=pgaudit",
        "-c", "logging_collector=on",
        "-c", "log_destination=stderr,csvlog,jsonlog",
        "-c", f"log_directory={log_dir}",
        "-c", "log_filename=pg.log",
        "-c", f"log_line_prefix={LOG_LINE_PREFIX}",
        "-c", "log_timezone=UTC",  # timestamps the tests can compare with the clock
        "-c", "pgaudit.log=all",
        "-c", "pgaudit.log_parameter=on",
        "-c", "pgaudit.log_relation=on",
        "-c", "listen_addresses=127.0.0.1",
        "-p", str(port),
        "-k", str(socket_dir),
        *settings,
    )


def _ready(socket_dir: Path, port: int) -> bool:
    proc = subprocess.run(
        [str(BIN / "pg_isready"), "-q", "-h", str(socket_dir), "-p", str(port), "-t", "1",
         "-U", PG_USER, "-d", "postgres"],
        capture_output=True, timeout=10, check=False,
    )
    return proc.returncode == 0


def _wait_ready(server: subprocess.Popen[bytes], socket_dir: Path, port: int) -> bool:
    """True once the server accepts connections; False when it exited (e.g. port taken)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            return False
        if _ready(socket_dir, port):
            return True
        time.sleep(0.1)
    raise PostgresError(f"postgres did not become ready within {START_TIMEOUT_S:.0f} s")


def _stop(server: subprocess.Popen[bytes], data_dir: Path) -> None:
    """Fast shutdown through pg_ctl, then make sure the process is gone whatever happened."""
    if server.poll() is None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run(
                _as_postgres(str(BIN / "pg_ctl"), "stop", "-D", str(data_dir), "-m", "fast",
                             "-w", "-t", str(int(STOP_TIMEOUT_S))),
                capture_output=True, timeout=STOP_TIMEOUT_S + 5, check=False, cwd=data_dir,
            )
    if server.poll() is None:
        # runuser forwards SIGTERM to postgres (smart shutdown), and kills it 2 s later.
        server.terminate()
        try:
            server.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=STOP_TIMEOUT_S)
    else:
        server.wait()


@contextlib.contextmanager
def running_postgres(tmp_path: Path, settings: Sequence[str] = ()) -> Iterator[PgInstance]:
    """A started PostgreSQL 15 with pgaudit (extension created), stopped on exit.

    `settings`: extra server settings, e.g. ["archive_mode=on"].

    Connect as the superuser `postgres` to the database `postgres`; the logs are
    `log_dir/pg.log` (stderr format, prefix LOG_LINE_PREFIX), `pg.csv` and `pg.json`.
    """
    _require_programs()
    base = Path(tempfile.mkdtemp(prefix="ag-pg-"))
    try:
        data_dir, log_dir, socket_dir = base / "data", base / "log", base / "sock"
        for d in (data_dir, log_dir, socket_dir):
            d.mkdir()
        shutil.chown(base, PG_USER, PG_USER)
        for d in (data_dir, log_dir, socket_dir):
            shutil.chown(d, PG_USER, PG_USER)
        _run(_as_postgres(str(BIN / "initdb"), "-D", str(data_dir), "--auth=trust",
                          "-U", PG_USER, "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"),
             "initdb", cwd=base)
        # The postmaster's own stderr (before the logging collector takes over) goes to a
        # file: a pipe nobody reads could fill and block it.
        startup_log = base / "postmaster.stderr"
        server: subprocess.Popen[bytes] | None = None
        for _attempt in range(3):
            port = free_port()
            with startup_log.open("ab") as err:
                # cwd: the postgres user must be able to enter it (not so /root or /work/...).
                server = subprocess.Popen(
                    _server_argv(data_dir, log_dir, socket_dir, port, settings), cwd=base,
                    stdout=err, stderr=err, stdin=subprocess.DEVNULL,
                )
            try:
                if _wait_ready(server, socket_dir, port):
                    break
            except BaseException:
                _stop(server, data_dir)
                raise
            server.wait()  # it exited: most likely another process took the port; retry
        else:
            err = startup_log.read_text(errors="replace")
            logs = "".join(p.read_text(errors="replace") for p in log_dir.glob("pg.log"))
            raise PostgresError(f"postgres would not start:\n{err}\n{logs}")
        assert server is not None
        instance = PgInstance(
            port=port, socket_dir=socket_dir, data_dir=data_dir, log_dir=log_dir,
            dsn=f"postgresql://{PG_USER}@127.0.0.1:{port}/postgres",
        )
        try:
            instance.psql("CREATE EXTENSION pgaudit;")
            yield instance
        finally:
            _stop(server, data_dir)
    finally:
        keep = tmp_path / "pg-logs"
        with contextlib.suppress(OSError):
            shutil.copytree(base / "log", keep, dirs_exist_ok=True)
        shutil.rmtree(base, ignore_errors=True)


def postgres_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgInstance]:
    """For a fixture: `pg = pytest.fixture(scope="module")(postgres_fixture)`, or yield from it."""
    with running_postgres(tmp_path_factory.mktemp("pg")) as instance:
        yield instance
