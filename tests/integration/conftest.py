"""Fixtures of the integration tier (the root conftest.py gives ``signing_key`` and ``trust``)."""

import pytest

from tests.support import receiver_server
from tests.support.postgres import pg_url, postgres  # noqa: F401  (fixtures: a real PostgreSQL)


@pytest.fixture
def store(tmp_path):
    """A durable queue in a temporary SQLite file."""
    from gateway.adapters.store import Store
    s = Store(str(tmp_path / "queue.sqlite"))
    yield s
    s.close()


@pytest.fixture
def http_receiver(tmp_path, trust):
    """The reference receiver on loopback, bound to port 0 (``http_receiver.url``), trusting ``signing_key``."""
    server = receiver_server(tmp_path / "receiver.sqlite", trust)
    yield server
    server.stop()
    server.receiver.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_target(request, tmp_path):
    """Where the receiver stores: a SQLite file, or a fresh PostgreSQL database (the same tests run on both)."""
    if request.param == "sqlite":
        return str(tmp_path / "rx.sqlite")
    return request.getfixturevalue("pg_url")
