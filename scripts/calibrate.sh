#!/usr/bin/env bash
# scripts/calibrate.sh [--small] [--max-error E]
# The fleet simulator beside the namespace testbeds, on the same shapes, in the same run:
#   one LAN (scripts/testbed.sh: a seed and N peers, every upload 20 Mbit/s) at N=16 (32 MiB)
#   and N=32 (16 MiB), and the sites testbed's smallest shape (scripts/sites.sh: 2 sites x 2
#   devices behind NAT, WAN 20/5 Mbit/s, origin 50 Mbit/s, 32 MiB).
# Prints each shape's all-done time from the testbed and from the simulator side by side, and
# sim / testbed. Exits 1 if any shape is further off than --max-error (default 0.10: +-10%).
#   --small   N=4 and N=8, and the sites shape, at 8 MiB (what CI runs: a few minutes)
# The simulator is given the testbeds' tc rates times GOODPUT (TCP/IPv4 headers in a 1500-byte
# MTU and the frame header per 16 KiB block: payload per byte on the wire); it models no
# framing itself. Needs root (network namespaces), like the testbeds.
set -euo pipefail
export LC_ALL=C
cd "$(dirname "$0")/.."
SMALL=0 MAX_ERROR=0.10
GOODPUT=0.955
while [ $# -gt 0 ]; do
    case "$1" in
        --small) SMALL=1; shift ;;
        --max-error) MAX_ERROR=$2; shift 2 ;;
        -h | --help) sed -n '2,13s/^# \{0,1\}//p' "$0"; exit 0 ;;
        *) echo "calibrate: unknown option $1" >&2; exit 2 ;;
    esac
done
calc() { awk "BEGIN { printf \"%.${2:-3}f\", ($1) }"; }
field() { grep '^RESULT' | tr ' ' '\n' | sed -n "s/^$1=//p" | head -n1; } # a testbed's RESULT line
sim_field() { tail -n1 | tr ' ' '\n' | sed -n "s/^$1=//p"; }              # the simulator's last line
rate() { calc "$1 * 1000000 * $GOODPUT" 0; } # Mbit/s -> the simulator's bit/s, as goodput

cargo build --release --quiet
cargo build --release --quiet --example fleet
SIM=target/release/examples/fleet
if [ "$SMALL" = 1 ]; then LAN_SHAPES="4:8 8:8" SITES_MIB=8; else LAN_SHAPES="16:32 32:16" SITES_MIB=32; fi

# Copies its input to stderr and on. Not `tee /dev/stderr`: that reopens the log file CI writes
# stderr to, truncating it.
echo_too() { local line; while IFS= read -r line || [ -n "$line" ]; do printf '%s\n' "$line" >&2; printf '%s\n' "$line"; done; }
ROWS=() bad=0
row() { # name testbed_s sim_s
    local err; err=$(calc "$3 / $2 - 1")
    local ok=yes; [ "$(calc "(($err) < 0 ? -($err) : ($err)) > $MAX_ERROR" 0)" = 1 ] && ok=no && bad=1
    ROWS+=("$(printf '%-34s %10s %10s %9s %6s' "$1" "$2" "$3" "$(calc "$3 / $2")" "$ok")")
}
for shape in $LAN_SHAPES; do
    n=${shape%:*} mib=${shape#*:}
    tb=$(bash scripts/testbed.sh --n "$n" --size "$mib" --rate 20mbit | echo_too | field all_done)
    sim=$("$SIM" --devices "$n" --sites 1 --seeds 1 --origin-up 0 --lan "$(rate 20)" --seed-up "$(rate 20)" \
        --size "${mib}M" --lan-latency 0 --svg /dev/null | echo_too | sim_field all_done_s)
    row "one LAN, seed + $n peers, $mib MiB" "$tb" "$sim"
done
tb=$(bash scripts/sites.sh --sites 2 --per-site 2 --size "$SITES_MIB" | echo_too | field all_done_s)
sim=$("$SIM" --devices 4 --sites 2 --size "${SITES_MIB}M" --origin-up "$(rate 50)" --wan-down "$(rate 20)" \
    --wan-up "$(rate 5)" --lan "$(rate 100)" --origin-delay 2 --lan-latency 0 --wan-latency 0 --svg /dev/null |
    echo_too | sim_field all_done_s)
row "sites 2 x 2 behind NAT, $SITES_MIB MiB" "$tb" "$sim"

echo
printf '%-34s %10s %10s %9s %6s\n' shape testbed_s sim_s sim/tb "+-$(calc "$MAX_ERROR * 100" 0)%"
printf '%s\n' "${ROWS[@]}"
exit "$bad"
