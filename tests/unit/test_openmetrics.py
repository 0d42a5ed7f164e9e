"""The metrics exposition (gateway/core/openmetrics.py), checked by prometheus_client's own OpenMetrics parser, and
the documented metric names (docs/operations.md) against gateway/app/metrics.py's METRICS. The endpoint itself is
scraped from a real agent process in tests/system/test_metrics.py."""

import math
import os
import re

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from gateway.app.config import loads
from gateway.app.metrics import METRICS
from gateway.core.errors import ConfigError
from gateway.core.openmetrics import Family, Histogram, render

pytestmark = pytest.mark.unit
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse(data):
    return {f.name: f for f in text_string_to_metric_families(data.decode("utf-8"))}


def test_every_type_renders_as_openmetrics_the_parser_accepts():
    hist = Histogram((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 7.0):
        hist.observe(v)
    families = [
        Family("eg_build", "info", "build").add(1, version="0.1.0", gw='gw "quoted"\\ \nnewline'),
        Family("eg_queue", "gauge", "queue depth").add(3),
        Family("eg_age_seconds", "gauge", "float").add(0.25),
        Family("eg_in", "counter", "per source").add(5, source="a").add(0, source="b"),
        Family("eg_empty", "gauge", "no samples: left out"),
        Family("eg_latency_seconds", "histogram", "latency", hist.samples()),
        Family("eg_odd", "gauge", "non-finite").add(math.inf, k="inf").add(math.nan, k="nan"),
    ]
    data = render(families)
    assert data.endswith(b"# EOF\n")
    got = parse(data)
    assert set(got) == {"eg_build", "eg_queue", "eg_age_seconds", "eg_in", "eg_latency_seconds", "eg_odd"}
    assert got["eg_build"].type == "info"
    assert got["eg_build"].samples[0].labels == {"version": "0.1.0", "gw": 'gw "quoted"\\ \nnewline'}
    assert [s.value for s in got["eg_queue"].samples] == [3]
    assert {s.labels["source"]: s.value for s in got["eg_in"].samples} == {"a": 5, "b": 0}
    assert all(s.name == "eg_in_total" for s in got["eg_in"].samples)
    buckets = {s.labels["le"]: s.value for s in got["eg_latency_seconds"].samples if s.name.endswith("_bucket")}
    assert buckets == {"0.1": 2, "1.0": 3, "+Inf": 4}
    totals = {s.name: s.value for s in got["eg_latency_seconds"].samples if not s.name.endswith("_bucket")}
    assert totals == {"eg_latency_seconds_count": 4, "eg_latency_seconds_sum": pytest.approx(7.65)}


def test_the_documented_metrics_are_the_ones_the_agent_exposes():
    text = open(os.path.join(ROOT, "docs", "operations.md"), encoding="utf-8").read()
    section = text.split("### Metrics", 1)[1].split("\n## ", 1)[0]
    documented = re.findall(r"^\| `((?:edge_gateway|process)_[a-z_]+)`", section, re.M)
    assert len(documented) == len(set(documented))
    assert set(documented) == set(METRICS)


@pytest.mark.parametrize("listen, allow, error", [
    ("127.0.0.1:9108", False, None), ("[::1]:9108", False, None), ("localhost:9108", False, None),
    ("0.0.0.0:9108", False, "not a loopback address"), ("192.0.2.7:9108", False, "allow_remote"),
    ("0.0.0.0:9108", True, None), ("9108", False, "HOST:PORT"), ("127.0.0.1:99999", False, "HOST:PORT"),
])
def test_metrics_listen_is_loopback_unless_remote_is_allowed(listen, allow, error):
    text = '[metrics]\nlisten = "%s"\nallow_remote = %s\n' % (listen, "true" if allow else "false")
    if error is None:
        assert loads(text).metrics.listen == listen
        return
    with pytest.raises(ConfigError) as exc:
        loads(text, "gw.toml")
    assert "metrics.listen" in str(exc.value) and error in str(exc.value) and "gw.toml" in str(exc.value)


def test_metrics_are_off_by_default():
    assert loads("").metrics.listen == ""
