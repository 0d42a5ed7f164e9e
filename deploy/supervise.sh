#!/bin/sh
# The update supervisor: brings the previous version back when a new one does not prove itself
# (docs/operations.md, "Updating gateways"). POSIX sh and coreutils only, so it works when no Python does.
#
#   supervise.sh [--root DIR] [--state DIR] start       the unit's ExecStartPre=+ (before every start)
#   supervise.sh [--root DIR] [--state DIR] stopped     the unit's ExecStopPost=+ (after every stop)
#
# Installed by install.sh as /opt/edge-gateway/supervise.sh. While /opt/edge-gateway/trial exists (written by
# `edge-gateway update` just before it switched `current`), each start is counted:
#   * the state directory's update-proven names the trial's version: kept (trial removed, outcome "kept");
#   * update-unproven names it (the agent gave up after update.prove_s), or this is start number max_starts+1
#     (a crash loop): `current` goes back to the trial's previous target (atomic rename), outcome "rolled_back";
#   * otherwise the start is counted and the new version runs.
# On "stopped" with an exit status systemd will not restart (2: unusable key/store, 78: config), a version on trial
# is rolled back at once and the unit restarted. A trial whose version is not `current` (a power cut before the
# switch) is stale and removed. The agent reports the outcome upstream at its next start (update-outcome).
set -u
ROOT=${DESTDIR:-/} STATE=
while [ $# -gt 1 ]; do
    case "$1" in
        --root) ROOT=$2; shift 2 ;;
        --state) STATE=$2; shift 2 ;;
        *) break ;;
    esac
done
MODE=${1:-start}
R=$(cd "$ROOT" && pwd); R=${R%/}
BASE=$R/opt/edge-gateway
STATE=${STATE:-$R/var/lib/edge-gateway}
TRIAL=$BASE/trial
[ -f "$TRIAL" ] || exit 0

field() { sed -n "s/^$1=//p" "$TRIAL" | head -n 1; }
marker() {  # the first line of a marker the agent wrote (a regular file only: a planted link is ignored)
    f=$STATE/$1
    [ -f "$f" ] && [ ! -L "$f" ] && head -c 64 "$f" | head -n 1
}
put() {  # put FILE: stdin to FILE atomically and durably
    cat >"$1.tmp.$$" && sync "$1.tmp.$$" 2>/dev/null; mv -f "$1.tmp.$$" "$1" && sync "$BASE" 2>/dev/null
    return 0
}
outcome() {  # outcome ID OUTCOME FROM TO REASON
    printf 'id=%s\noutcome=%s\nversion=%s\nprevious=%s\nreason=%s\n' "$1" "$2" "$3" "$4" "$5" | put "$BASE/update-outcome"
}
log() { echo "edge-gateway supervisor: $*" >&2; }

VERSION=$(field version) TARGET=$(field target) PREV=$(field previous)
STARTS=$(field starts) MAX=$(field max_starts) PROVE=$(field prove_s)
case "$STARTS" in ''|*[!0-9]*) STARTS=0 ;; esac
case "$MAX" in ''|*[!0-9]*) MAX=3 ;; esac
CURRENT=$(readlink "$BASE/current" || true)

if [ "$CURRENT" != "$TARGET" ]; then
    log "trial of $VERSION is stale (current is $CURRENT): removed"
    rm -f "$TRIAL"; exit 0
fi
if [ "$(marker update-proven)" = "$VERSION" ]; then
    ID=$(sed -n 's/^id=//p' "$BASE/update-outcome" 2>/dev/null | head -n 1)
    outcome "${ID:-kept-$VERSION}" kept "$VERSION" "${PREV#*/}" "delivered a batch"
    rm -f "$TRIAL"; sync "$BASE" 2>/dev/null
    log "$VERSION proved itself: kept"
    exit 0
fi

REASON=
if [ "$(marker update-unproven)" = "$VERSION" ]; then
    REASON="not proven: no batch delivered within ${PROVE}s"
elif [ "$MODE" = stopped ]; then
    case "${EXIT_STATUS:-}" in
        2|78) REASON="stopped with exit status $EXIT_STATUS, which systemd does not restart" ;;
        *) exit 0 ;;
    esac
elif [ "$STARTS" -ge "$MAX" ]; then
    REASON="not proven after $STARTS starts (crash loop)"
fi

if [ -z "$REASON" ]; then
    sed "s/^starts=.*/starts=$((STARTS + 1))/" "$TRIAL" | put "$TRIAL"
    log "$VERSION on trial: start $((STARTS + 1)) of $MAX"
    exit 0
fi

if [ -z "$PREV" ] || [ ! -x "$BASE/$PREV/bin/edge-gateway" ]; then
    log "$VERSION failed ($REASON) but the previous version $PREV is gone: nothing to go back to"
    rm -f "$TRIAL"; exit 1
fi
# Outcome first, then the switch, then the trial goes: a power cut in between repeats the rollback, never skips it.
outcome "$(date +%s)-$$" rolled_back "$VERSION" "${PREV#*/}" "$REASON"
ln -sfn "$PREV" "$BASE/current.new" && mv -Tf "$BASE/current.new" "$BASE/current" || { log "cannot switch back"; exit 1; }
printf '%s\n' "$TARGET" | put "$BASE/previous"
rm -f "$TRIAL"; sync "$BASE" 2>/dev/null
log "rolled back from $VERSION to $PREV: $REASON"
if [ "$MODE" = stopped ] && [ "$R" = "" ] && command -v systemctl >/dev/null 2>&1; then
    systemctl --no-block restart edge-gateway.service || true
fi
exit 0
