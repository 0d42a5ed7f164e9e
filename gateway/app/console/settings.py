"""Editing the config as the console does it. Pure: plain dicts (as read from TOML) in, plain dicts out.

``set_key`` parses a console value by the type the ``Config`` dataclass declares for the key, ``validate`` runs
the same ``gateway.app.config.from_dict`` the agent runs at start-up, and ``redact`` hides secrets for ``config show``:
secret-named keys and the credentials inside every URL (``gateway.core.redact.redact_url``).
Which keys apply live (without a restart) is the table ``LIVE_KEYS``; the view applies them.
"""

import copy
import dataclasses

from gateway.app.config import Config, from_dict
from gateway.core.errors import ConfigError
from gateway.core.redact import REDACTED, redact_text

#: keys the running agent takes at once; everything else is saved and applies at the next start
LIVE_KEYS = ("batch.max_age_s", "batch.max_readings", "uplink.backoff_min_s", "uplink.backoff_max_s",
             "gateway.log_level", "console.idle_lock_s")
#: keys the console will not set (provisioning owns them)
REFUSED_KEYS = {"console.pin_hash": "set the PIN with 'edge-gateway console --set-pin' on the gateway",
                "gateway.id": "the gateway id is set at provisioning (it is bound to the signing key)"}
SECRET_NAMES = ("password", "pin_hash", "key", "bindkey", "secret", "token", "psk", "private_key")
NOT_SECRET = ("gateway.key",)  # a file path, not key material
TRUE, FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def field_type(key):
    """The Python type the config declares for dotted ``key``; ConfigError if there is no such scalar key."""
    obj = Config()
    parts = key.split(".")
    for i, part in enumerate(parts):
        names = {f.name for f in dataclasses.fields(obj)} - {"file", "sources", "rules"}
        if part not in names:
            where = ".".join(parts[:i]) or "top level"
            raise ConfigError("unknown key (%s has: %s)" % (where, ", ".join(sorted(names))), key=key)
        obj = getattr(obj, part)
        if dataclasses.is_dataclass(obj):
            if i == len(parts) - 1:
                raise ConfigError("is a section; name a key inside it, e.g. %s.%s" % (
                    key, dataclasses.fields(obj)[0].name), key=key)
            continue
        if i != len(parts) - 1:
            raise ConfigError("is not a section", key=".".join(parts[:i + 1]))
        return type(obj)
    raise ConfigError("unknown key", key=key)


def parse_value(kind, text, key=None):
    text = text.strip()
    if kind is bool:
        if text.lower() in TRUE:
            return True
        if text.lower() in FALSE:
            return False
        raise ConfigError("must be true or false, got %r" % text, key=key)
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise ConfigError("must be an integer, got %r" % text, key=key) from None
    if kind is float:
        try:
            value = float(text)
        except ValueError:
            raise ConfigError("must be a number, got %r" % text, key=key) from None
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError("must be a finite number", key=key)
        return value
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1]
    return text


def scalar(text):
    """A ``key=value`` value of a ``[[sources]]`` table: integer, number, boolean or text."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return parse_value(str, text)


def set_key(raw, key, text, file=None):
    """Return ``(new_raw, value)`` with ``key`` set from console ``text``. Validates the whole config."""
    if key in REFUSED_KEYS:
        raise ConfigError("not settable from the console: " + REFUSED_KEYS[key], key=key)
    value = parse_value(field_type(key), text, key)
    new = copy.deepcopy(raw)
    node = new
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError("is not a table in the file", file, part)
    node[parts[-1]] = value
    validate(new, file)
    return new, value


def add_source(raw, name, kind, params, file=None):
    new = copy.deepcopy(raw)
    sources = new.setdefault("sources", [])
    if any(s.get("name") == name for s in sources):
        raise ConfigError("a source named %r exists already" % name, file, "sources")
    spec = {"name": name, "type": kind}
    for k, v in params.items():
        if k in ("name", "type"):
            raise ConfigError("give name and type as the first two words", key=k)
        spec[k] = v
    sources.append(spec)
    validate(new, file)
    return new, spec


def remove_source(raw, name, file=None):
    new = copy.deepcopy(raw)
    sources = new.get("sources", [])
    kept = [s for s in sources if s.get("name") != name]
    if len(kept) == len(sources):
        names = ", ".join(str(s.get("name")) for s in sources) or "none"
        raise ConfigError("no source named %r (configured: %s)" % (name, names), file, "sources")
    new["sources"] = kept
    validate(new, file)
    return new


def validate(raw, file=None):
    return from_dict(raw, file)


def is_secret(dotted):
    if dotted in NOT_SECRET:
        return False
    last = dotted.rsplit(".", 1)[-1].lower()
    return last in SECRET_NAMES or any(last.endswith("_" + s) for s in SECRET_NAMES) or "password" in last


def redact(raw, _prefix=""):
    """A deep copy of ``raw`` with every secret value replaced (non-empty ones only, so "unset" stays visible)."""
    if isinstance(raw, dict):
        out = {}
        for k, v in raw.items():
            dotted = _prefix + str(k)
            if is_secret(dotted) and not isinstance(v, (dict, list)):
                out[k] = REDACTED if v not in ("", None) else v
            else:
                out[k] = redact(v, dotted + ".")
        return out
    if isinstance(raw, list):
        return [redact(v, _prefix) for v in raw]
    if isinstance(raw, str):
        return redact_text(raw)
    return raw
