"""The fuzz targets: every entry point that parses bytes or text from outside (``gateway.fuzz``).

One function per area builds its targets; ``targets()`` collects them. A target's ``allowed`` errors are the
project's typed errors for that entry point: anything else escaping is a bug.
"""

import os

from gateway.fuzz import Target


def _wire_targets():
    from gateway.errors import VerifyError
    from gateway.keys import SigningKey, TrustStore
    from gateway.wire import encode_payload, sign, verify
    key = SigningKey.from_seed(bytes(range(32)))
    trust = TrustStore({"keys": [key.jwk("gw-fuzz")]})
    records = [{-2: "gw-fuzz/s1/temp", -4: "Cel", -3: 1_700_000_000, 2: 21.5}, {6: 10, 2: 21.25}]
    corpus = (sign(encode_payload("gw-fuzz", 1, 0, True, records), key),
              sign(encode_payload("gw-fuzz", 7, 42, False, records, anchor=(12.5, 1000.0)), key))
    return [Target("wire.verify", lambda data: verify(data, trust), corpus, (VerifyError,))]


def _receiver_targets():
    return []


def _driver_targets():
    return []


def _config_targets():
    from gateway import config
    from gateway.console.protocol import LineDiscipline
    from gateway.errors import ConfigError
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    example = os.path.join(here, "deploy", "config.example.toml")
    corpus = [open(example, "rb").read()] if os.path.exists(example) else []
    corpus += [
        b'[gateway]\nid = "gw-f"\n[uplink]\nkind = "mqtt"\n[uplink.mqtt]\nhost = "b.example"\ntls = true\n'
        b'[[sources]]\ntype = "serial"\nport = "/dev/x"\nprotocol = "modbus"\npoll_s = 5\n'
        b'slaves = [{id = 1, registers = [{name = "v", address = 0, type = "float32"}]}]\n'
        b'[[sources]]\ntype = "ble"\nsensors = [{mac = "A4:C1:38:00:00:01", key = "00112233445566778899aabbccddeeff"}]\n'
        b'[[rules]]\nmatch = {sensor = "*", name = "temp"}\nhigh = 8.0\nhysteresis = 0.5\n',
        b'[batch]\ntime_quantum_s = 0.5\nmax_age_s = 1e1\n[console]\nidle_lock_s = 60\n',
    ]

    def load_text(data):
        return config.loads(data.decode("utf-8", "replace"), "fuzz.toml")

    def line_discipline(data):
        """Bytes in, whole and split in two; the invariants the console relies on are checked too."""
        for chunks in ((data,), (data[:len(data) // 2], data[len(data) // 2:])):
            disc = LineDiscipline(max_line=40)
            for i, chunk in enumerate(chunks):
                disc.mask = bool(i % 2)
                echo, lines = disc.feed(chunk)
                if not isinstance(echo, bytes):
                    raise TypeError("echo is not bytes")
                for line in lines:
                    if len(line.text) > 40 or any(not " " <= ch <= "~" for ch in line.text):
                        raise AssertionError("line escapes the discipline: %r" % (line.text,))
        return lines

    protocol_corpus = (b"status\r\n", b"unlock\r123456\r\n", b"ab\x7fc\x1b[A\x1bOPd\x15e\x03\r\n",
                       b"x" * 60 + b"\r", b"config set batch.max_age_s 5\n")
    return [Target("config.loads", load_text, tuple(corpus), (ConfigError,)),
            Target("console.line_discipline", line_discipline, protocol_corpus, ())]


def targets():
    return _wire_targets() + _receiver_targets() + _driver_targets() + _config_targets()
