"""``edge-gateway update``: install a signed update bundle, hand over a staged one, or go back (docs/operations.md,
"Updating gateways").

    edge-gateway update [--config FILE] FILE          install FILE now (a USB stick, a file the technician copied)
    edge-gateway update --staged [--config FILE]      the updater unit: install what the agent staged, if anything
                                                      (the staged bundle is removed afterwards)
    edge-gateway update --rollback [--config FILE]    switch back to the previous version now
    edge-gateway update build ...                     build a bundle (operators: tools/update_build.py, through
                                                      gateway/cli.py, since the tools do not ship on a gateway)

Installing runs as root (the versions under ``update.base`` are root's); the checks of the new version run as the
service user when there is one. Exit 0: installed (or nothing staged); 1: refused or failed, with the reason; 2: usage.
"""

import argparse
import os
import pwd
import shutil
import subprocess
import sys

from gateway.core.errors import GatewayError

SERVICE_USER = "edge-gateway"
UNIT = "edge-gateway.service"


def register(sub):
    p = sub.add_parser("update", help="install a signed update bundle (or: update build ... to make one)",
                       description=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="/etc/edge-gateway/config.toml", metavar="FILE",
                   help="the gateway's config (default /etc/edge-gateway/config.toml)")
    p.add_argument("--staged", action="store_true", help="install the bundle the agent staged (the updater unit)")
    p.add_argument("--rollback", action="store_true", help="switch back to the previous version")
    p.add_argument("--python", metavar="PY", help="the interpreter for the new virtualenv (default: the running "
                   "version's)")
    p.add_argument("--no-restart", action="store_true", help="do not restart the service (it runs the new version "
                   "at its next start)")
    p.add_argument("file", nargs="?", metavar="FILE", help="the bundle to install ('build' makes one)")
    p.set_defaults(func=cmd_update)


def _fail(message, status=1):
    print("edge-gateway: update: %s" % message, file=sys.stderr)
    return status


def cmd_update(args):
    if sum(bool(x) for x in (args.file, args.staged, args.rollback)) != 1:
        return _fail("give one of FILE, --staged, --rollback (see --help)", 2)
    from gateway.app.config import load
    from gateway.app.update_install import install, rollback
    try:
        cfg = load(args.config)
        if args.rollback:
            old, new = rollback(cfg)
            print("rolled back from %s to %s" % (old, new))
            return _restart(args)
        bundle = args.file
        if args.staged:
            from gateway.app.update_agent import staged_request
            bundle = staged_request(cfg)
            if bundle is None:
                print("nothing staged")
                return 0
        try:
            install(bundle, cfg, python=args.python, user=_service_user(),
                    say=lambda text: print(text, flush=True))
        finally:
            if args.staged:
                _discard(bundle)
    except GatewayError as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail("%s%s" % (exc.filename + ": " if exc.filename else "", exc.strerror or exc))
    return _restart(args)


def _discard(path):
    """A staged bundle serves one install (its request is consumed first): removed afterwards, whatever the outcome,
    so bundles do not pile up in the state directory (tens of MB each on an SD card)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        print("edge-gateway: update: cannot remove the staged bundle %s: %s" % (path, exc.strerror), file=sys.stderr)


def _service_user():
    """The checks run as the service user when root installs on a real gateway (so they see what it sees)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError:
        return None
    return SERVICE_USER if shutil.which("runuser") else None


def _restart(args):
    if args.no_restart or os.geteuid() != 0 or not os.path.isdir("/run/systemd/system"):  # sd_booted()
        print("restart the service to run it: systemctl restart %s" % UNIT)
        return 0
    proc = subprocess.run(["systemctl", "--no-block", "restart", UNIT], capture_output=True, text=True)
    if proc.returncode != 0:
        return _fail("installed, but systemctl restart failed: %s" % proc.stderr.strip())
    print("restarting %s" % UNIT)
    return 0
