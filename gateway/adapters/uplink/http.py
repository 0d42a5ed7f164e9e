"""HTTP(S) uplink: ``POST`` each batch; a 2xx response is the acknowledgement.

* TLS verification stays on: the system trust store, or a pinned CA file (``ca_file``). There is no switch to turn
  it off.
* One keep-alive connection, reopened after any error.
* 408, 425, 429 and 5xx are retryable and ``Retry-After`` (seconds or an HTTP date) is passed on to the backoff.
  Any other 4xx is a rejection of these bytes: not retryable, so the agent quarantines the batch. That includes
  ``409`` (conflict: the backend holds different content under this batch's ``(gw, boot, seq)``), which the agent
  also counts as ``conflict_batches``: such a batch is kept, never taken as delivered.
"""

import email.utils
import http.client
import socket
import ssl
import time
import urllib.parse

from gateway.core.errors import UplinkError
from gateway.adapters.uplink import Uplink
from gateway.core.wire import HTTP_CONTENT_TYPE

_RETRYABLE_4XX = {408, 425, 429}


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
    name = "http"

    def __init__(self, url, ca_file=None, timeout=10.0, headers=None):
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

    def describe(self):
        return self.url

    def _connection(self):
        if self._conn is None:
            if self.scheme == "https":
                self._conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout,
                                                         context=self.context)
            else:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self._conn.connect()
            # http.client writes headers and body separately; Nagle plus delayed ACK would stall each POST.
            self._conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self._conn

    def send(self, batch):
        data = batch.data if hasattr(batch, "data") else batch
        headers = {"Content-Type": HTTP_CONTENT_TYPE, "Content-Length": str(len(data))}
        headers.update(self.headers)
        start = time.monotonic()
        try:
            conn = self._connection()
            conn.request("POST", self.path, body=data, headers=headers)
            resp = conn.getresponse()
            body = resp.read(4096)
            if resp.will_close:
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
        if 200 <= status < 300:
            return status
        detail = body[:200].decode("utf-8", "replace").strip()
        retry_after = parse_retry_after(resp.getheader("Retry-After"))
        retryable = status >= 500 or status in _RETRYABLE_4XX or status < 200 or 300 <= status < 400
        raise UplinkError("%s answered %d %s%s" % (self.url, status, resp.reason, ": " + detail if detail else ""),
                          retryable=retryable, retry_after=retry_after, status=status)

    def close(self):
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None
