"""The storage engines, one row each, and the one function that picks one for a ``--db`` value."""

import importlib

from backend.storage import is_postgres_url

#: engine -> (module, class); imported on use, so SQLite needs no psycopg
ENGINES = {
    "sqlite": ("backend.receiver_db", "SqliteStorage"),
    "postgresql": ("backend.receiver_pg", "PostgresStorage"),
}


def engine_of(target):
    """``postgresql`` for a ``postgresql://`` (or ``postgres://``) URL, else ``sqlite`` (a file name)."""
    return "postgresql" if is_postgres_url(target) else "sqlite"


def open_storage(target, busy_timeout=5.0):
    """The storage ``target`` names: a ``postgresql://`` URL (optionally ``?retention_days=N``) or a SQLite file.

    Raises ``StorageError`` when the database cannot be opened or migrated, ``ValueError`` for a bad setting."""
    module, name = ENGINES[engine_of(target)]
    cls = getattr(importlib.import_module(module), name)
    return cls.from_target(target, busy_timeout)
