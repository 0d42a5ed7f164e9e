"""The receiver's HTTP front: uvicorn (asyncio, h11) in front of ``Receiver.process``, and a separate ops listener.

Two listeners, one event loop on one thread:

* **ingest** (``--listen``): ``POST`` and ``OPTIONS`` on ``/v1/batches``, ``POST`` on ``/v1/commands`` (the
  command queue); every other path is ``404``. Its statuses and bodies are those of docs/wire-format.md ("The
  reference receiver's answers", "Delivery (HTTP)").
* **ops** (``--ops-listen``, loopback by default, or off): ``GET /stats`` (the counters) and ``GET /healthz``, and
  the read API (``/api/v1/...``) and the fleet page (``/fleet/``) of ``backend.readhttp``, as ``--api`` allows.

The limits live in ``Limits``. A connection must deliver a whole request (headers and body) within
``read_timeout`` of its first byte (of being accepted, for the first request), or it is closed unanswered; uvicorn
closes one idle between requests after ``keep_alive``. Beyond ``max_connections`` open connections a new one is
answered ``503`` with ``Retry-After`` and closed. The body's ``Content-Length`` is checked against the 1 MiB batch
limit before a byte of it is read. The store call blocks (SQLite, psycopg): it runs in a pool of ``workers``
threads, and with ``workers + queue`` batches already in there a batch is answered ``503 {"error": "busy"}`` with
``Retry-After``, never queued without bound. ``stop()`` is graceful: stop accepting, let in-flight requests
finish (up to ``grace`` seconds), then return.
"""

import asyncio
import concurrent.futures
import dataclasses
import functools
import json
import logging
import socket
import threading
import time

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from backend.api import (ACCEPTED_TYPES, BATCH_PATH, DEFLATE, MAX_LENGTH_DIGITS, MEDIA_TYPE, is_batch_path,
                         is_commands_path)
from gateway.core.commands import MAX_COMMAND_BYTES
from backend.readhttp import PAGE_PREFIX, ApiAccess, ReadFront

log = logging.getLogger(__name__)

SERVER_NAME = b"edge-gateway-receiver"


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    """The HTTP front's limits (docs/backend.md, "The HTTP front")."""

    read_timeout: float = 10.0      #: seconds for a whole request (headers and body) to arrive
    keep_alive: int = 15            #: seconds an idle connection is kept between requests
    max_connections: int = 4096     #: open connections on the ingest listener; beyond: 503 and close
    backlog: int = 2048             #: the listen backlog (accepted by the kernel, not yet by us)
    max_header_bytes: int = 16384   #: a request head (request line and headers) longer than this is a 400
    workers: int = 8                #: threads running the blocking verify-and-store
    queue: int = 64                 #: batches that may wait for a worker; beyond: 503 busy
    grace: float = 20.0             #: seconds ``stop()`` lets in-flight requests finish


def _json(body):
    return (json.dumps(body, sort_keys=True) + "\n").encode()


class _Protocol(H11Protocol):
    """uvicorn's h11 protocol with a whole-request read deadline, a connection cap and JSON protocol errors."""

    def __init__(self, *args, limits, on_bad_request, **kwargs):
        super().__init__(*args, **kwargs)
        self._limits = limits
        self._on_bad_request = on_bad_request
        self._deadline = None
        self._half_closed = False

    def connection_made(self, transport):
        super().connection_made(transport)
        if len(self.connections) > self._limits.max_connections:
            log.warning("%d connections open (limit %d): refusing one from %s", len(self.connections) - 1,
                        self._limits.max_connections, self.client)
            body = _json({"error": "busy", "detail": "too many connections"})
            transport.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                            b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            transport.close()
            return
        self._arm()

    def _arm(self):
        if self._deadline is None:
            self._deadline = self.loop.call_later(self._limits.read_timeout, self._read_timed_out)

    def _disarm(self):
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _read_timed_out(self):
        self._deadline = None
        log.warning("%s: no whole request within %.0f s: closing the connection", self.client,
                    self._limits.read_timeout)
        self.transport.close()

    def data_received(self, data):
        if self.cycle is None or self.cycle.response_complete:
            self._arm()  # the first bytes of the next request on a kept-alive connection
        super().data_received(data)

    def handle_events(self):
        super().handle_events()
        cycle = self.cycle
        if cycle is not None and not cycle.more_body and not cycle.response_complete:
            self._disarm()  # the whole request is in: what is left is ours to do

    def eof_received(self):
        """The peer half-closed. A whole request still being answered gets its answer, then the connection closes;
        otherwise (idle, mid-head, mid-body) it closes now."""
        cycle = self.cycle
        if cycle is not None and not cycle.more_body and not cycle.response_complete:
            self._half_closed = True
            return True  # keep the transport open for writing the answer
        return None

    def on_response_complete(self):
        super().on_response_complete()
        if self._half_closed:
            self.transport.close()

    def connection_lost(self, exc):
        self._disarm()
        super().connection_lost(exc)

    def send_400_response(self, msg):
        self._on_bad_request("not a well-formed HTTP/1.1 request (request line, header syntax, framing or a head "
                             "over %d bytes)" % self._limits.max_header_bytes)
        body = _json({"error": "bad_request", "detail": "not a well-formed HTTP/1.1 request"})
        headers = [(b"Content-Type", b"application/json"), (b"Connection", b"close"),
                   (b"Content-Length", b"%d" % len(body)), (b"Server", SERVER_NAME)]
        for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"), h11.Data(data=body),
                      h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.transport.close()


def _header(scope, name):
    """Every value of header ``name`` (lower-case bytes) as str."""
    return [v.decode("latin-1") for k, v in scope["headers"] if k == name]


def _target(scope):
    target = scope["raw_path"].decode("latin-1")
    if scope["query_string"]:
        target += "?" + scope["query_string"].decode("latin-1")
    return target


async def _send(send, status, body, headers=()):
    await _send_bytes(send, status, _json(body), [("Content-Type", "application/json"),
                                                  ("Accept-Encoding", DEFLATE)] + list(headers))


async def _send_bytes(send, status, data, headers):
    out = [(b"Content-Length", b"%d" % len(data))] + [(k.encode(), v.encode()) for k, v in headers]
    await send({"type": "http.response.start", "status": status, "headers": out})
    await send({"type": "http.response.body", "body": data})


async def _guarded(receiver, scope, send, handle):
    """Run one request so that nothing escapes into uvicorn: a bug costs one request, a counted, logged 500."""
    started = []

    async def tracking_send(message):
        if message["type"] == "http.response.start":
            started.append(1)
        await send(message)

    try:
        await handle(tracking_send)
    except Exception as exc:  # deliberate catch-all: the last line of the request path (reason below)
        # A bug in this module must cost one request (a 500, counted, logged at ERROR with the traceback), not a
        # half-written answer and nothing in the counters.
        receiver.count("http_errors")
        log.error("internal error answering %s %s: %s", scope["method"], _target(scope)[:200], exc, exc_info=True)
        if not started:
            await _send(send, 500, {"error": "internal"}, [("Connection", "close")])


class IngestApp:
    """The ASGI app of the ingest listener: batches in, nothing else."""

    def __init__(self, receiver, limits, pool):
        self.receiver = receiver
        self.limits = limits
        self.pool = pool
        self.in_pool = 0  # touched on the event loop only

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return
        await _guarded(self.receiver, scope, send, lambda s: self._route(scope, receive, s))

    async def _route(self, scope, receive, send):
        method, target = scope["method"], _target(scope)
        if method == "POST" and is_commands_path(target):
            return await self._post(scope, receive, send, commands=True)
        if method == "GET" or (method != "POST" and not is_batch_path(target)):
            # as before the front moved: a GET is 404 on every path of this port (/stats is on the ops listener)
            return await _send(send, 404, {"error": "not_found"}, [("Connection", "close")])
        if not is_batch_path(target):
            return await self._refuse(send, 404, "not_found", "no batch endpoint at %s; POST batches to %s"
                                      % (target[:200], BATCH_PATH))
        if method == "OPTIONS":
            await send({"type": "http.response.start", "status": 204, "headers": [
                (b"Allow", b"POST, OPTIONS"), (b"Accept-Post", MEDIA_TYPE.encode()), (b"Content-Length", b"0")]})
            return await send({"type": "http.response.body", "body": b""})
        if method != "POST":
            return await _send(send, 405, {"error": "method_not_allowed"},
                               [("Allow", "POST, OPTIONS"), ("Connection", "close")])
        return await self._post(scope, receive, send)

    async def _refuse(self, send, status, reason, detail):
        # the body (if any) is not read: the connection cannot be reused
        await _send(send, status, self.receiver.reject(reason, detail)[1], [("Connection", "close")])

    async def _post(self, scope, receive, send, commands=False):
        """A batch (``commands=False``) or a signed command for the queue: the same framing and limits, a command
        at most ``MAX_COMMAND_BYTES``."""
        receiver = self.receiver
        limit = MAX_COMMAND_BYTES if commands else receiver.max_bytes
        if _header(scope, b"transfer-encoding"):
            return await self._refuse(send, 411, "no_length", "Transfer-Encoding is not accepted; send Content-Length")
        lengths = _header(scope, b"content-length")
        if not lengths:
            return await self._refuse(send, 411, "no_length", "Content-Length is required")
        length = lengths[0].strip()
        if len(set(lengths)) != 1 or not (length.isascii() and length.isdigit()) or len(length) > MAX_LENGTH_DIGITS:
            return await self._refuse(send, 400, "bad_length", "Content-Length must be one decimal number")
        length = int(length)
        if length > limit:
            return await self._refuse(send, 413, "oversize", "body of %d bytes is over the limit" % length)
        chunks, got = [], 0
        while True:  # bounded: h11 delivers exactly Content-Length bytes, and the read deadline closes a slow peer
            message = await receive()
            if message["type"] == "http.disconnect":
                return None  # the peer closed early (or was too slow): nobody to answer, nothing stored
            chunks.append(message.get("body", b""))
            got += len(chunks[-1])
            if not message.get("more_body", False):
                break
        data = b"".join(chunks)
        if got != length:
            return None
        ctype = (_header(scope, b"content-type") or [""])[0].split(";")[0].strip().lower()
        if ctype not in ACCEPTED_TYPES:
            return await _send(send, 415, receiver.reject("content_type", "Content-Type must be " + MEDIA_TYPE)[1])
        wait = receiver.maintenance_until - time.monotonic()
        if wait > 0:
            return await _send(send, 503, {"error": "maintenance"}, [("Retry-After", str(max(1, int(wait + 0.999))))])
        encodings = _header(scope, b"content-encoding")
        if len(encodings) > 1 or (commands and encodings):
            return await _send(send, 415, receiver.reject("content_encoding", "one Content-Encoding header at most"
                                                          if not commands else "a command is sent plain")[1])
        if self.in_pool >= self.limits.workers + self.limits.queue:
            receiver.count("busy")
            log.warning("%d requests in the store pool: answering busy", self.in_pool)
            return await _send(send, 503, {"error": "busy", "detail": "the receiver is busy; retry"},
                               [("Retry-After", "1")])
        self.in_pool += 1
        try:
            loop = asyncio.get_running_loop()
            if commands:
                status, body = await loop.run_in_executor(self.pool, receiver.queue_command, data)
            else:
                status, body = await loop.run_in_executor(self.pool, receiver.process, data,
                                                          encodings[0] if encodings else None, True)
        finally:
            self.in_pool -= 1
        return await _send(send, status, body, [("Retry-After", "1")] if status >= 500 or status == 429 else ())


class OpsApp:
    """The ASGI app of the ops listener: ``GET /stats`` and ``GET /healthz``; the read API and the fleet page
    (``read``, a ``backend.readhttp.ReadFront``) when given."""

    def __init__(self, receiver, pool, read=None):
        self.receiver = receiver
        self.pool = pool
        self.read = read

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return
        await _guarded(self.receiver, scope, send, lambda s: self._route(scope, s))

    async def _route(self, scope, send):
        if self.read is not None and self.read.claims(scope["path"]):
            loop = asyncio.get_running_loop()
            client = (scope.get("client") or ("",))[0]
            auth = (_header(scope, b"authorization") or [None])[0]
            status, headers, body = await loop.run_in_executor(
                self.pool, self.read.handle, scope["method"], scope["path"], scope["query_string"].decode("latin-1"),
                client, auth)
            return await _send_bytes(send, status, body, headers)
        path = scope["path"].rstrip("/")
        if scope["method"] != "GET" or path not in ("/stats", "/healthz"):
            return await _send(send, 404, {"error": "not_found"})
        if path == "/healthz":
            return await _send(send, 200, {"status": "ok"})
        loop = asyncio.get_running_loop()
        stats = await loop.run_in_executor(self.pool, self._stats)
        return await _send(send, 200, stats)

    def _stats(self):
        return dict(self.receiver.stats(), storage=self.receiver.storage_stats())


def _config(app, limits, protocol):
    return uvicorn.Config(app, http=protocol, log_config=None, access_log=False, lifespan="off", proxy_headers=False,
                          server_header=False, headers=[("Server", SERVER_NAME.decode())],
                          timeout_keep_alive=limits.keep_alive, timeout_graceful_shutdown=int(limits.grace + 0.999),
                          backlog=limits.backlog, h11_max_incomplete_event_size=limits.max_header_bytes)


def _protocol(receiver, limits):
    return functools.partial(_Protocol, limits=limits,
                             on_bad_request=lambda detail: receiver.reject("bad_request", detail))


def _listen(host, port, backlog):
    """A listening TCP socket. Made with ``IPPROTO_TCP`` explicitly: asyncio sets ``TCP_NODELAY`` on accepted
    sockets only when their ``proto`` says TCP, and without it the answer's head and body (two writes) wait out
    the peer's 40 ms delayed ACK (``socket.create_server`` leaves ``proto`` 0)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


def _url(sock, path):
    host, port = sock.getsockname()[:2]
    if ":" in host:
        host = "[%s]" % host
    return "http://%s:%d%s" % (host, port, path)


class ReceiverServer:
    """The HTTP front of a ``Receiver`` on its own thread. ``port=0`` picks a free port (``url`` tells which).

    ``ops``: ``(host, port)`` of the ops listener (``/stats``, ``/healthz``; ``ops_url``), or None for none.
    ``api``: who may use the read API and the fleet page on it (``backend.readhttp.ApiAccess``; default loopback).
    The sockets are bound in the constructor (``OSError`` if they cannot be), so ``url`` is right at once.
    """

    def __init__(self, receiver, host="127.0.0.1", port=0, ops=("127.0.0.1", 0), limits=Limits(), api=None):
        self.receiver = receiver
        self.limits = limits
        self.read = ReadFront(receiver.db_path, api or ApiAccess(), receiver.clock) if ops else None
        self._sock = _listen(host, port, limits.backlog)
        try:
            self._ops_sock = _listen(ops[0], ops[1], 64) if ops else None
        except OSError:
            self._sock.close()
            raise
        self._pool = concurrent.futures.ThreadPoolExecutor(limits.workers, thread_name_prefix="receiver-store")
        # two: /healthz and /stats answer while a read API query runs (the read API serialises its own calls)
        self._ops_pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="receiver-ops")
        self._servers = []
        self._started = threading.Event()
        self._failed = []
        self.thread = None

    @property
    def url(self):
        return _url(self._sock, BATCH_PATH)

    @property
    def ops_url(self):
        """``http://host:port`` of the ops listener (None when it is off)."""
        return _url(self._ops_sock, "") if self._ops_sock else None

    @property
    def fleet_url(self):
        """The fleet page (``http://host:port/fleet/``), None when the ops listener or the read API is off."""
        if not self._ops_sock or self.read.access.mode == "off":
            return None
        return _url(self._ops_sock, PAGE_PREFIX + "/")

    async def _serve(self):
        protocol = _protocol(self.receiver, self.limits)
        pairs = [(uvicorn.Server(_config(IngestApp(self.receiver, self.limits, self._pool), self.limits, protocol)),
                  self._sock)]
        if self._ops_sock:
            pairs.append((uvicorn.Server(_config(OpsApp(self.receiver, self._ops_pool, self.read), self.limits,
                                                 protocol)),
                          self._ops_sock))
        self._servers = [server for server, _ in pairs]
        tasks = [asyncio.create_task(server.serve(sockets=[sock])) for server, sock in pairs]
        for _ in range(500):  # bounded: uvicorn's startup is a few loop turns
            if all(server.started for server in self._servers) or any(t.done() for t in tasks):
                break
            await asyncio.sleep(0.01)
        self._started.set()
        await asyncio.gather(*tasks)

    def _run(self):
        try:
            asyncio.run(self._serve())
        except (OSError, RuntimeError) as exc:
            self._failed.append(exc)
            log.error("the receiver's HTTP front stopped: %s", exc)
        finally:
            self._started.set()

    def start(self):
        self.thread = threading.Thread(target=self._run, name="receiver-http", daemon=True)
        self.thread.start()
        self._started.wait(10)
        if self._failed:
            raise self._failed[0]
        return self

    def maintenance(self, seconds):
        """Answer 503 with Retry-After for ``seconds`` (an outage drill without stopping the process)."""
        self.receiver.maintenance_until = time.monotonic() + seconds

    def stop(self):
        """Stop accepting, let in-flight requests finish (``limits.grace`` at most), close the listeners."""
        for server in self._servers:
            server.should_exit = True
        if self.thread:
            self.thread.join(self.limits.grace + 5)
        self._pool.shutdown(wait=True)
        self._ops_pool.shutdown(wait=True)
        for sock in (self._sock, self._ops_sock):
            if sock:
                sock.close()
        if self.read is not None:
            self.read.close()


class _MemoryTransport(asyncio.Transport):
    """A transport that keeps what is written (``MemoryFront``)."""

    def __init__(self):
        super().__init__()
        self.out = bytearray()
        self.closed = False

    def write(self, data):
        if not self.closed:
            self.out += data

    def close(self):
        self.closed = True

    def is_closing(self):
        return self.closed

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass

    def get_extra_info(self, name, default=None):
        return {"sockname": ("memory", 0), "peername": ("memory", 0)}.get(name, default)


class MemoryFront:
    """The ingest front without a socket: the bytes a peer sends in, the bytes it is answered out (the fuzzer's
    target). The peer half-closes after its bytes: a whole request is answered, a partial one is not."""

    def __init__(self, receiver, limits=Limits()):
        self.receiver = receiver
        self.limits = limits
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="receiver-memory")
        self._config = _config(IngestApp(receiver, limits, self._pool), limits, None)
        self._config.load()
        self._loop = asyncio.new_event_loop()

    def answer(self, data):
        return self._loop.run_until_complete(self._answer(data))

    async def _answer(self, data):
        state = uvicorn.server.ServerState()
        proto = _Protocol(config=self._config, server_state=state, app_state={}, _loop=self._loop,
                          limits=self.limits, on_bad_request=lambda d: self.receiver.reject("bad_request", d))
        transport = _MemoryTransport()
        proto.connection_made(transport)
        if data:  # a socket never delivers b"" (h11 would take it for the end of the stream)
            proto.data_received(data)
        for _ in range(64):  # bounded: answer the whole requests, pipelined ones after the first
            cycle = proto.cycle
            if not state.tasks or cycle is None or cycle.more_body:
                break
            await asyncio.gather(*list(state.tasks))
        if not transport.closed and not proto.eof_received():  # then the peer's half-close
            transport.close()
        if transport.closed and proto in state.connections:
            proto.connection_lost(None)  # a request cut short sees the disconnect
        for _ in range(64):
            if not state.tasks:
                break
            await asyncio.gather(*list(state.tasks))
        proto._disarm()
        return bytes(transport.out)

    def close(self):
        self._loop.close()
        self._pool.shutdown(wait=True)
