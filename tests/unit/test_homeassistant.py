"""Home Assistant MQTT discovery, the pure part (gateway/core/homeassistant.py), the [homeassistant] config and the
publisher's drop counting while its broker is down (no socket is opened: it never connected)."""

import json

import pytest

from gateway.app.config import loads
from gateway.app.homeassistant import HomeAssistantTap, build_publisher
from gateway.core.errors import ConfigError
from gateway.core.homeassistant import Discovery, topic_id
from gateway.core.model import Event, Reading
from gateway.core.rules import RuleEngine

D = Discovery("gw-1", version="0.1.0")


@pytest.mark.parametrize("unit,value,component,device_class,ha_unit,diagnostic", [
    ("Cel", 21.5, "sensor", "temperature", "°C", False),
    ("%RH", 45.0, "sensor", "humidity", "%", False),
    ("%EL", 90, "sensor", "battery", "%", True),
    ("dBm", -70, "sensor", "signal_strength", "dBm", True),
    ("Pa", 101325.0, "sensor", "pressure", "Pa", False),
    ("hPa", 1013.2, "sensor", "pressure", "hPa", False),
    ("V", 3.1, "sensor", "voltage", "V", False),
    ("Wh", 1234567, "sensor", "energy", "Wh", False),
    ("furlong", 3, "sensor", None, "furlong", False),
    (None, True, "binary_sensor", None, None, False),
])
def test_units_map_to_device_classes(unit, value, component, device_class, ha_unit, diagnostic):
    topic, config, state_topic, state = D.reading("tag-1", "x", value, unit)
    assert topic == "homeassistant/%s/gw-1/tag-1_x/config" % component
    assert config.get("device_class") == device_class and config.get("unit_of_measurement") == ha_unit
    assert (config.get("entity_category") == "diagnostic") == diagnostic
    assert config["unique_id"] == "edge-gateway_gw-1_tag-1_x" and state_topic == "edge-gateway/gw-1/tag-1/x"
    assert config["device"] == {"identifiers": ["edge-gateway_gw-1_tag-1"], "name": "tag-1",
                                "via_device": "edge-gateway_gw-1"}
    assert config["availability_topic"] == "edge-gateway/gw-1/availability"
    assert state == ("ON" if value is True else json.dumps(value))
    if unit == "Wh":
        assert config["state_class"] == "total_increasing"
    json.loads(D.encode(config))


def test_rssi_by_name_events_and_the_gateway_itself():
    assert D.reading("AA:BB:CC:DD:EE:FF", "rssi", -80, None)[1]["device_class"] == "signal_strength"
    assert topic_id("AA:BB:CC:DD:EE:FF_rssi") == "AA_BB_CC_DD_EE_FF_rssi"
    topic, config, state_topic, state = D.event("fridge-1", "alarm.high", "raised", "temp 9.1 > 8")
    assert topic == "homeassistant/binary_sensor/gw-1/fridge-1_alarm_high/config"
    assert (config["device_class"], state, state_topic) == ("problem", "ON", "edge-gateway/gw-1/fridge-1/alarm.high")
    assert D.event("tag", "battery_low", "cleared", "ok")[3] == "OFF"
    assert D.event("tag", "battery_low", "raised", "low")[1]["entity_category"] == "diagnostic"
    topic, config, _, state = D.event("lab", "presence", "info", "a beacon entered; 2 present")
    assert topic.startswith("homeassistant/event/") and config["event_types"] == ["info"]
    assert json.loads(state) == {"event_type": "info", "reason": "a beacon entered; 2 present"}
    topic, config, _, _ = D.reading(None, "queue_batches", 3, None)
    assert config["device"]["identifiers"] == ["edge-gateway_gw-1"] and config["device"]["sw_version"] == "0.1.0"
    assert config["entity_category"] == "diagnostic"
    assert D.reading(None, "uplink", True, None)[1]["device_class"] == "connectivity"
    assert D.reading("s", "blob", b"\x00", None)[1] is None  # Home Assistant cannot show bytes


class Sink:
    def __init__(self):
        self.readings, self.events = [], []

    def submit(self, readings=(), events=()):
        self.readings += readings
        self.events += events


def test_tap_hands_on_what_the_rules_forward_and_changes_nothing():
    sink = Sink()
    engine = RuleEngine([{"match": {"name": "temp"}, "high": 8.0, "deadband": 0.5}], event_factory=Event)
    tap = HomeAssistantTap(engine, sink)
    for t, v in enumerate([4.0, 4.1, 4.2, 9.0]):
        tap.process(Reading("f1", "temp", v, "Cel", float(t)))
    assert [r.value for r in sink.readings] == [4.0, 9.0]  # the deadband held 4.1 and 4.2 back, for both
    assert [(e.name, e.state) for e in sink.events] == [("alarm.high", "raised")]
    plain = HomeAssistantTap(None, Sink())
    assert plain.process(Reading("s", "x", 1, None, 0.0)).send[0].value == 1 and not plain.tick(1.0)


CONF = """
[gateway]
id = "gw-1"
[homeassistant]
enabled = true
%s
"""


def test_publisher_counts_what_it_drops_while_the_broker_is_down():
    cfg = loads(CONF % 'broker = "mqtt://127.0.0.1:1"', "gw.toml")
    publisher = build_publisher(cfg)  # not started: never connected
    publisher.submit([Reading("s", "temp", 1.0, "Cel", 0.0)] * 3, [Event("s", "alarm.high", "raised", "x")])
    assert publisher.counters["dropped_offline"] == 4 and publisher.counters["published"] == 0
    assert build_publisher(loads(CONF.replace("true", "false") % "", "gw.toml")) is None
    assert loads("[gateway]\nid = \"g\"\n").homeassistant is None


@pytest.mark.parametrize("line,key", [
    ('broker = "http://x"', "homeassistant.broker"),
    ('discovery_prefix = "home/#"', "homeassistant.discovery_prefix"),
    ("queue = 0", "homeassistant.queue"),
    ("enable = true", "homeassistant.enable"),
])
def test_homeassistant_config_errors_name_the_key(line, key):
    with pytest.raises(ConfigError) as exc:
        loads(CONF % line, "gw.toml")
    assert exc.value.key == key and "gw.toml" in str(exc.value)
