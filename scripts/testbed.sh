#!/usr/bin/env bash
# scripts/testbed.sh [options]         one seed and N peers, each in its own network namespace
# scripts/testbed.sh --cleanup-stale   remove namespaces, processes and temp dirs of killed runs
#
# Hosts are joined by veth pairs to a bridge that lives in a namespace of its own, so nothing is
# added to the host's network; addresses come from a private /24 (default 10.77.0.0/24) that exists
# only inside these namespaces, with no route anywhere else. Each host's upload (its veth egress)
# is shaped with tc tbf; downloads are not shaped, so T_min has no F/d_min term.
#   --n N            peers (default 16)            --size MIB       file size (default 32)
#   --rate RATE      every upload, tc units: kbit/mbit/gbit = 10^3/10^6/10^9 bit/s (default 20mbit)
#   --seed-rate RATE the seed's upload (default: --rate)
#   --chunk-size SZ  manifest chunk size (default 256K)      --runs R    swarm runs (default 1)
#   --baseline       also measure client-server: nginx in the seed's namespace, N curls at once
#   --compare aria2  also run aria2 (Debian's aria2c) on the same hosts and shaping, as a user would
#                    set it up: a torrent of the same file with the same piece size, Debian's
#                    opentracker (HTTP) in the seed's namespace, peer exchange on, DHT and LPD off, every
#                    peer seeding on after it completes; printed beside Flotilla's figures
#   --churn          kill every third peer (30%) and restart the seed once, 40% of T_min into a run;
#                    the survivors must still complete with correct copies
#   --seed-only      peers get only the seed's address (for discovery / peer exchange); default
#                    is a full mesh: each peer dials the seed and every lower-numbered peer
#   --bin PATH       agent binary (default: the repo's target/release/flotilla, built if missing)
#   --subnet A.B.C   the /24 to use (default 10.77.0)       --timeout S  per run (default 2x N*F/u_s + 30)
# Prints a table per run and a `RESULT ...` line; exits 1 if any copy is wrong or any peer failed.
set -euo pipefail
export LC_ALL=C
START_DIR=$PWD # --bin is relative to where we were started; everything else to the repo root
cd "$(dirname "$0")/.."

PREFIX=fltb # namespaces are ${PREFIX}<pid>-<host>, temp dirs ${TMPDIR:-/tmp}/${PREFIX}<pid>.*
N=16 SIZE_MIB=32 RATE=20mbit SEED_RATE='' CHUNK=256K RUNS=1 BASELINE=0 SEED_ONLY=0 CHURN=0 COMPARE=
BIN=target/release/flotilla SUBNET=10.77.0 TIMEOUT='' PORT=7070 HTTP_PORT=8080
PIDS=() NSS=() TMP='' POLICY_RC='' BR=${PREFIX}$$-br

usage() { sed -n '2,22s/^# \{0,1\}//p' "$0" >&2; exit 2; }
die() { echo "testbed: $1" >&2; exit "${2:-1}"; }
calc() { awk "BEGIN { printf \"%.${2:-3}f\", ($1) }"; } # parenthesised: a bare > would redirect
max2() { calc "($1) > ($2) ? ($1) : ($2)" "${3:-3}"; }
ns_of() { echo "${PREFIX}$$-h$1"; }     # host 0 is the seed, 1..N the peers
addr_of() { echo "$SUBNET.$(($1 + 1))"; }
# tc rate -> bit/s (tc's kbit/mbit/gbit are SI: 10^3, 10^6, 10^9)
bps() { awk -v r="${1,,}" 'BEGIN { match(r, /^[0-9.]+/); n = substr(r, 1, RLENGTH) + 0; u = substr(r, RLENGTH + 1)
    m = u == "bit" ? 1 : u == "kbit" ? 1e3 : u == "mbit" ? 1e6 : u == "gbit" ? 1e9 : 0
    if (n <= 0 || m == 0) exit 1; printf "%.0f", n * m }'; }
median() { sort -g | awk '{ v[NR] = $1 } END { printf "%.3f", NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
nap() { read -rt "$1" -u 7 _ || true; } # sleep without a fork: fd 7 is a fifo nobody writes to
alive() { local s; [ -r "/proc/$1/stat" ] && { read -r _ _ s _ <"/proc/$1/stat"; } 2>/dev/null && [ "$s" != Z ]; } # a process exiting under the read is not alive
rss_kib() { local k; k=$(awk '/^VmHWM:/ { print $2 }' "/proc/$1/status" 2>/dev/null) || true; echo "${k:-0}"; }
forget() { local keep=() p; for p in "${PIDS[@]}"; do [[ " $* " == *" $p "* ]] || keep+=("$p"); done; PIDS=("${keep[@]}"); }

# Stop processes we started, by PID: TERM, up to 3 s grace, then KILL; reap them.
stop_pids() {
    local pid i any
    for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
    for ((i = 0; i < 30; i++)); do
        any=0; for pid in "$@"; do alive "$pid" && any=1; done
        [ "$any" = 0 ] && break; sleep 0.1
    done
    for pid in "$@"; do kill -KILL "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
    forget "$@"
}

# Runs on every exit (normal, error, INT, TERM): processes, namespaces (their veths and the bridge
# go with them), temp files, and the policy-rc.d we may have placed while installing nginx.
cleanup() {
    set +e
    trap - EXIT INT TERM
    [ ${#PIDS[@]} -gt 0 ] && stop_pids "${PIDS[@]}"
    local ns pid
    for ns in "${NSS[@]}"; do # anything left inside our own namespaces only
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
    done
    for ns in "${NSS[@]}"; do ip netns del "$ns" 2>/dev/null; done
    # TESTBED_AGENT_ARGS adds flags to every agent; TESTBED_KEEP_LOGS=DIR keeps every agent's log for a look at what happened.
    [ -n "$TMP" ] && [ -n "${TESTBED_KEEP_LOGS:-}" ] && mkdir -p "$TESTBED_KEEP_LOGS" &&
        find "$TMP" -name '*.log' -exec cp --parents {} "$TESTBED_KEEP_LOGS" \;
    [ -n "$TMP" ] && rm -rf "$TMP"
    [ -n "$POLICY_RC" ] && rm -f /usr/sbin/policy-rc.d
}

cleanup_stale() {
    local ns owner pid d
    for ns in $(ip netns list | awk '{ print $1 }' | grep -E "^${PREFIX}[0-9]+-" || true); do
        owner=${ns#"$PREFIX"} owner=${owner%%-*}
        if grep -qs testbed "/proc/$owner/cmdline"; then echo "keeping $ns: run $owner is live"; continue; fi
        for pid in $(ip netns pids "$ns"); do kill -KILL "$pid" 2>/dev/null || true; done
        ip netns del "$ns" && echo "removed $ns"
    done
    for d in "${TMPDIR:-/tmp}/$PREFIX"[0-9]*.*; do
        [ -d "$d" ] || continue
        owner=${d##*/"$PREFIX"} owner=${owner%%.*}
        grep -qs testbed "/proc/$owner/cmdline" || { rm -rf "$d" && echo "removed $d"; }
    done
}

# Install only what is missing; apt-get update only if a plain install fails. policy-rc.d keeps
# the nginx package from starting a system-wide nginx on the host.
need_tools() {
    local pkgs=() 
    command -v ip >/dev/null && command -v tc >/dev/null || pkgs+=(iproute2)
    command -v curl >/dev/null || pkgs+=(curl)
    command -v nginx >/dev/null || pkgs+=(nginx)
    command -v flock >/dev/null || pkgs+=(util-linux)
    if [ "$COMPARE" = aria2 ]; then
        command -v aria2c >/dev/null || pkgs+=(aria2)
        command -v opentracker >/dev/null || pkgs+=(opentracker)
        command -v python3 >/dev/null || pkgs+=(python3)
    fi
    [ ${#pkgs[@]} -eq 0 ] && return
    echo "installing ${pkgs[*]}"
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        POLICY_RC=1; printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq "${pkgs[@]}" >/dev/null 2>&1 </dev/null ||
        { apt-get update -qq </dev/null >/dev/null && apt-get install -y -qq "${pkgs[@]}" </dev/null >/dev/null; } ||
        die "cannot install ${pkgs[*]}"
}

# One host: namespace, a veth pair from the bridge namespace, its address, its upload shaping.
# burst: 5 ms at the rate but at least 4 frames; latency 50 ms bounds the queue (and so the
# delay added to this host's outgoing ACKs while its upload is busy).
host_up() {
    local h=$1 ns rate burst
    ns=$(ns_of "$h") rate=$([ "$h" = 0 ] && echo "$SEED_RATE" || echo "$RATE")
    burst=$(awk -v b="$(bps "$rate")" 'BEGIN { x = b / 8 * 0.005; printf "%d", x < 6056 ? 6056 : x }')
    ip netns add "$ns" && NSS+=("$ns")
    ip -n "$BR" link add "v$h" type veth peer name eth0 netns "$ns"
    ip -n "$BR" link set "v$h" master br0 up
    ip -n "$ns" link set lo up
    ip -n "$ns" addr add "$(addr_of "$h")/24" dev eth0
    ip -n "$ns" link set eth0 up
    tc -n "$ns" qdisc add dev eth0 root tbf rate "$rate" burst "$burst" latency 50ms
}

net_up() {
    ip netns add "$BR" && NSS+=("$BR")
    # No IGMP querier here: without snooping, multicast (LAN discovery) reaches every port.
    ip -n "$BR" link add br0 type bridge mcast_snooping 0
    ip -n "$BR" link set br0 up
    local h; for ((h = 0; h <= N; h++)); do host_up "$h"; done
}

wait_listen() { # NS PORT: until something listens there (10 s)
    local i; for ((i = 0; i < 200; i++)); do
        [ -n "$(ip netns exec "$1" ss -Hltn "sport = :$2")" ] && return; sleep 0.05
    done; die "nothing listening on port $2 in $1"
}

# Start "$@" in namespace $1 blocked on the barrier: a shared flock on a file whose exclusive lock
# we hold, so every process waiting on it is released at the same instant by `release`.
spawn_blocked() {
    local ns=$1 log=$2; shift 2
    # shellcheck disable=SC2016,SC2094 # $1 is expanded by the inner bash; the log is only written
    ip netns exec "$ns" bash -c 'touch "$1.ready"; flock -s 9; shift; exec "$@"' _ "$log" "$@" \
        9<"$TMP/barrier" 7>&- 8>&- >"$log" 2>&1 &
    PIDS+=($!)
}
arm() { exec 8>"$TMP/barrier"; flock -x 8; rm -f "$1"/*.ready; }
release() { # DIR COUNT: wait till COUNT processes are at the barrier, open it; T0 = that instant
    local i; for ((i = 0; i < 400; i++)); do
        [ "$(find "$1" -name '*.ready' | wc -l)" -ge "$2" ] && break; sleep 0.05
    done
    sleep 0.2 # the last one is between touching its file and blocking in flock
    T0=$EPOCHREALTIME; flock -u 8; exec 8>&-
}

nginx_up() {
    mkdir -p "$TMP/nginx"
    cat >"$TMP/nginx/nginx.conf" <<EOF
daemon off; worker_processes 1; pid $TMP/nginx/nginx.pid; error_log $TMP/nginx/error.log;
events { worker_connections 512; }
http {
    access_log off; sendfile on; tcp_nopush on;
    client_body_temp_path $TMP/nginx/body; proxy_temp_path $TMP/nginx/proxy;
    fastcgi_temp_path $TMP/nginx/fcgi; uwsgi_temp_path $TMP/nginx/uwsgi; scgi_temp_path $TMP/nginx/scgi;
    server { listen $(addr_of 0):$HTTP_PORT; root $TMP/www; }
}
EOF
    ip netns exec "$(ns_of 0)" nginx -e "$TMP/nginx/error.log" -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" \
        7>&- 8>&- >"$TMP/nginx/out.log" 2>&1 &
    PIDS+=($!)
    wait_listen "$(ns_of 0)" "$HTTP_PORT"
}

# One curl from peer 1 (at most 8 MiB): the goodput TCP achieves through the seed's tbf.
measure_goodput() {
    local g=$((F < 8388608 ? F : 8388608)) out
    out=$(ip netns exec "$(ns_of 1)" curl -sS -o /dev/null -r "0-$((g - 1))" \
        -w '%{size_download} %{time_pretransfer} %{time_total}' "$URL") || die "goodput curl failed"
    GOODPUT=$(awk -v o="$out" 'BEGIN { split(o, a, " "); printf "%.0f", a[1] / (a[3] - a[2]) }')
}

# N curls at once (same barrier), one per peer namespace; time until the last one has it all.
run_baseline() {
    local d=$TMP/baseline i t1 pids=() bad=0
    mkdir -p "$d"; arm "$d"
    for ((i = 1; i <= N; i++)); do
        spawn_blocked "$(ns_of "$i")" "$d/c$i" curl -sS -o /dev/null -w '%{size_download}\n' "$URL"
        pids+=("${PIDS[-1]}")
    done
    release "$d" "$N"
    for i in "${!pids[@]}"; do
        wait "${pids[$i]}" || bad=1
        [ "$(tail -n1 "$d/c$((i + 1))")" = "$F" ] || bad=1
    done
    t1=$EPOCHREALTIME; forget "${pids[@]}" # all reaped by wait
    [ "$bad" = 0 ] || die "baseline: a curl failed or came up short"
    BASE_T=$(calc "$t1 - $T0")
}

# One look at every peer not yet finished: done once its marker $1/pI/$2 exists, failed once its
# process is gone. Updates the caller's done_t and left, from its pids, now and t0.
poll_peers() {
    local i
    for ((i = 1; i <= N; i++)); do
        [ -z "${done_t[i]:-}" ] || continue
        if [ -e "$1/p$i/$2" ]; then done_t[i]=$(calc "$now - $t0"); left=$((left - 1))
        elif ! alive "${pids[i]}"; then done_t[i]=failed; left=$((left - 1)); fi
    done
}

# One swarm run: fresh seed and peers, released together; completion = the moment FILE appears
# (the agent renames FILE.part to FILE only when whole and verified).
run_swarm() {
    local r=$1 d=$TMP/run$1 i j seed t0 now left peers=() pids=() done_t=() ok rss churn_at=0 killed=0
    mkdir -p "$d"; arm "$d"
    ip netns exec "$(ns_of 0)" "$AGENT" serve --data "$TMP/seed" --listen "$(addr_of 0):$PORT" \
        --trust "$PK" ${TESTBED_AGENT_ARGS:-} 7>&- 8>&- >"$d/seed.log" 2>&1 &
    seed=$!; PIDS+=("$seed")
    wait_listen "$(ns_of 0)" "$PORT"
    for ((i = 1; i <= N; i++)); do
        peers=(--peer "$(addr_of 0):$PORT") # one connection per pair: dial only lower-numbered peers
        [ "$SEED_ONLY" = 1 ] || for ((j = 1; j < i; j++)); do peers+=(--peer "$(addr_of "$j"):$PORT"); done
        mkdir -p "$d/p$i"
        spawn_blocked "$(ns_of "$i")" "$d/p$i.log" "$AGENT" fetch "$TMP/seed/fw.img.flotilla" --trust "$PK" \
            --out "$d/p$i/fw.img" --listen "$(addr_of "$i"):$PORT" --seed-for "$((TIMEOUT + 60))" "${peers[@]}" \
            ${TESTBED_AGENT_ARGS:-}
        pids[i]=${PIDS[-1]}
    done
    release "$d" "$N"; t0=$T0 left=$N
    [ "$CHURN" = 1 ] && churn_at=$((${t0/./} + $(calc "$TMIN * 400000" 0)))
    # Poll every 10 ms with builtins only (times in integer microseconds), so the testbed itself
    # takes next to no CPU from the agents it measures.
    local deadline=$((${t0/./} + TIMEOUT * 1000000))
    while ((left > 0 && ${EPOCHREALTIME/./} < deadline)); do
        now=$EPOCHREALTIME
        if ((churn_at > 0 && ${now/./} >= churn_at)); then # churn: a third of the peers die, the seed restarts
            churn_at=0
            for ((i = 3; i <= N; i += 3)); do
                [ -n "${done_t[i]:-}" ] && continue
                kill -KILL "${pids[i]}" 2>/dev/null; done_t[i]=killed; left=$((left - 1)); killed=$((killed + 1))
            done
            kill -KILL "$seed" 2>/dev/null; wait "$seed" 2>/dev/null || true
            ip netns exec "$(ns_of 0)" "$AGENT" serve --data "$TMP/seed" --listen "$(addr_of 0):$PORT" \
                --trust "$PK" ${TESTBED_AGENT_ARGS:-} 7>&- 8>&- >>"$d/seed.log" 2>&1 &
            seed=$!; PIDS+=("$seed")
            echo "churn at $(calc "$now - $t0") s: killed $killed peers, restarted the seed"
        fi
        poll_peers "$d" fw.img
        nap 0.01
    done
    printf '\nrun %d/%d\n%-6s %-12s %10s %10s  %s\n' "$r" "$RUNS" peer address done_s rss_kib ok
    local good=0 all=0 max_rss=0
    for ((i = 1; i <= N; i++)); do
        ok=no rss=$(rss_kib "${pids[i]}")
        [[ "${done_t[i]:-}" =~ ^[0-9] ]] && cmp -s "$TMP/www/fw.img" "$d/p$i/fw.img" && ok=yes
        if [ "$ok" = yes ]; then good=$((good + 1)); all=$(max2 "${done_t[i]}" "$all")
        elif [ "${done_t[i]:-}" = killed ]; then ok=churned
        else tail -n 3 "$d/p$i.log" | sed "s/^/  p$i: /" >&2; fi
        max_rss=$((rss > max_rss ? rss : max_rss))
        printf '%-6s %-12s %10s %10s  %s\n' "p$i" "$(addr_of "$i")" "${done_t[i]:-timeout}" "$rss" "$ok"
    done
    printf '%-6s %-12s %10s %10s\n' seed "$(addr_of 0)" - "$(rss_kib "$seed")"
    stop_pids "$seed" "${pids[@]}"
    GOOD=$((GOOD + good)) EXPECT=$((EXPECT + N - killed))
    [ "$good" = "$((N - killed))" ] || { FAILED=1; all=NA; }
    ALL_DONE+=("$all") MAX_RSS=$((max_rss > MAX_RSS ? max_rss : MAX_RSS))
    local ratio=NA; [ "$all" = NA ] || ratio=$(calc "$all / $TMIN")
    echo "all done: $all s   ratio to T_min: $ratio   copies ok: $good/$((N - killed))$([ "$killed" = 0 ] || echo " ($killed killed by churn)")"
}

# A single-file torrent of $1 with pieces of $2 bytes announcing to tracker $3, written to $4;
# prints its info hash in hex (what opentracker's whitelist lists).
make_torrent() {
    python3 - "$@" <<'PY'
import hashlib, os, sys
path, piece, tracker, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
def enc(v):
    if isinstance(v, int): return b"i%de" % v
    if isinstance(v, str): v = v.encode()
    if isinstance(v, bytes): return b"%d:%s" % (len(v), v)
    if isinstance(v, dict): return b"d" + b"".join(enc(k) + enc(v[k]) for k in sorted(v)) + b"e"
    raise TypeError(v)
pieces = b""
with open(path, "rb") as f:
    while block := f.read(piece):
        pieces += hashlib.sha1(block).digest()
info = {"length": os.path.getsize(path), "name": os.path.basename(path), "piece length": piece, "pieces": pieces}
with open(out, "wb") as f:
    f.write(enc({"announce": tracker, "info": info}))
print(hashlib.sha1(enc(info)).hexdigest())
PY
}

# aria2 on the same hosts: opentracker and a seeding aria2c in the seed's namespace, one aria2c per
# peer released at the same barrier; completion = aria2's download-complete hook for that peer.
# The torrent announces over HTTP: aria2 speaks UDP to trackers only with its DHT on.
run_aria2() {
    local d=$TMP/aria2 i seed ot t0 now left pids=() done_t=() piece hash
    mkdir -p "$d/seed" "$d/ot"; arm "$d"
    piece=$(numfmt --from=iec "${CHUNK^^}") || die "cannot read chunk size $CHUNK"
    hash=$(make_torrent "$TMP/www/fw.img" "$piece" "http://$(addr_of 0):6969/announce" "$d/fw.torrent")
    echo "$hash" >"$d/ot/whitelist"; chmod 755 "$d/ot"; chmod 644 "$d/ot/whitelist" "$d/fw.torrent"
    ln "$TMP/www/fw.img" "$d/seed/fw.img"
    printf '#!/bin/sh\ntouch "$3.done"\n' >"$d/done.sh"; chmod 755 "$d/done.sh"
    local common=(--enable-dht=false --enable-dht6=false --bt-enable-lpd=false --enable-peer-exchange=true
        --seed-ratio=0.0 --file-allocation=none --summary-interval=0 --console-log-level=warn
        --listen-port=6881 --bt-stop-timeout=0 --follow-torrent=false --check-certificate=false)
    ip netns exec "$(ns_of 0)" opentracker -i "$(addr_of 0)" -p 6969 -P 6969 -d "$d/ot" -w whitelist \
        7>&- 8>&- >"$d/ot.log" 2>&1 &
    ot=$!; PIDS+=("$ot")
    ip netns exec "$(ns_of 0)" aria2c "${common[@]}" --dir "$d/seed" --check-integrity=false \
        --bt-seed-unverified=true "$d/fw.torrent" 7>&- 8>&- >"$d/seed.log" 2>&1 &
    seed=$!; PIDS+=("$seed")
    wait_listen "$(ns_of 0)" 6881
    for ((i = 1; i <= N; i++)); do
        mkdir -p "$d/p$i"
        spawn_blocked "$(ns_of "$i")" "$d/p$i.log" aria2c "${common[@]}" --dir "$d/p$i" \
            --on-bt-download-complete="$d/done.sh" "$d/fw.torrent"
        pids[i]=${PIDS[-1]}
    done
    release "$d" "$N"; t0=$T0 left=$N
    local deadline=$((${t0/./} + TIMEOUT * 1000000))
    while ((left > 0 && ${EPOCHREALTIME/./} < deadline)); do
        now=$EPOCHREALTIME
        poll_peers "$d" fw.img.done
        nap 0.01
    done
    local good=0 all=0 max_rss=0 rss
    for ((i = 1; i <= N; i++)); do
        rss=$(rss_kib "${pids[i]}"); max_rss=$((rss > max_rss ? rss : max_rss))
        if [[ "${done_t[i]:-}" =~ ^[0-9] ]] && cmp -s "$TMP/www/fw.img" "$d/p$i/fw.img"; then
            good=$((good + 1)); all=$(max2 "${done_t[i]}" "$all")
        else
            echo "aria2 peer $i: ${done_t[i]:-timeout}" >&2; tail -n 3 "$d/p$i.log" | sed "s/^/  a$i: /" >&2
        fi
    done
    stop_pids "$seed" "$ot" "${pids[@]}"
    ARIA2_T=NA ARIA2_RSS=$max_rss
    [ "$good" = "$N" ] && ARIA2_T=$all
    echo "aria2: all done ${ARIA2_T} s   ratio to T_min: $([ "$ARIA2_T" = NA ] && echo NA || calc "$ARIA2_T / $TMIN")" \
        "  copies ok: $good/$N   peak RSS per peer: $max_rss KiB"
}

main() {
    while [ $# -gt 0 ]; do
        case "$1" in --n | --size | --rate | --seed-rate | --chunk-size | --runs | --bin | --subnet | --timeout | --compare)
            [ $# -ge 2 ] || die "$1 needs a value" 2 ;;
        esac
        case "$1" in
            --n) N=$2; shift ;; --size) SIZE_MIB=$2; shift ;; --rate) RATE=$2; shift ;;
            --seed-rate) SEED_RATE=$2; shift ;; --chunk-size) CHUNK=$2; shift ;; --runs) RUNS=$2; shift ;;
            --bin) BIN=$2 && [[ "$2" = /* ]] || BIN=$START_DIR/$2; shift ;; --subnet) SUBNET=$2; shift ;; --timeout) TIMEOUT=$2; shift ;;
            --baseline) BASELINE=1 ;; --seed-only) SEED_ONLY=1 ;; --churn) CHURN=1 ;;
            --compare) [ "$2" = aria2 ] || die "--compare knows only aria2" 2; COMPARE=$2; shift ;;
            --cleanup-stale) [ "$(id -u)" = 0 ] || die "run as root" 2; cleanup_stale; exit 0 ;;
            -h | --help) usage ;; *) echo "testbed: unknown option $1" >&2; usage ;;
        esac
        shift
    done
    RATE=${RATE,,} SEED_RATE=${SEED_RATE:-$RATE} SEED_RATE=${SEED_RATE,,}
    [[ "$N" =~ ^[0-9]+$ && "$N" -ge 1 && "$N" -le 250 ]] || die "--n must be 1..250" 2
    [[ "$SIZE_MIB" =~ ^[0-9]+$ && "$SIZE_MIB" -ge 1 && "$RUNS" =~ ^[0-9]+$ && "$RUNS" -ge 1 ]] ||
        die "--size and --runs must be positive integers" 2
    [[ "$SUBNET" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "--subnet wants A.B.C" 2
    local us ui
    { us=$(bps "$SEED_RATE") && ui=$(bps "$RATE"); } || die "bad rate: want e.g. 20mbit" 2
    [ "$(id -u)" = 0 ] || die "must run as root (network namespaces, tc)" 2

    F=$((SIZE_MIB * 1048576)) US=$(calc "$us / 8" 0) UI=$(calc "$ui / 8" 0) # bytes and bytes/s
    CS=$(calc "$N * $F / $US")                                                 # one server alone
    TMIN=$(max2 "$F / $US" "$N * $F / ($US + $N * $UI)")
    TIMEOUT=${TIMEOUT:-$(calc "2 * $CS + 30" 0)}
    trap cleanup EXIT; trap 'exit 130' INT; trap 'exit 143' TERM
    need_tools
    if [ ! -x "$BIN" ]; then
        [ "$BIN" = target/release/flotilla ] || die "no binary at $BIN" 2
        cargo build --release -q || die "cargo build --release failed"
    fi
    TMP=$(mktemp -d "${TMPDIR:-/tmp}/$PREFIX$$.XXXXXX"); chmod 755 "$TMP" # nginx workers read www/
    AGENT=$TMP/flotilla; cp "$BIN" "$AGENT" # a rebuild during the run must not change the agent
    mkdir "$TMP/www" "$TMP/seed"; mkfifo "$TMP/nap"; exec 7<>"$TMP/nap"
    head -c "$F" /dev/urandom >"$TMP/www/fw.img"; chmod 644 "$TMP/www/fw.img"
    cp "$TMP/www/fw.img" "$TMP/seed/fw.img"
    PK=$("$AGENT" keygen --secret "$TMP/key")
    "$AGENT" publish "$TMP/seed/fw.img" --secret "$TMP/key" --chunk-size "$CHUNK" >/dev/null
    net_up; URL="http://$(addr_of 0):$HTTP_PORT/fw.img"
    nginx_up; measure_goodput
    local gf; gf=$(calc "$GOODPUT / $US" 4) # measured goodput / nominal rate, applied to every link
    TMIN_G=$(calc "$TMIN / $gf")
    echo "testbed: seed + $N peers, $SIZE_MIB MiB (F = $F bytes), chunk $CHUNK, upload $RATE (seed $SEED_RATE)," \
        "downloads unshaped; rates in 10^6 bit/s, times in s"
    echo "goodput through the seed's tbf (1 curl): $(calc "$GOODPUT * 8 / 1e6" 2) Mbit/s = $(calc "$gf * 100" 1)% of nominal"
    echo "T_min = max(F/u_s, N*F/(u_s + sum u_i)) = $TMIN s nominal, $TMIN_G s at measured goodput"
    echo "client-server N*F/u_s = $CS s nominal, $(calc "$CS / $gf") s at measured goodput"
    BASE_T=NA
    if [ "$BASELINE" = 1 ]; then
        echo "baseline: nginx + $N curls ..."; run_baseline
        echo "baseline measured: $BASE_T s (aggregate goodput $(calc "$N * $F * 8 / $BASE_T / 1e6" 2) Mbit/s)"
    fi
    local mode=mesh; [ "$SEED_ONLY" = 1 ] && mode="seed-only"
    GOOD=0 EXPECT=0 FAILED=0 ALL_DONE=() MAX_RSS=0
    local r; for ((r = 1; r <= RUNS; r++)); do run_swarm "$r"; done
    ARIA2_T=none ARIA2_RSS=none
    if [ "$COMPARE" = aria2 ]; then echo; echo "aria2 on the same testbed ..."; run_aria2; fi
    local all=NA ratio=NA ratio_g=NA speedup=NA
    if [ "$FAILED" = 0 ]; then
        all=$(printf '%s\n' "${ALL_DONE[@]}" | median)
        ratio=$(calc "$all / $TMIN") ratio_g=$(calc "$all / $TMIN_G")
        [ "$BASE_T" = NA ] || speedup=$(calc "$BASE_T / $all" 2)
    fi
    echo
    echo "summary ($([ "$RUNS" -gt 1 ] && echo "median of $RUNS runs" || echo "1 run")): all done $all s;" \
        "T_min $TMIN s (nominal $RATE) -> ratio $ratio; vs goodput T_min $TMIN_G s -> $ratio_g;" \
        "client-server $CS s computed, $BASE_T s measured (--baseline); speed-up $speedup"
    local a2ratio=none vs=none
    if [ "$ARIA2_T" != none ]; then
        a2ratio=NA; [ "$ARIA2_T" = NA ] || a2ratio=$(calc "$ARIA2_T / $TMIN")
        [ "$ARIA2_T" = NA ] || [ "$all" = NA ] || vs=$(calc "$ARIA2_T / $all" 2)
        echo "aria2, same testbed and shaping: all done $ARIA2_T s -> ratio $a2ratio; Flotilla is $vs x as fast"
    fi
    echo "RESULT n=$N size_mib=$SIZE_MIB rate=$RATE chunk=$CHUNK mode=$mode runs=$RUNS all_done=$all tmin=$TMIN" \
        "ratio=$ratio tmin_goodput=$TMIN_G ratio_goodput=$ratio_g client_server=$CS baseline=$BASE_T" \
        "speedup=$speedup max_rss_kib=$MAX_RSS copies_ok=$GOOD/$EXPECT aria2_all_done=$ARIA2_T aria2_ratio=$a2ratio" \
        "aria2_vs=$vs aria2_max_rss_kib=$ARIA2_RSS"
    [ "$FAILED" = 0 ] || die "some copies missing or wrong"
}

main "$@"
