"""Wiring of the optional Home Assistant publisher (``[homeassistant]``, off by default).

``HomeAssistantTap`` wraps the pipeline's rules stage (the rules engine, presence, or nothing): it hands what the
stage forwards (readings, heartbeats, events: alarms, presence, battery low) to the publisher and returns the
result unchanged. So Home Assistant sees what the signed uplink carries, after the rules and the presence privacy
mode, never a beacon's raw RSSI; and the publisher only queues (``HomeAssistantPublisher.submit``), so the
pipeline never waits for the local broker. ``report_gateway`` publishes the gateway's own entities (queue depth,
uplink up, the publisher's drops) every ``status_s``.
"""

import asyncio
import logging

from gateway.core.rules import Result

log = logging.getLogger(__name__)


class HomeAssistantTap:
    def __init__(self, rules, publisher):
        self.rules = rules
        self.publisher = publisher

    def _seen(self, result):
        if result:
            self.publisher.submit(tuple(result.send) + tuple(result.heartbeat), result.events)
        return result

    def process(self, reading):
        if self.rules is None:
            return self._seen(Result((reading,)))
        return self._seen(self.rules.process(reading))

    def tick(self, now):
        if self.rules is None:
            return Result()
        return self._seen(self.rules.tick(now))

    def flush(self):
        if self.rules is None:
            return Result()
        return self._seen(self.rules.flush())


def build_publisher(cfg):
    """The publisher of ``cfg.homeassistant`` (not started), or None when it is off."""
    section = cfg.homeassistant
    if section is None or not section.enabled:
        return None
    import gateway
    from gateway.adapters.homeassistant_mqtt import HomeAssistantPublisher
    from gateway.adapters.uplink.mqtt import parse_url
    from gateway.core.homeassistant import Discovery
    broker = parse_url(section.broker)
    discovery = Discovery(cfg.gateway.id, section.discovery_prefix, section.base_topic, gateway.__version__)
    return HomeAssistantPublisher(discovery, broker["host"], broker["port"], broker["username"], broker["password"],
                                  broker["tls"], section.ca_file or None, section.client_id, section.keepalive_s,
                                  section.queue)


async def report_gateway(agent, publisher, interval):
    """The gateway's own entities, every ``interval`` seconds of the agent's clock, until cancelled."""
    while True:
        status = agent.status()
        values = {"queue_batches": status["queue_batches"], "uplink": status["uplink_state"] in ("up", "idle"),
                  "homeassistant_dropped": publisher.counters["dropped_offline"] + publisher.counters["dropped_full"]}
        publisher.submit_gateway(values)
        await agent.clock.sleep(interval)
