"""HTTP(S) uplink against real loopback servers: TLS with a throwaway CA, keep-alive, 2xx/4xx/429/503."""

import http.server
import ssl
import threading

import pytest

from gateway.core.errors import UplinkError
from gateway.core.model import EncodedBatch
from gateway.adapters.uplink.http import HttpUplink, parse_retry_after
from tests.support import async_wait_until
from tests.support.pki import make_pki


class Backend:
    """A scripted loopback server: answers from ``script`` (a list of (status, headers)), then 201."""

    def __init__(self, script=(), tls=None):
        outer = self
        self.script = list(script)
        self.bodies = []
        self.connections = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                outer.connections += 1
                super().setup()

            def do_POST(self):
                outer.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
                status, headers = outer.script.pop(0) if outer.script else (201, {})
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        scheme = "http"
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(tls["server_cert"], tls["server_key"])
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
            scheme = "https"
        self.url = "%s://127.0.0.1:%d/v1/batches" % (scheme, self.httpd.server_address[1])
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def batch(i=0):
    return EncodedBatch(1, i, b"\xd2\x84batch-%d" % i, readings=1)


@pytest.fixture
def pki(tmp_path):
    return make_pki(str(tmp_path))


def test_https_verifies_with_pinned_ca_and_fails_clearly_without(pki):
    server = Backend(tls=pki)
    try:
        up = HttpUplink(server.url, ca_file=pki["ca"])
        assert up.send(batch(1)) == 201 and server.bodies == [batch(1).data]
        up.close()
        plain = HttpUplink(server.url)  # system trust store only: the throwaway CA is unknown
        with pytest.raises(UplinkError) as err:
            plain.send(batch(2))
        assert "did not verify" in str(err.value) and err.value.retryable
        assert len(server.bodies) == 1
        wrong_host = HttpUplink(server.url.replace("127.0.0.1", "localhost"), ca_file=pki["ca"])
        assert wrong_host.send(batch(3)) == 201  # the name in the URL matches the certificate's SAN
    finally:
        server.stop()


def test_keep_alive_reuses_one_connection():
    server = Backend()
    try:
        up = HttpUplink(server.url)
        for i in range(20):
            up.send(batch(i))
        assert len(server.bodies) == 20 and server.connections == 1
    finally:
        server.stop()


def test_status_classes_retryable_rejected_and_retry_after():
    server = Backend([(503, {"Retry-After": "7"}), (429, {"Retry-After": "2"}), (400, {}), (403, {}), (500, {}),
                      (200, {})])
    try:
        up = HttpUplink(server.url)
        results = []
        for i in range(6):
            try:
                results.append(("ok", up.send(batch(i))))
            except UplinkError as exc:
                results.append((exc.status, exc.retryable, exc.retry_after))
        assert results == [(503, True, 7.0), (429, True, 2.0), (400, False, None), (403, False, None),
                           (500, True, None), ("ok", 200)]
    finally:
        server.stop()


def test_unreachable_is_retryable(tmp_path):
    from tests.support import closed_port
    with pytest.raises(UplinkError) as err:
        HttpUplink("http://127.0.0.1:%d/x" % closed_port(), timeout=2).send(batch())
    assert err.value.retryable and "cannot reach" in str(err.value)


def test_retry_after_http_date():
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after("soon") is None and parse_retry_after("12") == 12.0


def test_rejected_batch_is_quarantined_and_never_blocks_the_queue(tmp_path, signing_key):
    """A 4xx for one batch: quarantined and counted, the next batches go through; nothing retried forever."""
    import asyncio
    import random

    from gateway.app.agent import Agent
    from gateway.core.clock import SystemClock
    from gateway.core.model import Reading
    from gateway.adapters.store import Store
    server = Backend([(201, {}), (422, {})])
    store = Store(str(tmp_path / "q.sqlite"))
    agent = Agent(gw="gw-test", key=signing_key, store=store, uplink=HttpUplink(server.url),
                  clock=SystemClock("synced"), rng=random.Random(1), backoff=(0.05, 0.2))

    async def main():
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        await asyncio.sleep(0)  # a yield, not a wait: agent.run() sets up its loop before the first cut
        for i in range(4):
            agent.emit(Reading("s", "x", i, None, 1.0 + i))
            agent.cut()
            await async_wait_until(lambda: len(server.bodies) == i + 1 and agent.depth()[0] == 0, 10,
                                   "batch %d answered by the backend" % i)
        stop.set()
        await asyncio.wait_for(task, 20)
    try:
        asyncio.run(main())
    finally:
        server.stop()
    assert agent.counters["quarantined"] == 1 and store.counters()["quarantined"] == 1
    assert len(store.quarantined()) == 1 and store.depth()[0] == 0
    assert len(server.bodies) == 4 and agent.counters["uplink_failures"] == 0  # each batch sent once
    store.close()


def test_batches_rejected_before_enrolment_arrive_after_their_retry(tmp_path):
    """The backend did not know the gateway's key yet (403 unknown_kid): the batch is quarantined, then retried
    once the retry is due, and arrives once the key is enrolled. Nothing is lost, nothing is retried forever."""
    import asyncio

    from gateway.adapters import keys
    from gateway.app.agent import Agent
    from gateway.core.clock import SystemClock
    from gateway.core.model import Reading
    from backend.receiver import Receiver, ReceiverServer
    from gateway.adapters.store import Store
    from gateway.adapters.uplink.http import HttpUplink

    key = keys.SigningKey.generate()
    receiver = Receiver(str(tmp_path / "rx.sqlite"), keys.TrustStore({"keys": []}))
    server = ReceiverServer(receiver).start()
    store = Store(str(tmp_path / "q.sqlite"))
    store.RETRY_DELAYS = (1.0,)
    agent = Agent(gw="gw-late", key=key, store=store, uplink=HttpUplink(server.url), clock=SystemClock("synced"),
                  retry_every=0.2)
    seen = {}

    async def main():
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        agent.emit(Reading("s1", "temp", 4.5, "Cel", agent.clock.monotonic()))
        await async_wait_until(lambda: agent.counters["quarantined"], 10, "the batch to be quarantined")
        seen["quarantined"] = agent.counters["quarantined"]
        receiver.trust.add(key.jwk("gw-late"))  # the installer enrols the key at the backend
        await async_wait_until(lambda: receiver.stats()["stored"], 10, "the retried batch at the receiver")
        stop.set()
        await task

    try:
        asyncio.run(main())
    finally:
        server.stop()
        store.close()
    assert seen["quarantined"] == 1 and receiver.stats()["rejections"] == {"unknown_kid": 1}
    assert agent.counters["quarantine_retries"] == 1
    assert receiver.query("SELECT n, v FROM records WHERE n = 'gw-late/s1/temp'") == [("gw-late/s1/temp", 4.5)]
    receiver.close()
