"""The read API and the fleet page over HTTP, without the server: ``ReadFront.handle(request) -> (status, headers,
body)``. ``backend.httpd`` serves it on the ops listener (``--ops-listen``); docs/backend.md, "The read API".

* ``GET /api/v1/...``: JSON (``backend.readapi``); read-only, every other method is ``405``.
* ``GET /fleet/``: the fleet page, static files shipped in ``backend/fleet/`` (no CDN, no build step).
* Access (``ApiAccess``): ``off`` (both ``404``), ``loopback`` (only peers on 127.0.0.0/8 or ::1; others ``403``),
  or ``token`` (``Authorization: Bearer <token>`` on ``/api``; the page's files hold no data and are served to any
  peer, the page sends the token it was given in its URL fragment).
* Hostile input is a ``400`` naming the parameter: unknown or repeated parameters, numbers that are not finite or
  out of bounds, a gateway id outside the wire format's pattern, control characters in a name. A failing database
  is ``503`` with ``Retry-After``.

The read API opens its own connection to the receiver's database (``open_storage``), so a slow query never holds
the lock batches are stored under; calls are serialised on it.
"""

import dataclasses
import hmac
import ipaddress
import json
import logging
import math
import os
import re
import threading
import time
import urllib.parse

from backend.engines import open_storage
from backend.readapi import MAX_POINTS, Attention, ReadApi
from backend.storage import StorageError

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
PAGE_PREFIX = "/fleet"
#: the access modes of ``--api``
MODES = ("off", "loopback", "token")
#: the page's files: name -> media type (nothing else under /fleet/ is served)
PAGE_FILES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
              "style.css": "text/css; charset=utf-8"}
PAGE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fleet")
PAGE_HEADERS = [("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; "
                 "connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'"),
                ("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "no-referrer")]
GATEWAY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9:._-]{0,63}\Z")
NAME = re.compile(r"[^\x00-\x1f\x7f/][^\x00-\x1f\x7f]{0,254}\Z")
MAX_QUERY = 2048
MIN_TOKEN = 16
DAY = 86400.0


class ApiError(Exception):
    """A request the read API refuses: an HTTP status, a reason token and a detail for the JSON body."""

    def __init__(self, status, reason, detail, headers=()):
        super().__init__(detail)
        self.status, self.reason, self.detail, self.headers = status, reason, detail, list(headers)


@dataclasses.dataclass(frozen=True, slots=True)
class ApiAccess:
    """Who may read: ``mode`` one of ``MODES``; ``token`` for ``token`` mode."""

    mode: str = "loopback"
    token: str = dataclasses.field(default=None, repr=False)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError("--api must be one of %s, not %r" % (", ".join(MODES), self.mode))
        if self.mode == "token" and (not self.token or len(self.token) < MIN_TOKEN):
            raise ValueError("--api token needs a token of at least %d characters (--api-token-file)" % MIN_TOKEN)

    @classmethod
    def from_args(cls, mode, token_file=None):
        """``--api MODE [--api-token-file FILE]``: the token is read from a file (never from the command line,
        where ``ps`` shows it); ``ValueError`` names the file and the fix."""
        token = None
        if token_file:
            try:
                with open(token_file, encoding="utf-8") as f:
                    token = f.read().strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise ValueError("cannot read the API token file %s: %s" % (token_file, exc)) from None
            if len(token) < MIN_TOKEN or any(c.isspace() for c in token):
                raise ValueError("the API token in %s must be one word of at least %d characters (e.g. "
                                 "'openssl rand -hex 32 > %s')" % (token_file, MIN_TOKEN, token_file))
            if mode != "token":
                raise ValueError("--api-token-file is only used with --api token")
        elif mode == "token":
            raise ValueError("--api token needs --api-token-file FILE (one word of at least %d characters)"
                             % MIN_TOKEN)
        return cls(mode, token)

    def check(self, client_host, authorization, data):
        """Raise ``ApiError`` unless this peer may have this path (``data``: an API answer, not a page file)."""
        if self.mode == "off":
            raise ApiError(404, "not_found", "the read API is off (--api)")
        if self.mode == "loopback":
            if not _loopback(client_host):
                raise ApiError(403, "forbidden", "the read API answers loopback peers only (--api loopback)")
            return
        if not data:
            return
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode("utf-8", "replace"),
                                                                 self.token.encode()):
            raise ApiError(401, "unauthorized", "send Authorization: Bearer <token>",
                           [("WWW-Authenticate", 'Bearer realm="edge-gateway"')])


def _loopback(host):
    try:
        ip = ipaddress.ip_address((host or "").split("%", 1)[0])
    except ValueError:
        return False
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return ip.is_loopback or bool(mapped and mapped.is_loopback)


def _json_bytes(body):
    return (json.dumps(body, sort_keys=True, allow_nan=False, separators=(",", ":")) + "\n").encode()


class Params:
    """The query string of one request, checked: each parameter known and given once."""

    def __init__(self, query, allowed):
        if len(query) > MAX_QUERY:
            raise ApiError(414, "query_too_long", "the query string is over %d bytes" % MAX_QUERY)
        try:
            pairs = urllib.parse.parse_qsl(query, keep_blank_values=True, errors="strict", max_num_fields=16)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, "bad_query", "the query string does not parse: %s" % str(exc)[:100]) from None
        self.values = {}
        for key, value in pairs:
            if key not in allowed:
                raise ApiError(400, "unknown_parameter", "unknown parameter %r; this endpoint takes %s"
                               % (key[:40], ", ".join(allowed) or "none"))
            if key in self.values:
                raise ApiError(400, "repeated_parameter", "parameter %r is given twice" % key)
            self.values[key] = value

    def number(self, key, default, low, high):
        text = self.values.get(key)
        if text is None or text == "":
            return default
        try:
            value = float(text) if text.isascii() and len(text) <= 32 else math.nan
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or not low <= value <= high:
            raise ApiError(400, "bad_parameter", "%s must be a number from %g to %g" % (key, low, high))
        return value

    def text(self, key, pattern, what, required=True):
        value = self.values.get(key)
        if value is None or value == "":
            if required:
                raise ApiError(400, "missing_parameter", "parameter %s is required (%s)" % (key, what))
            return None
        if not pattern.match(value):
            raise ApiError(400, "bad_parameter", "%s must be %s" % (key, what))
        return value


class ReadFront:
    """The read API and the fleet page for the HTTP front. ``db_target``: the receiver's ``--db``; ``clock``: the
    receiver's. Thread-safe (one lock around the storage)."""

    def __init__(self, db_target, access=ApiAccess(), clock=time.time, busy_timeout=5.0):
        self.db_target = db_target
        self.access = access
        self.clock = clock
        self.busy_timeout = busy_timeout
        self._lock = threading.Lock()
        self._storage = None
        self.routes = {"/gateways": self._gateways, "/sensors": self._sensors, "/readings": self._readings,
                       "/alarms": self._alarms, "/attention": self._attention, "": self._index}

    @staticmethod
    def claims(path):
        """Does this path belong to the read API or the page (the rest of the ops listener is not ours)?"""
        return any(path == p or path.startswith(p + "/") for p in (API_PREFIX, PAGE_PREFIX))

    def handle(self, method, path, query, client_host=None, authorization=None):
        """One request: ``(status, [(header, value)], body bytes)``. Never raises for anything a peer sends."""
        is_api = path == API_PREFIX or path.startswith(API_PREFIX + "/")
        try:
            self.access.check(client_host, authorization, is_api)
            if method != "GET":
                raise ApiError(405, "method_not_allowed", "the read API is read-only: GET", [("Allow", "GET")])
            if not is_api:
                return self._page(path)
            route = self.routes.get(path[len(API_PREFIX):].rstrip("/"))
            if route is None:
                raise ApiError(404, "not_found", "no endpoint %s; see GET %s" % (path[:100], API_PREFIX))
            with self._lock:
                body = route(query)
            return 200, [("Content-Type", "application/json"), ("Cache-Control", "no-store")], _json_bytes(body)
        except ApiError as exc:
            return exc.status, [("Content-Type", "application/json")] + exc.headers, _json_bytes(
                {"error": exc.reason, "detail": exc.detail})
        except StorageError as exc:
            log.error("read API: %s", exc)
            self._drop_storage()
            return 503, [("Content-Type", "application/json"), ("Retry-After", "5")], _json_bytes(
                {"error": "store_failed", "detail": "the database did not answer; retry"})

    def _page(self, path):
        if path == PAGE_PREFIX:
            return 308, [("Location", PAGE_PREFIX + "/"), ("Content-Type", "text/plain")], b"see /fleet/\n"
        name = path[len(PAGE_PREFIX) + 1:] or "index.html"
        if name not in PAGE_FILES:
            raise ApiError(404, "not_found", "the fleet page has no file %r" % name[:60])
        with open(os.path.join(PAGE_DIR, name), "rb") as f:
            data = f.read()
        return 200, [("Content-Type", PAGE_FILES[name]), ("Cache-Control", "no-cache")] + PAGE_HEADERS, data

    def _api(self):
        if self._storage is None:
            self._storage = open_storage(self.db_target, self.busy_timeout)
        return ReadApi(self._storage, self.clock)

    def _drop_storage(self):
        with self._lock:
            if self._storage is not None:
                try:
                    self._storage.close()
                except Exception as exc:  # deliberate: closing a broken connection; the error is logged above
                    log.debug("closing the read API's connection: %s", exc)
                self._storage = None

    def close(self):
        self._drop_storage()

    # -- endpoints --------------------------------------------------------------------------------------------
    def _index(self, query):
        Params(query, ())
        return {"endpoints": {
            API_PREFIX + "/gateways": "gateways: last seen, boot, clock, health counters, version [days]",
            API_PREFIX + "/sensors": "sensors of one gateway: last values, battery, signal, open events gw [days]",
            API_PREFIX + "/readings": "one name over a time range, at most max_points: gw name [from to span max_points]",
            API_PREFIX + "/alarms": "open events (raised, not cleared since) [gw]",
            API_PREFIX + "/attention": "sensors needing attention, ranked [silent_after_s battery_below rssi_below "
                                       "margin days]"}}

    def _gateways(self, query):
        p = Params(query, ("days",))
        return self._api().gateways(p.number("days", 7.0, 0.001, 3660.0))

    def _gw(self, p, required=True):
        return p.text("gw", GATEWAY_ID, "a gateway id ([A-Za-z0-9][A-Za-z0-9:._-]{0,63})", required)

    def _sensors(self, query):
        p = Params(query, ("gw", "days"))
        gw = self._gw(p)
        out = self._api().sensors(gw, p.number("days", 7.0, 0.001, 3660.0))
        if out is None:
            raise ApiError(404, "unknown_gateway", "no batch of gateway %s is stored" % gw)
        return out

    def _readings(self, query):
        p = Params(query, ("gw", "name", "from", "to", "span", "max_points"))
        gw = self._gw(p)
        name = p.text("name", NAME, "<sensor>/<quantity>, e.g. fridge-1/temp (no control characters)")
        api = self._api()
        newest = api.storage.latest(gw, gw + "/" + name)
        end = newest[0][0] if newest else self.clock()
        t1 = p.number("to", end, -1e12, 1e12)
        t0 = p.number("from", t1 - p.number("span", DAY, 1, 3660 * DAY), -1e12, 1e12)
        if t0 > t1:
            raise ApiError(400, "bad_parameter", "from must not be after to")
        max_points = int(p.number("max_points", 1000, 2, MAX_POINTS))
        return api.readings(gw, name, t0, t1, max_points)

    def _alarms(self, query):
        p = Params(query, ("gw",))
        return self._api().alarms(self._gw(p, required=False))

    def _attention(self, query):
        p = Params(query, ("silent_after_s", "battery_below", "rssi_below", "margin", "days"))
        d = Attention()
        limits = Attention(p.number("silent_after_s", d.silent_after_s, 1, 366 * DAY),
                           p.number("battery_below", d.battery_below, 0, 100),
                           p.number("rssi_below", d.rssi_below, -200, 0),
                           p.number("margin", d.margin, 0, 1), p.number("days", d.days, 0.001, 3660.0))
        return self._api().attention(limits)
