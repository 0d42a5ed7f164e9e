"""Secrets never shown: one redaction for every URL we print or log, and the plain-text uplink test. Pure.

* ``redact_url(url)``: ``user:password@`` becomes ``user:<redacted>@``, a bare ``token@`` becomes
  ``<redacted>@``, and every query parameter whose name looks like a credential (``token``, ``key``, ``password``,
  ``secret``, ``sig``, ``auth``, ...) keeps its name and loses its value. Everything else (scheme, host, port,
  path) stays, so the technician still sees where the gateway sends.
* ``redact_text(text)``: the same for every ``scheme://...`` inside free text (error messages, log lines).
* ``RedactingFilter``: a ``logging.Filter`` that passes each record's message through ``redact_text``; the
  daemon shell installs it on its handlers, so no log line carries a URL secret, whoever wrote it.
* ``plaintext_uplink(url_or_host, ...)``: why an uplink sends in clear to a host off this machine, or None.

Limits: a secret in the URL's *path* (``/hooks/T0KEN``) cannot be told from a path and is shown.
"""

import ipaddress
import logging
import re
from urllib.parse import urlsplit

REDACTED = "<redacted>"
_SECRET_PARAM = re.compile(r"token|key|pass|pwd|secret|sig|auth|cred|session|code", re.IGNORECASE)
_URL_IN_TEXT = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]{0,15}://[^\s'\"<>]+")


def _redact_query(query):
    out = []
    for part in query.split("&"):
        name, eq, value = part.partition("=")
        if eq and value and _SECRET_PARAM.search(name):
            part = name + "=" + REDACTED
        out.append(part)
    return "&".join(out)


def redact_url(url):
    """``url`` with its credentials replaced by ``<redacted>``; text that is not a URL comes back unchanged."""
    if not isinstance(url, str) or "://" not in url:
        return url
    scheme, sep, rest = url.partition("://")
    # Split by hand rather than urlsplit/urlunsplit: the result must be the input minus secrets, byte for byte.
    cut = len(rest)
    for ch in "/?#":
        i = rest.find(ch)
        if i != -1:
            cut = min(cut, i)
    authority, tail = rest[:cut], rest[cut:]
    if "@" in authority:
        userinfo, _, hostport = authority.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        authority = (user + ":" + REDACTED if colon else REDACTED) + "@" + hostport
    path, qmark, query = tail.partition("?")
    query, hash_, fragment = query.partition("#")
    if qmark:
        tail = path + "?" + _redact_query(query) + hash_ + fragment
    return scheme + sep + authority + tail


def redact_text(text):
    """Every URL inside ``text`` redacted (``redact_url``); the rest unchanged."""
    if not isinstance(text, str) or "://" not in text:
        return text
    def one(match):
        url = match.group(0)
        core = url.rstrip(".,;:!?)]}")  # sentence punctuation after a URL is not part of it
        return redact_url(core) + url[len(core):]
    return _URL_IN_TEXT.sub(one, text)


class RedactingFilter(logging.Filter):
    """Redact URL credentials in every record passing a handler (arguments are formatted first)."""

    def filter(self, record):
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            return True  # a broken format string: logging reports it itself
        clean = redact_text(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


def install_log_redaction(logger=None):
    """Add one ``RedactingFilter`` to each handler of ``logger`` (the root logger by default)."""
    logger = logger or logging.getLogger()
    for handler in logger.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())


def is_loopback(host):
    """True for ``localhost`` (and ``*.localhost``), 127.0.0.0/8 and ::1."""
    host = (host or "").strip("[]").lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def plaintext_uplink(kind, url="", host="", tls=False):
    """Why this uplink is plain text to a host that is not this machine, or None (TLS, or loopback).

    ``kind`` is ``http`` (``url``) or ``mqtt`` (``host`` and ``tls``)."""
    if kind == "http":
        try:
            parts = urlsplit(url or "")
            hostname = parts.hostname
        except ValueError:
            return None
        if parts.scheme != "http" or not hostname or is_loopback(hostname):
            return None
        return ("uplink %s is plain HTTP to %s: batches are signed but readable by anyone on the path, and a "
                "middlebox can delay or drop them unseen; use https://" % (redact_url(url), hostname))
    if kind == "mqtt":
        if tls or not host or is_loopback(host):
            return None
        return ("uplink MQTT to %s is without TLS: batches are readable on the path and the broker username and "
                "password travel in clear; set uplink.mqtt.tls = true (provision with mqtts://)" % host)
    return None
