"""Unit tests of the rules engine: the shared MicroPython cases on CPython, plus CPython-side integration."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

from tests.support import rules_mpy_cases as cases  # noqa: E402
from firmware_sim import fridge  # noqa: E402
from gateway.core import rules  # noqa: E402
from gateway.core.model import Event, Reading  # noqa: E402

RULES_DIR = pathlib.Path(rules.__file__).parent


@pytest.mark.parametrize("case", cases.CASES, ids=[c.__name__ for c in cases.CASES])
def test_case(case):
    case()


def test_model_objects_pass_through_unchanged():
    engine = rules.RuleEngine([{"match": {"sensor": "*", "name": "temp"}, "high": 8, "deadband": 0.1}],
                              event_factory=Event)
    r1 = Reading("fridge1", "temp", 5.0, "Cel", 10.0)
    r2 = Reading("fridge1", "temp", 9.0, "Cel", 11.0)
    assert engine.process(r1).send == (r1,) and engine.process(r1).send == ()
    res = engine.process(r2)
    assert res.send[0] is r2
    assert res.events == (Event("fridge1", "alarm.high", "raised", "temp 9.00 above high 8.00", 11.0, 9.0, "high",
                                True),)
    assert engine.active_alarms() == list(res.events)


def test_config_error_is_value_error_with_key():
    with pytest.raises(ValueError, match=r"^rules\[0\]\.delay_on: must be at least 0") as info:
        rules.RuleEngine([{"match": {"sensor": "*"}, "high": 1, "delay_on": -5}])
    assert info.value.key == "rules[0].delay_on"


def test_fridge_day_swinging_door_ratio():
    points = list(fridge.samples(seed=1, seconds=86400))
    engine = rules.RuleEngine([{"match": {"sensor": "*", "name": "*"}, "swinging_door": 0.1}])
    kept = []
    for t, v in points:
        kept.extend(engine.process(Reading("fridge", "temp", v, "Cel", t)).send)
    kept.extend(engine.flush().send)
    ratio = len(points) / len(kept)
    assert ratio >= 20, ratio
    assert cases.rebuild_error(points, [(r.t, r.value) for r in kept]) <= 0.1 + 1e-9
    assert engine.counters["compressed_swinging_door"] == len(points) - len(kept)


def test_fridge_day_shape():
    values = [v for _, v in fridge.samples(seed=1, seconds=86400)]
    core = sorted(values)[len(values) // 20: -len(values) // 20]  # 5..95 percentile: compressor band
    assert 1.0 <= core[0] and core[-1] <= 7.5
    assert max(values) > 7.0  # door openings warm the air beyond the cut-in
    cycles = 0
    warm = False
    for v in values:  # count cooling strokes: above 5.2 degC, then below 2.8 degC
        if v > 5.2:
            warm = True
        elif v < 2.8 and warm:
            warm = False
            cycles += 1
    assert 36 <= cycles <= 72  # 20..40 min cycles over a day


def test_rules_package_imports_nothing_outside_itself():
    for path in RULES_DIR.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                pytest.fail("%s imports %s" % (path.name, [a.name for a in node.names]))
            if isinstance(node, ast.ImportFrom):
                assert node.level == 1, "%s imports from %s" % (path.name, node.module)
            if isinstance(node, ast.JoinedStr):
                pytest.fail("%s uses an f-string" % path.name)
