"""Issue 15: the installer's guide (docs/operations.md) works as written, the examples load, every option is
explained, and the wire contract lists the health records the gateway sends.

The guide's own commands are read from the document and run in a temporary directory (a laptop's working
directory) and a temporary root (the SD card and the Pi's file system), the way tests/integration/test_deploy.py runs
install.sh. Only what the guide leaves to the reader is filled in: the wheelhouse (``[--wheelhouse wheels/]``
becomes ``--target native``, this machine's wheels, offline) and the boot partition's mount point.
"""

import argparse
import glob
import os
import re
import shlex
import subprocess
import sys
import tomllib

import pytest

from gateway.app import config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GUIDE = os.path.join(ROOT, "docs", "operations.md")
BASE_PYTHON = getattr(sys, "_base_executable", sys.executable)


def guide_steps():
    """``{step title: text}`` of the "Installer's guide" section."""
    text = open(GUIDE).read()
    section = text.split("## Installer's guide", 1)[1].split("\n## ", 1)[0]
    parts = re.split(r"^### ", section, flags=re.M)[1:]
    return {p.split("\n", 1)[0].strip(): p for p in parts}


def sh_blocks(step_text):
    """The ``sh`` code blocks of a step, each as a list of commands (continuation lines joined, comments cut)."""
    out = []
    for block in re.findall(r"```sh\n(.*?)```", step_text, re.S):
        joined = block.replace("\\\n", " ")
        out.append([line.split("  #")[0].strip() for line in joined.splitlines() if line.strip()])
    return out


def run_cli(cwd, command):
    argv = shlex.split(command)
    assert argv[0] == "edge-gateway", command
    proc = subprocess.run([sys.executable, "-m", "gateway.cli"] + argv[1:], capture_output=True, text=True,
                          cwd=cwd, timeout=120, env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0, "%s\n%s" % (command, proc.stderr)
    return proc


def test_the_installer_guide_keeps_sensors_rules_and_pin_from_step_1_to_the_gateway(tmp_path):
    steps = guide_steps()
    step1 = next(v for k, v in steps.items() if k.startswith("1."))
    step2 = next(v for k, v in steps.items() if k.startswith("2."))
    step3 = next(v for k, v in steps.items() if k.startswith("3."))
    laptop = tmp_path / "laptop"
    laptop.mkdir()
    os.symlink(os.path.join(ROOT, "deploy"), laptop / "deploy")  # the guide runs in a checkout

    # 1. Provision: the first block (copy the sample sensors file, provision one gateway).
    commands = sh_blocks(step1)[0]
    assert commands[0].startswith("cp deploy/sensors.example.toml ") and "--sensors" in commands[1]
    subprocess.run(shlex.split(commands[0]), cwd=laptop, check=True)
    run_cli(laptop, commands[1])
    gw = re.search(r"--gateway-id (\S+)", commands[1]).group(1)
    first = config.load(str(laptop / "provisioned" / gw / "config.toml"))
    assert first.sources and first.rules and first.console.pin_hash.startswith("scrypt$")

    # 2. The bundle, with the guide's own command: no --sensors, no --pin.
    (bundle_cmd,) = sh_blocks(step2)[0]
    assert "--sensors" not in bundle_cmd and "--pin" not in bundle_cmd and "[--wheelhouse wheels/]" in bundle_cmd
    proc = run_cli(laptop, bundle_cmd.replace("[--wheelhouse wheels/]", "--target native"))
    assert "kept from the existing config.toml" in proc.stderr
    bundle = laptop / re.search(r"--bundle (\S+)", bundle_cmd).group(1)
    in_bundle = config.load(str(bundle / "config.toml"))
    assert in_bundle.sources == first.sources and in_bundle.rules == first.rules
    assert in_bundle.console.pin_hash == first.console.pin_hash
    listed = re.search(r"The bundle holds (.*?)\. Without", step2, re.S).group(1)
    for name in sorted(os.listdir(bundle)):  # the guide's list of the bundle's files is complete
        assert "`%s" % name in listed, name

    # 3. Copy to the boot partition, and the cmdline.txt hook for images without cloud-init.
    copy = re.search(r"`(cp -r bundles/\S+ /media/\$USER/bootfs/edge-gateway)`", step3).group(1)
    root = tmp_path / "root"
    boot = root / "boot" / "firmware"
    boot.mkdir(parents=True)
    subprocess.run(shlex.split(copy.replace("/media/$USER/bootfs", str(boot))), cwd=laptop, check=True)
    hook = re.search(r"`(systemd\.run=\S+ [^`]+)`", step3).group(1)
    (boot / "cmdline.txt").write_text("console=serial0,115200 root=PARTUUID=1-02 rootwait " + hook + "\n")

    # 4. First boot, into the temporary root.
    env = dict(os.environ, DESTDIR=str(root), PYTHON=BASE_PYTHON, FIRSTBOOT_LOG=str(tmp_path / "firstboot.log"))
    fb = subprocess.run(["sh", str(boot / "edge-gateway" / "firstboot.sh")], capture_output=True, text=True,
                        timeout=180, env=env)
    assert fb.returncode == 0, (tmp_path / "firstboot.log").read_text()
    installed = config.load(str(root / "etc" / "edge-gateway" / "config.toml"))
    assert installed.sources == first.sources and installed.rules == first.rules
    assert installed.console.pin_hash == first.console.pin_hash
    assert (root / "var/lib/edge-gateway/key.pem").exists() and not (boot / "edge-gateway" / "key.pem").exists()
    assert "firstboot.sh" not in (boot / "cmdline.txt").read_text()


def test_user_data_example_holds_only_the_runcmd_entry_the_guide_says_to_copy():
    text = open(os.path.join(ROOT, "deploy", "firstboot", "user-data.example")).read()
    keys = [line.split(":")[0] for line in text.splitlines() if line and not line.startswith(("#", " "))]
    assert keys == ["runcmd"]  # no hostname or other setting that would override what the Imager wrote
    assert "[sh, /boot/firmware/edge-gateway/firstboot.sh]" in text
    step3 = next(v for k, v in guide_steps().items() if k.startswith("3."))
    assert "`runcmd` entry of `user-data.example` (only that" in step3


# -- examples ----------------------------------------------------------------------------------------------------
def doc_toml_blocks():
    for path in sorted(glob.glob(os.path.join(ROOT, "docs", "*.md"))) + [os.path.join(ROOT, "README.md")]:
        for i, block in enumerate(re.findall(r"```toml\n(.*?)```", open(path).read(), re.S)):
            yield "%s#%d" % (os.path.relpath(path, ROOT), i), block


@pytest.mark.parametrize("name, text", list(doc_toml_blocks()) + [
    (os.path.relpath(p, ROOT), open(p).read()) for p in sorted(glob.glob(os.path.join(ROOT, "deploy", "**",
                                                                                       "*.toml"), recursive=True))])
def test_every_example_config_in_deploy_and_docs_loads(name, text):
    if name.endswith("sensors.example.toml"):  # a sensors file: what provision --sensors reads
        from tools.provision import load_sensors
        path = os.path.join(ROOT, name)
        tables = load_sensors(path)
        assert tables["sources"] and tables["rules"]
        text += '\n[uplink]\nurl = "https://ingest.example.net/v1/batches"\n'
    cfg = config.loads(text, name)
    assert cfg is not None


def test_docs_have_balanced_code_fences():
    for path in sorted(glob.glob(os.path.join(ROOT, "docs", "*.md"))) + [os.path.join(ROOT, "README.md")]:
        for number, line in enumerate(open(path), 1):
            if "```" in line:
                assert line.lstrip().startswith("```"), "%s:%d: a fence must start its line" % (path, number)
        fences = [line for line in open(path) if line.lstrip().startswith("```")]
        assert len(fences) % 2 == 0, path


# -- --help ------------------------------------------------------------------------------------------------------
def subcommands():
    from gateway import cli
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


def test_every_option_of_every_subcommand_has_help_text():
    """Nested ones too (``command status``, ``operator keygen``): each option, and each sub-command in its list."""
    missing = []

    def walk(name, parser):
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if isinstance(action, argparse._SubParsersAction):
                listed = {choice.dest for choice in action._choices_actions}
                missing.extend("%s %s" % (name, sub) for sub in action.choices if sub not in listed)
                for sub, child in action.choices.items():
                    walk("%s %s" % (name, sub), child)
            elif not action.help or action.help == argparse.SUPPRESS:
                missing.append("%s %s" % (name, "/".join(action.option_strings) or action.dest))
    for name, parser in subcommands().items():
        walk(name, parser)
    assert missing == []


def readme_commands():
    """The ``edge-gateway ...`` lines of README's command block, continuation lines joined, comments dropped."""
    text = open(os.path.join(ROOT, "README.md")).read()
    block = text.split("After the first run, the tools are in `.venv/bin`:", 1)[1].split("```sh", 1)[1]
    block = block.split("```", 1)[0].replace("\\\n", " ")
    lines = [line.split("  #", 1)[0].strip() for line in block.splitlines()]
    return [shlex.split(line)[1:] for line in lines if re.match(r"(\.venv/bin/)?edge-gateway ", line)]


def test_the_readme_commands_parse_and_show_every_command(capsys):
    """README's commands take the flags they show (``--help`` is the truth), and every command is there."""
    from gateway import cli
    from tools import update_build
    commands = readme_commands()
    for argv in commands:
        if argv[:2] == ["update", "build"]:
            with pytest.raises(SystemExit):
                update_build.main(["--help"])
            usage = capsys.readouterr().out
            assert all(a in usage for a in argv[2:] if a.startswith("--")), argv
            continue
        cli.build_parser().parse_args(argv)  # a wrong flag exits with a usage error
    shown = {argv[0] for argv in commands} | {" ".join(argv[:2]) for argv in commands}
    internal = {"record-stop"}  # the systemd unit's, not a person's
    assert set(subcommands()) - internal <= shown
    for flags in (["bench", "--sections"], ["bench", "--backend"], ["receive", "--api"], ["receive", "--operators"],
                  ["command", "status"], ["update", "--rollback"], ["fleet-sim", "--cut-share"]):
        assert any(argv[0] == flags[0] and flags[1] in argv for argv in commands), flags


def test_help_lists_the_values_and_shows_no_markup():
    from tools import wheelhouse
    from tools.scenarios import SCENARIOS
    helps = {name: parser.format_help() for name, parser in subcommands().items()}
    for name, text in helps.items():
        assert "``" not in text, name
    flat = " ".join(helps["provision"].split())
    assert all(t in flat for t in list(wheelhouse.TARGETS) + ["native"])
    demo = " ".join(helps["demo"].split())
    assert all(s in demo for s in SCENARIOS)


def test_run_defaults_to_the_documented_config_path():
    from gateway import cli
    args = cli.build_parser("run").parse_args(["run"])
    assert args.config == "/etc/edge-gateway/config.toml"
    assert "`/etc/edge-gateway/config.toml`" in open(os.path.join(ROOT, "docs", "configuration.md")).read()


# -- the wire contract's health records --------------------------------------------------------------------------
def documented_health():
    text = open(os.path.join(ROOT, "docs", "wire-format.md")).read()
    section = text.split("### Health records", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `health/([^`]+)` \|", section, re.M)


class _CountingSource:
    """A source that has counted one of everything a driver counts (what the agent may forward)."""
    name = "src"

    def __init__(self, keys):
        self.counters = dict.fromkeys(keys, 1)


def emitted_health_names(tmp_path):
    """The names of the health records a real Agent hands its pipeline, as the pipeline puts them in a batch (the
    first round sends every value; the second, an hour later, the daily rate), written as the doc's patterns."""
    from gateway.adapters import keys
    from gateway.adapters.store import Store
    from gateway.app.agent import Agent, SOURCE_HEALTH
    from gateway.core.clock import FakeClock
    clock = FakeClock()
    store = Store(str(tmp_path / "health.sqlite"), clock=clock)
    try:
        agent = Agent(gw="gw-doc", key=keys.SigningKey.generate(), store=store, uplink=None, clock=clock,
                      sources=[_CountingSource(SOURCE_HEALTH + ("error.bad_checksum", "adverts", "scans_started"))])
        agent.restarts = {"clean": 2, "power_loss": 1}
        names = [r.name for r in agent.pipeline.health_readings(clock.monotonic())]
        clock.mono += 3600.0
        names += [r.name for r in agent.pipeline.health_readings(clock.monotonic())]
    finally:
        store.close()
    patterns = {"src.error.bad_checksum": "<source>.error.<reason>", "restarts.clean": "restarts.<kind>",
                "restarts.power_loss": "restarts.<kind>"}
    return {patterns.get(n, n.replace("src.", "<source>.", 1)) for n in names}


def test_the_documented_health_records_are_the_ones_the_gateway_sends(tmp_path):
    from gateway.adapters.store import SESSION_COUNTERS
    from gateway.app.agent import SOURCE_HEALTH
    documented = documented_health()
    assert len(documented) == len(set(documented))
    sent = emitted_health_names(tmp_path)
    assert "disk_written_bytes_per_day" in sent and "version" in sent and "<source>.power_cycles" in sent
    sent.add("last_stop.<kind>")  # one record per run, from gateway/adapters/restart_reason.py (service.py)
    from gateway.app.actions import HEALTH  # local actions: boards and programs (gateway/app/actions.py)
    from gateway.core.pipeline import _reported  # what the pipeline puts in batches
    assert all(_reported(k) for k in ("actuator.b.error.no_ack", "program.a.error.exit", "program.a.dropped_busy"))
    sent |= set(HEALTH)
    from gateway.app.downlink import POLL_HEALTH
    sent.add(POLL_HEALTH)  # the HTTP downlink's poll (gateway/app/downlink.py)
    sent |= {"update.running", "update.previous", "update.outcome"}  # once per start (gateway/app/update_agent.py)
    assert set(documented) == sent
    from gateway.adapters.restart_reason import KINDS
    text = open(os.path.join(ROOT, "docs", "wire-format.md")).read()
    row = [ln for ln in text.splitlines() if ln.startswith("| `health/last_stop.<kind>`")][0]
    assert all("`%s`" % kind in row for kind in KINDS)
    assert not any(k in documented for k in SESSION_COUNTERS)  # kept in memory for the console, not sent
    drivers = "".join(open(p).read() for p in glob.glob(os.path.join(ROOT, "drivers", "**", "*.py"), recursive=True))
    for key in SOURCE_HEALTH:  # each source counter the agent forwards is one a driver counts
        assert 'count("%s")' % key in drivers, key


def test_the_flush_file_format_is_in_the_wire_contract():
    wire_doc = open(os.path.join(ROOT, "docs", "wire-format.md")).read()
    assert "## Batch files" in wire_doc and "RFC 8742" in wire_doc.split("## Batch files", 1)[1]
    assert "CBOR sequence" not in open(GUIDE).read()  # the guide points there instead
    readme = open(os.path.join(ROOT, "README.md")).read()
    assert "tests/vectors/wire/" in readme and os.path.isdir(os.path.join(ROOT, "tests", "vectors", "wire"))
    assert "`tests/vectors/wire/`" in wire_doc


def test_sensors_example_is_what_provision_takes(tmp_path):
    from tools import provision
    rec, _, _ = provision.provision_one(str(tmp_path), "gw-ex", uplink="https://ingest.example.net/v1/batches",
                                        sensors=os.path.join(ROOT, "deploy", "sensors.example.toml"))
    cfg = config.load(rec["config"])
    with open(os.path.join(ROOT, "deploy", "sensors.example.toml"), "rb") as f:
        tables = tomllib.load(f)
    assert [s["name"] for s in cfg.sources] == [s["name"] for s in tables["sources"]]
    assert len(cfg.rules) == len(tables["rules"])
