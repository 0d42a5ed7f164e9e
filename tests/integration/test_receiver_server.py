"""The receiver's HTTP front as a service (issue 16, part 3): slow and broken clients, limits, graceful stop.

Issue 16 found that the old front (``ThreadingHTTPServer``) stopped answering with 253 connections that sent
headers and then nothing, spinning a core. Here 500 such connections are held open against a real ``edge-gateway
receive`` process while a genuine batch is stored, and the process's CPU time is read from ``/proc``.
"""

import http.client
import json
import os
import select
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.parse

import pytest

from backend.httpd import Limits, ReceiverServer
from backend.receiver import Receiver
from gateway.core import senml, wire
from gateway.core.model import Reading
from tests.support import get_json, post_batch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.timeout(120)
SLOW_CLIENTS = 500
PARTIAL = b"POST /v1/batches HTTP/1.1\r\nHost: rx\r\nContent-Type: application/cose\r\n"  # no blank line: unfinished


def batch(key, seq, gw="gw-test"):
    readings = [Reading("s1", "temp", 4.0 + i / 4, "Cel", 1000.0 + i) for i in range(3)]
    return wire.sign(wire.encode_payload(gw, 1, seq, True, senml.encode_records(readings, (), gw + "/")), key)


post = post_batch  # (status, body, Retry-After)

get = get_json  # (status, JSON body) of a GET


def raw_request(url, data):
    """Send exact bytes, half-close; the status of the answer (None if the connection closed unanswered)."""
    u = urllib.parse.urlsplit(url)
    with socket.create_connection((u.hostname, u.port), timeout=5) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        answer = b""
        for _ in range(1000):  # bounded: an answer is a few hundred bytes, then the server closes
            chunk = s.recv(65536)
            if not chunk:
                break
            answer += chunk
    return int(answer.split(b" ", 2)[1]) if answer else None


def connect(url, first=b""):
    u = urllib.parse.urlsplit(url)
    s = socket.create_connection((u.hostname, u.port), timeout=5)
    if first:
        s.sendall(first)
    return s


def wait_until(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError("timed out after %.1f s waiting for %s" % (timeout, what))


def cpu_seconds(pid):
    """utime + stime of a process, from /proc/PID/stat (fields 14 and 15, after the parenthesised name)."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_fds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


@pytest.fixture
def server(tmp_path, trust):
    srv = ReceiverServer(Receiver(str(tmp_path / "rx.sqlite"), trust),
                         limits=Limits(read_timeout=1.0, max_connections=50, workers=1, queue=0)).start()
    yield srv
    srv.stop()
    srv.receiver.close()


class ReceiveProcess:
    """``edge-gateway receive`` as a child process on loopback port 0 (its URLs from the start-up lines)."""

    def __init__(self, tmp_path, signing_key, *extra):
        jwks = tmp_path / "jwks.json"
        jwks.write_text(json.dumps({"keys": [signing_key.jwk("gw-test")]}))
        self.db = str(tmp_path / "rx.sqlite")
        self.proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "receive", "--listen", "127.0.0.1:0",
                                      "--trust", str(jwks), "--db", self.db, "--log-level", "warning", *extra],
                                     cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.url = self.proc.stdout.readline().split()[2]
        self.ops = self.proc.stdout.readline().rstrip().split(" on ", 1)[1]

    def stored(self):
        with sqlite3.connect("file:%s?mode=ro" % self.db, uri=True) as db:
            return db.execute("SELECT gw, boot, seq FROM batches ORDER BY seq").fetchall()

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self.proc.stdout.close()


@pytest.fixture
def receive_process(tmp_path, signing_key):
    procs = []

    def start(*extra):
        procs.append(ReceiveProcess(tmp_path, signing_key, *extra))
        return procs[-1]

    yield start
    for p in procs:
        p.close()


# -- the finding: connections that send a partial request and then nothing ------------------------------
def test_500_silent_connections_neither_block_ingest_nor_burn_cpu(receive_process, signing_key):
    rx = receive_process("--read-timeout", "30")  # the silent connections outlive the test's window
    before = open_fds(rx.proc.pid)
    slow = []
    try:
        for _ in range(SLOW_CLIENTS):
            slow.append(connect(rx.url, PARTIAL))
        # held, not just queued in the backlog: the receiver has a descriptor for each of them
        wait_until(lambda: open_fds(rx.proc.pid) >= before + SLOW_CLIENTS, 10, "the receiver to accept them all")
        cpu0, t0 = cpu_seconds(rx.proc.pid), time.monotonic()
        status, body, _ = post(rx.url, batch(signing_key, 1))
        took = time.monotonic() - t0
        assert (status, body["status"]) == (201, "stored") and took < 1.0, (status, body, took)
        assert rx.stored() == [("gw-test", 1, 1)]
        # the window: 2 s in which none of the silent connections may be answered or closed
        poller = select.poll()
        for sock in slow:
            poller.register(sock, select.POLLIN)
        readable = poller.poll(max(0, int((2.0 - (time.monotonic() - t0)) * 1000)))
        window = time.monotonic() - t0
        used = cpu_seconds(rx.proc.pid) - cpu0
        assert readable == [], "a silent connection was answered or closed within %.1f s" % window
        print("%d silent connections; batch stored in %.3f s; receiver CPU %.3f s over %.2f s"
              % (len(slow), took, used, window))
        assert used < 0.3, "the receiver used %.2f CPU-s in %.1f s while idle connections were open" % (used, window)
    finally:
        for s in slow:
            s.close()
    rx.proc.send_signal(signal.SIGTERM)
    assert rx.proc.wait(30) == 0


def test_a_connection_that_never_finishes_its_request_is_closed_at_the_read_timeout(server):
    silent = connect(server.url, PARTIAL)
    trickle = connect(server.url, PARTIAL)
    try:
        t0 = time.monotonic()
        closed = None
        for _ in range(200):  # bounded: a header byte every 20 ms does not extend the 1 s deadline
            try:
                trickle.sendall(b"X")
            except OSError:
                closed = time.monotonic() - t0
                break
            if select.select([trickle], [], [], 0.02)[0] and trickle.recv(100) == b"":
                closed = time.monotonic() - t0
                break
        assert closed is not None and closed < 3.0, closed
        assert select.select([silent], [], [], 3.0)[0] and silent.recv(100) == b""  # closed unanswered
    finally:
        silent.close()
        trickle.close()
    assert server.receiver.query("SELECT COUNT(*) FROM batches") == [(0,)]


def test_beyond_the_connection_cap_a_new_connection_is_answered_503_and_closed(server, signing_key):
    held = []
    try:
        for _ in range(50):
            held.append(connect(server.url, b"GET /v1/batches HTTP/1.1\r\n"))
        answer = b""
        with connect(server.url) as extra:
            for _ in range(100):  # bounded: one short answer, then the server closes
                chunk = extra.recv(4096)
                if not chunk:
                    break
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 503 ") and b"Retry-After: 1" in answer, answer
    finally:
        for s in held:
            s.close()
    wait_until(lambda: post(server.url, batch(signing_key, 1))[0] == 201, 5, "a batch stored after the crowd left")


# -- malformed requests: a 4xx, and the server goes on ---------------------------------------------------------
HEAD = b"POST /v1/batches HTTP/1.1\r\nHost: x\r\nContent-Type: application/cose\r\n"


@pytest.mark.parametrize("data", [
    HEAD + b"Content-Length: abc\r\n\r\n",
    HEAD + "Content-Length: \u00b2\r\n\r\n".encode(),
    HEAD + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
    HEAD + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    HEAD + b"X-Long: " + b"a" * 20000 + b"\r\nContent-Length: 2\r\n\r\n\x00\x01",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)),  # a TLS ClientHello on the plain port
    b"\x00\xff garbage \r\n\r\n",
    b"GET / HTTP/9.9\r\n\r\n",
], ids=["letters", "superscript-two", "two-lengths", "chunked-and-length", "header-over-limit", "tls-hello",
        "garbage", "bad-version"])
def test_malformed_requests_get_a_4xx_and_the_server_goes_on(server, signing_key, data):
    status = raw_request(server.url, data)
    assert status is not None and 400 <= status < 500, status
    assert post(server.url, batch(signing_key, 1))[0] in (200, 201)
    assert server.receiver.stats()["http_errors"] == 0


def test_routes_ingest_and_ops_apart(server, signing_key):
    assert get(server.url, "/stats") == (404, {"error": "not_found"})  # not on the ingest port
    assert get(server.url, "/healthz")[0] == 404 and get(server.url, "/")[0] == 404
    assert get(server.url, "/v1/batches")[0] == 404  # GET is 404 everywhere on the ingest port, as before
    assert raw_request(server.url, b"DELETE /v1/batches HTTP/1.1\r\nHost: x\r\n\r\n") == 405
    assert post(server.url, batch(signing_key, 1))[0] == 201
    assert get(server.ops_url, "/healthz") == (200, {"status": "ok"})
    status, stats = get(server.ops_url, "/stats")
    assert status == 200 and stats["stored"] == 1 and stats["storage"]["engine"] == "sqlite"
    assert get(server.ops_url, "/v1/batches")[0] == 404  # and no batches on the ops port


def test_ops_listener_can_be_off(tmp_path, trust):
    srv = ReceiverServer(Receiver(str(tmp_path / "rx.sqlite"), trust), ops=None).start()
    try:
        assert srv.ops_url is None and get(srv.url, "/stats")[0] == 404
    finally:
        srv.stop()
        srv.receiver.close()


def test_keep_alive_serves_several_requests_on_one_connection(server, signing_key):
    u = urllib.parse.urlsplit(server.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=5)
    try:
        socks = []
        for seq, expected in ((1, 201), (2, 201), (1, 200)):
            conn.request("POST", u.path, body=batch(signing_key, seq), headers={"Content-Type": wire.HTTP_CONTENT_TYPE})
            resp = conn.getresponse()
            resp.read()
            assert resp.status == expected
            socks.append(conn.sock)
        assert socks[0] is not None and socks.count(socks[0]) == 3  # one connection throughout
    finally:
        conn.close()


# -- the blocking store runs in a bounded pool --------------------------------------------------------------------
def test_a_full_store_pool_answers_503_busy_with_retry_after(server, signing_key, monkeypatch):
    entered, release = threading.Event(), threading.Event()
    real = server.receiver.process

    def slow_process(data, encoding=None, hand_over=False):
        entered.set()
        release.wait(10)
        return real(data, encoding, hand_over)

    monkeypatch.setattr(server.receiver, "process", slow_process)
    first = []
    t = threading.Thread(target=lambda: first.append(post(server.url, batch(signing_key, 1))))
    t.start()
    try:
        assert entered.wait(5)
        status, body, retry = post(server.url, batch(signing_key, 2))
        assert (status, body["error"], retry) == (503, "busy", "1")
        assert get(server.ops_url, "/healthz")[0] == 200  # the event loop is not blocked by the store
    finally:
        release.set()
        t.join(10)
    assert first[0][0] == 201 and server.receiver.stats()["busy"] == 1
    monkeypatch.undo()
    assert post(server.url, batch(signing_key, 2))[0] == 201


# -- SIGTERM: stop accepting, finish what is in flight, exit 0 --------------------------------------------------
def test_sigterm_lets_an_in_flight_request_finish_then_exits_0(receive_process, signing_key):
    rx = receive_process("--ops-listen", "off")
    data = batch(signing_key, 7)
    u = urllib.parse.urlsplit(rx.url)
    before = open_fds(rx.proc.pid)
    s = connect(rx.url, HEAD + b"Content-Length: %d\r\n\r\n" % len(data) + data[:10])
    try:
        wait_until(lambda: open_fds(rx.proc.pid) > before, 5, "the receiver to accept the connection")
        rx.proc.send_signal(signal.SIGTERM)

        def refused():
            try:
                socket.create_connection((u.hostname, u.port), timeout=1).close()
            except ConnectionRefusedError:
                return True
            return False

        wait_until(refused, 10, "the receiver to stop accepting")
        assert rx.proc.poll() is None  # still finishing the request in flight
        s.sendall(data[10:])
        answer = b""
        for _ in range(100):  # bounded: one answer, then the server closes
            chunk = s.recv(4096)
            if not chunk:
                break
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 201 "), answer
    finally:
        s.close()
    assert rx.proc.wait(30) == 0
    assert rx.stored() == [("gw-test", 1, 7)]


def test_listeners_are_tcp_sockets_so_answers_are_not_held_by_nagle(server):
    # asyncio sets TCP_NODELAY on an accepted socket only when its proto says TCP; without it every answer (head
    # and body are two writes) waited out the client's 40 ms delayed ACK (found by test_store's timing).
    assert server._sock.proto == socket.IPPROTO_TCP and server._ops_sock.proto == socket.IPPROTO_TCP
