"""The console's command table, as data: words, usage, one-line summary, whether it writes, details for ``help``.

Write commands need ``unlock`` first (the dispatcher checks ``write``). Each row's handler is the ``Console``
method ``do_<words joined by _>`` (``store flush-to-file`` -> ``do_store_flush_to_file``).
"""

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Command:
    words: tuple
    args: str
    summary: str
    write: bool = False
    detail: str = ""

    @property
    def name(self):
        return " ".join(self.words)

    @property
    def usage(self):
        return (self.name + " " + self.args).strip()


COMMANDS = (
    Command(("help",), "[COMMAND]", "list the commands, or explain one"),
    Command(("status",), "", "gateway, clock, uplink, queue, drops, actuators",
            detail="Actuator boards ([[actuators]]): alive or DEAD, the last reply's age, each channel ON or off "
                   "as the board last acknowledged it (->ON: a change not acknowledged yet); program actions: "
                   "runs and failures."),
    Command(("sensors",), "", "each sensor: last value, age, RSSI, battery"),
    Command(("read",), "SENSOR [N]", "last readings of one sensor (N up to 50)"),
    Command(("alarms",), "", "alarms in force (needs [[rules]] in the config)"),
    Command(("uplink", "test"), "", "round trip to the uplink host: latency or error"),
    Command(("log",), "[N]", "the last N log lines (default 20, up to 200)"),
    Command(("config", "show"), "[SECTION]", "the config file, secrets redacted"),
    Command(("keys",), "", "the signing key's kid and public fingerprint"),
    Command(("commands",), "", "the last signed commands received and their outcomes",
            detail="Newest last: when, op_seq, outcome (applied, failed, rejected, reverted, checking) and what. "
                   "Sent by an operator over MQTT or in the receiver's answers (docs/operations.md)."),
    Command(("version",), "", "software version"),
    Command(("unlock",), "[PIN]", "enter the technician PIN to allow write commands",
            detail="Without PIN you are prompted and the PIN is echoed as '*'. Wrong PINs back off "
                   "(1, 2, 4, 8 s) and lock out after several failures."),
    Command(("lock",), "", "lock the write commands again"),
    Command(("config", "set"), "KEY VALUE", "change a setting; saved to the config file", write=True,
            detail="Validated like the config at start-up. Some keys apply at once, the others after "
                   "'restart'; the answer says which. Example: config set batch.max_age_s 5"),
    Command(("sensor", "add"), "NAME TYPE [KEY=VALUE ...]", "add a [[sources]] entry (on restart)",
            write=True, detail="Example: sensor add fridge serial port=/dev/ttyUSB1 baud=9600 protocol=lines"),
    Command(("sensor", "remove"), "NAME", "remove a [[sources]] entry (on restart)", write=True),
    Command(("store", "flush-to-file"), "PATH", "copy the queue to a file (CBOR sequence)",
            write=True, detail="The queue is not emptied: batches are still delivered. The file must not "
                               "exist yet; give an absolute path, e.g. on a USB stick."),
    Command(("store", "requeue"), "", "send rejected (quarantined) batches again",
            write=True, detail="Batches the backend refused with a 4xx (e.g. before it knew this gateway's key) "
                               "are kept aside; once the backend is fixed, this puts them back in the queue."),
    Command(("restart",), "", "stop the agent so systemd starts it again", write=True),
    Command(("update",), "FILE", "check a signed update bundle and install it", write=True,
            detail="FILE: an absolute path, e.g. on a USB stick. The bundle's signature and version are checked "
                   "here; the updater installs it beside the running version and switches. If the new version "
                   "delivers nothing in time, the old one comes back by itself."),
)
BY_WORDS = {c.words: c for c in COMMANDS}
GROUPS = sorted({c.words[0] for c in COMMANDS if len(c.words) > 1})
