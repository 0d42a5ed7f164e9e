"""The console's 80-column text: sanitizing, redaction and wrapping of every line, and the short number formats
(ages, uptime, sizes, reading values) the commands print. Pure.
"""

import textwrap

from gateway.core.redact import redact_text

WIDTH = 79


def sanitize(text):
    """Printable ASCII only: no escape sequences or control characters can reach the technician's terminal."""
    return "".join(ch if " " <= ch <= "~" else "?" for ch in str(text))


def fit(lines, width=WIDTH):
    """Redact URL credentials, sanitize and wrap every line to ``width`` columns (continuations indented by two
    spaces). Every reply passes here, so no console output shows a ``user:password@`` or a ``token=``."""
    out = []
    for line in lines:
        line = sanitize(redact_text(str(line))).rstrip()
        if len(line) <= width:
            out.append(line)
            continue
        indent = len(line) - len(line.lstrip(" "))
        out.extend(textwrap.wrap(line, width, subsequent_indent=" " * min(indent + 2, 20),
                                 break_on_hyphens=False, drop_whitespace=True) or [line[:width]])
    return out


def age(seconds):
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 10:
        return "%.1fs" % seconds
    if seconds < 120:
        return "%ds" % seconds
    if seconds < 7200:
        return "%dm" % (seconds // 60)
    if seconds < 172800:
        return "%dh" % (seconds // 3600)
    return "%dd" % (seconds // 86400)


def uptime(seconds):
    seconds = int(seconds or 0)
    d, rest = divmod(seconds, 86400)
    return "%dd %02d:%02d:%02d" % (d, rest // 3600, rest // 60 % 60, rest % 60)


def size(n):
    n = n or 0
    for unit in ("B", "kB", "MB"):
        if n < 1000:
            return ("%d %s" if unit == "B" else "%.1f %s") % (n, unit)
        n /= 1000.0
    return "%.1f GB" % n


def value_text(r):
    if r is None:
        return "-"
    v = r.value
    if isinstance(v, float):
        v = ("%.4g" % v)
    elif isinstance(v, bytes):
        v = v[:8].hex()
    return ("%s %s" % (v, r.unit or "")).strip()
