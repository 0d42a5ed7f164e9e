"""The operator's side of the downlink (docs/operations.md, "Sending a command to a gateway"):

* ``edge-gateway operator keygen --out DIR``: DIR/operator.pem (0600) and DIR/operator.jwks.json (the public key,
  for the gateways' ``[downlink] operators`` file);
* ``edge-gateway command sign --key FILE --gw ID [--ttl S] --out FILE ACTION [ARG...]``: one signed command. The
  key's ``op_seq`` counter lives next to it (``FILE.seq``), written durably before the command, so no two
  commands of one key share a number;
* ``edge-gateway command send --mqtt URL FILE...``: publish each to ``<prefix>/<gw>/commands`` at QoS 1;
  ``--http RECEIVER_URL``: queue each at the reference receiver (``POST /v1/commands``), which hands it to the
  gateway in the answer to its next batch;
* ``edge-gateway command status --db FILE|URL --gw ID [--json]``: the commands queued for a gateway and the
  outcomes it reported (the receiver's database).

Operator tools: they run on an operator's machine, never on a gateway.
"""

import json
import os
import sys
import time

from gateway.adapters import keys
from gateway.adapters.files import write_atomic
from gateway.core.commands import ACTIONS, sign_command
from gateway.core.errors import GatewayError, KeyFileError

KEY_NAME, JWKS_NAME = "operator.pem", "operator.jwks.json"
DEFAULT_TTL_S = 3600


def register(sub):
    p = sub.add_parser("operator", help="operator keys for signed commands (the downlink)")
    ops = p.add_subparsers(dest="operator_command", required=True, metavar="keygen", help="what to do")
    k = ops.add_parser("keygen", help="a new operator key: DIR/operator.pem (0600) and DIR/operator.jwks.json")
    k.add_argument("--out", required=True, metavar="DIR", help="where to write the key pair (created 0700)")
    k.set_defaults(func=cmd_keygen)


def register_command(sub):
    p = sub.add_parser("command", help="sign and send commands to gateways (the downlink)")
    ops = p.add_subparsers(dest="command_command", required=True, metavar="{sign,send}", help="what to do")
    s = ops.add_parser("sign", help="sign one command for one gateway")
    s.add_argument("--key", required=True, metavar="FILE", help="the operator's private key (operator.pem)")
    s.add_argument("--gw", required=True, metavar="ID", help="the target gateway's id")
    s.add_argument("--ttl", type=int, default=DEFAULT_TTL_S, metavar="SECONDS",
                   help="valid for this long from now (default %d)" % DEFAULT_TTL_S)
    s.add_argument("--out", required=True, metavar="FILE", help="the signed command (one COSE_Sign1)")
    s.add_argument("action", choices=sorted(ACTIONS), help="what the gateway is to do")
    s.add_argument("args", nargs="*", metavar="ARG", help="config_set: KEY VALUE; update: URL SHA256 (of the bundle)")
    s.set_defaults(func=cmd_sign)
    d = ops.add_parser("send", help="publish signed commands (QoS 1) to <prefix>/<gw>/commands, or queue them at "
                       "a receiver")
    how = d.add_mutually_exclusive_group(required=True)
    how.add_argument("--mqtt", metavar="URL", help="mqtt://[user:pass@]HOST[:PORT]/PREFIX or mqtts://")
    how.add_argument("--http", metavar="RECEIVER_URL", help="the reference receiver (http(s)://HOST:PORT, or its "
                     "/v1/batches URL): queued at /v1/commands for the gateway's next answer")
    d.add_argument("--ca-file", metavar="FILE", help="--http over https: the CA that signed the receiver's "
                   "certificate (default: the system's)")
    d.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS", help="for the connection and each "
                   "PUBACK or answer (default 10)")
    d.add_argument("files", nargs="+", metavar="FILE", help="signed commands (command sign --out)")
    d.set_defaults(func=cmd_send)
    st = ops.add_parser("status", help="the commands queued for a gateway and their outcomes")
    st.add_argument("--db", required=True, metavar="FILE|URL", help="the receiver's database: a SQLite file or "
                    "postgresql://...")
    st.add_argument("--gw", required=True, metavar="ID", help="the gateway")
    st.add_argument("--json", action="store_true", help="one JSON object per command")
    st.set_defaults(func=cmd_status)


def _fail(message, status=1):
    print("edge-gateway: %s" % message, file=sys.stderr)
    return status


def cmd_keygen(args):
    try:
        key, path, jwks = write_operator_key(args.out)
    except KeyFileError as exc:
        return _fail(str(exc))
    print("operator key %s (kid %s); give the gateways %s" % (path, key.kid, jwks))
    return 0


def write_operator_key(directory):
    """A new operator key: ``(key, DIR/operator.pem, DIR/operator.jwks.json)``; ``KeyFileError``."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    path = os.path.join(directory, KEY_NAME)
    key = keys.SigningKey.generate()
    keys.write_private(path, key)
    jwks = os.path.join(directory, JWKS_NAME)
    keys.write_jwks(jwks, {"keys": [key.jwk()]})
    return key, path, jwks


def ensure_operator_key(directory):
    """``demo --store DIR``: the operator key kept in DIR, made the first time. ``(key, pem, jwks, created)``."""
    path, jwks = os.path.join(directory, KEY_NAME), os.path.join(directory, JWKS_NAME)
    if os.path.exists(path) and os.path.exists(jwks):
        return keys.load_private(path), path, jwks, False
    return write_operator_key(directory) + (True,)


def next_seq(key_path):
    """The key's next ``op_seq``, recorded (atomically, fsynced) before it is used."""
    path = key_path + ".seq"
    last = 0
    if os.path.exists(path):
        try:
            with open(path) as f:
                last = json.load(f)["last"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise KeyFileError("sequence file %s is unreadable (%s): fix it by hand, never lower it" % (path, exc))
        if last.__class__ is not int or last < 0:
            raise KeyFileError("sequence file %s holds no valid number" % path)
    write_atomic(path, json.dumps({"last": last + 1}) + "\n", 0o600)
    return last + 1


def cmd_sign(args, now=time.time):
    names = ACTIONS[args.action]
    if len(args.args) != len(names):
        return _fail("%s takes %s" % (args.action, " ".join(n.upper() for n in names) or "no arguments"), 2)
    if args.ttl <= 0:
        return _fail("--ttl must be positive", 2)
    try:
        key = keys.load_private(args.key)
        seq = next_seq(args.key)
        data = sign_command(key, args.gw, seq, int(now()) + args.ttl, args.action, dict(zip(names, args.args)))
        write_atomic(args.out, data, 0o644)
    except (GatewayError, OSError) as exc:
        return _fail(str(exc))
    print("%s: %s for %s, op_seq %d, key %s, valid %d s" % (args.out, args.action, args.gw, seq, key.kid, args.ttl))
    return 0


def _read_commands(files):
    """``[(path, gw, data)]``; the gw is read unverified (routing only: the gateway verifies)."""
    from gateway.core.commands import CommandError, peek_gw
    from gateway.core.wire import MAX_BATCH_BYTES
    out = []
    for path in files:
        try:
            with open(path, "rb") as f:
                data = f.read()
            out.append((path, peek_gw(data, MAX_BATCH_BYTES), data))
        except OSError as exc:
            raise KeyFileError("%s: cannot read: %s" % (path, exc.strerror)) from exc
        except CommandError as exc:
            raise KeyFileError("%s is not a signed command: %s" % (path, exc)) from exc
    return out


def cmd_send(args):
    try:
        commands = _read_commands(args.files)
    except KeyFileError as exc:
        return _fail(str(exc), 2)
    if args.http:
        return _send_http(args, commands)
    return _send_mqtt(args, commands)


def commands_url(url):
    """The queue's URL from what the operator gives: the receiver's base URL or its batch URL."""
    import urllib.parse
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("--http must be an http:// or https:// URL of the receiver, not %r" % url)
    path = parts.path.rstrip("/")
    if path in ("", "/v1/batches"):
        path = "/v1/commands"
    return urllib.parse.urlunsplit(parts._replace(path=path, query=""))


def _send_http(args, commands):
    """POST each command to the receiver's queue; exit 1 when any was refused (each refusal printed)."""
    import ssl
    import urllib.error
    import urllib.request

    from gateway.core.redact import redact_url
    from gateway.core.wire import HTTP_CONTENT_TYPE
    try:
        url = commands_url(args.http)
    except ValueError as exc:
        return _fail(str(exc), 2)
    context = ssl.create_default_context(cafile=args.ca_file) if url.startswith("https:") else None
    failed = 0
    for path, gw, data in commands:
        request = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": HTTP_CONTENT_TYPE})
        try:
            with urllib.request.urlopen(request, timeout=args.timeout, context=context) as resp:
                answer = json.loads(resp.read(4096) or b"{}")
        except urllib.error.HTTPError as exc:
            try:
                answer = json.loads(exc.read(4096) or b"{}")
            except ValueError:
                answer = {}
            failed += 1
            print("%s: refused by %s (%d %s): %s" % (path, redact_url(url), exc.code, answer.get("error", exc.reason),
                                                   answer.get("detail", "")), file=sys.stderr)
            continue
        except (OSError, ValueError) as exc:
            return _fail("%s: cannot reach %s: %s" % (path, redact_url(url), getattr(exc, "reason", exc)))
        print("%s -> %s: %s op_seq %s for %s (%s)" % (path, redact_url(url), answer.get("action"),
                                                     answer.get("op_seq"), gw, answer.get("status")))
    return 1 if failed else 0


def cmd_status(args):
    import time as _time

    from backend.engines import open_storage
    from backend.storage import StorageError, redact
    try:
        storage = open_storage(args.db)
    except (StorageError, ValueError) as exc:
        return _fail("cannot open the receiver database %s: %s" % (redact(args.db), exc), 2)
    try:
        rows = storage.command_status(args.gw, _time.time())
    except StorageError as exc:
        return _fail(str(exc))
    finally:
        storage.close()
    if args.json:
        for row in rows:
            print(json.dumps(row, sort_keys=True))
        return 0
    if not rows:
        print("no commands for %s" % args.gw)
        return 0
    print("%-8s %-13s %-9s %6s  %s" % ("OP_SEQ", "ACTION", "STATE", "HANDED", "OUTCOME"))
    for row in rows:
        outcome = (row["outcome"] or "").replace("\n", " ")
        print(("%-8s %-13s %-9s %6s  %s" % (row["op_seq"] if row["op_seq"] is not None else "-",
                                             (row["action"] or "(mqtt)")[:13], row["state"][:9],
                                             "-" if row["handed"] is None else row["handed"], outcome))[:79])
    return 0


def _send_mqtt(args, commands):
    from gateway.adapters.uplink.mqtt import Connection, parse_url
    from gateway.adapters.downlink_mqtt import commands_topic
    try:
        opts = parse_url(args.mqtt)
    except ValueError as exc:
        return _fail(str(exc), 2)
    messages = [(path, commands_topic(opts["topic_prefix"], gw), data) for path, gw, data in commands]
    conn = Connection(opts["host"], opts["port"], "", opts["username"], opts["password"], opts["tls"])
    conn.client.on_connect = lambda client, userdata, flags, rc, props: conn.on_connect(rc)
    conn.client.on_connect_fail = lambda client, userdata: conn.on_connect_fail()
    conn.start()
    try:
        if not conn.wait_connected(args.timeout):
            return _fail("broker not reachable: %s" % conn.last_error)
        for path, topic, data in messages:
            info = conn.client.publish(topic, data, qos=1)
            info.wait_for_publish(args.timeout)
            if not info.is_published():
                return _fail("%s: no PUBACK within %.0f s" % (path, args.timeout))
            print("%s -> %s" % (path, topic))
    finally:
        conn.stop()
    return 0

