"""The bounded fuzz tier: every registered target, fixed seeds, a few thousand inputs each (well under a minute in
total). Only the project's typed errors may come out; ``edge-gateway fuzz`` is the long run."""

import pytest

from tools import fuzz
from tools.fuzz_targets import targets

INPUTS = 3000
TARGETS = targets()


@pytest.mark.parametrize("target", TARGETS, ids=[t.name for t in TARGETS])
def test_only_typed_errors(target):
    res = fuzz.run(target, INPUTS, seed=1, seconds=10)
    assert res.inputs >= min(INPUTS, 500)
    assert res.findings == [], "\n".join("%s %s" % (f.error, f.data.hex()) for f in res.findings)
    # The corpus is valid input: a target that rejects everything fuzzes nothing.
    assert res.accepted >= 1


def test_fuzzer_reports_an_untyped_error():
    def parse(data):
        if data[:1] == b"\x00":
            raise IndexError("boom")
        raise ValueError("typed")
    res = fuzz.run(fuzz.Target("toy", parse, (b"\x00a", b"b"), (ValueError,)), 200, seed=3)
    assert res.findings and res.findings[0].error.startswith("IndexError")
    assert res.typed_errors > 0


def test_runs_are_reproducible():
    seen = []
    t = fuzz.Target("toy", seen.append, (b"hello world",), ())
    fuzz.run(t, 50, seed=9)
    first = list(seen)
    seen.clear()
    fuzz.run(t, 50, seed=9)
    assert seen == first and len(set(first)) > 10
