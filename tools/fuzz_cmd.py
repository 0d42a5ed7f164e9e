"""``edge-gateway fuzz``: run the fuzzer (``tools.fuzz``) over the registered targets (``tools.fuzz_targets``)."""

from tools.fuzz import run
from tools.fuzz_targets import targets


# -- the command: edge-gateway fuzz ---------------------------------------------------------------------------
def register(sub):
    f = sub.add_parser("fuzz", help="fuzz every parser of untrusted input (docs/security.md)")
    f.add_argument("--inputs", type=int, default=100_000, help="inputs per target (default 100000)")
    f.add_argument("--seed", type=int, default=0, help="seed of the mutations (default 0): a run is repeatable")
    f.add_argument("--target", action="append", metavar="NAME", help="only this target (repeatable; --list prints the names)")
    f.add_argument("--seconds", type=float, help="stop each target after this many seconds")
    f.add_argument("--list", action="store_true", help="list the targets and exit")
    f.add_argument("--json", action="store_true", help="print one JSON object per target")
    f.set_defaults(func=cmd_fuzz)


def cmd_fuzz(args):
    import json
    import sys

    chosen = targets()
    if args.list:
        for t in chosen:
            print(t.name)
        return 0
    if args.target:
        unknown = set(args.target) - {t.name for t in chosen}
        if unknown:
            print("edge-gateway: unknown fuzz target(s): %s (see --list)" % ", ".join(sorted(unknown)),
                  file=sys.stderr)
            return 2
        chosen = [t for t in chosen if t.name in args.target]
    failed = 0
    for t in chosen:
        res = run(t, args.inputs, args.seed, args.seconds)
        failed += len(res.findings)
        if args.json:
            print(json.dumps(res.as_dict(), sort_keys=True), flush=True)
        else:
            print("%-28s %9d inputs %9d typed errors %9d accepted %7.1f s  %s" % (
                res.target, res.inputs, res.typed_errors, res.accepted, res.seconds,
                "OK" if not res.findings else "%d FINDINGS" % len(res.findings)), flush=True)
            for finding in res.findings:
                print("    %s  input %s" % (finding.error, finding.data.hex()), flush=True)
    return 1 if failed else 0
