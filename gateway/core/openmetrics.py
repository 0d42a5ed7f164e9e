"""OpenMetrics 1.0 text exposition (what Prometheus scrapes), written by hand. Pure: families in, bytes out.

Why not ``prometheus_client``: on the agent it costs ~22 ms of import and +3.4 MB RSS (it pulls in http.server,
wsgiref and threads: 51 more modules), for the ~60 samples we expose; this module is one screen and renders
them in ~0.1 ms. The tests parse our output with prometheus_client's own OpenMetrics parser (the test extra), so
the format is checked by the real thing (docs/performance.md, "Metrics endpoint").

A ``Family`` is one metric: a name, a type (``gauge``, ``counter``, ``histogram``, ``info``), a help text and
samples ``(labels, value)``. Counter samples get the ``_total`` suffix here, info samples ``_info``; a
histogram's samples are what ``Histogram.samples`` returns (``_bucket``/``_count``/``_sum``).
"""

import bisect
import math
from dataclasses import dataclass, field

CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
TYPES = ("gauge", "counter", "histogram", "info")
_SUFFIX = {"counter": "_total", "info": "_info"}


@dataclass(slots=True)
class Family:
    name: str
    type: str
    help: str
    #: ``[(labels, value)]``; for a histogram ``[(suffix, labels, value)]`` (``Histogram.samples``)
    samples: list = field(default_factory=list)

    def add(self, value, **labels):
        self.samples.append((labels, value))
        return self


def _escape(text):
    return str(text).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value):
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _labels(labels):
    if not labels:
        return ""
    return "{" + ",".join('%s="%s"' % (k, _escape(v)) for k, v in labels.items()) + "}"


def render(families):
    """The exposition as bytes, ``# EOF`` terminated. A family without samples is left out."""
    out = []
    for fam in families:
        if not fam.samples:
            continue
        out.append("# TYPE %s %s\n# HELP %s %s\n" % (fam.name, fam.type, fam.name, _escape(fam.help)))
        if fam.type == "histogram":
            for suffix, labels, value in fam.samples:
                out.append("%s%s%s %s\n" % (fam.name, suffix, _labels(labels), _number(value)))
            continue
        suffix = _SUFFIX.get(fam.type, "")
        for labels, value in fam.samples:
            out.append("%s%s%s %s\n" % (fam.name, suffix, _labels(labels), _number(value)))
    out.append("# EOF\n")
    return "".join(out).encode("utf-8")


class Histogram:
    """Cumulative buckets of observed values (seconds, say), for a ``histogram`` family."""

    __slots__ = ("bounds", "counts", "count", "sum")

    def __init__(self, bounds):
        self.bounds = tuple(sorted(bounds))
        self.counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound (+Inf only)
        self.count = 0
        self.sum = 0.0

    def observe(self, value):
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.sum += value

    def samples(self, **labels):
        out = []
        running = 0
        for bound, n in zip(self.bounds + (math.inf,), self.counts):
            running += n
            out.append(("_bucket", dict(labels, le=_number(float(bound))), running))
        out.append(("_count", labels, self.count))
        out.append(("_sum", labels, self.sum))
        return out
