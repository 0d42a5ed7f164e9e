"""Home Assistant MQTT discovery, the pure part: which entity a reading or an event becomes, its discovery payload
and its state. No IO (the publisher is ``gateway/adapters/homeassistant_mqtt.py``).

Home Assistant's MQTT discovery: a retained JSON config on ``<prefix>/<component>/<node_id>/<object_id>/config``
creates an entity; ``unique_id`` plus a ``device`` (``identifiers``) put it in the device registry. Here:

* every sensor (a BLE tag, a Modbus slave, a serial board) is a device named by its sensor id, ``via_device`` the
  gateway, and the gateway is a device of its own (``Edge gateway <gw>``);
* ``node_id`` is the gateway id and ``object_id`` is ``<sensor>_<quantity>`` (both reduced to ``[A-Za-z0-9_-]``);
* a reading is a ``sensor`` (a number, with the device class and unit ``UNITS`` maps from its SenML unit) or a
  ``binary_sensor`` (a true/false reading: a coil, a door); battery and signal are ``entity_category:
  diagnostic``;
* an event that is raised and cleared (an alarm, ``battery_low``, ``silent``, a presence zone) is a
  ``binary_sensor`` (``ON`` while raised); a one-off (``info``) event is an ``event`` entity;
* each entity's state is ``<base>/<gw>/<sensor>/<quantity>`` and every entity is available while
  ``<base>/<gw>/availability`` says ``online`` (the gateway's last will says ``offline``).
"""

import json
import re

#: SenML unit -> (device_class, Home Assistant's unit of measurement, diagnostic)
UNITS = {
    "Cel": ("temperature", "°C", False),
    "%RH": ("humidity", "%", False),
    "%EL": ("battery", "%", True),
    "dBm": ("signal_strength", "dBm", True),
    "dBW": ("signal_strength", "dBm", True),
    "Pa": ("pressure", "Pa", False),
    "hPa": ("pressure", "hPa", False),
    "kPa": ("pressure", "kPa", False),
    "V": ("voltage", "V", False),
    "A": ("current", "A", False),
    "W": ("power", "W", False),
    "Wh": ("energy", "Wh", False),
    "kWh": ("energy", "kWh", False),
    "Hz": ("frequency", "Hz", False),
    "lx": ("illuminance", "lx", False),
    "ppm": (None, "ppm", False),
    "m": ("distance", "m", False),
    "m/s": ("speed", "m/s", False),
    "%": (None, "%", False),
    "lat": (None, "°", False),
    "lon": (None, "°", False),
    "s": ("duration", "s", False),
    "kg": ("weight", "kg", False),
}
#: quantity names whose true/false reading has a binary_sensor device class
BINARY_CLASSES = {"occupancy": "occupancy", "motion": "motion", "presence": "presence", "door": "door",
                  "window": "window", "smoke": "smoke", "moisture": "moisture", "opening": "opening",
                  "uplink": "connectivity"}
#: event name (its prefix before the first dot) -> binary_sensor device class
EVENT_CLASSES = {"alarm": "problem", "battery_low": "battery", "silent": "problem", "weak_signal": "problem",
                 "presence": "occupancy"}
ENERGY_CLASSES = ("energy",)  # counters that only grow: state_class total_increasing
ONLINE, OFFLINE = "online", "offline"
ORIGIN = {"name": "edge-gateway"}
_BAD = re.compile(r"[^A-Za-z0-9_-]")


def topic_id(text):
    """A discovery topic level: letters, digits, ``_`` and ``-`` only."""
    return _BAD.sub("_", text) or "_"


class Discovery:
    """The topics and payloads of one gateway. ``prefix``: the discovery prefix (``homeassistant``); ``base``: the
    base of the state and availability topics."""

    def __init__(self, gw, prefix="homeassistant", base="edge-gateway", version="", model="edge-gateway"):
        self.gw = gw
        self.node = topic_id(gw)
        self.prefix = prefix.strip("/")
        self.base = "%s/%s" % (base.strip("/"), gw)
        self.availability = self.base + "/availability"
        self.gateway_id = "edge-gateway_%s" % self.node
        self.gateway_device = {"identifiers": [self.gateway_id], "name": "Edge gateway %s" % gw,
                               "manufacturer": "edge-gateway", "model": model, "sw_version": version}

    # -- topics ----------------------------------------------------------------------------------------------
    def config_topic(self, component, object_id):
        return "%s/%s/%s/%s/config" % (self.prefix, component, self.node, object_id)

    def state_topic(self, sensor, name):
        return "%s/%s/%s" % (self.base, sensor.replace("/", "_"), name.replace("/", "_"))

    # -- entities --------------------------------------------------------------------------------------------
    def _device(self, sensor):
        if sensor is None:
            return self.gateway_device
        return {"identifiers": ["%s_%s" % (self.gateway_id, topic_id(sensor))], "name": sensor,
                "via_device": self.gateway_id}

    def _common(self, sensor, name, object_id, state_topic):
        return {"name": name, "unique_id": "%s_%s" % (self.gateway_id, object_id), "state_topic": state_topic, "availability_topic": self.availability,
                "payload_available": ONLINE, "payload_not_available": OFFLINE, "device": self._device(sensor),
                "origin": ORIGIN}

    def reading(self, sensor, name, value, unit):
        """``(config_topic, config, state_topic, state)`` for one reading; config None for a value Home Assistant
        cannot show (bytes). ``sensor`` None is the gateway itself."""
        object_id = topic_id("%s_%s" % (sensor or "gateway", name))
        state_topic = self.state_topic(sensor or "gateway", name)
        config = self._common(sensor, name, object_id, state_topic)
        if isinstance(value, bool):
            component = "binary_sensor"
            config.update(payload_on="ON", payload_off="OFF")
            if name in BINARY_CLASSES:
                config["device_class"] = BINARY_CLASSES[name]
            state = "ON" if value else "OFF"
            if sensor is None:
                config["entity_category"] = "diagnostic"
        elif isinstance(value, (int, float)):
            component = "sensor"
            device_class, ha_unit, diagnostic = UNITS.get(unit, (None, unit, False))
            if name == "rssi":
                device_class, ha_unit, diagnostic = UNITS["dBm"]
            if device_class:
                config["device_class"] = device_class
            if ha_unit:
                config["unit_of_measurement"] = ha_unit
            config["state_class"] = "total_increasing" if device_class in ENERGY_CLASSES else "measurement"
            if diagnostic or sensor is None:
                config["entity_category"] = "diagnostic"
            state = json.dumps(value)
        elif isinstance(value, str):
            component = "sensor"
            state = value
        else:
            return None, None, state_topic, None
        return self.config_topic(component, object_id), config, state_topic, state

    def event(self, sensor, name, state, reason):
        """``(config_topic, config, state_topic, state)`` for one event: raised/cleared -> a binary_sensor,
        ``info`` -> an ``event`` entity whose state is ``{"event_type": "info", "reason": ...}``."""
        object_id = topic_id("%s_%s" % (sensor, name))
        state_topic = self.state_topic(sensor, name)
        config = self._common(sensor, name, object_id, state_topic)
        if state in ("raised", "cleared"):
            config.update(payload_on="ON", payload_off="OFF", device_class=EVENT_CLASSES.get(
                name.split(".", 1)[0], "problem"))
            if name in ("battery_low", "silent", "weak_signal"):
                config["entity_category"] = "diagnostic"
            return (self.config_topic("binary_sensor", object_id), config, state_topic,
                    "ON" if state == "raised" else "OFF")
        config["event_types"] = [state]
        return (self.config_topic("event", object_id), config, state_topic,
                json.dumps({"event_type": state, "reason": reason}))

    @staticmethod
    def encode(config):
        return json.dumps(config, separators=(",", ":"), ensure_ascii=False)
