"""Uplinks deliver signed batches. Each raises ``UplinkError(retryable=...)`` and nothing else on failure."""

import abc


class Uplink(abc.ABC):
    """connect/send/close, as in Telegraf outputs. ``send`` blocks; the agent runs it in a worker thread."""

    name = "uplink"

    @abc.abstractmethod
    def send(self, batch):
        """Deliver one ``EncodedBatch``. Returns when the upstream acknowledged it; raises ``UplinkError``."""

    def close(self):
        """Release connections. Safe to call twice."""

    def describe(self):
        return self.name


def make_uplink(config):
    """Build the uplink named by ``config.kind`` (``http`` or ``mqtt``)."""
    if config.kind == "http":
        from gateway.adapters.uplink.http import HttpUplink
        return HttpUplink(config.url, ca_file=config.ca_file or None, timeout=config.timeout_s)
    if config.kind == "mqtt":
        from gateway.adapters.uplink.mqtt import MqttUplink
        return MqttUplink.from_config(config)
    raise ValueError("unknown uplink kind %r" % (config.kind,))
