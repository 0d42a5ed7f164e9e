"""SQLite errors as ``StoreError``s: which kind (``full``, ``readonly``, ``corrupt``, ``io``) and a hint a person can
act on. The store converts every ``sqlite3.Error`` here, at the adapter (house style, habit 6)."""

from gateway.core.errors import StoreError


def classify(exc):
    name = getattr(exc, "sqlite_errorname", "") or ""
    if name.startswith("SQLITE_FULL"):
        return "full"
    if name.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM")):
        return "readonly"
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
        return "corrupt"
    text = str(exc).lower()
    if "full" in text:
        return "full"
    if "readonly" in text or "read-only" in text:
        return "readonly"
    if "malformed" in text or "not a database" in text or "corrupt" in text:
        return "corrupt"
    return "io"


def store_error(action, path, exc):
    kind = classify(exc)
    hint = {"full": "the disk is full; free space or lower store.max_bytes",
            "readonly": "the store directory or file is read-only; check its owner and mode",
            "corrupt": "the database is damaged; it is moved aside and salvaged at the next start"}.get(kind, str(exc))
    name = getattr(exc, "sqlite_errorname", None)
    return StoreError("cannot %s %s: %s (%s%s)" % (action, path, hint, exc, ", " + name if name else ""), kind=kind)
