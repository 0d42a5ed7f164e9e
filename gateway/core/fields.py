"""Typed config tables: a frozen dataclass per table, its fields declared with their ranges, parsed once by one
loop, with errors in one syntax (``file: sources[2].timeout_s: must be between ...``). Pure.

A field is declared with ``setting(default, lo=, hi=, above=, choices=, parse=)``; its Python type (``float``,
``int``, ``bool``, ``str``) says how the TOML value is checked, and ``parse(value, error)`` takes over for
anything richer (a list of sensor tables, a MAC). ``error(message, sub="")`` raises the ``ConfigError`` for that
key (``sub`` names a part of it, e.g. ``"[1].mac"``). After the fields, the class's optional ``check(error)``
checks what spans fields; ``error(message, key)`` there names the key.

``gateway/app/config.py`` uses ``check_number`` and ``unknown_key`` for its own sections, so every config error
reads the same.
"""

import dataclasses
import difflib
import math

from gateway.core.errors import ConfigError

DAY = 86400.0


class Table:
    """Base of a typed config table; ``check(error)`` checks what spans fields (nothing by default)."""

    __slots__ = ()

    def check(self, error):
        return None

    @classmethod
    def from_table(cls, table, file=None, where="", what=None):
        """Parse ``table`` into this class (``parse``); a class whose table holds more overrides it."""
        return parse(cls, table, file, where, what)


def setting(default=dataclasses.MISSING, *, lo=None, hi=None, above=None, choices=None, parse=None):
    """A config field. ``lo``/``hi``: inclusive bounds; ``above``: an exclusive lower bound; ``choices``: allowed
    values; ``parse(value, error)``: a parser for values that are not a plain number, flag or text."""
    meta = {"lo": lo, "hi": hi, "above": above, "choices": choices, "parse": parse}
    if isinstance(default, (list, dict, set)):
        raise TypeError("use a tuple (or a parse function) for a default collection")
    return dataclasses.field(default=default, metadata=meta)


def did_you_mean(key, known):
    close = difflib.get_close_matches(str(key), [str(k) for k in known], n=1, cutoff=0.6)
    return "; did you mean '%s'?" % close[0] if close else ""


def unknown_key(key, known, file, dotted, where=""):
    """The ConfigError for a key that is not in ``known``: names it, suggests the closest, lists the rest."""
    return ConfigError("unknown key%s%s (known: %s)" % (where, did_you_mean(key, known), ", ".join(known)),
                       file, dotted)


def _num(x):
    return "any" if x is None else ("%d" % x if float(x).is_integer() and abs(x) < 1e15 else "%g" % x)


def check_number(value, file, key, lo=None, hi=None, integer=False, above=None):
    """The one numeric check: a number (not a boolean), finite, within ``[lo, hi]`` and ``> above`` when given."""
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise ConfigError("must be %s, got %r" % ("an integer" if integer else "a number", value), file, key)
    if not math.isfinite(value):
        raise ConfigError("must be a finite number, got %r" % (value,), file, key)
    if above is not None and not value > above:
        raise ConfigError("must be greater than %s%s, got %r" % (
            _num(above), "" if hi is None else " and at most %s" % _num(hi), value), file, key)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ConfigError("must be between %s and %s, got %r" % (_num(lo), _num(hi), value), file, key)
    return value


def join(where, key):
    if not where:
        return key
    return where + key if key.startswith("[") else "%s.%s" % (where, key)


def check_table(table, schema, file, where, what):
    """Every key of ``table`` is in ``schema`` (key -> None: any value, (lo, hi): a number in range, dict: an
    array of tables with that schema); used for tables whose meaning a protocol checks itself."""
    for key, value in table.items():
        dotted = join(where, key)
        if key not in schema:
            raise unknown_key(key, list(schema), file, dotted, " in %s" % what)
        rule = schema[key]
        if isinstance(rule, tuple) and isinstance(value, (int, float)) and not isinstance(value, bool):
            check_number(value, file, dotted, *rule)
        elif isinstance(rule, dict) and isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, dict):
                    check_table(item, rule, file, "%s[%d]" % (dotted, i), "%s %s" % (what, key))


def _value(f, value, file, key):
    meta = f.metadata
    if meta.get("parse") is not None:
        def error(message, sub=""):
            raise ConfigError(message, file, key + sub)
        return meta["parse"](value, error)
    if f.type in (int, float):
        value = check_number(value, file, key, meta.get("lo"), meta.get("hi"), f.type is int, meta.get("above"))
        value = f.type(value)
    elif f.type is bool:
        if not isinstance(value, bool):
            raise ConfigError("must be true or false, got %r" % (value,), file, key)
    elif f.type is str:
        # empty text is refused, except where empty is the key's own default (its "not set")
        if not isinstance(value, str) or (not value.strip() and not (value == "" and f.default == "")):
            raise ConfigError("must be non-empty text", file, key)
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError("must be one of %s, got %r" % (", ".join(map(str, choices)), value), file, key)
    return value


def parse(cls, table, file=None, where="", what=None, extra=()):
    """``table`` (a dict from TOML) -> a ``cls`` instance (a ``Table`` dataclass), or ``ConfigError`` naming
    ``file`` and the key under ``where``. Keys in ``extra`` are allowed and left to the caller."""
    if not isinstance(table, dict):
        raise ConfigError("must be a table", file, where or None)
    fields = [f for f in dataclasses.fields(cls) if f.init and not f.metadata.get("internal")]
    known = [f.name for f in fields] + list(extra)
    for key in table:
        if key not in known:
            raise unknown_key(key, known, file, join(where, key), " in %s" % what if what else "")
    values = {}
    for f in fields:
        if f.name in table:
            values[f.name] = _value(f, table[f.name], file, join(where, f.name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError("is required", file, join(where, f.name))
    obj = cls(**values)

    def error(message, key):
        raise ConfigError(message, file, join(where, key))
    obj.check(error)
    return obj
