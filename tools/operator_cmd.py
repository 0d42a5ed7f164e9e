"""The operator's side of the downlink (docs/operations.md, "Sending a command to a gateway"):

* ``edge-gateway operator keygen --out DIR``: DIR/operator.pem (0600) and DIR/operator.jwks.json (the public key,
  for the gateways' ``[downlink] operators`` file);
* ``edge-gateway command sign --key FILE --gw ID [--ttl S] --out FILE ACTION [ARG...]``: one signed command. The
  key's ``op_seq`` counter lives next to it (``FILE.seq``), written durably before the command, so no two
  commands of one key share a number;
* ``edge-gateway command send --mqtt URL FILE...``: publish each to ``<prefix>/<gw>/commands`` at QoS 1.

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
    d = ops.add_parser("send", help="publish signed commands (QoS 1) to <prefix>/<gw>/commands")
    d.add_argument("--mqtt", required=True, metavar="URL", help="mqtt://[user:pass@]HOST[:PORT]/PREFIX or mqtts://")
    d.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS", help="for the connection and each PUBACK (default 10)")
    d.add_argument("files", nargs="+", metavar="FILE", help="signed commands (command sign --out)")
    d.set_defaults(func=cmd_send)


def _fail(message, status=1):
    print("edge-gateway: %s" % message, file=sys.stderr)
    return status


def cmd_keygen(args):
    os.makedirs(args.out, mode=0o700, exist_ok=True)
    path = os.path.join(args.out, KEY_NAME)
    key = keys.SigningKey.generate()
    try:
        keys.write_private(path, key)
    except KeyFileError as exc:
        return _fail(str(exc))
    keys.write_jwks(os.path.join(args.out, JWKS_NAME), {"keys": [key.jwk()]})
    print("operator key %s (kid %s); give the gateways %s" % (path, key.kid, os.path.join(args.out, JWKS_NAME)))
    return 0


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


def cmd_send(args):
    import cbor2

    from gateway.adapters.uplink.mqtt import Connection, parse_url
    from gateway.adapters.downlink_mqtt import commands_topic
    try:
        opts = parse_url(args.mqtt)
    except ValueError as exc:
        return _fail(str(exc), 2)
    messages = []
    for path in args.files:
        try:
            with open(path, "rb") as f:
                data = f.read()
            gw = cbor2.loads(cbor2.loads(data).value[2])["gw"]  # routing only: the gateway verifies
        except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError, cbor2.CBORDecodeError) as exc:
            return _fail("%s is not a signed command: %s" % (path, exc), 2)
        messages.append((path, commands_topic(opts["topic_prefix"], gw), data))
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

