"""Rule configuration: validation, per-group merging inputs and the ``*``/``?`` glob (MicroPython-safe)."""

INF = float("inf")

# Threshold level indices: low side 0, 1; high side 2, 3.
LEVELS = ("low_low", "low", "high", "high_high")
ALARM_NAMES = ("alarm.low_low", "alarm.low", "alarm.high", "alarm.high_high")
RANK = (2, 1, 1, 2)
THRESHOLD_KEYS = ("low_low", "low", "high", "high_high")

GROUPS = (
    ("thresholds", ("low", "high", "low_low", "high_high", "hysteresis", "delay_on")),
    ("deadband", ("deadband", "deadband_pct")),
    ("heartbeat", ("heartbeat",)),
    ("stale", ("stale_after",)),
    ("battery", ("battery_low", "battery_hysteresis")),
    ("rssi", ("rssi_weak", "rssi_hysteresis")),
    ("compression", ("swinging_door",)),
    ("rate", ("rate_limit", "burst")),
)
BATTERY_NAMES = ("batt", "battery")
RSSI_NAMES = ("rssi",)
COUNTER_NAMES = ("dropped_rate_limit", "suppressed_deadband", "compressed_swinging_door", "heartbeat")

EPS = 1e-9  # slack on delay_on comparisons of float times


class RuleConfigError(ValueError):
    """A rule is invalid. ``key`` names it, e.g. ``rules[2].high``; the message starts with the key."""

    def __init__(self, key, message):
        super().__init__("%s: %s" % (key, message))
        self.key = key


def glob_match(pattern, text):
    """Match ``text`` against a glob with ``*`` (any run, also empty) and ``?`` (one character); nothing else."""
    p = 0
    s = 0
    star = -1
    mark = 0
    np = len(pattern)
    ns = len(text)
    while s < ns:
        if p < np and (pattern[p] == "?" or pattern[p] == text[s]) and pattern[p] != "*":
            p += 1
            s += 1
        elif p < np and pattern[p] == "*":
            star = p
            mark = s
            p += 1
        elif star >= 0:
            p = star + 1
            mark += 1
            s = mark
        else:
            return False
    while p < np and pattern[p] == "*":
        p += 1
    return p == np


def _number(rule, key, where, minimum=None, strict=False):
    v = rule[key]
    if type(v) is not int and type(v) is not float:
        raise RuleConfigError(where + "." + key, "must be a number, got %r" % (v,))
    if v - v != 0:
        raise RuleConfigError(where + "." + key, "must be finite, got %r" % (v,))
    if minimum is not None:
        if strict and not v > minimum:
            raise RuleConfigError(where + "." + key, "must be greater than %r, got %r" % (minimum, v))
        if not strict and v < minimum:
            raise RuleConfigError(where + "." + key, "must be at least %r, got %r" % (minimum, v))
    return v


# option key -> its group ("match" -> None); group -> its keys
_ALL_KEYS = dict([("match", None)] + [(k, g[0]) for g in GROUPS for k in g[1]])
_GROUP_KEYS = dict(GROUPS)


def validate_rules(rules):
    """Check ``rules`` and return them as a list of (sensor_glob, name_glob, {group: {key: value}}).

    Raises :class:`RuleConfigError` (a ValueError) naming the offending key as ``rules[i].key``.
    """
    if not isinstance(rules, (list, tuple)):
        raise RuleConfigError("rules", "must be a list of tables, got %r" % (type(rules).__name__,))
    out = []
    for i, rule in enumerate(rules):
        where = "rules[%d]" % i
        if not isinstance(rule, dict):
            raise RuleConfigError(where, "must be a table, got %r" % (type(rule).__name__,))
        for key in rule:
            if key not in _ALL_KEYS:
                raise RuleConfigError(where + "." + str(key), "unknown key")
        if "match" not in rule:
            raise RuleConfigError(where + ".match", "missing; use {sensor = \"*\", name = \"*\"} to match all")
        match = rule["match"]
        if not isinstance(match, dict):
            raise RuleConfigError(where + ".match", "must be a table with sensor and name globs")
        for key in match:
            if key not in ("sensor", "name"):
                raise RuleConfigError(where + ".match." + str(key), "unknown key (use sensor, name)")
            if not isinstance(match[key], str) or not match[key]:
                raise RuleConfigError(where + ".match." + key, "must be a non-empty glob string")
        groups = {}
        for gname, keys in GROUPS:
            present = [k for k in keys if k in rule]
            if present:
                groups[gname] = _validate_group(gname, rule, where)
        if not groups:
            raise RuleConfigError(where, "sets no option (known: %s)" % ", ".join(
                [k for k in _ALL_KEYS if k != "match"]))
        out.append((match.get("sensor", "*"), match.get("name", "*"), groups))
    return out


def _validate_group(gname, rule, where):
    g = {}
    if gname == "thresholds":
        prev = None
        for key in THRESHOLD_KEYS:
            if key in rule:
                v = _number(rule, key, where)
                if prev is not None and not v > prev[1]:
                    raise RuleConfigError(where + "." + key, "must be above %s (%r), got %r" % (prev[0], prev[1], v))
                prev = (key, v)
                g[key] = v
        if prev is None:
            raise RuleConfigError(where + ".hysteresis", "needs at least one of low, high, low_low, high_high")
        g["hysteresis"] = _number(rule, "hysteresis", where, 0) if "hysteresis" in rule else 0
        g["delay_on"] = _number(rule, "delay_on", where, 0) if "delay_on" in rule else 0
    elif gname == "deadband":
        if "deadband" in rule and "deadband_pct" in rule:
            raise RuleConfigError(where + ".deadband_pct", "set deadband or deadband_pct, not both")
        if "deadband" in rule:
            g["deadband"] = _number(rule, "deadband", where, 0)
        else:
            g["deadband_pct"] = _number(rule, "deadband_pct", where, 0)
    elif gname == "battery":
        if "battery_low" not in rule:
            raise RuleConfigError(where + ".battery_hysteresis", "needs battery_low")
        g["battery_low"] = _number(rule, "battery_low", where)
        g["hysteresis"] = _number(rule, "battery_hysteresis", where, 0) if "battery_hysteresis" in rule else 2.0
    elif gname == "rssi":
        if "rssi_weak" not in rule:
            raise RuleConfigError(where + ".rssi_hysteresis", "needs rssi_weak")
        g["rssi_weak"] = _number(rule, "rssi_weak", where)
        g["hysteresis"] = _number(rule, "rssi_hysteresis", where, 0) if "rssi_hysteresis" in rule else 3.0
    elif gname == "rate":
        if "rate_limit" not in rule:
            raise RuleConfigError(where + ".burst", "needs rate_limit")
        rate = _number(rule, "rate_limit", where, 0, strict=True)
        g["rate_limit"] = rate
        g["burst"] = _number(rule, "burst", where, 1) if "burst" in rule else max(1, rate)
    else:  # heartbeat, stale, compression: one strictly positive number
        for key in _GROUP_KEYS[gname]:
            g[key] = _number(rule, key, where, 0, strict=True)
    return g
