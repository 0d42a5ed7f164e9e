"""The installed versions of the agent, side by side, and the small files that say which one runs and how the last
update went (docs/operations.md, "Updating gateways").

Layout under ``update.base`` (``/opt/edge-gateway``, root's; the agent only reads it)::

    versions/<version>/      one virtualenv per version (install.sh and ``edge-gateway update``)
    venvs/<name>/            the layout before versions/ (install.sh and upgrade.sh of earlier releases)
    current -> versions/X    the one that runs; replaced atomically by rename (``switch``)
    previous                 text: the target ``current`` had before the last switch (upgrade.sh's format)
    trial                    key=value lines while a new version is on trial (``deploy/supervise.sh`` reads them)
    update-outcome           key=value lines: the last update's outcome (id, outcome, version, previous, reason)

And in the agent's state directory (the service user's, written by the agent)::

    update-proven            the version that proved itself (first acknowledged delivery while on trial)
    update-unproven          the version that gave up proving itself (the supervisor rolls it back)
    update-reported          the id of the last outcome the agent reported upstream
    update/                  bundles fetched or staged by the agent; update/request names the one to install
                             (the updater consumes the request and removes the bundle after the install)

Every file here is replaced atomically (``files.write_atomic``); the key=value format is what a POSIX shell reads
with ``sed``, because the supervisor must work when no Python version does.
"""

import glob
import os
import re

from gateway.adapters.files import fsync_dir, write_atomic

TRIAL, OUTCOME, PREVIOUS, CURRENT = "trial", "update-outcome", "previous", "current"
PROVEN, UNPROVEN, REPORTED = "update-proven", "update-unproven", "update-reported"
STAGE_DIR, REQUEST = "update", "request"
MAX_SMALL = 4096
_VALUE_RE = re.compile(r"^[^\n=]*$")


def read_small(path, limit=MAX_SMALL):
    """A small text file's content, or None when it is missing (or not a regular file: a planted link is ignored)."""
    try:
        if os.path.islink(path) or not os.path.isfile(path):
            return None
        with open(path, "rb") as f:
            return f.read(limit).decode("utf-8", "replace")
    except FileNotFoundError:
        return None


def parse_fields(text):
    """``key=value`` lines -> dict (later lines win; lines without ``=`` ignored)."""
    out = {}
    for line in (text or "").splitlines():
        key, eq, value = line.partition("=")
        if eq:
            out[key.strip()] = value.strip()
    return out


def format_fields(fields):
    for key, value in fields.items():
        if not _VALUE_RE.match(str(value)) or not _VALUE_RE.match(key):
            raise ValueError("%s: a value must be one line without '='" % key)
    return "".join("%s=%s\n" % (k, v) for k, v in fields.items())


class Layout:
    """Read and change the versions layout under ``base``; ``state_dir`` is the agent's state directory."""

    def __init__(self, base, state_dir):
        self.base = os.path.abspath(base)
        self.state_dir = state_dir

    def path(self, *parts):
        return os.path.join(self.base, *parts)

    def installed(self):
        """Whether ``base`` holds an installed agent (a ``current`` link)."""
        return os.path.islink(self.path(CURRENT))

    def current(self):
        """``current``'s target, relative (``versions/0.1.1``), or None."""
        try:
            return os.readlink(self.path(CURRENT))
        except OSError:
            return None

    def previous(self):
        text = read_small(self.path(PREVIOUS))
        return text.strip() if text and text.strip() else None

    def version_of(self, target):
        """The agent version in ``target`` (``versions/X`` says it; an older ``venvs/NAME`` is looked up in its
        installed distribution's metadata), or None."""
        if not target:
            return None
        parts = target.strip("/").split("/")
        if len(parts) == 2 and parts[0] == "versions":
            return parts[1]
        found = glob.glob(os.path.join(self.path(target), "lib", "python*", "site-packages",
                                       "edge_gateway-*.dist-info"))
        if found:
            return os.path.basename(found[0])[len("edge_gateway-"):-len(".dist-info")]
        return None

    def trial(self):
        text = read_small(self.path(TRIAL))
        return parse_fields(text) if text is not None else None

    def outcome(self):
        text = read_small(self.path(OUTCOME))
        return parse_fields(text) if text is not None else None

    # -- root's side: the installer and ``update --rollback`` ---------------------------------------------------
    def write(self, name, fields, mode=0o644):
        write_atomic(self.path(name), format_fields(fields), mode)

    def remove(self, name):
        try:
            os.unlink(self.path(name))
        except FileNotFoundError:
            return
        fsync_dir(self.base)

    def switch(self, target):
        """Point ``current`` at ``target`` atomically: a new link beside it, renamed over it, the directory fsynced.
        A power cut leaves the old link or the new one, never none."""
        tmp = self.path(CURRENT + ".new")
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        os.symlink(target, tmp)
        os.replace(tmp, self.path(CURRENT))
        fsync_dir(self.base)

    def set_previous(self, target):
        write_atomic(self.path(PREVIOUS), target + "\n", 0o644)

    # -- the agent's side (its state directory) -----------------------------------------------------------------
    def marker(self, name):
        text = read_small(os.path.join(self.state_dir, name), 256)
        return text.strip() if text else None

    def write_marker(self, name, text):
        write_atomic(os.path.join(self.state_dir, name), text + "\n", 0o600)

    def stage_dir(self):
        return os.path.join(self.state_dir, STAGE_DIR)
