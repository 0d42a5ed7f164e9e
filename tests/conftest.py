"""Shared fixtures. The repository root goes on sys.path so the tests run from a plain checkout too."""

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
VENV_BIN = os.path.dirname(sys.executable)
if VENV_BIN not in os.environ.get("PATH", "").split(os.pathsep):
    os.environ["PATH"] = VENV_BIN + os.pathsep + os.environ.get("PATH", "")


@pytest.fixture
def signing_key():
    from gateway.keys import SigningKey
    return SigningKey.generate()


@pytest.fixture
def trust(signing_key):
    from gateway.keys import TrustStore
    return TrustStore({"keys": [signing_key.jwk("gw-test")]})
