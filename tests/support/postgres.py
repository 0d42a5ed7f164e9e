"""A real PostgreSQL server for tests: a fresh ``initdb`` cluster in a temporary directory, loopback only.

``Cluster().start()`` runs Debian's ``initdb`` and ``pg_ctl`` (``/usr/lib/postgresql/*/bin``). PostgreSQL refuses
to run as root, so when the tests run as root (CI) the cluster belongs to an unprivileged user: the package's
``postgres`` user, or ``edge-pg-test`` (created with ``useradd`` if missing), and every command runs through
``runuser -u USER --``. The server listens on 127.0.0.1 at a reserved port and on a unix socket in the cluster's
directory, trusts local connections (nothing else can reach it), and runs with ``fsync=off`` (the tests kill
receivers, never the machine). ``database()`` makes a fresh empty database and returns its URL. ``stop()`` is
``pg_ctl stop -m immediate`` and removes the directory. Every wait is bounded.
"""

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid

import pytest

from tests.support import reserve_port

SUPERUSER = "edge"
FALLBACK_USER = "edge-pg-test"


def find_bin():
    """The directory holding ``initdb`` and ``pg_ctl`` (the newest installed major version), or None."""
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(d.split("/")[-2]) if
                  d.split("/")[-2].isdigit() else 0)
    for d in reversed(dirs):
        if os.access(os.path.join(d, "initdb"), os.X_OK) and os.access(os.path.join(d, "pg_ctl"), os.X_OK):
            return d
    path = shutil.which("initdb")
    return os.path.dirname(path) if path and shutil.which("pg_ctl") else None


def have_postgres():
    return find_bin() is not None


def _run_as_user():
    """The user the server runs as when we are root (None when we are not root: it runs as us)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", FALLBACK_USER):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", FALLBACK_USER],
                   check=True, timeout=30, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return FALLBACK_USER


class Cluster:
    def __init__(self, port=None):
        self.bin = find_bin()
        if self.bin is None:
            raise RuntimeError("PostgreSQL (initdb, pg_ctl) is not installed")
        self.user = _run_as_user()
        # not under pytest's 0700 tmp_path: the server's user must reach its directory
        self.directory = tempfile.mkdtemp(prefix="edge-pg-")
        self.data = os.path.join(self.directory, "data")
        self.log = os.path.join(self.directory, "postgres.log")
        self.port = port or reserve_port()
        self.running = False
        if self.user:
            entry = pwd.getpwnam(self.user)
            os.chown(self.directory, entry.pw_uid, entry.pw_gid)

    def _cmd(self, *argv):
        argv = [os.path.join(self.bin, argv[0])] + list(argv[1:])
        return ["runuser", "-u", self.user, "--"] + argv if self.user else argv

    def _run(self, *argv, timeout=60):
        proc = subprocess.run(self._cmd(*argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout,
                              cwd=self.directory)
        if proc.returncode != 0:
            raise RuntimeError("%s failed (%d): %s%s" % (argv[0], proc.returncode, proc.stdout.decode()[-1500:],
                                                         self._log_tail()))
        return proc.stdout.decode()

    def _log_tail(self):
        try:
            with open(self.log) as f:
                return "\npostgres.log: " + f.read()[-1500:]
        except OSError:
            return ""

    def start(self):
        self._run("initdb", "-D", self.data, "-U", SUPERUSER, "--auth=trust", "--no-sync", "-E", "UTF8",
                  "--locale=C")
        options = "-c listen_addresses=127.0.0.1 -p %d -k %s -c fsync=off -c full_page_writes=off " \
                  "-c max_connections=40" % (self.port, self.directory)
        # -w: pg_ctl itself waits (bounded by -t) until the server accepts connections
        self._run("pg_ctl", "-D", self.data, "-l", self.log, "-o", options, "-w", "-t", "60", "start", timeout=90)
        self.running = True
        return self

    def url(self, dbname="postgres"):
        return "postgresql://%s@127.0.0.1:%d/%s" % (SUPERUSER, self.port, dbname)

    def database(self, prefix="t"):
        """A fresh, empty database; its URL."""
        import psycopg
        name = "%s_%s" % (prefix, uuid.uuid4().hex[:12])
        with psycopg.connect(self.url(), autocommit=True, connect_timeout=10) as conn:
            conn.execute("CREATE DATABASE %s" % name)
        return self.url(name)

    def stop(self):
        if self.running:
            self.running = False
            try:
                self._run("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "-t", "30", "stop", timeout=60)
            finally:
                shutil.rmtree(self.directory, ignore_errors=True)
        else:
            shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres():
    """One cluster for the whole session (started on first use, stopped at the end); ``postgres.database()``
    gives each test its own empty database. Skips (a failure under ``bootstrap.sh test``) without PostgreSQL."""
    if not have_postgres():
        pytest.skip("PostgreSQL (initdb) is not installed")
    try:
        import psycopg  # noqa: F401  (the storage's driver)
    except ImportError:
        pytest.skip("psycopg (the PostgreSQL driver) is not installed")
    cluster = Cluster().start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(postgres):
    """The URL of a fresh, empty PostgreSQL database."""
    return postgres.database()
