"""``edge-gateway provision``, its config and trust-store half: the ``config.toml`` of one gateway (built from the
options and an existing config, validated) and the backend's trust store (a JWK Set: add, rotate, retire).

No CLI and no writing of a gateway's files here: ``tools.provision`` plans, writes and bundles, and re-exports
these names.
"""

import copy
import datetime
import os
import tomllib
import urllib.parse

from gateway.app import config as gconfig
from gateway.adapters import keys
from gateway.core.errors import ConfigError, KeyFileError
from gateway.adapters.uplink import WARN, uplink_class, uplink_class_for_url
from gateway.core.redact import redact_url

DEFAULT_STATE_DIR = "/var/lib/edge-gateway"
KEY_NAME = "key.pem"
#: ``[uplink]`` keys that describe the transport: ``--uplink``/``--mqtt`` replace them, other keys are kept
TRANSPORT_KEYS = ("kind", "url", "ca_file", "mqtt")


class ProvisionError(Exception):
    """Bad provisioning input (a CSV row, an option). The message says which and how to fix it."""


# -- config ------------------------------------------------------------------------------------------------------
def mqtt_section(url):
    """``mqtt://host:port/prefix`` or ``mqtts://...`` -> the ``[uplink.mqtt]`` table (the MQTT uplink's parser)."""
    try:
        return uplink_class("mqtt").config_from_url(url)["mqtt"]
    except ValueError:
        raise ProvisionError("--mqtt must look like mqtt://HOST:PORT/PREFIX or mqtts://..., got %r"
                             % redact_url(url)) from None


def uplink_table(uplink=None, mqtt=None, ca_file=None):
    """The ``[uplink]`` table for ``--uplink URL`` (its scheme picks the uplink) and ``--mqtt URL``."""
    if mqtt:
        mqtt_section(mqtt)  # the flag's own error message
        up = uplink_class("mqtt").config_from_url(mqtt, ca_file)
        if uplink:
            up["url"] = uplink
        return up
    try:
        cls = uplink_class_for_url(uplink)
    except ValueError:
        cls = uplink_class("http")  # as before the registry: the config check names the bad uplink.url
    return cls.config_from_url(uplink, ca_file)


def load_sensors(path):
    """A TOML file with ``[[sources]]`` (and optionally ``[[rules]]``) tables, merged into the config."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError("cannot read: %s" % exc.strerror, path) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("not valid TOML: %s" % exc, path) from exc
    unknown = set(data) - {"sources", "rules"}
    if unknown:
        raise ConfigError("only [[sources]] and [[rules]] belong in a sensors file", path, sorted(unknown)[0])
    return data


def hash_console_pin(pin):
    """The console helper's ``hash_pin``, imported lazily (the console may not be part of this build)."""
    try:
        from gateway.app.console.auth import hash_pin
    except ImportError as exc:
        raise ProvisionError("--pin needs gateway.app.console.auth.hash_pin, which this build lacks (%s)" % exc) \
            from None
    try:
        return hash_pin(pin)
    except ValueError as exc:
        raise ProvisionError("--pin refused: %s" % exc) from None


def check_url(flag, url):
    """Refuse a URL the uplink could never use (no host, a port outside 1-65535), naming the flag."""
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
    except ValueError:  # not a number, or beyond 65535
        port = -1
    if port is not None and not 1 <= port <= 65535:
        raise ProvisionError("%s %s: the port must be a number from 1 to 65535" % (flag, redact_url(url)))
    if parts.scheme.lower() in ("http", "https", "mqtt", "mqtts") and not parts.hostname:
        raise ProvisionError("%s %s: no host in the URL (e.g. https://ingest.example.net/v1/batches)"
                             % (flag, redact_url(url)))


def read_existing(path):
    """The raw tables of an existing ``config.toml`` (None if there is none). An existing config that does not
    load is refused (``ConfigError`` naming the file and key): provisioning over it would hide the problem."""
    if not os.path.exists(path):
        return None
    try:
        with open(path, "rb") as f:
            data = tomllib.loads(f.read().decode("utf-8"))
    except OSError as exc:
        raise ConfigError("cannot read: %s" % exc.strerror, path) from exc
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError("not valid TOML: %s" % exc, path) from exc
    gconfig.from_dict(data, path)
    return data


def build_config(gateway_id, uplink=None, mqtt=None, ca_file=None, sensors=None, pin=None, state_dir=None,
                 existing=None):
    """``(config dict, kept)``: the config as a plain dict (what ``to_toml`` writes), validated by
    ``config.from_dict``, and the names of what was kept from ``existing`` (the config already there)."""
    if uplink:
        check_url("--uplink", uplink)
    if mqtt:
        check_url("--mqtt", mqtt)
    if not uplink and not mqtt:
        if ca_file:
            raise ProvisionError("gateway %s: --ca-file goes with --uplink URL or --mqtt URL" % gateway_id)
        if not existing:
            raise ProvisionError("gateway %s: give --uplink URL or --mqtt URL" % gateway_id)
    data = copy.deepcopy(existing) if existing else {}
    kept = []
    gw = data.setdefault("gateway", {})
    gw["id"] = gateway_id
    if state_dir or "state_dir" not in gw:
        gw["state_dir"] = state_dir or DEFAULT_STATE_DIR
    gw.setdefault("key", KEY_NAME)
    if ca_file:
        ca_file = os.path.abspath(ca_file) if os.path.exists(ca_file) else ca_file
    if uplink or mqtt:
        table = uplink_table(uplink, mqtt, ca_file)
        for k, v in data.get("uplink", {}).items():  # tuning (timeouts, backoff, ...) survives a new URL
            if k not in TRANSPORT_KEYS and k not in table:
                table[k] = v
        data["uplink"] = table
    elif existing and "uplink" in existing:
        kept.append("[uplink]")
    if pin:
        data.setdefault("console", {})["pin_hash"] = hash_console_pin(pin)
    elif data.get("console", {}).get("pin_hash"):
        kept.append("console.pin_hash")
    if sensors:
        extra = load_sensors(sensors)  # the sensors file is the whole sensor set: sources and rules together
        for name in ("sources", "rules"):
            data.pop(name, None)
            if extra.get(name):
                data[name] = extra[name]
    else:
        kept += ["[[%s]] (%d)" % (name, len(data[name])) for name in ("sources", "rules") if data.get(name)]
    gconfig.from_dict(data, "<provision %s>" % gateway_id)
    return data, kept


def transport_warning(data):
    """The plain-text warning for a built config (the uplink's ``transport`` check, as doctor runs it), or None."""
    section = gconfig.from_dict(data, "<provision>").uplink
    found = uplink_class(section.kind).transport(section)
    return found.message if found.status == WARN else None


# -- trust store -------------------------------------------------------------------------------------------------
def update_trust(path, add=(), retire=(), remove=(), today=None):
    """One atomic rewrite of the JWK Set: add/replace JWKs, mark kids retired-pending, remove kids."""
    doc = merged_trust(path, add, retire, remove, today)
    write_trust(path, doc)
    return doc


def merged_trust(path, add=(), retire=(), remove=(), today=None):
    """The JWK Set ``update_trust`` would write, checked (``ProvisionError``) but not written."""
    doc = keys.read_jwks(path)
    today = today or datetime.date.today().isoformat()
    new_kids = {j["kid"] for j in add}
    bound = {j.get("kid"): j.get("gw") for j in doc["keys"] if isinstance(j, dict)}
    for jwk in add:  # a kid serves one gateway: replacing it under another gw would move the right to write as it
        if jwk["kid"] in bound and bound[jwk["kid"]] != jwk.get("gw"):
            raise ProvisionError("%s: kid %s is bound to gateway %r; refusing to rebind it to %r"
                                 % (path, jwk["kid"], bound[jwk["kid"]], jwk.get("gw")))
    kept = []
    for jwk in doc["keys"]:
        kid = jwk.get("kid")
        if kid in new_kids or kid in remove:
            continue
        if kid in retire and jwk.get("status") != "retired-pending":
            jwk = dict(jwk, status="retired-pending", retired_at=today)
        kept.append(jwk)
    doc["keys"] = kept + list(add)
    try:
        keys.TrustStore(doc, source="trust store %s" % path)  # what we write must load on every receiver
    except KeyFileError as exc:
        raise ProvisionError(str(exc)) from exc
    return doc


def write_trust(path, doc):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    keys.write_jwks(path, doc)


def retire(trust_path, kid):
    doc = keys.read_jwks(trust_path)
    match = [j for j in doc["keys"] if j.get("kid") == kid]
    if not match:
        raise ProvisionError("kid %s is not in %s" % (kid, trust_path))
    if match[0].get("status") != "retired-pending":
        raise ProvisionError("kid %s is a current key (gateway %s), not a rotated one; refusing to remove it"
                             % (kid, match[0].get("gw")))
    update_trust(trust_path, remove={kid})
    return match[0]
