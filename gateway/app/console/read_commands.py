"""The read-only console commands: anyone at the cable may use them. Pure: they return a ``Reply`` (or, for
``uplink test``, a ``Work``) and do no IO themselves; what they show comes from the ``GatewayView``.
"""

from gateway.app.console.table import BY_WORDS, COMMANDS, GROUPS
from gateway.app.console.text import age, sanitize, size, uptime, value_text
from gateway.app.console.values import Work

#: what to check when the upstream refuses batches with this HTTP status (``status`` and ``uplink test``)
REJECTION_HINTS = {400: "backend refuses the format", 422: "backend refuses the format",
                   401: "enroll the key (trust store)", 403: "enroll the key (trust store)",
                   404: "check uplink.url", 405: "check uplink.url", 410: "check uplink.url",
                   409: "backend holds other data: report it", 413: "lower batch.max_readings"}
DEFAULT_HINT = "see 'log'"


def update_line(up):
    """``update    0.1.1 (prev 0.1.0), last kept 0.1.1 ...``: the versions and the last update (79 columns)."""
    text = "update    %s" % up.get("running")
    if up.get("previous"):
        text += " (prev %s)" % up["previous"]
    if up.get("on_trial") and not up.get("proven"):
        text += ", ON TRIAL until it delivers"
    elif up.get("last"):
        text += ", last " + up["last"]
    return text[:79]


def actions_lines(actions, now):
    """The local actions (``agent.status()["actions"]``, None without ``[[actions]]``): one line per actuator board,
    alive or DEAD, the age of its last reply and each channel as the board last acknowledged it (``->ON`` while a
    change is not acknowledged yet); one line per program action that ran or was dropped."""
    if not actions:
        return []
    lines = []
    for b in actions.get("boards", []):
        said, wanted = b.get("board", {}), b.get("wanted", {})
        channels = []
        for ch in b.get("channels") or sorted(set(said) | set(wanted)):
            on = said.get(ch)
            text = "%s %s" % (ch, "?" if on is None else "ON" if on else "off")
            if ch in wanted and (on is None or bool(on) != wanted[ch]):
                text += " (->%s)" % ("ON" if wanted[ch] else "off")
            channels.append(text)
        state = {"alive": "alive", "dead": "DEAD", "unknown": "not heard yet"}.get(b.get("state"), b.get("state"))
        ack = "never" if b.get("last_ack") is None else "%s ago" % age(now - b["last_ack"])
        lines.append("actuator  %s %s, last ack %s: %s" % (b.get("name"), state, ack, ", ".join(channels)))
        if b.get("state") == "dead":
            lines.append("          %s%s: check the board's power and cable; see 'log'" % (
                b.get("port"), "" if b.get("connected") else " not open"))
    for p in actions.get("programs", []):
        failed = p.get("error.exit", 0) + p.get("error.timeout", 0) + p.get("error.spawn", 0)
        if p.get("runs") or p.get("dropped_busy"):
            lines.append("program   %s: %d runs, %d ok, %d failed, %d dropped (busy)%s" % (
                p.get("name"), p.get("runs", 0), p.get("ok", 0), failed, p.get("dropped_busy", 0),
                "; see 'log'" if failed else ""))
    return lines


def rejection(s):
    """The upstream's refusal still in force (no acknowledgement since), from a status dict, or None:
    ``(what, reason, hint)``, e.g. ``("HTTP 404 on 11 batches", "... answered 404 Not Found", "check uplink.url")``."""
    rej = s.get("last_rejection")
    if not rej or (s.get("last_ack") is not None and s["last_ack"] >= rej["wall"]):
        return None
    c = s.get("counters", {})
    n = c.get("quarantined", 0) - c.get("poison_batches", 0)
    status = rej.get("status")
    what = "%s on %d batch%s" % ("HTTP %d" % status if status else "refused", n, "" if n == 1 else "es")
    return what, rej.get("reason", ""), REJECTION_HINTS.get(status, DEFAULT_HINT)


class ReadCommands:
    """Mixed into ``Console`` (which provides ``view``, ``_reply``, ``_unknown`` and ``_usage``)."""

    def do_help(self, args, text):
        if args:
            key = tuple(a.lower() for a in args[:2])
            cmd = BY_WORDS.get(key) or BY_WORDS.get(key[:1])
            if cmd is None and key[0] in GROUPS:
                return self._reply([c.usage + "  -  " + c.summary for c in COMMANDS if c.words[0] == key[0]])
            if cmd is None:
                return self._unknown(args)
            lines = ["usage: " + cmd.usage, "  " + cmd.summary + (" (after unlock)" if cmd.write else "")]
            if cmd.detail:
                lines.append("  " + cmd.detail)
            return self._reply(lines)
        def row(c):
            if len(c.usage) > 26:
                return ["  " + c.usage, "  %-26s %s" % ("", c.summary)]
            return ["  %-26s %s" % (c.usage, c.summary)]
        lines = ["Commands anyone at the cable may use:"]
        lines += [text for c in COMMANDS if not c.write for text in row(c)]
        lines.append("After 'unlock' (technician PIN):")
        lines += [text for c in COMMANDS if c.write for text in row(c)]
        lines.append("Enter runs; Backspace edits; Up/Down recall; Ctrl-C abandons; Ctrl-U clears.")
        return self._reply(lines)

    def do_version(self, args, text):
        return self._reply(["edge-gateway " + self.view.version()])

    def do_status(self, args, text):
        s = self.view.status()
        wall = s.get("wall")
        last_ack = s.get("last_ack")
        ack = "never" if last_ack is None else "%s ago" % age(wall - last_ack if wall else 0)
        c = s.get("counters", {})
        sc = s.get("store_counters", {})
        lines = [
            "gateway   %s  (edge-gateway %s, boot %s, kid %s)" % (s.get("gateway"), s.get("version"),
                                                                 s.get("boot"), s.get("kid")),
            "uptime    %s" % uptime(s.get("uptime_s")),
            "clock     %s" % ("synced" if s.get("clock_synced") else "NOT synced (times are provisional)"),
        ]
        if s.get("last_stop"):
            lines.append("last stop %s" % s["last_stop"])
        if s.get("update"):
            lines.append(update_line(s["update"]))
        if s.get("restarts"):  # stops by kind since the state directory was made
            lines.append("restarts  %s" % ", ".join("%s %d" % kv for kv in sorted(s["restarts"].items())))
        rejected = rejection(s)
        if rejected:  # reachable or not, the upstream refuses what it gets: say so, and why, first
            lines += ["uplink    REJECTING: %s  -> %s" % (rejected[0], rejected[2]),
                      "          last: %s" % rejected[1]]
            if s.get("uplink_state") == "down" or str(s.get("uplink")) not in rejected[1]:
                lines.append("          %s%s" % ("down now, " if s.get("uplink_state") == "down" else "",
                                                s.get("uplink")))
        else:
            lines.append("uplink    %s  %s" % (s.get("uplink_state"), s.get("uplink")))
        lines.append("last ack  %s" % ack)
        if s.get("last_error") and not (rejected and s["last_error"] == rejected[1]):
            lines.append("error     %s" % s["last_error"])
        lines += [
            "queue     %d batches, %d readings, %s, %d alarms; %d in memory" % (
                s.get("queue_batches", 0), s.get("queue_readings", 0), size(s.get("queue_bytes")),
                s.get("queue_alarms", 0), s.get("memory_batches", 0)),
            "store     %s" % ("ok" if s.get("store_ok", True) else "FAILING (batches kept in memory)"),
            "drops     store %d batches/%d readings (%d alarm, %d expired), memory %d/%d, quarantined %d" % (
                sc.get("dropped_batches", 0), sc.get("dropped_readings", 0), sc.get("dropped_alarm_batches", 0),
                sc.get("expired_batches", 0), c.get("memory_dropped_batches", 0),
                c.get("memory_dropped_readings", 0), sc.get("quarantined", c.get("quarantined", 0))),
        ]
        integrity = [sc.get(k, 0) for k in ("salvaged_batches", "lost_batches", "poison_batches", "conflict_batches")]
        if any(integrity):
            lines.append("integrity salvaged %d, lost %d (corrupt queue); poison %d, conflict %d batches" % tuple(
                integrity))
        refused = c.get("quarantined", 0) - c.get("poison_batches", 0)  # rejections are failures of the uplink
        lines += [
            "readings  %d in, %d sent in %d batches; %d uplink failures%s" % (
                c.get("readings_in", 0), c.get("readings_sent", 0), c.get("batches_sent", 0),
                c.get("uplink_failures", 0) + refused, " (%d rejected)" % refused if refused else ""),
        ]
        for src in s.get("sources", []):
            errs = sum(v for k, v in src.get("counters", {}).items() if k.startswith("error."))
            lines.append("source    %s: %s" % (src.get("name"), ", ".join(
                "%s %s" % (k, v) for k, v in sorted(src.get("counters", {}).items())
                if not k.startswith("error.")) + (", errors %d" % errs if errs else "") or "no counters yet"))
            state = src.get("adapter_state")  # a BLE scanner's adapter (drivers/ble/recovery.py)
            if state == "needs_reset":
                lines.append("          adapter %s NEEDS A RESET: unplug and replug it, or reboot" % src.get("adapter"))
            elif state not in (None, "scanning"):
                lines.append("          adapter %s %s" % (src.get("adapter"), state.replace("_", " ")))
        lines += actions_lines(s.get("actions"), self.view.now())
        return self._reply(lines)

    def do_sensors(self, args, text):
        rows = self.view.sensor_rows()
        if not rows:
            return self._reply(["no readings yet"])
        now = self.view.now()
        lines = ["%-18s %-24s %6s %6s %-12s" % ("SENSOR", "LAST VALUE", "AGE", "RSSI", "BATTERY")]
        for r in rows:
            val = "-" if r.primary is None else "%s %s" % (r.primary.name, value_text(r.primary))
            rssi = "-" if r.rssi is None else value_text(r.rssi).replace(" dBm", "")
            lines.append("%-18s %-24s %6s %6s %-12s" % (sanitize(r.sensor)[:18], sanitize(val)[:24],
                                                       age(now - r.last_t if r.last_t is not None else None),
                                                       rssi[:6], value_text(r.battery)[:12]))
        return self._reply(lines)

    def do_read(self, args, text):
        if not args or len(args) > 2 or (len(args) == 2 and not args[1].isdigit()):
            return self._usage(("read",))
        sensor = args[0]
        n = min(int(args[1]), 50) if len(args) == 2 else 10
        latest = self.view.sensor_latest(sensor)
        if latest is None:
            known = [r.sensor for r in self.view.sensor_rows()]
            return self._reply(["no readings from '%s'; sensors: %s" % (sensor[:30], ", ".join(known) or "none")])
        now = self.view.now()
        lines = ["%s now:" % sensor]
        lines += ["  %-16s %-22s %s ago" % (name[:16], value_text(r)[:22], age(now - r.t))
                  for name, r in sorted(latest.items())]
        recent = self.view.sensor_recent(sensor, n) or []
        lines.append("last %d readings (newest last):" % len(recent))
        lines += ["  %8s ago  %-16s %s" % (age(now - r.t), r.name[:16], value_text(r)[:40]) for r in recent]
        return self._reply(lines)

    def do_alarms(self, args, text):
        alarms = self.view.alarms()
        if alarms is None:
            return self._reply(["no rules configured ([[rules]] in the config): no alarms are evaluated"])
        if not alarms:
            return self._reply(["no active alarms"])
        now = self.view.now()
        lines = ["%d active:" % len(alarms)]
        for e in alarms:
            lines.append("  %-16s %-16s %-8s %s ago: %s" % (
                str(e.sensor)[:16], str(e.name)[:16], str(e.level or "")[:8], age(now - e.t), e.reason))
        return self._reply(lines)

    def do_uplink_test(self, args, text):
        def finish(probe):
            rejected = rejection(self.view.status())
            ms = probe.latency_s * 1000.0
            if rejected:  # reachable is not ok while the last batches were refused
                head = ("uplink REJECTING: reachable in %.1f ms, but %s" if probe.ok else
                        "uplink FAILED after %.1f ms, and before that %s") % (ms, rejected[0])
                return self._reply([head, "  probe: %s" % probe.detail, "  last rejection: %s" % rejected[1],
                                    "  -> %s, then 'store requeue'" % rejected[2]])
            if probe.ok:
                return self._reply(["uplink ok in %.1f ms: %s" % (ms, probe.detail)])
            return self._reply(["uplink FAILED after %.1f ms: %s" % (ms, probe.detail)])
        return Work(self.view.uplink_test, finish, "uplink test")

    def do_log(self, args, text):
        if len(args) > 1 or (args and not args[0].isdigit()):
            return self._usage(("log",))
        n = max(1, min(int(args[0]) if args else 20, 200))
        lines = self.view.log_lines(n)
        return self._reply(lines or ["(no log lines yet)"])

    def do_config_show(self, args, text):
        from gateway.app.config import to_toml
        from gateway.app.console.settings import redact
        data = redact(self.view.config_data())
        if args:
            section = args[0]
            if section not in data:
                return self._reply(["no section '%s'; sections: %s" % (section[:20], ", ".join(data) or "none")])
            data = {section: data[section]}
        lines = to_toml(data).strip("\n").split("\n")
        return self._reply(lines)

    def do_keys(self, args, text):
        k = self.view.keys()
        return self._reply(["kid          %s" % k.get("kid"), "algorithm    %s" % k.get("alg"),
                            "fingerprint  %s" % k.get("fingerprint"), "public x     %s" % k.get("x"),
                            "(the private key never leaves the gateway and is never shown)"])

    def do_commands(self, args, text):
        found = self.view.commands()
        if found is None:
            return self._reply(["the downlink is off: no [downlink] operators in the config"])
        recent, counters = found
        rejected = sum(v for k, v in counters.items() if k.startswith("rejected."))
        lines = ["downlink  %d applied, %d failed, %d rejected, %d reverted; %d repeats, %d polls" % (
            counters.get("applied", 0), counters.get("failed", 0), rejected, counters.get("reverted", 0),
            counters.get("repeats", 0), counters.get("polls", 0))]
        if not recent:
            return self._reply(lines + ["no command received since the start"])
        now = self.view.now()
        lines.append("%8s %7s %-9s %s" % ("AGE", "OP_SEQ", "OUTCOME", "WHAT"))
        for e in recent:
            seq = "-" if e.get("op_seq") is None else str(e["op_seq"])
            what = sanitize(str(e.get("text") or ""))
            lines.append(("%8s %7s %-9s %s" % (age(now - e["t"]), seq[-7:], str(e.get("state"))[:9], what))[:79])
        return self._reply(lines)
