"""Uplinks deliver signed batches. The contract is ``base.Uplink``; this is the registry, the one table that names
the kinds. Every consumer (config, the daemon, doctor, the console, demo, provision) goes through it.

A row is ``kind: (module, class)``; the class says which URL schemes it takes (``Uplink.schemes``). Modules are
imported when a kind is used, so loading a config does not import paho-mqtt.
"""

import importlib

from gateway.adapters.uplink.base import FAIL, OK, WARN, Probe, SectionError, Uplink

__all__ = ["UPLINKS", "FAIL", "OK", "WARN", "Probe", "SectionError", "Uplink", "build_uplink", "uplink_class",
           "uplink_class_for_url", "uplink_from_url"]

UPLINKS = {
    "http": ("gateway.adapters.uplink.http", "HttpUplink"),
    "mqtt": ("gateway.adapters.uplink.mqtt", "MqttUplink"),
    "directory": ("gateway.adapters.uplink.directory", "DirectoryUplink"),
}


def uplink_class(kind):
    """The ``Uplink`` subclass registered for ``kind``; ``SectionError`` for an unknown kind."""
    try:
        module, name = UPLINKS[kind]
    except (KeyError, TypeError):
        raise SectionError("must be one of %s, got %r" % (", ".join(UPLINKS), kind), "uplink.kind") from None
    return getattr(importlib.import_module(module), name)


def build_uplink(section):
    """The uplink the typed ``[uplink]`` section names (``section.kind``)."""
    return uplink_class(section.kind).from_section(section)


def uplink_class_for_url(url):
    """The ``Uplink`` subclass that takes ``url``'s scheme (``http://``, ``mqtts://``, ...); ``ValueError``."""
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    for kind in UPLINKS:
        cls = uplink_class(kind)
        if scheme in cls.schemes:
            return cls
    schemes = sorted(s for kind in UPLINKS for s in uplink_class(kind).schemes)
    raise ValueError("uplink URL must start with one of %s" % ", ".join(s + "://" for s in schemes))


def uplink_from_url(url, timeout=10.0, retry_max_s=None):
    """The uplink ``url`` names, built by the class that takes its scheme."""
    return uplink_class_for_url(url).from_url(url, timeout=timeout, retry_max_s=retry_max_s)

