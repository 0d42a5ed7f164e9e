"""``edge-gateway provision``: identity, key, config and trust store for one gateway or a fleet.

For each gateway ID it writes ``OUT/<ID>/key.pem`` (Ed25519, mode 0600), ``OUT/<ID>/config.toml`` (validated by
loading it back) and ``OUT/<ID>/enrollment.json``, prints the enrollment record (gateway id, kid, fingerprint,
public JWK) as one JSON line, and adds the public key, tagged ``"gw": ID``, to the backend's trust store (a JWK
Set, ``OUT/jwks.json`` unless ``--trust`` says otherwise).

* Idempotent: re-running never replaces an existing key. An existing ``config.toml`` is the starting point: what
  the arguments do not set (``[[sources]]``, ``[[rules]]``, ``console.pin_hash``, the uplink, tuning) is kept, and
  the kept parts are named on stderr and in the record's ``kept``. ``--sensors`` replaces ``[[sources]]`` and
  ``[[rules]]`` together; ``--uplink``/``--mqtt`` replace the transport of ``[uplink]``.
* All or nothing: every input (the existing config, the key, the trust store, the URLs, the bundle's wheelhouse)
  is checked before the first write, and every file is replaced atomically, so a refused run changes nothing.
* ``--rotate`` makes a new key. The old JWK stays in the trust store with ``"status": "retired-pending"`` and a
  ``"retired_at"`` date, so batches signed before the rotation (still queued on the gateway) keep verifying.
  ``provision --retire KID`` removes it once the backlog has drained. Stock JOSE libraries ignore both members.
* ``--csv FILE`` provisions many: columns ``gateway_id``, ``uplink`` and optional ``mqtt``, ``ca_file``,
  ``sensors``, ``pin``, ``state_dir``; one bundle directory per gateway, one trust store for the backend.
* An ``http://`` uplink, or MQTT without TLS, to a host that is not this machine is provisioned with a WARNING
  on stderr (and in the record's ``warnings``): the batches are signed, but readable on the way.
* Nothing printed carries a URL's credentials (``gateway.core.redact``); ``--pin`` is refused below 6 characters.
* ``--bundle DIR`` (one gateway) builds the first-boot bundle for a Raspberry Pi OS SD card: wheelhouse, config,
  key, ``deploy/`` and the first-boot script (``docs/operations.md``, "Installer's guide"). ``--target native``
  packs the wheelhouse from this machine's own environment (offline; to try ``install.sh --root`` on a laptop).
"""

import csv
import json
import os
import shutil
import stat
import sys
import tempfile
from dataclasses import dataclass

from gateway.app import config as gconfig
from gateway.adapters import keys
from tools import wheelhouse as wheelhouse_mod
from gateway.core.errors import ConfigError, KeyFileError
from gateway.core.redact import redact_text
from tools.wheelhouse import WheelhouseError
# The config and trust-store half lives in tools.provision_config; its names stay importable from here.
from tools.provision_config import (  # noqa: F401
    DEFAULT_STATE_DIR, KEY_NAME, TRANSPORT_KEYS, ProvisionError, build_config, check_url, hash_console_pin,
    load_sensors, merged_trust, mqtt_section, read_existing, retire, transport_warning, update_trust, uplink_table,
    write_trust)

CSV_COLUMNS = ("gateway_id", "uplink", "mqtt", "ca_file", "sensors", "pin", "state_dir")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: ``--target`` values: the wheelhouse platforms pip builds for, and ``native`` (this machine, offline)
NATIVE = "native"
BUNDLE_TARGETS = tuple(wheelhouse_mod.TARGETS) + (NATIVE,)


# -- one gateway -------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Plan:
    """What provisioning one gateway will write, all of it checked, none of it written yet."""
    gateway_id: str
    gw_dir: str
    data: dict
    kept: tuple
    key: object           # keys.SigningKey
    key_is_new: bool      # write key.pem (a first key, or --rotate)
    old_kid: str | None

    @property
    def key_path(self):
        return os.path.join(self.gw_dir, KEY_NAME)

    @property
    def config_path(self):
        return os.path.join(self.gw_dir, "config.toml")


def plan_one(out_dir, gateway_id, rotate=False, **config_args):
    """Check everything about one gateway and decide what to write (``Plan``). Writes nothing."""
    if not gconfig.ID_RE.match(gateway_id or ""):
        raise ProvisionError("gateway id %r: use 1-64 letters, digits, '-', '_', '.' or ':'" % (gateway_id,))
    gw_dir = os.path.join(out_dir, gateway_id)
    existing = read_existing(os.path.join(gw_dir, "config.toml"))
    data, kept = build_config(gateway_id, existing=existing, **config_args)
    key_path = os.path.join(gw_dir, KEY_NAME)
    old_kid = None
    if os.path.exists(key_path):
        key, is_new = keys.load_private(key_path), False
        if rotate:
            old_kid, key, is_new = key.kid, keys.SigningKey.generate(), True
    else:
        key, is_new = keys.SigningKey.generate(), True
    return Plan(gateway_id, gw_dir, data, tuple(kept), key, is_new, old_kid)


def write_one(plan):
    """Write a checked ``Plan``: key (0600), config and enrollment, each atomically. Returns the record."""
    os.makedirs(plan.gw_dir, mode=0o700, exist_ok=True)
    if plan.key_is_new:
        keys.write_private(plan.key_path, plan.key, overwrite=plan.old_kid is not None)
    gconfig.write_atomic(plan.config_path, "# written by edge-gateway provision\n" + gconfig.to_toml(plan.data),
                         0o640)
    gconfig.load(plan.config_path)  # validate what is on disk, not what we meant to write
    key = plan.key
    record = {"gateway_id": plan.gateway_id, "kid": key.kid, "fingerprint": keys.fingerprint(key.public),
              "jwk": key.jwk(plan.gateway_id), "config": os.path.abspath(plan.config_path),
              "key": os.path.abspath(plan.key_path)}
    if plan.old_kid:
        record["rotated_from"] = plan.old_kid
    if plan.kept:
        record["kept"] = list(plan.kept)
    warning = transport_warning(plan.data)
    if warning:
        record["warnings"] = [warning]
    gconfig.write_atomic(os.path.join(plan.gw_dir, "enrollment.json"), json.dumps(record, indent=2) + "\n", 0o644)
    return record


def provision_one(out_dir, gateway_id, rotate=False, **config_args):
    """Key + config + enrollment for one gateway in ``out_dir/<id>``. Returns ``(record, new_jwk, old_kid)``."""
    plan = plan_one(out_dir, gateway_id, rotate=rotate, **config_args)
    return write_one(plan), plan.key.jwk(gateway_id), plan.old_kid


def read_csv(path):
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
            fields = rows and list(rows[0].keys())
    except OSError as exc:
        raise ProvisionError("cannot read %s: %s" % (path, exc.strerror)) from exc
    if not rows:
        raise ProvisionError("%s has no gateways (need a header row: gateway_id,uplink,...)" % path)
    unknown = [c for c in fields if c not in CSV_COLUMNS]
    if unknown or "gateway_id" not in fields:
        raise ProvisionError("%s: columns must be among %s (gateway_id required), got %s"
                             % (path, ", ".join(CSV_COLUMNS), ", ".join(fields)))
    base = os.path.dirname(os.path.abspath(path))
    out, seen = [], set()
    for line, row in enumerate(rows, start=2):
        row = {k: (v or "").strip() for k, v in row.items() if k}
        gid = row["gateway_id"]
        if gid in seen:
            raise ProvisionError("%s:%d: gateway %s appears twice" % (path, line, gid))
        seen.add(gid)
        if row.get("sensors") and not os.path.isabs(row["sensors"]):
            row["sensors"] = os.path.join(base, row["sensors"])
        out.append((line, row))
    return out


def provision_many(out_dir, rows, trust_path, rotate=False, emit=None):
    """Check every CSV row and the trust store, then write every gateway and the trust store once. Returns the
    enrollment records. A bad row refuses the whole file before anything is written."""
    plans = []
    for line, row in rows:
        try:
            plans.append(plan_one(
                out_dir, row["gateway_id"], rotate=rotate, uplink=row.get("uplink") or None,
                mqtt=row.get("mqtt") or None, ca_file=row.get("ca_file") or None, sensors=row.get("sensors") or None,
                pin=row.get("pin") or None, state_dir=row.get("state_dir") or None))
        except (ConfigError, ProvisionError, KeyFileError) as exc:
            raise ProvisionError("line %d (%s): %s" % (line, row.get("gateway_id"), exc)) from exc
    doc = merged_trust(trust_path, add=[p.key.jwk(p.gateway_id) for p in plans],
                       retire={p.old_kid for p in plans if p.old_kid})
    records = []
    for plan in plans:
        records.append(write_one(plan))
        if emit:
            emit(records[-1])
    write_trust(trust_path, doc)
    return records


# -- first-boot bundle -------------------------------------------------------------------------------------------
def check_bundle_inputs(wheelhouse=None, target="rpi-arm64", deploy_dir=None):
    """Everything ``build_bundle`` needs that can be checked before anything is written. Returns ``deploy_dir``."""
    deploy_dir = deploy_dir or os.path.join(REPO_ROOT, "deploy")
    if not os.path.isfile(os.path.join(deploy_dir, "install.sh")):
        raise ProvisionError("deploy scripts not found in %s (pass --deploy-dir)" % deploy_dir)
    if wheelhouse:
        if not os.path.isdir(wheelhouse):
            raise ProvisionError("--wheelhouse %s is not a directory" % wheelhouse)
        _check_wheels(wheelhouse)
    elif target not in BUNDLE_TARGETS:
        raise ProvisionError("--target %s: use one of %s" % (target, ", ".join(BUNDLE_TARGETS)))
    return deploy_dir


def _check_wheels(folder):
    wheels = [n for n in os.listdir(folder) if n.endswith(".whl")]
    for needed in ("edge_gateway-", "pip-"):
        if not any(n.startswith(needed) for n in wheels):
            raise ProvisionError("wheelhouse %s has no %s*.whl" % (folder, needed))


def fill_wheelhouse(dest, wheelhouse=None, target="rpi-arm64"):
    """Copy ``wheelhouse``, or build one for ``target`` (``native``: repack this environment, offline)."""
    if wheelhouse:
        shutil.copytree(wheelhouse, dest)
    elif target == NATIVE:
        wheelhouse_mod.from_environment(dest)
    else:
        wheelhouse_mod.build_for_target(dest, REPO_ROOT, target)
    _check_wheels(dest)


def start_bundle(bundle_dir, wheelhouse=None, target="rpi-arm64"):
    """A temporary directory beside ``bundle_dir`` with the wheelhouse in it: the step that may fail (pip, the
    network) runs before provisioning writes anything. ``finish_bundle`` completes it and moves it in place."""
    parent = os.path.dirname(os.path.abspath(bundle_dir))
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(prefix=".%s.tmp." % os.path.basename(os.path.abspath(bundle_dir)), dir=parent)
    try:
        fill_wheelhouse(os.path.join(work, "wheelhouse"), wheelhouse, target)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return work


def finish_bundle(work, bundle_dir, record, deploy_dir, trust_path=None):
    """Lay out the rest of what the installer copies onto the SD card's boot partition, then replace
    ``bundle_dir`` with it (an old bundle there is removed only once the new one is complete)."""
    try:
        shutil.copytree(deploy_dir, os.path.join(work, "deploy"), ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(os.path.join(deploy_dir, "firstboot", "firstboot.sh"), os.path.join(work, "firstboot.sh"))
        shutil.copy2(os.path.join(deploy_dir, "firstboot", "user-data.example"),
                     os.path.join(work, "user-data.example"))
        shutil.copy2(record["config"], os.path.join(work, "config.toml"))
        fd = os.open(os.path.join(work, KEY_NAME), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with open(record["key"], "rb") as src, os.fdopen(fd, "wb") as dst:
            dst.write(src.read())
        with open(os.path.join(work, "enrollment.json"), "w") as f:
            json.dump(record, f, indent=2)
        if trust_path and os.path.exists(trust_path):
            shutil.copy2(trust_path, os.path.join(work, "jwks.json"))
        _write_sums(work)
        old = None
        if os.path.lexists(bundle_dir):
            old = work + ".old"
            os.rename(bundle_dir, old)
        os.rename(work, bundle_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    if old:
        shutil.rmtree(old, ignore_errors=True)
    return bundle_dir


def build_bundle(bundle_dir, record, wheelhouse=None, target="rpi-arm64", deploy_dir=None, trust_path=None):
    """The first-boot bundle for an already provisioned gateway (``record``), in one go."""
    deploy_dir = check_bundle_inputs(wheelhouse, target, deploy_dir)
    work = start_bundle(bundle_dir, wheelhouse, target)
    return finish_bundle(work, bundle_dir, record, deploy_dir, trust_path)


def _write_sums(bundle_dir):
    import hashlib
    lines = []
    for folder, dirs, names in os.walk(bundle_dir):
        dirs.sort()
        for n in sorted(names):
            full = os.path.join(folder, n)
            rel = os.path.relpath(full, bundle_dir)
            if rel == "SHA256SUMS" or not stat.S_ISREG(os.lstat(full).st_mode):
                continue
            with open(full, "rb") as f:
                lines.append("%s  %s\n" % (hashlib.sha256(f.read()).hexdigest(), rel))
    with open(os.path.join(bundle_dir, "SHA256SUMS"), "w") as f:
        f.writelines(lines)


# -- CLI ---------------------------------------------------------------------------------------------------------
def register(subparsers):
    p = subparsers.add_parser(
        "provision", help="create a gateway's key, config and trust-store entry (and its first-boot bundle)",
        description="Identity, key, config and trust store for one gateway or a fleet, and the first-boot bundle "
        "of an SD card. Re-running keeps the existing key and whatever the options do not change "
        "(docs/operations.md, Installer's guide).")
    p.add_argument("--gateway-id", metavar="ID", help="the gateway to provision (1-64 letters, digits, '-', '_', "
                   "'.', ':'); its files go to OUT/ID/")
    p.add_argument("--uplink", metavar="URL", help="HTTP(S) receiver URL, e.g. https://ingest.example/v1/batches "
                   "(or dir:///PATH); kept from an existing config if not given")
    p.add_argument("--mqtt", metavar="URL", help="mqtt://HOST:PORT/PREFIX (or mqtts://): use the MQTT uplink")
    p.add_argument("--ca-file", metavar="FILE", help="CA bundle the gateway trusts for the uplink's TLS")
    p.add_argument("--sensors", metavar="FILE.toml", help="[[sources]]/[[rules]] tables to put in the config "
                   "(replacing both; see deploy/sensors.example.toml); kept from an existing config if not given")
    p.add_argument("--state-dir", metavar="DIR", help="gateway.state_dir (default %s)" % DEFAULT_STATE_DIR)
    p.add_argument("--pin", metavar="PIN", help="technician console PIN, 6+ characters (stored hashed); kept from "
                   "an existing config if not given")
    p.add_argument("--csv", metavar="FILE", help="bulk: one gateway per row (gateway_id,uplink,mqtt,...)")
    p.add_argument("--out", metavar="DIR", default="provisioned", help="output directory (default ./provisioned)")
    p.add_argument("--trust", metavar="JWKS", help="backend trust store to update (default OUT/jwks.json)")
    p.add_argument("--rotate", action="store_true", help="replace an existing key (old kid kept, retired-pending)")
    p.add_argument("--retire", metavar="KID", help="remove a rotated (retired-pending) kid from the trust store")
    p.add_argument("--bundle", metavar="DIR", help="also build the Raspberry Pi first-boot bundle in DIR")
    p.add_argument("--wheelhouse", metavar="DIR", help="reuse these wheels instead of building the wheelhouse")
    p.add_argument("--target", default="rpi-arm64", choices=BUNDLE_TARGETS,
                   help="wheelhouse platform when building: %s (default rpi-arm64; 'native' repacks this machine's "
                   "environment, offline, to try install.sh --root here)" % ", ".join(BUNDLE_TARGETS))
    p.add_argument("--deploy-dir", metavar="DIR", help="deploy/ scripts to bundle (default: this checkout's)")
    p.set_defaults(func=cmd_provision)
    return p


def cmd_provision(args, out=None):
    out = out or sys.stdout
    trust = args.trust or os.path.join(args.out, "jwks.json")

    def emit(record):
        for warning in record.get("warnings", ()):
            print("edge-gateway provision: WARNING: %s: %s" % (record.get("gateway_id"), warning), file=sys.stderr)
        if record.get("kept"):
            print("edge-gateway provision: %s: kept from the existing config.toml: %s" % (
                record.get("gateway_id"), ", ".join(record["kept"])), file=sys.stderr)
        out.write(redact_text(json.dumps(record, sort_keys=True)) + "\n")
        out.flush()

    try:
        if args.retire:
            jwk = retire(trust, args.retire)
            emit({"retired": args.retire, "gateway_id": jwk.get("gw"), "trust": os.path.abspath(trust)})
            return 0
        if args.csv:
            if args.gateway_id or args.bundle:
                raise ProvisionError("--csv cannot be combined with --gateway-id or --bundle")
            provision_many(args.out, read_csv(args.csv), trust, rotate=args.rotate, emit=emit)
            return 0
        if not args.gateway_id:
            raise ProvisionError("give --gateway-id ID (or --csv FILE, or --retire KID)")
        # Check everything first, then build the wheelhouse (slow, may fail), then write: a refusal changes nothing.
        plan = plan_one(args.out, args.gateway_id, rotate=args.rotate, uplink=args.uplink, mqtt=args.mqtt,
                        ca_file=args.ca_file, sensors=args.sensors, pin=args.pin, state_dir=args.state_dir)
        doc = merged_trust(trust, add=[plan.key.jwk(plan.gateway_id)], retire={plan.old_kid} if plan.old_kid else ())
        work = None
        if args.bundle:
            deploy_dir = check_bundle_inputs(args.wheelhouse, args.target, args.deploy_dir)
            work = start_bundle(args.bundle, args.wheelhouse, args.target)
        try:
            record = write_one(plan)
            write_trust(trust, doc)
        except BaseException:
            if work:
                shutil.rmtree(work, ignore_errors=True)
            raise
        if work:
            finish_bundle(work, args.bundle, record, deploy_dir, trust_path=trust)
            record["bundle"] = os.path.abspath(args.bundle)
        emit(record)
        return 0
    except (ProvisionError, ConfigError, KeyFileError, WheelhouseError) as exc:
        print("edge-gateway provision: %s" % redact_text(str(exc)), file=sys.stderr)
        return 2
    except OSError as exc:
        print("edge-gateway provision: %s: %s" % (exc.filename or "", exc.strerror or exc), file=sys.stderr)
        return 2
