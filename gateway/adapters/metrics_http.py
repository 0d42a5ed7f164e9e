"""The metrics endpoint's HTTP listener: ``GET /metrics`` answered on the agent's event loop.

Deliberately small (one request per connection, ``Connection: close``): a scraper asks every 15-60 s. The request
head is bounded (8 KiB, 5 s), at most ``max_clients`` connections are served at once (more are closed unread), and
``render()`` runs on the loop, so the figures are read between two agent steps, never half-updated. Anything but
``GET``/``HEAD`` is 405, any other path 404. Off by default; the config allows loopback only unless told otherwise
(``gateway/app/config.py``, ``[metrics]``).
"""

import asyncio

MAX_HEAD = 8192
HEAD_TIMEOUT_S = 5.0


def _response(status, body, content_type="text/plain; charset=utf-8", head_only=False):
    head = ("HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
            % (status, content_type, len(body))).encode("ascii")
    return head if head_only else head + body


class _Request(asyncio.Protocol):
    """One connection: read the head, answer, close. A protocol, not streams: no task and no reader per scrape
    (half the CPU of ``asyncio.start_server``'s streams, measured by ``edge-gateway bench``)."""

    def __init__(self, server):
        self.server = server
        self.transport = None
        self.head = b""
        self.timer = None

    def connection_made(self, transport):
        self.transport = transport
        if self.server.clients >= self.server.max_clients:
            transport.abort()
            return
        self.server.clients += 1
        self.timer = asyncio.get_running_loop().call_later(HEAD_TIMEOUT_S, transport.abort)

    def data_received(self, data):
        self.head += data
        if b"\r\n\r\n" in self.head:
            self._reply(self.server.answer(self.head))
        elif len(self.head) > MAX_HEAD:
            self._reply(_response("431 Request Header Fields Too Large", b"request head too large\n"))

    def _reply(self, data):
        self.transport.write(data)
        self.transport.close()  # after the write is flushed
        self.data_received = lambda data: None

    def connection_lost(self, exc):
        if self.timer is not None:
            self.timer.cancel()
            self.server.clients -= 1


class MetricsServer:
    """``await MetricsServer(render, content_type).start(host, port)``; ``close()`` when the agent stops."""

    def __init__(self, render, content_type, max_clients=8):
        self.render = render
        self.content_type = content_type
        self.max_clients = max_clients
        self.scrapes = 0
        self.clients = 0
        self._server = None

    async def start(self, host, port):
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Request(self), host, port, reuse_address=True)
        return self

    @property
    def port(self):
        return self._server.sockets[0].getsockname()[1]

    def answer(self, head):
        parts = head.split(b"\r\n", 1)[0].split()
        if len(parts) != 3:
            return _response("400 Bad Request", b"bad request line\n")
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if method not in (b"GET", b"HEAD"):
            return _response("405 Method Not Allowed", b"GET /metrics only\n")
        if target != b"/metrics":
            return _response("404 Not Found", b"GET /metrics only\n")
        self.scrapes += 1
        return _response("200 OK", self.render(), self.content_type, head_only=method == b"HEAD")

    async def close(self):
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
