#!/usr/bin/env bash
# scripts/sites.sh [options]     a fleet of sites behind NAT, an HTTP origin and a UDP tracker
#
# S site namespaces, each a NAT router (nftables masquerade) with a shaped WAN uplink and downlink
# and K devices on the site's LAN bridge; one "internet" namespace (a bridge) joins the routers
# to the origin host, which runs nginx (its uplink shaped) and Debian's opentracker. No site
# accepts inbound connections. Every device runs `flotilla fetch` with only the origin
# (`--origin`) and the tracker (`--tracker`): no `--peer`; LAN discovery finds the site's
# devices. Addresses: the internet 10.78.0.0/24, site s's LAN 10.79.s.0/24; nothing is added to
# the host's network, and everything is removed on exit, error or signal.
#   --sites S          sites (default 8)             --per-site K     devices per site (default 4)
#   --size MIB         release size (default 32)     --chunk-size SZ  (default 256K)
#   --wan-down RATE    each site's WAN download (default 20mbit)   --wan-up RATE (default 5mbit)
#   --origin-up RATE   the origin's uplink (default 50mbit)        --lan RATE    each device's
#                      LAN uplink (default 100mbit)                --origin-delay S (default 2)
#   --reachable N      the first N sites forward TCP port 7070 to their first device, which is
#                      then reachable from outside (default 0: no site is)
#   --max-egress X     fail (exit 1) if the origin sends more than X copies of the release
#   --baseline         also: every device curls the file from the origin at once
#   --rollout POLL     also: the fleet, on release 1, runs `serve --follow` polling the origin
#                      every POLL s; release 2 (the same size) is uploaded to nginx; prints the
#                      time from the upload to the last device installed, against the time the
#                      fleet took to move release 1 above, and what polling costs the origin
#   --bin PATH         agent binary (default target/release/flotilla, built if missing)
# Prints per site the WAN download (HTTP body bytes from nginx's log, and bytes on the router's
# WAN interface) in release sizes, the origin's egress, the all-done time against the topology's
# bound max(S*F/origin_up, F/wan_down) (the origin must send each site a copy: no site reaches
# another), and the same beside the origin-alone baseline; a `RESULT ...` line. Exits 1 if a copy
# is wrong or a device failed. Environment: SITES_AGENT_ARGS (more `fetch` options for every
# device), SITES_VERBOSE=1 (debug logs), SITES_KEEP_LOGS=DIR (copy every log there at the end).
set -euo pipefail
export LC_ALL=C
START_DIR=$PWD
cd "$(dirname "$0")/.."

PREFIX=flst # namespaces ${PREFIX}<pid>-..., temp dir ${TMPDIR:-/tmp}/${PREFIX}<pid>.*
S=8 K=4 SIZE_MIB=32 CHUNK=256K WAN_DOWN=20mbit WAN_UP=5mbit ORIGIN_UP=50mbit LAN=100mbit
DELAY=2 BASELINE=0 ROLLOUT='' REACHABLE=0 MAX_EGRESS='' BIN=target/release/flotilla PORT=7070 HTTP=8080 TRACKER_PORT=6969
PIDS=() NSS=() TMP='' POLICY_RC=''
P=${PREFIX}$$

usage() { sed -n '2,22s/^# \{0,1\}//p' "$0" >&2; exit 2; }
die() { echo "sites: $1" >&2; exit "${2:-1}"; }
calc() { awk "BEGIN { printf \"%.${2:-3}f\", ($1) }"; }
bps() { awk -v r="${1,,}" 'BEGIN { match(r, /^[0-9.]+/); n = substr(r, 1, RLENGTH) + 0; u = substr(r, RLENGTH + 1)
    m = u == "bit" ? 1 : u == "kbit" ? 1e3 : u == "mbit" ? 1e6 : u == "gbit" ? 1e9 : 0
    if (n <= 0 || m == 0) exit 1; printf "%.0f", n * m }'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --sites) S=$2; shift 2 ;;
        --per-site) K=$2; shift 2 ;;
        --size) SIZE_MIB=$2; shift 2 ;;
        --chunk-size) CHUNK=$2; shift 2 ;;
        --wan-down) WAN_DOWN=$2; shift 2 ;;
        --wan-up) WAN_UP=$2; shift 2 ;;
        --origin-up) ORIGIN_UP=$2; shift 2 ;;
        --lan) LAN=$2; shift 2 ;;
        --origin-delay) DELAY=$2; shift 2 ;;
        --baseline) BASELINE=1; shift ;;
        --rollout) ROLLOUT=$2; shift 2 ;;
        --reachable) REACHABLE=$2; shift 2 ;;
        --max-egress) MAX_EGRESS=$2; shift 2 ;;
        --bin) BIN=$2; [[ "$BIN" = /* ]] || BIN=$START_DIR/$BIN; shift 2 ;;
        -h | --help) usage ;;
        *) echo "unknown option $1" >&2; usage ;;
    esac
done
[[ "$S" =~ ^[0-9]+$ && "$S" -ge 1 && "$S" -le 100 ]] || die "--sites: 1 to 100" 2
[[ "$K" =~ ^[0-9]+$ && "$K" -ge 1 && "$K" -le 50 ]] || die "--per-site: 1 to 50" 2
for r in "$WAN_DOWN" "$WAN_UP" "$ORIGIN_UP" "$LAN"; do bps "$r" >/dev/null || die "bad rate $r" 2; done
[ "$(id -u)" = 0 ] || die "needs root (network namespaces)" 2

cleanup() {
    set +e
    trap - EXIT INT TERM
    local pid ns
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
    for ns in "${NSS[@]}"; do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
    done
    for ns in "${NSS[@]}"; do ip netns del "$ns" 2>/dev/null; done
    [ -n "${SITES_KEEP_LOGS:-}" ] && [ -n "$TMP" ] && mkdir -p "$SITES_KEEP_LOGS" &&
        find "$TMP" -name '*.log' -exec cp --parents {} "$SITES_KEEP_LOGS" \;
    [ -n "$TMP" ] && rm -rf "$TMP"
    [ -n "$POLICY_RC" ] && rm -f /usr/sbin/policy-rc.d
}
trap cleanup EXIT
trap 'exit 130' INT TERM

need=()
command -v nginx >/dev/null || need+=(nginx)
command -v opentracker >/dev/null || need+=(opentracker)
command -v nft >/dev/null || need+=(nftables)
command -v curl >/dev/null || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing ${need[*]}"
    [ -e /usr/sbin/policy-rc.d ] || { POLICY_RC=1; printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; }
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq "${need[@]}" </dev/null >/dev/null 2>&1 ||
        { apt-get update -qq </dev/null >/dev/null && apt-get install -y -qq "${need[@]}" </dev/null >/dev/null; } ||
        die "cannot install ${need[*]}"
fi
if [ ! -x "$BIN" ]; then cargo build --release </dev/null >/dev/null || die "build failed"; fi
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")

TMP=$(mktemp -d "${TMPDIR:-/tmp}/$P.XXXXXX")
chmod 755 "$TMP"
F=$((SIZE_MIB * 1048576))

# tbf with a burst of 5 ms at the rate (at least 4 frames) and a 50 ms queue, as testbed.sh.
shape() { # NS DEV RATE
    local burst; burst=$(awk -v b="$(bps "$3")" 'BEGIN { x = b / 8 * 0.005; printf "%d", x < 6056 ? 6056 : x }')
    tc -n "$1" qdisc add dev "$2" root tbf rate "$3" burst "$burst" latency 50ms
}
newns() { ip netns add "$1" && NSS+=("$1") && ip -n "$1" link set lo up; }

# --- the network --------------------------------------------------------------------------------
newns "$P-inet"
ip -n "$P-inet" link add br0 type bridge && ip -n "$P-inet" link set br0 up
newns "$P-origin"
ip -n "$P-inet" link add vo type veth peer name eth0 netns "$P-origin"
ip -n "$P-inet" link set vo master br0 up
ip -n "$P-origin" addr add 10.78.0.2/24 dev eth0 && ip -n "$P-origin" link set eth0 up
shape "$P-origin" eth0 "$ORIGIN_UP"
for ((s = 1; s <= S; s++)); do
    r=$P-r$s
    newns "$r"
    ip -n "$P-inet" link add "vr$s" type veth peer name wan netns "$r"
    ip -n "$P-inet" link set "vr$s" master br0 up
    ip -n "$r" addr add "10.78.0.$((10 + s))/24" dev wan && ip -n "$r" link set wan up
    shape "$r" wan "$WAN_UP"            # the site's upload
    shape "$P-inet" "vr$s" "$WAN_DOWN"  # the site's download: the internet's egress towards it
    ip -n "$r" link add lan type bridge mcast_snooping 0 && ip -n "$r" link set lan up
    ip -n "$r" addr add "10.79.$s.1/24" dev lan
    ip netns exec "$r" sysctl -qw net.ipv4.ip_forward=1
    forward=''
    [ "$s" -le "$REACHABLE" ] && forward="iifname \"wan\" tcp dport $PORT dnat to 10.79.$s.11:$PORT"
    ip netns exec "$r" nft -f - <<EOF
table ip nat {
    chain pre {
        type nat hook prerouting priority -100;
        $forward
    }
    chain post {
        type nat hook postrouting priority 100;
        oifname "wan" masquerade
    }
}
EOF
    for ((k = 1; k <= K; k++)); do
        d=$P-s${s}d$k
        newns "$d"
        ip -n "$r" link add "d$k" type veth peer name eth0 netns "$d"
        ip -n "$r" link set "d$k" master lan up
        ip -n "$d" addr add "10.79.$s.$((10 + k))/24" dev eth0 && ip -n "$d" link set eth0 up
        ip -n "$d" route add default via "10.79.$s.1"
        shape "$d" eth0 "$LAN"
    done
done

# --- the release, the origin, the tracker -------------------------------------------------------
mkdir -p "$TMP/www" "$TMP/nginx" "$TMP/ot"
PUB=$("$BIN" keygen --secret "$TMP/op.key" 2>/dev/null)
head -c "$F" /dev/urandom >"$TMP/www/fw.img"
"$BIN" publish "$TMP/www/fw.img" --secret "$TMP/op.key" --release 1 --chunk-size "$CHUNK" >/dev/null 2>&1
# Release 2, for --rollout: published now, so that the tracker's whitelist lists it too.
mkdir -p "$TMP/next"
head -c "$F" /dev/urandom >"$TMP/next/fw.img"
"$BIN" publish "$TMP/next/fw.img" --secret "$TMP/op.key" --release 2 --chunk-size "$CHUNK" >/dev/null 2>&1
for m in "$TMP/www/fw.img.flotilla" "$TMP/next/fw.img.flotilla"; do
    "$BIN" inspect "$m" | awk '/^info hash:/ { print $3 }'
done >"$TMP/ot/whitelist"
chmod 755 "$TMP/ot" && chmod 644 "$TMP/ot/whitelist" "$TMP/www/fw.img"
chmod 755 "$TMP/www"
cat >"$TMP/nginx/nginx.conf" <<EOF
daemon off; master_process off; worker_processes 1; pid $TMP/nginx/nginx.pid; error_log $TMP/nginx/error.log;
events { worker_connections 1024; }
http {
    log_format bytes '\$remote_addr \$status \$body_bytes_sent \$bytes_sent \$request_length \$uri';
    access_log $TMP/nginx/access.log bytes; sendfile on; keepalive_requests 100000;
    client_body_temp_path $TMP/nginx; proxy_temp_path $TMP/nginx; fastcgi_temp_path $TMP/nginx;
    uwsgi_temp_path $TMP/nginx; scgi_temp_path $TMP/nginx;
    server { listen 10.78.0.2:$HTTP; root $TMP/www; }
}
EOF
ip netns exec "$P-origin" nginx -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" >"$TMP/nginx/out.log" 2>&1 &
PIDS+=($!)
ip netns exec "$P-origin" opentracker -i 10.78.0.2 -p "$TRACKER_PORT" -P "$TRACKER_PORT" -d "$TMP/ot" -w whitelist \
    >"$TMP/ot/out.log" 2>&1 &
PIDS+=($!)
sleep 0.5
URL=http://10.78.0.2:$HTTP/fw.img

origin_bytes() { awk -v ip="$1" '($1 == ip || ip == "") { n += $3 } END { printf "%.0f", n }' "$TMP/nginx/access.log"; }

# --- Flotilla -----------------------------------------------------------------------------------
declare -A RX0
for ((s = 1; s <= S; s++)); do RX0[$s]=$(ip netns exec "$P-r$s" cat /sys/class/net/wan/statistics/rx_bytes); done
: >"$TMP/nginx/access.log"
DEV_PIDS=()
for ((s = 1; s <= S; s++)); do
    for ((k = 1; k <= K; k++)); do
        dd=$TMP/s${s}d$k; mkdir -p "$dd"; cp "$TMP/www/fw.img.flotilla" "$dd/"
        # Every device waits for $TMP/go, so that all learn of the release at the same instant.
        ip netns exec "$P-s${s}d$k" bash -c 'until [ -e "$0" ]; do sleep 0.01; done; exec "$@"' "$TMP/go" \
            "$BIN" ${SITES_VERBOSE:+-v} fetch "$dd/fw.img.flotilla" --trust "$PUB" --out "$dd/fw.img" \
            --listen "10.79.$s.$((10 + k)):$PORT" --origin "$URL" --origin-delay "$DELAY" \
            --tracker "udp://10.78.0.2:$TRACKER_PORT" --seed-for 100000 ${SITES_AGENT_ARGS:-} \
            </dev/null >"$dd/agent.log" 2>&1 &
        PIDS+=($!) DEV_PIDS+=($!)
    done
done
sleep 1
touch "$TMP/go"
T0=$EPOCHREALTIME
BOUND=$(calc "$(calc "$S * $F * 8 / $(bps "$ORIGIN_UP")") > $F * 8 / $(bps "$WAN_DOWN") ? $S * $F * 8 / $(bps "$ORIGIN_UP") : $F * 8 / $(bps "$WAN_DOWN")")
# With reachable sites the uplinks, not the origin, carry the fleet after the origin delay.
LIMIT=$(calc "($BOUND + $DELAY) * 6 + 60" 0)
declare -A DONE=()
while [ ${#DONE[@]} -lt $((S * K)) ]; do
    for ((s = 1; s <= S; s++)); do
        for ((k = 1; k <= K; k++)); do
            [ -n "${DONE[$s.$k]:-}" ] && continue
            [ -f "$TMP/s${s}d$k/fw.img" ] && DONE[$s.$k]=$(calc "$EPOCHREALTIME - $T0") && continue
            # A device that exited before its copy was whole will not finish: say why now.
            kill -0 "${DEV_PIDS[$(((s - 1) * K + k - 1))]}" 2>/dev/null ||
                die "site $s device $k exited early: $(tail -n 3 "$TMP/s${s}d$k/agent.log")"
        done
    done
    [ "$(calc "$EPOCHREALTIME - $T0 > $LIMIT" 0)" = 1 ] && die "not all done after ${LIMIT}s (${#DONE[@]} of $((S * K)))"
    sleep 0.2
done
ALL=$(printf '%s\n' "${DONE[@]}" | sort -g | tail -n1)
bad=0
for ((s = 1; s <= S; s++)); do for ((k = 1; k <= K; k++)); do
    cmp -s "$TMP/www/fw.img" "$TMP/s${s}d$k/fw.img" || { echo "site $s device $k: wrong copy"; bad=1; }
done; done
for pid in "${DEV_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
echo "== Flotilla: $S sites x $K devices behind NAT ($REACHABLE reachable), $SIZE_MIB MiB, WAN $WAN_DOWN down / $WAN_UP up, origin $ORIGIN_UP up, origin delay $DELAY s"
printf '%-6s %14s %14s %10s\n' site "WAN body/F" "WAN wire/F" "last done"
MAX_BODY=0 MAX_WIRE=0
for ((s = 1; s <= S; s++)); do
    body=$(calc "$(origin_bytes "10.78.0.$((10 + s))") / $F")
    wire=$(calc "($(ip netns exec "$P-r$s" cat /sys/class/net/wan/statistics/rx_bytes) - ${RX0[$s]}) / $F")
    last=$(for ((k = 1; k <= K; k++)); do echo "${DONE[$s.$k]}"; done | sort -g | tail -n1)
    printf '%-6s %14s %14s %9ss\n' "$s" "$body" "$wire" "$last"
    MAX_BODY=$(calc "$body > $MAX_BODY ? $body : $MAX_BODY")
    MAX_WIRE=$(calc "$wire > $MAX_WIRE ? $wire : $MAX_WIRE")
done
EGRESS=$(calc "$(origin_bytes "") / $F")
echo "origin egress (HTTP body bytes): $EGRESS x the release ($(calc "$EGRESS / $S") x S)"
echo "all done: ${ALL}s; the topology's bound max(S*F/origin_up, F/wan_down) = ${BOUND}s: $(calc "$ALL / $BOUND") x"
# With reachable sites and the origin kept for last, nothing moves before the origin delay (only
# the origin holds the release), and after it every byte entering an unreachable site crosses a
# reachable site's WAN uplink: the time the operator trades for the origin's bytes.
PEER_BOUND=none
if [ "$REACHABLE" -gt 0 ] && [ "$REACHABLE" -lt "$S" ]; then
    PEER_BOUND=$(calc "$DELAY + ($S - $REACHABLE) * $F * 8 / ($REACHABLE * $(bps "$WAN_UP"))")
    echo "the peers' bound (origin delay + (S-R)*F/(R*wan_up): the reachable sites' uplinks carry the others) = ${PEER_BOUND}s: $(calc "$ALL / $PEER_BOUND") x"
fi

# --- the origin alone ---------------------------------------------------------------------------
BASE=''
if [ "$BASELINE" = 1 ]; then
    sleep 1
    : >"$TMP/nginx/access.log"
    T0=$EPOCHREALTIME; cpids=()
    for ((s = 1; s <= S; s++)); do for ((k = 1; k <= K; k++)); do
        ip netns exec "$P-s${s}d$k" curl -sS -o /dev/null "$URL" </dev/null &
        PIDS+=($!) cpids+=($!)
    done; done
    for pid in "${cpids[@]}"; do wait "$pid" || die "a baseline curl failed"; done
    BASE=$(calc "$EPOCHREALTIME - $T0")
    echo "== the origin alone (every device curls the file at once): all done ${BASE}s, $(calc "$BASE / $BOUND") x the bound;" \
        "origin egress $(calc "$(origin_bytes "") / $F") x; Flotilla is $(calc "$BASE / $ALL") x faster"
fi
# --- a rollout: the fleet on release 1 follows the name; release 2 is uploaded -----------------
ROLL='' KNEW=''
if [ -n "$ROLLOUT" ]; then
    sleep 1
    ROLL_PIDS=()
    for ((s = 1; s <= S; s++)); do for ((k = 1; k <= K; k++)); do
        rd=$TMP/s${s}d${k}r; mkdir -p "$rd"; cp "$TMP/www/fw.img" "$TMP/www/fw.img.flotilla" "$rd/"
        printf '#!/bin/sh\necho "$FLOTILLA_RELEASE $(date +%%s.%%N)" >>%s/hooks\n' "$rd" >"$rd/hook.sh"
        ip netns exec "$P-s${s}d$k" "$BIN" ${SITES_VERBOSE:+-v} serve --data "$rd" --trust "$PUB" --follow fw.img \
            --listen "10.79.$s.$((10 + k)):$PORT" --origin "http://10.78.0.2:$HTTP/" --poll "$ROLLOUT" \
            --origin-delay "$DELAY" --tracker "udp://10.78.0.2:$TRACKER_PORT" --rescan 1 \
            --on-complete "/bin/sh $rd/hook.sh" ${SITES_AGENT_ARGS:-} </dev/null >"$rd/agent.log" 2>&1 &
        PIDS+=($!) ROLL_PIDS+=($!)
    done; done
    # Every device polls once (release 1: nothing new) before the upload.
    sleep "$(calc "$ROLLOUT * 1.2 + 1" 0)"
    : >"$TMP/nginx/access.log"
    cp "$TMP/next/fw.img" "$TMP/www/.fw.img.new" && mv "$TMP/www/.fw.img.new" "$TMP/www/fw.img"
    T0=$EPOCHREALTIME
    cp "$TMP/next/fw.img.flotilla" "$TMP/www/.fw.img.flotilla.new" && mv "$TMP/www/.fw.img.flotilla.new" "$TMP/www/fw.img.flotilla"
    LIMIT=$(calc "($ALL + $ROLLOUT + $DELAY) * 6 + 60" 0)
    while :; do
        n=0
        for ((s = 1; s <= S; s++)); do for ((k = 1; k <= K; k++)); do
            grep -qs '^2 ' "$TMP/s${s}d${k}r/hooks" && n=$((n + 1))
        done; done
        [ "$n" -eq $((S * K)) ] && break
        [ "$(calc "$EPOCHREALTIME - $T0 > $LIMIT" 0)" = 1 ] && die "rollout: only $n of $((S * K)) installed release 2 after ${LIMIT}s"
        sleep 0.2
    done
    # When each device took release 2's manifest: the change time of the one in its directory.
    KNEW=$(for ((s = 1; s <= S; s++)); do for ((k = 1; k <= K; k++)); do
        calc "$(stat -c %.9Z "$TMP/s${s}d${k}r/fw.img.flotilla") - $T0"; echo
    done; done | sort -g | tail -n1)
    ROLL=$(for ((s = 1; s <= S; s++)); do for ((k = 1; k <= K; k++)); do
        awk -v t0="$T0" '$1 == 2 { printf "%.3f\n", $2 - t0 }' "$TMP/s${s}d${k}r/hooks"
    done; done | sort -g | tail -n1)
    for ((s = 1; s <= S; s++)); do for ((k = 1; k <= K; k++)); do
        cmp -s "$TMP/next/fw.img" "$TMP/s${s}d${k}r/fw.img" || { echo "site $s device $k: wrong copy of release 2"; bad=1; }
    done; done
    for pid in "${ROLL_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    ROLL_EGRESS=$(calc "$(awk '$6 == "/fw.img" { n += $3 } END { printf "%.0f", n }' "$TMP/nginx/access.log") / $F")
    # A poll of an unchanged manifest: its request and its 304, bytes on the wire at the origin.
    POLL_BYTES=$(awk '$2 == 304 { n++; b += $4 + $5 } END { printf "%.0f", n ? b / n : 0 }' "$TMP/nginx/access.log")
    POLLS_304=$(awk '$2 == 304' "$TMP/nginx/access.log" | wc -l)
    PER_DAY=$(calc "$POLL_BYTES * 86400 / 300 / 1024" 1)
    echo "== rollout: release 2 uploaded to the origin; every device follows fw.img, polling every ${ROLLOUT}s"
    echo "last device knew of release 2 ${KNEW}s after the upload (the poll interval is ${ROLLOUT}s)"
    echo "last device installed release 2 ${ROLL}s after the upload: $(calc "$ROLL / $ALL") x the ${ALL}s the fleet took to move release 1" \
        "(the poll interval adds up to ${ROLLOUT}s); origin egress $ROLL_EGRESS x the release"
    echo "a poll of an unchanged manifest costs the origin ${POLL_BYTES} bytes (request + 304, mean of $POLLS_304):" \
        "${PER_DAY} KiB per device per day at the default --poll 300"
fi
echo "RESULT sites=$S per_site=$K reachable=$REACHABLE origin_delay=$DELAY size_mib=$SIZE_MIB all_done_s=$ALL bound_s=$BOUND ratio=$(calc "$ALL / $BOUND") peer_bound_s=$PEER_BOUND" \
    "origin_egress=$EGRESS max_site_wan_body=$MAX_BODY max_site_wan_wire=$MAX_WIRE baseline_s=${BASE:-none} rollout_knew_s=${KNEW:-none} rollout_s=${ROLL:-none} copies_ok=$((1 - bad))"
if [ -n "$MAX_EGRESS" ] && [ "$(calc "$EGRESS > $MAX_EGRESS" 0)" = 1 ]; then
    echo "sites: the origin sent $EGRESS copies, more than --max-egress $MAX_EGRESS"
    bad=1
fi
exit "$bad"
