"""The receiver's command queue and the commands' outcomes (docs/backend.md, "Commands"), for both engines.

The SQL is written once here, with ``?`` placeholders; each engine runs it through ``execute(sql, args)`` inside
its own transaction (``Storage.transaction``; PostgreSQL's turns ``?`` into ``%s``). Tables (the DDL is each
engine's, in its migrations):

* ``commands``: one row per signed command queued with ``POST /v1/commands``, keyed ``(gw, kid, op_seq)``.
  ``state`` is ``queued`` until an outcome for it comes back from the gateway (then the outcome's state:
  ``applied``, ``failed``, ``rejected``, ``reverted``, or ``checking`` until the final one), or ``expired`` once its
  ``exp`` passed undelivered. Only ``queued`` commands are handed over; ``handed`` counts how often.
* ``command_outcomes``: every outcome record of every gateway (HTTP and MQTT alike), in the order they came.

An outcome is matched to its command by the digest its text carries (``[cmd <16 hex>]``), else by ``(gw, op_seq)``
and the key its text names. The first final outcome stays the command's state (a later ``rejected: replayed`` of
a redelivery does not hide that it was applied); ``command_outcomes`` keeps them all.
"""

from gateway.core.commands import parse_outcome

QUEUED, EXPIRED, CHECKING = "queued", "expired", "checking"
#: states an outcome may still replace
OPEN = (QUEUED, EXPIRED, CHECKING)
#: per gateway: queued commands and their bytes at most (``POST /v1/commands`` answers 429 beyond)
MAX_QUEUED, MAX_QUEUED_BYTES = 32, 64 * 1024
#: commands per answer, and their bytes at most (the gateway reads 64 KiB of an answer, base64 adds a third)
ANSWER_COMMANDS, ANSWER_BYTES = 8, 40 * 1024
QUEUE_STATES = ("queued", "duplicate")


class QueueRefused(Exception):
    """``reason`` ``full`` (the gateway's queue is at its bound) or ``conflict`` (another command holds this
    ``(gw, kid, op_seq)``)."""

    def __init__(self, message, reason):
        super().__init__(message)
        self.reason = reason


def queue(execute, cmd, digest, data, now):
    """Queue one verified command (``gateway.core.commands.Command``). Returns ``queued`` or ``duplicate`` (the
    same bytes were queued before); raises ``QueueRefused``."""
    known = execute("SELECT digest FROM commands WHERE gw = ? AND kid = ? AND op_seq = ?",
                    (cmd.gw, cmd.kid, cmd.op_seq)).fetchall()
    if known:
        if known[0][0] == digest:
            return "duplicate"
        raise QueueRefused("gateway %s already has another command from key %s with op_seq %d" % (
            cmd.gw, cmd.kid, cmd.op_seq), "conflict")
    execute("UPDATE commands SET state = ? WHERE gw = ? AND state = ? AND exp <= ?", (EXPIRED, cmd.gw, QUEUED, now))
    n, size = execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(data)), 0) FROM commands WHERE gw = ? AND state = ?",
                      (cmd.gw, QUEUED)).fetchall()[0]
    if n >= MAX_QUEUED or size + len(data) > MAX_QUEUED_BYTES:
        raise QueueRefused("gateway %s has %d commands (%d bytes) waiting, the most one gateway may have (%d, %d "
                           "bytes); wait for their outcomes" % (cmd.gw, n, size, MAX_QUEUED, MAX_QUEUED_BYTES),
                           "full")
    execute("INSERT INTO commands (gw, kid, op_seq, digest, exp, action, data, queued, handed, state) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, ?)",
            (cmd.gw, cmd.kid, cmd.op_seq, digest, cmd.exp, cmd.action, bytes(data), now, QUEUED))
    return "queued"


def hand_over(execute, gw, now):
    """The commands to put in the answer to ``gw``'s batch: queued, not expired, oldest op_seq first per key,
    within ``ANSWER_COMMANDS`` and ``ANSWER_BYTES``. Each one's ``handed`` count goes up."""
    rows = execute("SELECT kid, op_seq, data FROM commands WHERE gw = ? AND state = ? AND exp > ? "
                   "ORDER BY queued, kid, op_seq LIMIT ?", (gw, QUEUED, now, ANSWER_COMMANDS)).fetchall()
    out, size = [], 0
    for kid, op_seq, data in rows:
        data = bytes(data)
        if out and size + len(data) > ANSWER_BYTES:
            break
        size += len(data)
        out.append(data)
        execute("UPDATE commands SET handed = handed + 1, last_handed = ? WHERE gw = ? AND kid = ? AND op_seq = ?",
                (now, gw, kid, op_seq))
    return out


def outcome_rows(batch):
    """``(gw, op_seq, kid, digest, state, text, t)`` for each outcome record of a verified batch."""
    out = []
    prefix = batch.gw + "/"
    for r in batch.records:
        if r.get("vs") is None:  # an outcome is a text value: a reading (most records) is passed over at once
            continue
        name = r.get("n")
        if not isinstance(name, str) or not name.startswith(prefix):
            continue
        found = parse_outcome(name, r.get("vs"))
        if found is not None:
            out.append((batch.gw, found.op_seq, found.kid, found.digest, found.state, found.text, r.get("t")))
    return out


def record_outcomes(execute, rows, batch_key, received):
    """Store the outcome rows of a batch just stored, and settle the commands they answer (same transaction)."""
    for gw, op_seq, kid, digest, state, text, t in rows:
        execute("INSERT INTO command_outcomes (gw, op_seq, kid, digest, state, text, t, received, boot, seq) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", (gw, op_seq, kid, digest, state, text, t, received)
                + batch_key[1:])
        if state == CHECKING:
            allowed = (QUEUED, EXPIRED)
        else:
            allowed = OPEN
        marks = ", ".join("?" * len(allowed))
        if digest:
            execute("UPDATE commands SET state = ?, outcome = ?, done = ? WHERE gw = ? AND digest = ? AND state IN "
                    "(%s)" % marks, (state, text, received, gw, digest) + allowed)
        elif op_seq is not None:
            by_kid = " AND kid = ?" if kid else ""
            execute("UPDATE commands SET state = ?, outcome = ?, done = ? WHERE gw = ? AND op_seq = ?%s AND "
                    "state IN (%s)" % (by_kid, marks),
                    (state, text, received, gw, op_seq) + ((kid,) if kid else ()) + allowed)


def status(execute, gw, now):
    """``gw``'s commands, newest first: dicts of ``kid, op_seq, action, state, handed, queued, done, outcome``,
    then the outcomes of commands this receiver never queued (sent over MQTT) as rows with ``action`` None."""
    execute("UPDATE commands SET state = ? WHERE gw = ? AND state = ? AND exp <= ?", (EXPIRED, gw, QUEUED, now))
    out = []
    for kid, op_seq, action, state, handed, queued, done, outcome, digest in execute(
            "SELECT kid, op_seq, action, state, handed, queued, done, outcome, digest FROM commands WHERE gw = ? "
            "ORDER BY queued DESC, op_seq DESC", (gw,)).fetchall():
        out.append({"kid": kid, "op_seq": op_seq, "action": action, "state": state, "handed": handed,
                    "queued": queued, "done": done, "outcome": outcome, "digest": digest})
    queued = {row["digest"] for row in out}
    others = {}  # (op_seq, digest) -> its first final outcome (or the checking one, while that is all there is)
    for op_seq, kid, digest, state, text, received in execute(
            "SELECT op_seq, kid, digest, state, text, received FROM command_outcomes WHERE gw = ? "
            "ORDER BY received, t", (gw,)).fetchall():
        key = (op_seq, digest)
        if digest in queued or (key in others and others[key]["state"] != CHECKING):
            continue
        others[key] = {"kid": kid, "op_seq": op_seq, "action": None, "state": state, "handed": None,
                       "queued": None, "done": received, "outcome": text, "digest": digest}
    return out + sorted(others.values(), key=lambda row: -row["done"])
