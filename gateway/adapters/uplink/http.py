"""HTTP(S) uplink: ``POST`` each batch; a 2xx response is the acknowledgement.

* TLS verification stays on: the system trust store, or a pinned CA file (``ca_file``). There is no switch to turn
  it off.
* One keep-alive connection, reopened after any error.
* 408, 425, 429 and 5xx are retryable and ``Retry-After`` (seconds or an HTTP date) is passed on to the backoff.
  Any other 4xx is a rejection of these bytes: not retryable, so the agent quarantines the batch. That includes
  ``409`` (conflict: the backend holds different content under this batch's ``(gw, boot, seq)``), which the agent
  also counts as ``conflict_batches``: such a batch is kept, never taken as delivered.
* ``compress`` (the default; ``uplink.compress``): the body is the signed batch deflated (``Content-Encoding:
  deflate``, a zlib stream) when that is smaller. What is signed, stored and verified is unchanged: the receiver
  inflates and verifies the same bytes. A receiver that cannot read the coding answers 415 (RFC 7694), or, if it
  ignores the header, 400 to bytes it cannot parse: the same batch is then sent again plain at once, and when the
  plain body is taken (or the answer was 415) the uplink sends plain bodies from then on, so older backends keep
  working. ``counters`` has the bytes written to the socket (request line, headers and body, before TLS).
* Commands: a 2xx answer may hand over signed commands for this gateway (docs/wire-format.md, "Delivery
  (HTTP)"); they go to the command sink (``set_command_sink``, the downlink), unverified: the downlink verifies
  them. An answer whose ``commands`` cannot be read is counted (``answer_malformed``); the batch was delivered.
"""

import email.utils
import http.client
import logging
import re
import socket
import ssl
import time
import urllib.parse

from gateway.adapters.uplink.base import FAIL, OK, WARN, Probe, SectionError, Uplink, deflated
from gateway.core.commands import MAX_ANSWER_BYTES, CommandError, commands_from_answer
from gateway.core.errors import UplinkError
from gateway.core.redact import plaintext_uplink, redact_url
from gateway.core.wire import HTTP_CONTENT_TYPE

_RETRYABLE_4XX = {408, 425, 429}
DEFLATE = "deflate"
#: answers to a deflated body after which the same batch goes again plain: 415 is a receiver that refuses the
#: coding; 400 may be one that ignored the header and could not parse the deflated bytes
_CODING_REFUSED = (400, 415)
log = logging.getLogger(__name__)


class _Counting:
    """Counts what ``http.client`` writes (request line, headers, body): the bytes on the socket before TLS."""
    bytes_sent = 0

    def send(self, data):
        super().send(data)
        self.bytes_sent += len(data)


class _HTTPConnection(_Counting, http.client.HTTPConnection):
    pass


class _HTTPSConnection(_Counting, http.client.HTTPSConnection):
    pass


def parse_retry_after(value, now=None):
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


class HttpUplink(Uplink):
    kind = "http"
    frame_bytes = 180  # request line and headers (docs/performance.md, "Bytes on the wire")
    schemes = ("http", "https")
    downlink = "answer"

    def __init__(self, url, ca_file=None, timeout=10.0, headers=None, compress=True):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("uplink url must be http:// or https:// with a host, not %r" % (url,))
        self.url = url
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.path = (parts.path or "/") + ("?" + parts.query if parts.query else "")
        self.timeout = timeout
        self.headers = dict(headers or {})
        self.context = None
        if self.scheme == "https":
            self.context = ssl.create_default_context(cafile=ca_file)
        self._conn = None
        self.last_latency = None
        self.compress = compress
        self.plain_only = False  # set for good once the receiver showed it cannot read a deflated body
        self.counters = {"requests": 0, "bytes_sent": 0, "body_bytes": 0, "signed_bytes": 0, "deflated": 0,
                         "coding_fallbacks": 0,
                         "commands_received": 0, "answer_malformed": 0}

    @classmethod
    def check_section(cls, section):
        if section.url and not re.match(r"^https?://[^/\s]+", section.url):
            raise SectionError("must be an http:// or https:// URL, got %r" % redact_url(section.url), "uplink.url")

    @classmethod
    def from_section(cls, section):
        if not section.url:
            raise SectionError("is required for the http uplink", "uplink.url")
        return cls(section.url, ca_file=section.ca_file or None, timeout=section.timeout_s,
                   compress=section.compress)

    @classmethod
    def from_url(cls, url, timeout=10.0, retry_max_s=None):
        return cls(url, timeout=timeout)  # one connection per send after an error: no reconnect loop to bound

    @classmethod
    def transport(cls, section):
        if not section.url:
            return Probe(FAIL, "uplink.url is empty", "set uplink.url in the config")
        clear = plaintext_uplink("http", section.url)
        if clear:
            return Probe(WARN, clear, "use an https:// uplink.url (the receiver behind TLS)")
        plain = section.url.startswith("http:")
        return Probe(OK, "%s: %s" % (redact_url(section.url),
                                     "plain text to this machine (loopback)" if plain else "TLS"))

    def describe(self):
        return redact_url(self.url)

    def probe(self, timeout, monotonic=time.monotonic):
        """``OPTIONS`` the uplink URL on a connection of its own. A batch endpoint answers 2xx (the reference receiver:
        204, ``Allow: POST``); 404/410 means nothing takes batches at this path (every batch would be quarantined),
        a FAIL; another answer below 500 proves the receiver is there."""
        shown = self.describe()
        start = monotonic()
        try:
            if self.scheme == "https":
                conn = http.client.HTTPSConnection(self.host, self.port, timeout=timeout, context=self.context)
            else:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
            try:
                conn.request("OPTIONS", self.path, headers={"User-Agent": "edge-gateway-probe"})
                resp = conn.getresponse()
                resp.read(1024)
            finally:
                conn.close()
        except ssl.SSLCertVerificationError as exc:
            return Probe(FAIL, "TLS certificate of %s did not verify (%s): %s" % (self.host, shown, exc.verify_message),
                         "check the clock, and uplink.ca_file (the CA that signed the receiver's certificate)",
                         monotonic() - start)
        except ssl.SSLError as exc:
            return Probe(FAIL, "%s: TLS failed: %s" % (shown, exc), "check uplink.url and ca_file", monotonic() - start)
        except (OSError, http.client.HTTPException) as exc:
            return Probe(FAIL, "cannot reach %s:%d (%s unreachable): %s" % (self.host, self.port, shown,
                                                                          exc or type(exc).__name__),
                         "check the network, DNS and firewall from this gateway: curl -v %s" % shown,
                         monotonic() - start)
        took = monotonic() - start
        text = "%s:%d answered HTTP %d %s (%s%s)" % (self.host, self.port, resp.status, resp.reason, shown,
                                                     ", TLS verified" if self.context else "")
        if resp.status >= 500:
            return Probe(WARN, text, "the receiver is up but failing; batches stay queued until it recovers",
                         latency_s=took)
        if resp.status in (404, 410):
            return Probe(FAIL, text + ": no batch endpoint at this path, every batch would be rejected",
                         "check the path of uplink.url (the reference receiver takes batches at /v1/batches)",
                         latency_s=took)
        return Probe(OK, text, latency_s=took)

    def _connection(self):
        if self._conn is None:
            if self.scheme == "https":
                self._conn = _HTTPSConnection(self.host, self.port, timeout=self.timeout, context=self.context)
            else:
                self._conn = _HTTPConnection(self.host, self.port, timeout=self.timeout)
            self._conn.connect()
            # http.client writes headers and body separately; Nagle plus delayed ACK would stall each POST.
            self._conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self._conn

    def send(self, batch):
        data = batch.data if hasattr(batch, "data") else batch
        packed = deflated(data) if self.compress and not self.plain_only else None
        if packed is None:
            return self._post(data, len(data), None)
        try:
            return self._post(packed, len(data), DEFLATE)
        except UplinkError as exc:
            if exc.status not in _CODING_REFUSED:
                raise
            refused = exc
        status = self._post(data, len(data), None)  # raises when the plain body is refused too: the batch's fault
        self.plain_only = True
        self.counters["coding_fallbacks"] += 1
        log.warning("http uplink: %s refused a deflated body (%s) and took it plain; sending plain bodies from now on",
                    self.describe(), refused.status)
        return status

    def _post(self, payload, signed, coding):
        """One POST of ``payload`` (the signed bytes, ``signed`` long, in ``coding``); the status of a 2xx."""
        headers = {"Content-Type": HTTP_CONTENT_TYPE, "Content-Length": str(len(payload))}
        if coding:
            headers["Content-Encoding"] = coding
        headers.update(self.headers)
        start = time.monotonic()
        try:
            conn = self._connection()
            before = conn.bytes_sent
            try:
                conn.request("POST", self.path, body=payload, headers=headers)
            finally:
                self.counters["bytes_sent"] += conn.bytes_sent - before
            resp = conn.getresponse()
            body = resp.read(MAX_ANSWER_BYTES if 200 <= resp.status < 300 else 4096)
            if resp.will_close or not resp.isclosed():  # an answer longer than we read: the connection is spent
                self.close()
        except ssl.SSLCertVerificationError as exc:
            self.close()
            raise UplinkError("TLS certificate of %s did not verify: %s" % (self.host, exc.verify_message),
                              retryable=True) from exc
        except (OSError, http.client.HTTPException, socket.timeout) as exc:
            self.close()
            raise UplinkError("cannot reach %s: %s" % (self.url, exc or type(exc).__name__), retryable=True) from exc
        self.last_latency = time.monotonic() - start
        status = resp.status
        self.counters["requests"] += 1
        self.counters["body_bytes"] += len(payload)
        self.counters["signed_bytes"] += signed
        self.counters["deflated"] += coding is not None
        if 200 <= status < 300:
            self._hand_over(body)
            return status
        if status == 415 and coding:
            self.close()  # the receiver may not have read the body: start the next request on a fresh connection
        detail = body[:200].decode("utf-8", "replace").strip()
        retry_after = parse_retry_after(resp.getheader("Retry-After"))
        retryable = status >= 500 or status in _RETRYABLE_4XX or status < 200 or 300 <= status < 400
        raise UplinkError("%s answered %d %s%s" % (self.url, status, resp.reason, ": " + detail if detail else ""),
                          retryable=retryable, retry_after=retry_after, status=status)

    def _hand_over(self, body):
        sink = self.command_sink
        if sink is None or not body:
            return
        try:
            found = commands_from_answer(body)
        except CommandError as exc:
            self.counters["answer_malformed"] += 1
            log.warning("http uplink: %s answered with unreadable commands: %s", self.describe(), exc)
            return
        if found:
            self.counters["commands_received"] += len(found)
            sink(found)

    def close(self):
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None
