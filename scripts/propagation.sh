#!/usr/bin/env bash
# scripts/propagation.sh [--devices N] [--size MIB]    how fast a new release spreads on one LAN
#
# A seed and N devices (default 16), each `serve --follow fw.img` on its own 127.0.6.x address,
# find each other by LAN discovery on a multicast group of this run's own (no --peer, no origin).
# Once every device has installed release 1, release 2 is published into the seed's directory.
# Prints, from that moment, when the last device learnt of release 2 (took its manifest) and when
# the last one installed it (its hook ran): the first in announcement intervals (5 s: a device
# hears of a release at its neighbours' next announcement), the second against one interval plus
# the time one `fetch` of release 2 from the seed alone takes, measured after them in the same
# run (what a single device told at once would need); a `RESULT` line.
# Needs nothing but the release binary (built if missing); everything runs under a temp dir
# that is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
N=16 SIZE_MIB=8 BIN=target/release/flotilla
while [ $# -gt 0 ]; do
    case $1 in
        --devices) N=$2; shift 2 ;;
        --size) SIZE_MIB=$2; shift 2 ;;
        -h | --help) sed -n '2,12s/^# \{0,1\}//p' "$0"; exit 0 ;;
        *) echo "propagation: unknown option $1" >&2; exit 2 ;;
    esac
done
[ -x "$BIN" ] || cargo build --release >/dev/null
TMP=$(mktemp -d /tmp/flprop.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; [ -n "${PROPAGATION_KEEP:-}" ] || rm -rf "$TMP"; }
trap cleanup EXIT INT TERM
now() { date +%s.%N; }
calc() { awk "BEGIN { printf \"%.${2:-2}f\", ($1) }"; }

PORT=$((20000 + RANDOM % 20000))
GROUP=239.255.70.70:$((PORT + 1))
PUB=$("$BIN" keygen --secret "$TMP/op.key")
mkdir -p "$TMP/seed" "$TMP/one"
head -c $((SIZE_MIB << 20)) /dev/urandom >"$TMP/seed/fw.img"
"$BIN" publish "$TMP/seed/fw.img" --secret "$TMP/op.key" --release 1 >/dev/null
"$BIN" serve --data "$TMP/seed" --listen "127.0.6.1:$PORT" --discovery-group "$GROUP" --trust "$PUB" \
    --rescan 1 >"$TMP/seed.log" 2>&1 &
PIDS+=($!)
for ((i = 1; i <= N; i++)); do
    d=$TMP/d$i; mkdir -p "$d"; cp "$TMP/seed/fw.img.flotilla" "$d/"
    printf '#!/bin/sh\necho "$FLOTILLA_RELEASE $(date +%%s.%%N)" >> %s/hooks\n' "$d" >"$d/hook.sh"
    "$BIN" serve --data "$d" --listen "127.0.6.$((i + 1)):$PORT" --discovery-group "$GROUP" --trust "$PUB" \
        --follow fw.img --rescan 1 --on-complete "/bin/sh $d/hook.sh" >"$d/agent.log" 2>&1 &
    PIDS+=($!)
done
wait_all() { # wait_all RELEASE: until every device ran its hook for RELEASE
    local deadline=$(($(date +%s) + 120))
    while :; do
        local n=0
        for ((i = 1; i <= N; i++)); do grep -qs "^$1 " "$TMP/d$i/hooks" && n=$((n + 1)); done
        [ "$n" -eq "$N" ] && return 0
        [ "$(date +%s)" -lt $deadline ] || { echo "propagation: only $n of $N installed release $1" >&2; exit 1; }
        sleep 0.1
    done
}
wait_all 1
head -c $((SIZE_MIB << 20)) /dev/urandom >"$TMP/seed/.fw.img.new"
mv "$TMP/seed/.fw.img.new" "$TMP/seed/fw.img"
T0=$(now)
"$BIN" publish "$TMP/seed/fw.img" --secret "$TMP/op.key" --release 2 >/dev/null
wait_all 2
LEARNT=0 INSTALLED=0
for ((i = 1; i <= N; i++)); do
    # The log has no clock; the manifest file's change time is when the device took release 2.
    l=$(calc "$(stat -c %.9Z "$TMP/d$i/fw.img.flotilla") - $T0")
    h=$(calc "$(awk '$1 == 2 { print $2 }' "$TMP/d$i/hooks") - $T0")
    LEARNT=$(calc "$l > $LEARNT ? $l : $LEARNT") INSTALLED=$(calc "$h > $INSTALLED ? $h : $INSTALLED")
done
# The reference: one device fetching release 2 from the seed alone, told of it by hand.
A=$(now)
"$BIN" fetch "$TMP/seed/fw.img.flotilla" --trust "$PUB" --out "$TMP/one/fw.img" --no-discovery \
    --listen "127.0.6.250:$PORT" --peer "127.0.6.1:$PORT" >"$TMP/one.log" 2>&1 ||
    { echo "propagation: the reference fetch failed: $(tail -n 2 "$TMP/one.log")" >&2; exit 1; }
ONE=$(calc "$(now) - $A")
echo "== $N devices following fw.img on one LAN, ${SIZE_MIB} MiB releases"
echo "release 2, from its publish: last device learnt of it ${LEARNT} s ($(calc "$LEARNT / 5") announcement intervals)"
echo "last device installed it ${INSTALLED} s: $(calc "$INSTALLED / (5 + $ONE)") x (one interval + one device's fetch from the seed alone, ${ONE} s)"
echo "RESULT devices=$N size_mib=$SIZE_MIB last_learnt_s=$LEARNT learnt_intervals=$(calc "$LEARNT / 5") last_installed_s=$INSTALLED one_fetch_s=$ONE installed_ratio=$(calc "$INSTALLED / (5 + $ONE)")"
