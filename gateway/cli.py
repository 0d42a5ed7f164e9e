"""``edge-gateway``: the one entry point. It only parses arguments and wires things together (habit 10).

Subcommands and flags are a contract with scripts outside the project (``docs/architecture.md``, CLI contract):
change them only in backward-compatible ways.
"""

import argparse
import faulthandler
import json
import logging
import math
import os
import signal
import sys

from gateway import __version__

log = logging.getLogger("gateway")


def _setup_logging(level):
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def cmd_demo(args):
    _setup_logging("warning" if not args.verbose else "info")
    given = [name for name in DEMO_ONLY if getattr(args, name) not in (None, False)]
    if args.scenario and given:
        args.parser.error("--scenario runs its own agent, sensors and receiver and takes only --quick, --seed and "
                          "--json; it does not take %s" % ", ".join("--" + n.replace("_", "-") for n in given))
    if args.quick and not args.scenario:
        args.parser.error("--quick goes with --scenario NAME")
    if args.serve and args.uplink:
        args.parser.error("--serve keeps the built-in receiver's fleet page up; with --uplink there is none")
    for name, default in DEMO_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.scenario:
        from tools.scenarios import UnknownScenario, run_scenario
        try:
            summary = run_scenario(args, out=sys.stdout)
        except UnknownScenario as exc:
            print("edge-gateway: %s" % exc, file=sys.stderr)
            return 2
        return 0 if summary["ok"] else 1
    from tools.demo import run_demo
    if args.store:
        try:
            os.makedirs(args.store, mode=0o700, exist_ok=True)
        except OSError as exc:
            print("edge-gateway: cannot use --store %s: %s" % (args.store, exc.strerror or exc), file=sys.stderr)
            return 2
    summary = run_demo(args)
    ok = summary["batches_sent"] > 0 and summary["batches_rejected"] == 0
    return 0 if ok else 1


def cmd_run(args):
    from gateway.app.service import run_from_config
    return run_from_config(args.config)


def cmd_record_stop(args):
    from gateway.app.service import record_stop_from_config
    return record_stop_from_config(args.config)


def _host_port(text):
    """``HOST:PORT`` (``[v6]:PORT`` too) as ``(host, port)``, or None."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def cmd_receive(args):
    from gateway.core.errors import KeyFileError
    from gateway.adapters.keys import TrustStore
    from backend.receiver import Receiver
    from backend.storage import StorageError, redact
    _setup_logging(args.log_level)
    listen = _host_port(args.listen)
    if listen is None:
        print("edge-gateway: --listen must be HOST:PORT, e.g. 127.0.0.1:8080", file=sys.stderr)
        return 2
    ops = None if args.ops_listen == "off" else _host_port(args.ops_listen)
    if ops is None and args.ops_listen != "off":
        print("edge-gateway: --ops-listen must be HOST:PORT or off, e.g. 127.0.0.1:8081", file=sys.stderr)
        return 2
    try:
        from backend.httpd import Limits, ReceiverServer
        from backend.readhttp import ApiAccess
    except ImportError as exc:
        print("edge-gateway: the receiver needs its HTTP server (%s): pip install -e '.[backend]'" % exc,
              file=sys.stderr)
        return 2
    try:
        api = ApiAccess.from_args(args.api, args.api_token_file)
    except ValueError as exc:
        print("edge-gateway: %s" % exc, file=sys.stderr)
        return 2
    try:
        trust = TrustStore.load(args.trust)
    except KeyFileError as exc:
        print("edge-gateway: %s" % exc, file=sys.stderr)
        return 2
    operators = None
    if args.operators:
        from gateway.adapters.operators import load_operators
        try:
            operators = load_operators(args.operators)
        except KeyFileError as exc:
            print("edge-gateway: %s" % exc, file=sys.stderr)
            return 2
    try:
        receiver = Receiver(args.db, trust, operators=operators)
    except (StorageError, ValueError) as exc:
        print("edge-gateway: cannot open the receiver database %s: %s" % (redact(args.db), exc), file=sys.stderr)
        return 2
    limits = Limits(read_timeout=args.read_timeout, max_connections=args.max_connections, workers=args.workers)
    try:
        server = ReceiverServer(receiver, listen[0], listen[1], ops=ops, limits=limits, api=api).start()
    except OSError as exc:
        print("edge-gateway: cannot listen on %s: %s" % (args.listen if not ops else "%s or %s" % (
            args.listen, args.ops_listen), exc.strerror or exc), file=sys.stderr)
        receiver.close()
        return 2
    print("receiving on %s (trust store %s: %d keys, database %s)" % (server.url, args.trust, len(trust.keys),
                                                                     redact(args.db)), flush=True)
    print("ops (GET /stats, /healthz) on %s" % (server.ops_url or "none (--ops-listen off)"), flush=True)
    if operators is not None:
        print("commands queued at %s (operator keys %s: %d)" % (server.url.replace("/v1/batches", "/v1/commands"),
                                                                args.operators, len(operators)), flush=True)
    if server.fleet_url:
        print("read API on %sapi/v1 and fleet page on %s (--api %s)" % (server.ops_url + "/", server.fleet_url,
                                                                         args.api), flush=True)
    consumer = None
    if args.mqtt:
        from backend.mqtt_consumer import MqttConsumer
        try:
            consumer = MqttConsumer.from_url(args.mqtt, receiver, group=args.mqtt_group,
                                             client_id=args.mqtt_client_id or "").start()
        except ValueError as exc:
            print("edge-gateway: --mqtt/--mqtt-group: %s" % exc, file=sys.stderr)
            server.stop()
            receiver.close()
            return 2
        print("consuming %s as MQTT client %s%s" % (consumer.topic, consumer.client_id, "" if
              consumer.wait_subscribed(0) else " (not subscribed yet; retrying)"), flush=True)
    stopped = []
    signal.signal(signal.SIGTERM, lambda *a: stopped.append("stop"))
    # SIGUSR2: leave the shared subscription group for good, without loss (docs/backend.md, "Retiring a worker")
    signal.signal(signal.SIGUSR2, lambda *a: stopped.append("retire"))
    rc = 0
    try:
        while not stopped:
            signal.pause() if hasattr(signal, "pause") else None
    except KeyboardInterrupt:
        pass
    finally:
        if consumer and stopped and stopped[0] == "retire":
            print("retiring: unsubscribing from %s, then draining" % consumer.topic, flush=True)
            if consumer.retire(quiet=args.retire_quiet):
                print("retired: drained, session of %s ended" % consumer.client_id, flush=True)
            else:
                print("edge-gateway: could not drain %s; the session is kept: start this worker again with "
                      "--mqtt-client-id %s, then retire it again" % (consumer.topic, consumer.client_id),
                      file=sys.stderr, flush=True)
                rc = 1
        elif consumer:
            consumer.stop()
        server.stop()  # graceful: stop accepting, finish the requests in flight
        print(json.dumps(dict(receiver.stats(), consumer=consumer.counters if consumer else None), sort_keys=True),
              flush=True)
        receiver.close()
    return rc


def cmd_verify(args):
    """Each FILE is a CBOR sequence of batches (RFC 8742): one ``.cose`` batch, or many from ``store flush-to-file``."""
    from gateway.core.errors import KeyFileError, VerifyError
    from gateway.adapters.keys import TrustStore
    from gateway.core.wire import split_batches, verify
    try:
        trust = TrustStore.load(args.trust)
    except KeyFileError as exc:
        print("edge-gateway: %s" % exc, file=sys.stderr)
        return 2
    lines, failed, checked = [], 0, 0
    for path in args.files:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            print("%s: cannot read: %s" % (path, exc.strerror), file=sys.stderr)
            failed += 1
            continue
        try:
            batches = split_batches(data)
        except VerifyError as exc:
            print("%s: rejected (%s): %s" % (path, exc.reason, exc), file=sys.stderr)
            failed += 1
            continue
        for index, item in enumerate(batches):
            checked += 1
            try:
                batch = verify(item, trust)
            except VerifyError as exc:
                print("%s: batch %d rejected (%s): %s" % (path, index, exc.reason, exc), file=sys.stderr)
                failed += 1
                continue
            for rec in batch.records:
                out = {"gw": batch.gw, "boot": batch.boot, "seq": batch.seq, "clock": batch.clock}
                out.update(rec)
                if "vd" in out:
                    out["vd"] = out["vd"].hex()
                lines.append(json.dumps(out, sort_keys=True))
    files = "%d file%s" % (len(args.files), "" if len(args.files) == 1 else "s")
    if failed:
        print("edge-gateway: %d failure%s in %s (%d batches checked)" % (failed, "" if failed == 1 else "s", files,
                                                                        checked), file=sys.stderr)
        return 1
    sys.stdout.write("".join(line + "\n" for line in lines))
    print("verified %d batch%s in %s" % (checked, "" if checked == 1 else "es", files), file=sys.stderr)
    return 0


def cmd_decode(args):
    """``decode FORMAT DATA``: prints the measurements; every input error is one line on stderr, never a
    traceback (exit 2 for a bad format or flag, 1 for data that does not decode). A frame that decoded in part
    (an unknown object after good ones) prints what decoded, then the error, and exits 1."""
    from drivers.bounds import PartialDecode
    from drivers.formats import cli_decoder
    from gateway.core.errors import DecodeError
    try:
        decode = cli_decoder(args.format)
    except KeyError as exc:
        print("edge-gateway: %s" % exc.args[0], file=sys.stderr)
        return 2
    key = None
    if args.key:
        try:
            key = bytes.fromhex(args.key.replace(":", "").replace(" ", ""))
        except ValueError:
            print("edge-gateway: --key must be hex", file=sys.stderr)
            return 2
    partial = None
    try:
        measurements = decode(args.data, mac=args.mac, key=key)
    except PartialDecode as exc:
        measurements, partial = exc.measurements, exc
    except DecodeError as exc:
        print("edge-gateway: cannot decode %s (%s): %s" % (args.format, exc.reason, exc), file=sys.stderr)
        return 1
    rows = [{"name": m.name, "value": m.value.hex() if isinstance(m.value, bytes) else m.value, "unit": m.unit}
            for m in measurements]
    if args.json:
        print(json.dumps(rows))
    else:
        for r in rows:
            print("%-16s %14s %s" % (r["name"], r["value"], r["unit"] or ""))
    if partial is not None:
        print("edge-gateway: %s decoded in part (%s): %s" % (args.format, partial.reason, partial), file=sys.stderr)
        return 1
    return 0


#: Subcommands implemented in their own modules. They are imported only when needed, so the long-running agent
#: (``run``) does not carry the installer's, the bench's or the console's code in its memory.
EXTRA_COMMANDS = {"provision": "tools.provision", "doctor": "gateway.app.doctor", "console": "gateway.app.console.command",
                  "bench": "tools.bench", "fuzz": "tools.fuzz_cmd", "operator": "tools.operator_cmd",
                  "command": "tools.command_cmd", "update": "gateway.app.update_cmd", "fleet-sim": "tools.fleet_sim"}


#: ``run --config`` default, as ``doctor``'s and docs/configuration.md's
DEFAULT_CONFIG = "/etc/edge-gateway/config.toml"


def _scenario_names():
    """The scenario names for ``demo --help`` (the scenarios run from a checkout: none on a gateway)."""
    try:
        from tools.scenarios import SCENARIOS
    except ModuleNotFoundError as exc:
        if not _not_shipped(exc):
            raise
        return "(none on a gateway: %s)" % NOT_SHIPPED
    return ", ".join(sorted(SCENARIOS))


def build_parser(command=None):
    p = argparse.ArgumentParser(prog="edge-gateway", description="Edge gateway agent: sensors in, signed "
                                "SenML-CBOR batches out, store-and-forward in between.")
    p.add_argument("--version", action="version", version="edge-gateway " + __version__)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in (_add_demo, _add_run, _add_receive, _add_verify, _add_decode):
        add(sub)
    _add_extra(sub, command)
    return p


def _add_demo(sub):
    d = sub.add_parser("demo", help="run the agent on simulated sensors with a loopback receiver")
    d.add_argument("--duration", type=_positive(float), help="seconds to run (default 10; Ctrl-C stops earlier)")
    d.add_argument("--scenario", metavar="NAME", help="a field scenario: %s (docs/scenarios.md)" % _scenario_names())
    d.add_argument("--quick", action="store_true", help="the short form of a scenario")
    d.add_argument("--seed", type=int, default=1, help="seed of the simulated sensors and faults (default 1)")
    d.add_argument("--sensors", type=_positive(int), help="simulated sensors on the one board (default 3)")
    d.add_argument("--rate", type=_positive(float), help="lines per second per sensor (default 2)")
    d.add_argument("--tick-counter", action="store_true", help="the board also sends its tick number n as a "
                   "reading (a test aid: a gap in n is a lost reading)")
    d.add_argument("--save-batches", metavar="DIR", help="write each batch as DIR/NNNNNN.cose plus DIR/jwks.json")
    d.add_argument("--uplink", metavar="URL", help="send to this HTTP receiver instead of the built-in one")
    d.add_argument("--store", metavar="DIR", help="keep key, jwks.json, boot epoch and queue in DIR")
    d.add_argument("--console", metavar="DEVICE", help="serve the technician console on DEVICE")
    d.add_argument("--clock", choices=("auto", "synced", "unsynced"), default="auto", help="is the wall clock "
                   "synchronised: ask the kernel (auto, the default), or take it as given; signed commands need a "
                   "synchronised clock (--store makes an operator key)")
    d.add_argument("--serve", action="store_true", help="after the run, keep the loopback receiver and its fleet "
                   "page up until Ctrl-C")
    d.add_argument("--json", action="store_true", help="print one JSON summary at the end")
    d.add_argument("--verbose", action="store_true", help="log at INFO")
    d.set_defaults(func=cmd_demo, parser=d)


def _add_run(sub):
    r = sub.add_parser("run", help="the production agent")
    r.add_argument("--config", default=DEFAULT_CONFIG, metavar="FILE", help="the config (default %s)"
                   % DEFAULT_CONFIG)
    r.set_defaults(func=cmd_run)

    rs = sub.add_parser("record-stop", help="for the systemd unit's ExecStopPost=: record why the agent stopped "
                        "($SERVICE_RESULT, $EXIT_CODE, $EXIT_STATUS) for its next start")
    rs.add_argument("--config", default=DEFAULT_CONFIG, metavar="FILE", help="the config (default %s)"
                    % DEFAULT_CONFIG)
    rs.set_defaults(func=cmd_record_stop)


def _add_receive(sub):
    rc = sub.add_parser("receive", help="the reference backend receiver")
    rc.add_argument("--listen", required=True, metavar="HOST:PORT", help="address to serve on, e.g. "
                    "127.0.0.1:8080 (port 0: any free port); batches are taken at /v1/batches")
    rc.add_argument("--trust", required=True, metavar="JWKS", help="the trust store (JWK Set, e.g. the one "
                    "'provision' writes): the gateways' public keys")
    rc.add_argument("--db", required=True, metavar="FILE|URL", help="where the records go: a SQLite file "
                    "(created if missing) or postgresql://USER@HOST:PORT/DB[?retention_days=N] (docs/backend.md)")
    rc.add_argument("--operators", metavar="JWKS", help="the operator keys (operator.jwks.json) whose signed commands "
                    "are queued at /v1/commands and handed to each gateway in the answers to its batches "
                    "(default: no command queue)")
    rc.add_argument("--ops-listen", default="127.0.0.1:0", metavar="HOST:PORT|off", help="where GET /stats and "
                    "/healthz are served, apart from the batches (default 127.0.0.1:0: loopback, a free port, "
                    "printed at start; 'off': nowhere)")
    rc.add_argument("--api", default="loopback", choices=("off", "loopback", "token"), help="who may use the read "
                    "API (/api/v1) and the fleet page (/fleet/) on the ops listener: off, loopback (default: peers "
                    "on 127.0.0.0/8 and ::1) or token (Authorization: Bearer, see --api-token-file)")
    rc.add_argument("--api-token-file", metavar="FILE", help="the bearer token for --api token (one word, at least "
                    "16 characters; read from a file so that ps does not show it)")
    rc.add_argument("--read-timeout", type=float, default=10.0, metavar="S", help="seconds a connection has to "
                    "deliver a whole request, headers and body (default 10)")
    rc.add_argument("--max-connections", type=int, default=4096, metavar="N", help="open connections beyond "
                    "which a new one is answered 503 (default 4096)")
    rc.add_argument("--workers", type=int, default=8, metavar="N", help="threads verifying and storing "
                    "batches (default 8)")
    rc.add_argument("--mqtt", metavar="URL", help="also consume mqtt://HOST:PORT/PREFIX with a shared subscription")
    rc.add_argument("--mqtt-group", default="receivers", help="shared subscription group (default receivers): "
                    "every worker of one fleet's backend joins the same group, and the broker shares the batches "
                    "out among them")
    rc.add_argument("--mqtt-client-id", metavar="ID", help="the consumer's MQTT client id (default: derived from "
                    "host, database and group). Several workers on one host with one database need one each, and "
                    "each keeps its own across restarts: the broker redelivers to it what it had not acknowledged")
    rc.add_argument("--retire-quiet", type=float, default=1.0, metavar="S", help="on SIGUSR2 the worker retires: "
                    "it unsubscribes, stores and acknowledges what the broker still sends it until nothing has come "
                    "for S seconds (default 1), then ends its session (docs/backend.md, \"Retiring a worker\")")
    rc.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"),
                    help="debug, info, warning or error (default info)")
    rc.set_defaults(func=cmd_receive)


def _add_verify(sub):
    v = sub.add_parser("verify", help="verify batch files (each one batch or a CBOR sequence of batches) and print "
                       "their records as JSON lines")
    v.add_argument("--trust", required=True, metavar="JWKS", help="the trust store (JWK Set) to verify against")
    v.add_argument("files", nargs="+", metavar="FILE", help="a .cose batch, or a flush file (a CBOR sequence)")
    v.set_defaults(func=cmd_verify)


def _add_decode(sub):
    dc = sub.add_parser("decode", help="decode one advertisement or frame")
    from drivers.formats import FORMATS as DECODABLE
    dc.add_argument("format", help="one of " + ", ".join(DECODABLE))
    dc.add_argument("data", help="hex for radio formats, the sentence for text formats")
    dc.add_argument("--mac", help="the sender's MAC (some formats need it to decrypt or to name the sensor)")
    dc.add_argument("--key", help="hex bindkey for encrypted BTHome")
    dc.add_argument("--json", action="store_true", help="print a JSON list")
    dc.set_defaults(func=cmd_decode)


def _add_extra(sub, command):
    """The ``EXTRA_COMMANDS`` (all of them, or only ``command``), each registered by its own module."""
    import importlib
    for name, module in EXTRA_COMMANDS.items():
        if command is None or command == name:
            try:
                importlib.import_module(module).register(sub)
            except ModuleNotFoundError as exc:
                if not _not_shipped(exc):
                    raise
                sub.add_parser(name, help="(not installed here: %s)" % NOT_SHIPPED).set_defaults(func=_missing)


def _positive(kind):
    """An argparse type: a finite number above zero (``--duration -5``, ``--rate nan`` and ``--sensors 0`` are
    refused with a usage error, not run)."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError("%r is not a%s number" % (text, "n integer" if kind is int else ""))
        if not math.isfinite(value) or value <= 0:
            raise argparse.ArgumentTypeError("must be a finite number above zero, not %s" % text)
        return value
    parse.__name__ = "positive " + kind.__name__  # argparse names the type in its message
    return parse


#: demo flags a scenario does not take (it builds its own world): refused with --scenario, not ignored
DEMO_ONLY = ("duration", "sensors", "rate", "tick_counter", "save_batches", "uplink", "store", "console", "serve")
#: the demo's defaults for the flags above whose absence must be told apart from a value (see ``DEMO_ONLY``)
DEMO_DEFAULTS = {"duration": 10.0, "sensors": 3, "rate": 2.0}


#: ``backend/`` and ``tools/`` do not ship in the gateway's wheel (docs/architecture.md): on a gateway, their
#: commands say so instead of failing with a traceback.
NOT_SHIPPED = "a command of the backend or the tools, which run from a checkout of the project, not on a gateway"


def _not_shipped(exc):
    return (exc.name or "").split(".")[0] in ("backend", "tools", "firmware_sim")


def _missing(args):
    print("edge-gateway: '%s' is %s" % (args.command, NOT_SHIPPED), file=sys.stderr)
    return 2


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    # 'kill -USR1 PID' prints every thread's stack to stderr (the journal): how a stuck agent in the field, or in
    # a fault test, tells where it is stuck. Costs nothing until the signal comes.
    try:
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    except (ValueError, OSError, AttributeError):  # stderr is no file (called from Python with it captured)
        pass
    command = next((a for a in argv if not a.startswith("-")), None)
    if argv[:2] == ["update", "build"]:  # the operator's bundle builder, a tools command beside the gateway's update
        try:
            from tools.update_build import main as build_update
        except ModuleNotFoundError as exc:
            if not _not_shipped(exc):
                raise
            return _missing(argparse.Namespace(command="update build"))
        return build_update(argv[2:])
    core = command in ("demo", "run", "record-stop", "receive", "verify", "decode")
    args = build_parser(command if core else None).parse_args(argv)
    try:
        return args.func(args)
    except ModuleNotFoundError as exc:
        if not _not_shipped(exc):
            raise
        return _missing(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
