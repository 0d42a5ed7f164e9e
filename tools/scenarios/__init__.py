"""End-to-end field scenarios (``edge-gateway demo --scenario NAME [--quick] [--seed N] [--json]``).

Each scenario runs the real agent (store, signing, HTTP uplink) against the real reference receiver on loopback,
injects the faults of its field (a cut link, an attacker on the path, dying batteries ...), then checks its own
outcome against what the receiver stored. ``docs/scenarios.md`` describes each one and the accelerated time.

``run_scenario(args, out)`` returns the summary dict (``summary["ok"]`` is the outcome check) and prints a short
human summary, or one JSON object with ``args.json``. ``args`` needs ``scenario``, ``quick``, ``seed``, ``json``.
"""

import argparse
import asyncio
import importlib
import sys
import tempfile
import time

#: scenario name -> (module under tools.scenarios, one-line description)
SCENARIOS = {
    "cold-chain": ("cold_chain", "hospital fridges/freezers/coolers: delayed alarms, 30 min outage, alarm lane"),
    "race-tracking": ("race_tracking", "GPS trackers over serial NMEA through an intermittent relay"),
    "reserve": ("reserve", "remote gateway; an attacker replays, forges and modifies batches on the path"),
    "campus": ("campus", "beacons and occupancy sensors -> presence per zone at the gateway"),
    "home-support": ("home_support", "mixed-vendor BLE + serial meter; battery-low and silent before data is missed"),
}


class UnknownScenario(ValueError):
    pass


def run_scenario(args, out=sys.stdout):
    """Run ``args.scenario``; print the summary (human or ``--json``) to ``out``; return the summary dict."""
    from tools.scenarios.runner import report
    entry = SCENARIOS.get(args.scenario)
    if entry is None:
        raise UnknownScenario("unknown scenario %r (one of %s)" % (args.scenario, ", ".join(sorted(SCENARIOS))))
    module = importlib.import_module("tools.scenarios." + entry[0])
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="edge-gateway-%s-" % args.scenario) as workdir:
        summary = asyncio.run(module.run(args, workdir))
    summary.update(scenario=args.scenario, quick=bool(args.quick), seed=args.seed,
                   runtime_s=round(time.monotonic() - started, 2))
    report(args, out, summary, module.lines(summary) + ["  runtime %.1f s" % summary["runtime_s"]])
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tools.scenarios", description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    return 0 if run_scenario(args)["ok"] else 1
