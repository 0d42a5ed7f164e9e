"""``edge-gateway console``: the agent with the technician's console, and ``--set-pin``.

* ``edge-gateway console --port DEV --config FILE``: run the agent from FILE (as ``run`` does) and serve the
  console on DEV. ``restart`` stops it with exit status 75, so systemd's ``Restart=`` starts it again.
* ``edge-gateway console --set-pin [--config FILE]``: read a PIN twice without echo and print its salted scrypt
  hash; with ``--config`` write it to ``[console] pin_hash`` of FILE (atomically) instead.
"""

import getpass
import os
import sys
import tomllib

from gateway.app.console.auth import hash_pin
from gateway.app.service import run_from_config
from gateway.core.errors import ConfigError


# -- edge-gateway console ---------------------------------------------------------------------------------------
def register(subparsers):
    p = subparsers.add_parser("console", help="serve the technician's serial console (with the agent)")
    p.add_argument("--port", metavar="DEV", help="the console tty, e.g. /dev/ttyGS0 or /dev/serial0")
    p.add_argument("--config", metavar="FILE", help="the agent's config (default: run without write commands)")
    p.add_argument("--set-pin", action="store_true",
                   help="read a new PIN and print its hash (or write it to --config FILE)")
    p.set_defaults(func=cmd_console)
    return p


def cmd_console(args, stdin=None, out=None):
    out = out or sys.stdout
    if args.set_pin:
        return _set_pin(args.config, stdin, out)
    if not args.port or not args.config:
        print("edge-gateway: console needs --port DEV and --config FILE (or --set-pin)", file=sys.stderr)
        return 2
    return run_from_config(args.config, console_port=args.port)


def _set_pin(config_path, stdin, out):
    if stdin is not None or not sys.stdin.isatty():
        lines = (stdin or sys.stdin).read().split("\n")
        first, second = lines[0].strip(), (lines[1].strip() if len(lines) > 1 else "")
    else:
        first = getpass.getpass("new console PIN: ")
        second = getpass.getpass("again: ")
    if first != second:
        print("edge-gateway: the two PINs differ", file=sys.stderr)
        return 2
    try:
        encoded = hash_pin(first)
    except ValueError as exc:
        print("edge-gateway: %s" % exc, file=sys.stderr)
        return 2
    if not config_path:
        print(encoded, file=out)
        return 0
    from gateway.app.config import from_dict, to_toml, write_atomic
    try:
        with open(config_path, "rb") as f:
            raw = tomllib.load(f)
        raw.setdefault("console", {})["pin_hash"] = encoded
        from_dict(raw, config_path)
        mode = os.stat(config_path).st_mode & 0o777
        write_atomic(config_path, to_toml(raw), mode)
    except (OSError, tomllib.TOMLDecodeError, ConfigError) as exc:
        print("edge-gateway: cannot update %s: %s" % (config_path, exc), file=sys.stderr)
        return 2
    print("console PIN set in %s ([console] pin_hash)" % config_path, file=out)
    return 0
