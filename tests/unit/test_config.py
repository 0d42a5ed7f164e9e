"""Config: typed, validated at start-up, errors name the file and the key."""

import pytest

from gateway.app import config
from gateway.core.errors import ConfigError


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
    ("[store]\nmax_bytes = -5", "store.max_bytes", "must be between 65536 and"),
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


# -- finding 11: every number finite and in range ---------------------------------------------------------------
@pytest.mark.parametrize("text,key", [
    ("[batch]\ntime_quantum_s = nan", "batch.time_quantum_s"),
    ("[uplink]\ntimeout_s = inf", "uplink.timeout_s"),
    ("[batch]\ntime_quantum_s = 1e-300", "batch.time_quantum_s"),
    ("[batch]\nmax_age_s = -inf", "batch.max_age_s"),
    ("[store]\nmax_age_days = 1e308", "store.max_age_days"),
    ("[uplink.mqtt]\nport = 70000", "uplink.mqtt.port"),
    ("[console]\nidle_lock_s = 0.0", "console.idle_lock_s"),
    ("[[sources]]\ntype = \"ble\"\ntimeout_s = inf", "sources[0].timeout_s"),
    ("[[sources]]\ntype = \"serial\"\nport = \"/dev/x\"\nbaud = 0", "sources[0].baud"),
    ("[[sources]]\ntype = \"serial\"\nport = \"/dev/x\"\nprotocol = \"modbus\"\npoll_s = nan", "sources[0].poll_s"),
    ("[[rules]]\nmatch = {}\nhigh = nan", "rules[0].high"),
])
def test_numbers_must_be_finite_and_in_range(tmp_path, text, key):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        config.load(path)
    assert err.value.key == key and err.value.file == path
    assert "finite" in str(err.value) or "between" in str(err.value)


def test_every_numeric_key_has_a_range():
    """One helper, per-key limits: a numeric field added to a section without a range fails here."""
    def numeric(obj, prefix=""):
        import dataclasses
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                yield from numeric(value, prefix + f.name + ".")
            elif type(value) in (int, float):
                yield prefix + f.name
    keys = set(numeric(config.Config()))
    assert keys == set(config.RANGES)
    for key in keys:  # the defaults are inside their own ranges
        section, _, name = key.rpartition(".")
        obj = config.Config()
        for part in section.split("."):
            obj = getattr(obj, part)
        lo, hi = config.RANGES[key]
        assert lo <= getattr(obj, name) <= hi, key


def test_loads_parses_text_like_load(tmp_path):
    cfg = config.loads('[gateway]\nid = "gw-t"\n', "mem.toml")
    assert cfg.gateway.id == "gw-t" and cfg.file == "mem.toml"
    with pytest.raises(ConfigError, match="mem.toml: not valid TOML"):
        config.loads("[x", "mem.toml")
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[gateway]\nid = "\xe9"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        config.load(str(path))


# -- finding 14: unknown keys in every table ---------------------------------------------------------------------
@pytest.mark.parametrize("text,key,hint", [
    ('[[sources]]\ntype = "serial"\nport = "/dev/x"\nbuad = 9600', "sources[0].buad", "did you mean 'baud'?"),
    ('[[sources]]\ntype = "serial"\nname = "b1"\nport = "/dev/x"\nprotocol = "nmea"\nsentence = ["GGA"]',
     "sources[0].sentence", "did you mean 'sentences'?"),
    ('[[sources]]\ntype = "serial"\nport = "/dev/x"\nprotocol = "lines"\nsentences = ["GGA"]',
     "sources[0].sentences", "unknown key in serial source 'serial0' (protocol lines)"),
    ('[[sources]]\ntype = "serial"\nport = "/dev/x"\nprotocol = "modbus"\n'
     'slaves = [{id = 1, registers = [{name = "v", adress = 0}]}]', "sources[0].slaves[0].registers[0].adress",
     "did you mean 'address'?"),
    ('[[sources]]\ntype = "ble"\nsensors = [{mac = "A4:C1:38:00:00:01", bindkey = "00"}]',
     "sources[0].sensors[0].bindkey", "unknown key"),
    ('[[sources]]\ntype = "gatt"\npoll = 5', "sources[0].poll", "did you mean 'poll_s'?"),
    ('[[sources]]\ntype = "seriel"', "sources[0].type", "did you mean 'serial'?"),
    ('[[rules]]\nmatch = {sensor = "*"}\nhihg = 3', "rules[0].hihg", "did you mean 'high'?"),
    ('[[rules]]\nmatch = {sensr = "*"}\nhigh = 3', "rules[0].match.sensr", "did you mean 'sensor'?"),
    ('[uplink]\nurll = "https://x/"', "uplink.urll", "did you mean 'url'?"),
    ('[uplink.mqtt]\npasword = "x"', "uplink.mqtt.pasword", "did you mean 'password'?"),
])
def test_unknown_keys_in_every_table_name_file_table_and_key(tmp_path, text, key, hint):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        config.load(path)
    assert err.value.key == key and err.value.file == path, str(err.value)
    assert hint in str(err.value)


def test_documented_source_examples_load(tmp_path):
    """The schema knows every key the drivers' READMEs document (a missing one would refuse a good config)."""
    import os
    import re
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    blocks = []
    for readme in ("drivers/serial/README.md", "drivers/ble/README.md"):
        text = open(os.path.join(root, readme)).read()
        blocks += [b for b in re.findall(r"```toml\n(.*?)```", text, re.S) if "[[sources]]" in b]
    assert len(blocks) >= 4
    for block in blocks:
        config.loads(block, "example")
    config.load(os.path.join(root, "deploy", "config.example.toml"))


@pytest.mark.parametrize("line, key", [('protocol = {sensor = "*"}', "sources[0].protocol"),
                                       ('protocol = ["nmea"]', "sources[0].protocol")])
def test_a_table_where_a_name_is_expected_is_a_config_error(line, key):
    # Found by 'edge-gateway fuzz' (config.loads): a table as the protocol raised TypeError (unhashable dict).
    text = '[gateway]\nid = "gw-f"\n[uplink]\nurl = "https://h.example/v1"\n[[sources]]\ntype = "serial"\n' \
           'port = "/dev/x"\n%s\n' % line
    with pytest.raises(config.ConfigError) as exc:
        config.loads(text, "fuzz.toml")
    assert exc.value.key == key


# -- typed source configs (drivers/sources.py): parsed once, one error syntax, no radio stack at load -----------------
def test_sources_are_parsed_once_into_typed_frozen_configs():
    import dataclasses
    from drivers.ble.config import BleScanConfig, GattConfig
    from drivers.serial.config import SerialConfig
    cfg = config.loads('[[sources]]\ntype = "serial"\nport = "/dev/x"\nprotocol = "nmea"\nmax_len = 90\n'
                       '[[sources]]\ntype = "ble"\nwatchdog_s = 30\n'
                       '[[sources]]\ntype = "gatt"\nsensors = [{mac = "a4-c1-38-00-00-10"}]\n', "mem.toml")
    serial, ble, gatt = cfg.source_configs
    assert isinstance(serial, SerialConfig) and serial.options["max_len"] == 90 and serial.baud == 9600
    assert isinstance(ble, BleScanConfig) and ble.watchdog_s == 30.0 and isinstance(ble.watchdog_s, float)
    assert isinstance(gatt, GattConfig) and gatt.sensors[0].mac == "A4:C1:38:00:00:10"
    with pytest.raises(dataclasses.FrozenInstanceError):
        ble.watchdog_s = 1.0


@pytest.mark.parametrize("text, key", [
    ('[[sources]]\ntype = "ble"\n[[sources]]\ntype = "ble"\n[[sources]]\ntype = "gatt"\nsensors = []\ntimeout_s = 0',
     "sources[2].sensors"),
    ('[[sources]]\ntype = "ble"\ntimeout_s = 0', "sources[0].timeout_s"),
    ('[[sources]]\ntype = "ble"\nsensors = [{mac = "A4:C1:38:00:00:01", format = "ruuvi"}]\nformats = ["bthome"]',
     "sources[0].sensors[0].format"),
    ('[[sources]]\ntype = "serial"', "sources[0].port"),
    ('[[sources]]\ntype = "serial"\nport = "/dev/x"\nparity = "X"', "sources[0].parity"),
    ('[[sources]]\ntype = "serial"\nport = "/dev/x"\nprotocol = "modbus"\nslaves = [{id = 300, registers = []}]',
     "sources[0].slaves[0].id"),
])
def test_source_errors_name_file_index_and_key_in_one_syntax(text, key):
    with pytest.raises(ConfigError) as err:
        config.loads(text, "gw.toml")
    assert (err.value.file, err.value.key) == ("gw.toml", key)
    assert str(err.value).startswith("gw.toml: %s: " % key)


def test_downlink_needs_an_uplink_that_carries_commands():
    """Commands come over MQTT (a subscription) or HTTP (the receiver's answers); with the directory uplink the
    operators would silently never see one."""
    with pytest.raises(ConfigError) as err:
        config.loads('[uplink]\nkind = "directory"\nurl = "dir:///tmp/x"\n'
                     '[downlink]\noperators = "/etc/edge-gateway/operators.jwks.json"\n')
    assert err.value.key == "downlink.operators" and "http or mqtt" in str(err.value)
    for kind in ("mqtt", "http"):
        cfg = config.loads('[uplink]\nkind = "%s"\n[downlink]\noperators = "/x/ops.json"\n' % kind)
        assert cfg.downlink.operators == "/x/ops.json" and cfg.downlink.state == "downlink-seq.json"
        assert (cfg.downlink.check_s, cfg.downlink.poll_s) == (60.0, 30.0)


# -- deploy/config.example.toml: every section of docs/configuration.md, and valid with its optional ones on -------
def example_with_every_section_on(tmp_path):
    """The example config with its optional sections (the ``#key = value`` and ``#[table]`` lines: "#" and no space)
    uncommented, written into ``tmp_path``; returns its path and text."""
    import os
    import re
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    text = open(os.path.join(root, "deploy", "config.example.toml")).read()
    enabled = re.sub(r"(?m)^#(?=\S)", "", text)
    assert enabled != text
    path = tmp_path / "config.toml"
    path.write_text(enabled)
    return str(path), enabled


def test_the_example_config_loads_with_every_optional_section_on(tmp_path):
    """The commented examples go through the real checker, so they cannot drift from it; and the example shows
    every table docs/configuration.md documents and every key of the typed sections."""
    import dataclasses
    import os
    import re
    import tomllib
    path, text = example_with_every_section_on(tmp_path)
    cfg = config.load(path)
    assert [z.name for z in cfg.presence.zones] == ["lab"] and cfg.presence.mode == "counts"
    assert cfg.homeassistant.enabled and cfg.homeassistant.broker == "mqtt://127.0.0.1:1883"
    assert [b.name for b in cfg.actuator_configs] == ["ward-3"]
    assert [a.output for a in cfg.action_configs] == ["ward-3/buzzer", "program:page-nurse"]
    assert cfg.rules and cfg.downlink.check_s == 60.0 and cfg.downlink.poll_s == 30.0

    data = tomllib.loads(text)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    doc = open(os.path.join(root, "docs", "configuration.md")).read()
    tables = re.findall(r"`\[\[?([a-z_.]+)\]\]?`", "\n".join(re.findall(r"(?m)^#{2,3} .*$", doc)))
    assert {"gateway", "downlink", "update", "metrics", "actions", "presence", "homeassistant"} <= set(tables)
    for table in tables + ["presence.zones"]:
        node = data
        for part in table.split("."):
            node = node.get(part) if isinstance(node, dict) else node[0].get(part)
            assert node is not None, "deploy/config.example.toml has no [%s]" % table
    for section in ("gateway", "store", "batch", "uplink", "uplink.mqtt", "clock", "console", "downlink", "update",
                    "metrics"):
        typed, table = cfg, data
        for part in section.split("."):
            typed, table = getattr(typed, part), table[part]
        missing = [f.name for f in dataclasses.fields(typed) if f.name not in table]
        assert missing == [], "[%s] in deploy/config.example.toml lacks %s" % (section, missing)


def test_writing_a_text_key_s_empty_default_out_is_accepted_but_blank_text_is_not(tmp_path):
    # "" is the documented default of these keys ("not set"): an installer who writes it out must not be refused;
    # blank text where a value is required, or "  " anywhere, still is
    base = '[gateway]\nid = "gw-1"\nstate_dir = "/var/lib/eg"\n[uplink]\nurl = "https://b.example/v1/batches"\n'
    cfg = config.load(write(tmp_path, base + '[homeassistant]\nclient_id = ""\nca_file = ""\n'
                                            '[presence]\n[[presence.zones]]\nname = "lab"\ngateway = ""\n'
                                            'beacons = ["b1"]\n'))
    assert cfg.homeassistant.client_id == "" and cfg.homeassistant.ca_file == ""
    with pytest.raises(ConfigError, match="homeassistant.client_id: must be non-empty text"):
        config.load(write(tmp_path, base + '[homeassistant]\nclient_id = "  "\n'))
    with pytest.raises(ConfigError, match="presence.zones\\[0\\].name: must be a short identifier"):
        config.load(write(tmp_path, base + '[presence]\n[[presence.zones]]\nname = ""\nbeacons = ["b1"]\n'))
