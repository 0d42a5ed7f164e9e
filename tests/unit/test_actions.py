"""Local actions, the pure part: which events an action matches, the orders the planner gives, the rate limiting of
an output (minimum interval, hold, flap latch) on a fake time, and the config errors of [[actuators]]/[[actions]]."""

import pytest

from gateway.app.config import loads
from gateway.core.actions import Planner, parse_actions, quantity_of
from gateway.core.errors import ConfigError
from gateway.core.model import Event, Reading
from gateway.core.output_gate import Gate
from gateway.core.rules import RuleEngine

BOARD = {"name": "ward-3", "port": "/dev/serial/by-id/usb-ward3"}


def actions(*tables, boards=(BOARD,)):
    return parse_actions(list(boards), list(tables))[1]


def alarm(sensor, state, t, level="high", quantity="temp", value=9.0):
    return Event(sensor, "alarm." + level, state, "%s %.2f %s" % (quantity, value, state), t, value, level, True)


def buzzer(**extra):
    table = {"name": "buzz", "on": "alarm", "match": {"sensor": "fridge-*", "quantity": "temp", "level": "high*"},
             "actuator": "ward-3", "channel": "buzzer", "min_interval_s": 0.0}
    table.update(extra)
    return table


# -- matching ------------------------------------------------------------------------------------------------
def test_quantity_comes_from_the_rules_engine_events():
    engine = RuleEngine([{"match": {"name": "temp"}, "high": 8.0}, {"match": {"name": "batt"}, "battery_low": 20},
                         {"match": {"sensor": "*"}, "stale_after": 60}], event_factory=Event)
    high = engine.process(Reading("fridge-1", "temp", 9.0, "Cel", 1.0)).events[0]
    low_batt = engine.process(Reading("fridge-1", "batt", 10, "%EL", 1.0)).events[0]
    silent = engine.tick(100.0).events[0]
    assert (quantity_of(high), quantity_of(low_batt), quantity_of(silent)) == ("temp", "batt", None)
    assert (high.name, low_batt.name, silent.name) == ("alarm.high", "battery_low", "silent")


def test_matching_by_kind_sensor_quantity_and_level():
    a, = actions(buzzer())
    assert a.matches(alarm("fridge-1", "raised", 0, "high")) and a.matches(alarm("fridge-1", "raised", 0,
                                                                                 "high_high"))
    assert not a.matches(alarm("fridge-1", "raised", 0, "low"))  # level
    assert not a.matches(alarm("freezer-1", "raised", 0))  # sensor
    assert not a.matches(alarm("fridge-1", "raised", 0, quantity="hum"))  # quantity
    assert not a.matches(Event("fridge-1", "silent", "raised", "no reading for 60 s", 0))  # kind
    b, = actions({"name": "any", "on": ["silent", "battery_low"], "actuator": "ward-3", "channel": "relay"})
    assert b.matches(Event("fridge-1", "silent", "raised", "no reading", 0))
    assert b.matches(Event("x", "battery_low", "raised", "batt 10.00 below 20.00", 0))
    assert not b.matches(alarm("fridge-1", "raised", 0))
    assert not b.matches(Event("x", "actuator_dead", "raised", "gone", 0, alarm=True))  # its own board's events


def test_a_channel_is_on_while_any_matched_alarm_is_raised():
    p = Planner(actions(buzzer()))
    on = p.on_event(alarm("fridge-1", "raised", 10.0), 10.0)
    assert [(o.board, o.channel, o.on, o.t) for o in on] == [("ward-3", "buzzer", True, 10.0)]
    assert on[0].event.sensor == "fridge-1"
    assert p.on_event(alarm("fridge-2", "raised", 11.0), 11.0) == []  # already on
    assert p.on_event(alarm("fridge-1", "cleared", 12.0), 12.0) == []  # fridge-2 still raised
    assert p.on_event(alarm("freezer-9", "cleared", 12.5), 12.5) == []  # not this action's
    off = p.on_event(alarm("fridge-2", "cleared", 13.0), 13.0)
    assert [o.on for o in off] == [False] and p.wanted() == {("ward-3", "buzzer"): False}


def test_a_program_runs_once_per_matching_event_with_the_event():
    p = Planner(actions({"name": "script", "on": "alarm", "program": ["/usr/local/bin/buzz", "--loud"],
                         "min_interval_s": 0.0, "timeout_s": 5}))
    raised, cleared = alarm("fridge-1", "raised", 1.0), alarm("fridge-1", "cleared", 2.0)
    orders = p.on_event(raised, 1.0) + p.on_event(cleared, 2.0)
    assert [(o.program, o.event, o.timeout_s) for o in orders] == [
        (("/usr/local/bin/buzz", "--loud"), raised, 5.0), (("/usr/local/bin/buzz", "--loud"), cleared, 5.0)]


# -- rate limiting on a fake time ----------------------------------------------------------------------------
def test_min_interval_defers_and_the_latest_wish_wins():
    g = Gate(min_interval=5.0)
    assert g.request(True, 100.0) == (True,)  # the first change is never delayed
    assert g.request(False, 101.0) == ()  # too soon: waits
    assert g.deadline() == 105.0 and g.due(104.9) == ()
    assert g.due(105.0) == (False,)
    assert g.request(True, 106.0) == () and g.request(False, 107.0) == ()  # on and off again inside the interval
    assert g.due(110.0) == () and g.state is False and g.counters["coalesced"] == 1  # the relay never moved
    assert g.counters["changes"] == 2


def test_hold_keeps_an_output_on():
    g = Gate(min_interval=0.0, hold=30.0)
    assert g.request(True, 0.0) == (True,)
    assert g.request(False, 1.0) == () and g.deadline() == 30.0
    assert g.due(29.0) == () and g.due(30.0) == (False,)


def test_a_flapping_wish_latches_the_output_on_until_it_settles():
    g = Gate(min_interval=0.0, flap_max=4, flap_window=60.0)
    changes = []
    t = 0.0
    for k in range(10):  # a sensor flapping every 2 s
        changes += g.request(k % 2 == 0, t)
        t += 2.0
    assert changes == [True, False, True, False, True]  # four flips pass, the fifth latches it on
    assert g.latched and g.state is True and g.counters["flap_latched"] == 1
    assert g.wanted is False  # the last wish was off; it has been off since t = 18
    assert g.due(18.0 + 59.0) == () and g.deadline() == 18.0 + 60.0
    assert g.due(18.0 + 60.0) == (False,) and not g.latched


def test_planner_defers_through_its_tick():
    p = Planner(actions(buzzer(min_interval_s=10.0)))
    assert [o.on for o in p.on_event(alarm("fridge-1", "raised", 0.0), 0.0)] == [True]
    assert p.on_event(alarm("fridge-1", "cleared", 3.0), 3.0) == []
    assert p.deadline() == 10.0 and p.tick(9.0) == []
    late = p.tick(10.0)
    assert [(o.on, o.t, o.event.state) for o in late] == [(False, 10.0, "cleared")]
    assert p.counters()["action.buzz.deferred"] == 1 and p.counters()["action.buzz.matched"] == 2


# -- config errors -------------------------------------------------------------------------------------------
GOOD = """
[[actuators]]
name = "ward-3"
port = "/dev/serial/by-id/usb-ward3"

[[actions]]
name = "fridge-buzzer"
on = "alarm"
match = {sensor = "fridge-*", quantity = "temp", level = "high*"}
actuator = "ward-3"
channel = "buzzer"
"""


def test_good_config_is_typed():
    cfg = loads(GOOD, "gw.toml")
    assert cfg.actuator_configs[0].baud == 115200 and cfg.actuator_configs[0].keepalive_s == 1.0
    a = cfg.action_configs[0]
    assert (a.output, a.on, a.match, a.min_interval_s) == ("ward-3/buzzer", ("alarm",), ("fridge-*", "temp",
                                                                                          "high*"), 1.0)


@pytest.mark.parametrize("change, key, message", [
    (('channel = "buzzer"', 'channel = "siren"'), "actions[0].channel", "board 'ward-3' has no channel 'siren' "
     "(its channels: buzzer, relay)"),
    (('actuator = "ward-3"', 'actuator = "ward-4"'), "actions[0].actuator", "no [[actuators]] table is named "
     "'ward-4' (known: ward-3)"),
    (('channel = "buzzer"', ''), "actions[0].channel", "is required with actuator"),
    (('channel = "buzzer"', 'channel = "buzzer"\nprogram = ["/bin/true"]'), "actions[0].program",
     "set either actuator (with channel) or program, not both"),
    (('actuator = "ward-3"\nchannel = "buzzer"', 'program = ["buzz.sh"]'), "actions[0].program[0]",
     "must be an absolute path"),
    (('actuator = "ward-3"\nchannel = "buzzer"', 'program = "/bin/buzz --on"'), "actions[0].program",
     "must be a non-empty list of arguments"),
    (('on = "alarm"', 'on = ["alarm", "fire"]'), "actions[0].on[1]", "must be one of alarm, silent, battery_low, "
     "weak_signal, got 'fire'"),
    (('level = "high*"', 'lvl = "high*"'), "actions[0].match.lvl", "unknown key (known: sensor, quantity, level)"),
    (('on = "alarm"', 'on = "alarm"\nmin_interval = 5'), "actions[0].min_interval", "did you mean "
     "'min_interval_s'?"),
    (('on = "alarm"', 'on = "alarm"\nhold_s = -1'), "actions[0].hold_s", "must be between 0 and 86400"),
    (('port = "/dev/serial/by-id/usb-ward3"', 'port = "/dev/x"\nbaud = 12'), "actuators[0].baud",
     "must be between 1200 and 4000000"),
    (('port = "/dev/serial/by-id/usb-ward3"', ''), "actuators[0].port", "is required"),
    (('on = "alarm"\n', ''), "actions[0].on", "is required"),
])
def test_config_errors_name_the_key_and_the_fix(change, key, message):
    text = GOOD.replace(*change)
    with pytest.raises(ConfigError) as info:
        loads(text, "gw.toml")
    assert info.value.key == key and info.value.file == "gw.toml"
    assert message in info.value.detail


def test_two_actions_on_one_output_and_a_board_without_action():
    twice = GOOD + GOOD.split("[[actions]]")[1].join(["\n[[actions]]", ""]).replace("fridge-buzzer", "second")
    with pytest.raises(ConfigError, match=r"actions\[1\]\.channel: ward-3/buzzer is driven by actions\[0\] "
                                          r"\(fridge-buzzer\) already; list both kinds of event"):
        loads(twice, "gw.toml")
    with pytest.raises(ConfigError, match=r"actuators\[0\]: a board no action drives"):
        loads(GOOD.split("[[actions]]")[0], "gw.toml")
