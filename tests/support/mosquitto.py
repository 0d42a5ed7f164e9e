"""A real Mosquitto broker for tests: a reserved loopback port (``tests.support.reserve_port``), a temp config, persistence off.

``Broker(tmpdir).start()`` writes ``mosquitto.conf`` and runs ``mosquitto -c conf``; ``kill()`` sends SIGKILL and
``start()`` again restarts it on the same port (the listener sets SO_REUSEADDR). Optional TLS (server cert and key
files, a CA for client certificates), a password file (made with ``mosquitto_passwd``) and an ACL file. Every
wait is bounded.
"""

import os
import shutil
import signal
import subprocess

from tests.support import reserve_port, wait_for_port


def have_mosquitto():
    return shutil.which("mosquitto") is not None


class Broker:
    def __init__(self, directory, port=None, tls=None, users=None, require_certificate=False, acl=None):
        """``tls`` = ``(certfile, keyfile, cafile)`` or None; ``users`` = ``{name: password}`` (no anonymous);
        ``acl``: lines of a Mosquitto ACL file (``topic write edge/gw-1/batches``, ...; what they do not allow is
        denied: a denied QoS 1 publish gets PUBACK 0x87 under MQTT v5), or None for no ACL."""
        self.directory = os.fspath(directory)
        os.makedirs(self.directory, exist_ok=True)
        self.port = port or reserve_port()
        self.tls = tls
        self.users = users
        self.require_certificate = require_certificate
        self.acl = acl
        self.proc = None
        self.conf = os.path.join(self.directory, "mosquitto.conf")
        self.log = os.path.join(self.directory, "mosquitto.log")
        self.starts = 0
        self._write_config()

    def _write_config(self):
        lines = ["per_listener_settings false", "persistence false", "log_dest file %s" % self.log,
                 "log_type error", "log_type warning", "log_type notice", "log_timestamp true",
                 "listener %d 127.0.0.1" % self.port, "max_queued_messages 100000", "max_inflight_messages 0"]
        if os.geteuid() == 0:
            lines.append("user root")  # else it drops to 'mosquitto' and cannot read our 0700 temp dir
        if self.users:
            pwfile = os.path.join(self.directory, "passwords")
            open(pwfile, "w").close()
            for name, password in self.users.items():
                subprocess.run(["mosquitto_passwd", "-b", pwfile, name, password], check=True, timeout=10,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            lines += ["allow_anonymous false", "password_file %s" % pwfile]
        else:
            lines.append("allow_anonymous true")
        if self.acl is not None:
            aclfile = os.path.join(self.directory, "acl")
            with open(aclfile, "w") as f:
                f.write("\n".join(self.acl) + "\n")
            lines.append("acl_file %s" % aclfile)
        if self.tls:
            certfile, keyfile, cafile = self.tls
            lines += ["certfile %s" % certfile, "keyfile %s" % keyfile, "cafile %s" % cafile]
            if self.require_certificate:
                lines += ["require_certificate true", "use_identity_as_username true"]
        with open(self.conf, "w") as f:
            f.write("\n".join(lines) + "\n")

    def start(self, timeout=10.0):
        self.proc = subprocess.Popen(["mosquitto", "-c", self.conf], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        self.starts += 1

        def alive():
            if self.proc.poll() is not None:
                raise RuntimeError("mosquitto exited with %s: %s" % (self.proc.returncode,
                                                                     self.proc.stderr.read().decode()[-500:]))
            return True
        try:
            wait_for_port(self.port, timeout=timeout, what="mosquitto on port %d" % self.port, alive=alive)
        except AssertionError:
            self.stop()
            raise
        return self

    @property
    def url(self):
        return "mqtt://127.0.0.1:%d" % self.port

    def kill(self):
        """SIGKILL: no clean disconnects, nothing flushed (persistence is off anyway)."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc and self.proc.stderr:
            self.proc.stderr.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
