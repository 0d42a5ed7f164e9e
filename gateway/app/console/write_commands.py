"""The console commands that change the gateway: ``unlock`` and ``lock``, then the write commands of the table
(``write=True``), which the dispatcher runs only while unlocked. Each write runs off the event loop as a ``Work``
and is audit-logged with its outcome; values of secret keys are never shown or audited. Pure.
"""

from gateway.app.console.table import BY_WORDS
from gateway.app.console.values import Reply, Work
from gateway.core.errors import GatewayError


class UnlockCommands:
    """``unlock`` and ``lock``. Mixed into ``Console`` (``lock``, ``audit``, ``awaiting_pin``, ``_reply``)."""

    def do_unlock(self, args, text):
        if len(args) > 1:
            return self._usage(("unlock",))
        if self.lock.unlocked:
            return self._reply(["already unlocked"])
        if not self.lock.configured:
            return self._reply(["no PIN is configured (console.pin_hash): write commands are disabled"])
        wait = self.lock.wait_s()
        if wait > 0:
            return self._unlock("", [])  # refused unchecked, with the wait, before asking for a PIN
        if not args:
            self.awaiting_pin = True
            return Reply(())
        return self._unlock(args[0], [])

    def _unlock(self, pin, notes):
        def finish(attempt):
            outcome = "ok" if attempt.ok else attempt.message if attempt.checked else "refused unchecked: " + \
                attempt.message
            self.audit.record("unlock", outcome)
            return self._reply(notes + [attempt.message])
        if self.lock.wait_s() > 0 or not self.lock.configured:
            return finish(self.lock.attempt(pin))
        return Work(lambda: self.lock.attempt(pin), finish, "unlock")

    def do_lock(self, args, text):
        was = self.lock.lock()
        if was:
            self.audit.record("lock", "locked by command")
        return self._reply(["locked" if was else "already locked"])


class WriteCommands:
    """The write commands (the dispatcher checked the lock). Mixed into ``Console`` (``view``, ``audit``)."""

    def _write(self, action, call, secret=None):
        """Run ``call`` off the loop; audit the action with its outcome, success or not. ``secret`` (a value
        being set) is scrubbed from what is shown and audited, whatever the view put in its message."""
        def run():
            try:
                return True, call()
            except OSError as exc:
                where = "%s: " % exc.filename if exc.filename else ""
                return False, where + (exc.strerror or str(exc))
            except (GatewayError, ValueError) as exc:
                return False, str(exc)

        def finish(result):
            ok, message = result
            if secret:
                message = message.replace(secret, "<redacted>")
            self.audit.record(action, ("ok: " if ok else "FAILED: ") + message)
            return self._reply([message if ok else "failed: " + message])
        return Work(run, finish, action)

    def do_config_set(self, args, text):
        parts = text.split(None, 3)
        if len(parts) < 4:
            return self._usage(("config", "set"))
        key, value = parts[2], parts[3]
        from gateway.app.console.settings import is_secret
        shown = "<redacted>" if is_secret(key) else value
        return self._write("config set %s %s" % (key, shown), lambda: self.view.config_set(key, value),
                           secret=value.strip() if shown != value else None)

    def do_sensor_add(self, args, text):
        if len(args) < 2:
            return self._usage(("sensor", "add"))
        from gateway.app.console.settings import is_secret, scalar
        name, kind, params = args[0], args[1], {}
        for item in args[2:]:
            k, eq, v = item.partition("=")
            if not eq or not k:
                return self._reply(["'%s' is not KEY=VALUE" % item[:30], "usage: " + BY_WORDS[("sensor", "add")]
                                    .usage])
            params[k] = scalar(v)
        shown = " ".join("%s=%s" % (k, "<redacted>" if is_secret(k) else v) for k, v in params.items())
        return self._write(("sensor add %s %s %s" % (name, kind, shown)).strip(),
                           lambda: self.view.sensor_add(name, kind, params))

    def do_sensor_remove(self, args, text):
        if len(args) != 1:
            return self._usage(("sensor", "remove"))
        return self._write("sensor remove %s" % args[0], lambda: self.view.sensor_remove(args[0]))

    def do_store_flush_to_file(self, args, text):
        if len(args) != 1:
            return self._usage(("store", "flush-to-file"))
        return self._write("store flush-to-file %s" % args[0], lambda: self.view.store_dump(args[0]))

    def do_store_requeue(self, args, text):
        if args:
            return self._usage(("store", "requeue"))
        return self._write("store requeue", self.view.store_requeue)

    def do_restart(self, args, text):
        if args:
            return self._usage(("restart",))
        return self._write("restart", self.view.restart)


    def do_update(self, args, text):
        if len(args) != 1:
            return self._usage(("update",))
        return self._write("update %s" % args[0], lambda: self.view.update(args[0]))
