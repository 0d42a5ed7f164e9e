"""Config: typed, validated at start-up, errors name the file and the key."""

import pytest

from gateway import config
from gateway.errors import ConfigError


def write(tmp_path, text):
    path = tmp_path / "config.toml"
    path.write_text(text)
    return str(path)


def test_full_config_loads_typed(tmp_path):
    cfg = config.load(write(tmp_path, """
[gateway]
id = "gw-07"
state_dir = "/var/lib/eg"
[store]
max_bytes = 1000000
[batch]
max_age_s = 5
[uplink]
url = "https://backend.example/v1/batches"
[[sources]]
type = "serial"
port = "/dev/ttyUSB0"
[[rules]]
match = {sensor = "*", name = "temp"}
high = 8.0
"""))
    assert cfg.gateway.id == "gw-07" and cfg.store.max_bytes == 1000000
    assert cfg.batch.max_age_s == 5.0 and isinstance(cfg.batch.max_age_s, float)
    assert cfg.sources[0]["port"] == "/dev/ttyUSB0" and cfg.rules[0]["high"] == 8.0
    assert cfg.state_path("queue.sqlite") == "/var/lib/eg/queue.sqlite"


@pytest.mark.parametrize("text,key,words", [
    ("[store]\nmax_bytes = \"lots\"", "store.max_bytes", "must be an integer"),
    ("[store]\nmax_bytes = -5", "store.max_bytes", "must be positive"),
    ("[store]\nmax_byte = 5", "store.max_byte", "unknown key"),
    ("[uplink]\nkind = \"carrier-pigeon\"", "uplink.kind", "must be one of"),
    ("[uplink]\nurl = \"ftp://x\"", "uplink.url", "http:// or https://"),
    ("[gateway]\nid = \"has space\"", "gateway.id", "letters, digits"),
    ("[[sources]]\ntype = \"zigbee\"", "sources[0].type", "must be one of"),
    ("[batch]\nmax_readings = true", "batch.max_readings", "must be an integer"),
    ("[uplink.mqtt]\nport = \"x\"", "uplink.mqtt.port", "must be an integer"),
    ("gateway = 3", "gateway", "must be a table"),
])
def test_errors_name_file_and_key(tmp_path, text, key, words):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        config.load(path)
    assert err.value.key == key and err.value.file == path
    assert str(err.value).startswith("%s: %s: " % (path, key)) and words in str(err.value)


def test_bad_toml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(write(tmp_path, "[gateway\nid="))
    with pytest.raises(ConfigError, match="file not found"):
        config.load(str(tmp_path / "absent.toml"))


def test_to_toml_round_trips(tmp_path):
    data = {"gateway": {"id": "gw-1", "state_dir": "/tmp/x"}, "uplink": {"url": "http://127.0.0.1:1/", "mqtt": {
        "port": 1883}}, "sources": [{"type": "serial", "port": "/dev/ttyS0", "units": {"temp": "Cel"}}]}
    path = tmp_path / "c.toml"
    config.write_atomic(str(path), config.to_toml(data))
    cfg = config.load(str(path))
    assert cfg.uplink.mqtt.port == 1883 and cfg.sources[0]["units"] == {"temp": "Cel"}
