"""Shared fixtures for all three tiers (tests/unit, tests/integration, tests/system; docs/architecture.md "Tests").

The repository root is on sys.path through setup.cfg's ``pythonpath = .`` (and the checkout .pth bootstrap.sh
writes), so test modules import ``gateway``, ``backend``, ``tools`` and ``tests.support`` without path edits."""

import os
import sys

import pytest

VENV_BIN = os.path.dirname(sys.executable)
if VENV_BIN not in os.environ.get("PATH", "").split(os.pathsep):
    os.environ["PATH"] = VENV_BIN + os.pathsep + os.environ.get("PATH", "")


@pytest.fixture
def signing_key():
    from gateway.adapters.keys import SigningKey
    return SigningKey.generate()


@pytest.fixture
def trust(signing_key):
    from gateway.adapters.keys import TrustStore
    return TrustStore({"keys": [signing_key.jwk("gw-test")]})


# -- required tools: a skip for a missing tool is a failure where the tools are promised ------------------------
#: Words in a skip reason that name a tool ``./bootstrap.sh test`` installs. Under ``EDGE_GATEWAY_REQUIRE_TOOLS=1``
#: (set by ``bootstrap.sh test``, so by CI) such a skip fails the run: a green suite that silently skipped every
#: MQTT, MicroPython or BLE end-to-end test would be a lie.
REQUIRED_TOOLS = ("mosquitto", "micropython", "dbus", "dbusmock", "picocom", "tmux", "bleak", "pycose",
                  "postgresql", "initdb", "psycopg", "chromium", "selenium")


def _required_skips(terminalreporter):
    found = []
    for report in terminalreporter.stats.get("skipped", []):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
        if any(tool in reason.lower() for tool in REQUIRED_TOOLS):
            found.append((report.nodeid, reason))
    return found


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if os.environ.get("EDGE_GATEWAY_REQUIRE_TOOLS") != "1":
        return
    found = _required_skips(terminalreporter)
    if found:
        terminalreporter.section("skipped although the tool is required", sep="=", red=True, bold=True)
        for nodeid, reason in found:
            terminalreporter.write_line("%s: %s" % (nodeid, reason))
        session = terminalreporter._session  # pytest returns session.exitstatus after this hook
        if session.exitstatus == 0:
            session.exitstatus = 1


# -- tiers: the folder is the tier; the marker lets ``-m unit`` pick the same tests from anywhere ------------------
TIERS = ("unit", "integration", "system")


def pytest_collection_modifyitems(config, items):
    for item in items:
        parts = item.path.relative_to(config.rootpath).parts
        if len(parts) > 2 and parts[0] == "tests" and parts[1] in TIERS:
            item.add_marker(getattr(pytest.mark, parts[1]))
