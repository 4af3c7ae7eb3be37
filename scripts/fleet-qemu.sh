#!/usr/bin/env bash
# scripts/fleet-qemu.sh: what a fleet secret costs a router-class core, end to end.
#
# Runs the cross-built aarch64-musl binary under qemu-aarch64-static: a seed on 127.0.0.1 and a
# fetcher on 127.0.0.2 move one release over loopback, once without a fleet secret and once with
# one (every frame sealed), alternated RUNS times so that drift hits both alike. Under emulation
# every agent is CPU-bound (the emulated core is far slower than loopback), which is the case the
# cipher matters in: a router whose 600 MHz core, not its link, sets the speed.
#
# Prints per pair the fetch's wall time and CPU time (user + sys of the qemu process) each way,
# then the medians and the figure: throughput with a secret ÷ without, and the fetch CPU with ÷
# without. The absolute times under emulation mean little; the ratios are the figures.
# benches/cipher.rs (scripts/cipher-qemu.sh) gives the cipher alone against SHA-256.
#
# The reference for the fetch's CPU: Debian's arm64 `openssl dgst -sha256` of the same file under
# the same qemu (its .debs unpacked into a cache directory, run with `qemu-aarch64-static -L`),
# so that the ratio holds for a router-class core where absolute times do not.
#
# Installs what it lacks (rustup target, qemu-user-static, and, as root, the arm64 openssl: this
# adds the arm64 architecture to dpkg's list to download it; nothing arm64 is installed on the
# host). Environment: CARGO_TARGET_DIR (default target/), FLEET_QEMU_MIB (release size, default
# 64), FLEET_QEMU_RUNS (pairs, 3), FLEET_QEMU_SYSROOT (where the arm64 openssl is unpacked,
# default ~/.cache/flotilla/arm64-openssl).
set -euo pipefail
export LC_ALL=C
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
TARGET=aarch64-unknown-linux-musl
MIB=${FLEET_QEMU_MIB:-64}
RUNS=${FLEET_QEMU_RUNS:-3}

rustup target list --installed | grep -qx "$TARGET" || rustup target add "$TARGET" </dev/null
command -v qemu-aarch64-static >/dev/null || {
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q qemu-user-static </dev/null >/dev/null 2>&1 ||
        { apt-get update -q </dev/null >/dev/null && apt-get install -y -q qemu-user-static </dev/null >/dev/null; }
}
cargo build --release --bin flotilla --target "$TARGET" </dev/null
BIN=$(cd "${CARGO_TARGET_DIR:-target}/$TARGET/release" && pwd)/flotilla
run() { qemu-aarch64-static "$BIN" "$@" </dev/null; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/flotilla-fleet-qemu.XXXXXX")
SEED_PID=
cleanup() {
    [ -z "$SEED_PID" ] || { kill -KILL "$SEED_PID" 2>/dev/null || true; wait "$SEED_PID" 2>/dev/null || true; }
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

listening() { # IP PORT: a listening socket there, read from /proc (a probe would look like a peer)
    local a b c d
    IFS=. read -r a b c d <<<"$1"
    awk -v want="$(printf '%02X%02X%02X%02X:%04X' "$d" "$c" "$b" "$a" "$2")" \
        'NR > 1 && $4 == "0A" && $2 == want { found = 1 } END { exit !found }' /proc/net/tcp
}

mkdir -p "$WORK/seed"
PUB=$(run keygen --secret "$WORK/operator.key" 2>/dev/null)
run keygen --fleet-secret "$WORK/fleet.secret" >/dev/null 2>&1
head -c $((MIB << 20)) /dev/urandom >"$WORK/seed/fw.img"
run publish "$WORK/seed/fw.img" --secret "$WORK/operator.key" --release 1 >/dev/null 2>&1
echo "== $MIB MiB over loopback, seed and fetcher both under qemu-aarch64-static, $RUNS alternated pairs"

# One fetch from a fresh seed; prints "WALL CPU" in seconds. $1: "secret" or "plain".
one_fetch() {
    local fleet=() port=$((20000 + RANDOM % 40000)) dev="$WORK/dev.$RANDOM"
    [ "$1" = secret ] && fleet=(--fleet-secret "$WORK/fleet.secret")
    mkdir -p "$dev"
    cp "$WORK/seed/fw.img.flotilla" "$dev/"
    qemu-aarch64-static "$BIN" serve --data "$WORK/seed" --listen "127.0.0.1:$port" --trust "$PUB" \
        --no-discovery "${fleet[@]}" </dev/null >"$WORK/serve.log" 2>&1 &
    SEED_PID=$!
    until listening 127.0.0.1 "$port"; do
        kill -0 "$SEED_PID" 2>/dev/null || { cat "$WORK/serve.log" >&2; exit 1; }
        sleep 0.05
    done
    local t0 t1 cpu
    t0=$(date +%s.%N)
    # wait4's rusage of the fetch alone: python's os.wait4 keeps the seed's CPU out of it.
    cpu=$(python3 - "$BIN" "$dev" "$PUB" "$port" "${fleet[@]}" <<'PY'
import os, sys
binary, dev, pub, port, *fleet = sys.argv[1:]
argv = ["qemu-aarch64-static", binary, "fetch", f"{dev}/fw.img.flotilla", "--trust", pub,
        "--out", f"{dev}/fw.img", "--listen", f"127.0.0.2:{port}", "--peer", f"127.0.0.1:{port}",
        "--no-discovery", *fleet]
pid = os.fork()
if pid == 0:
    fd = os.open(f"{dev}/fetch.log", os.O_WRONLY | os.O_CREAT, 0o644)
    os.dup2(fd, 1); os.dup2(fd, 2)
    os.execvp(argv[0], argv)
_, status, ru = os.wait4(pid, 0)
if os.waitstatus_to_exitcode(status) != 0:
    sys.exit(f"fetch failed: {open(f'{dev}/fetch.log').read()[-2000:]}")
print(f"{ru.ru_utime + ru.ru_stime:.3f}")
PY
)
    t1=$(date +%s.%N)
    cmp -s "$WORK/seed/fw.img" "$dev/fw.img" || { echo "fetched bytes differ ($1)" >&2; exit 1; }
    kill -TERM "$SEED_PID" 2>/dev/null || true
    wait "$SEED_PID" 2>/dev/null || true
    SEED_PID=
    rm -rf "$dev"
    echo "$(echo "$t1 - $t0" | bc -l) $cpu"
}

plain=()
secret=()
for i in $(seq "$RUNS"); do
    p=$(one_fetch plain)
    s=$(one_fetch secret)
    plain+=("$p")
    secret+=("$s")
    printf '   pair %d: without a secret %6.2f s wall, %6.2f s CPU;  with a secret %6.2f s wall, %6.2f s CPU\n' \
        "$i" ${p} ${s}
done
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
pw=$(median $(printf '%s\n' "${plain[@]}" | cut -d' ' -f1))
pc=$(median $(printf '%s\n' "${plain[@]}" | cut -d' ' -f2))
sw=$(median $(printf '%s\n' "${secret[@]}" | cut -d' ' -f1))
sc=$(median $(printf '%s\n' "${secret[@]}" | cut -d' ' -f2))
printf '   medians: without %.2f s wall, %.2f s CPU; with %.2f s wall, %.2f s CPU\n' "$pw" "$pc" "$sw" "$sc"
printf 'throughput with a fleet secret / without: %.2fx  (fetch CPU with / without: %.2fx)\n' \
    "$(echo "$pw / $sw" | bc -l)" "$(echo "$sc / $pc" | bc -l)"

# --- the reference: arm64 openssl under the same qemu -------------------------------------------
SYSROOT=${FLEET_QEMU_SYSROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/flotilla/arm64-openssl}
arm64_openssl() {
    [ -x "$SYSROOT/usr/bin/openssl" ] && return 0
    [ "$(id -u)" = 0 ] || return 1
    local debs=$WORK/debs
    mkdir -p "$debs" "$SYSROOT" && chmod 777 "$debs"
    dpkg --print-foreign-architectures | grep -qx arm64 ||
        { dpkg --add-architecture arm64 && apt-get update -q </dev/null >/dev/null 2>&1; } || return 1
    (cd "$debs" && apt-get download -q openssl:arm64 libssl3:arm64 libc6:arm64 </dev/null >/dev/null 2>&1) ||
        { apt-get update -q </dev/null >/dev/null 2>&1 &&
            (cd "$debs" && apt-get download -q openssl:arm64 libssl3:arm64 libc6:arm64 </dev/null >/dev/null 2>&1); } ||
        return 1
    for d in "$debs"/*.deb; do dpkg-deb -x "$d" "$SYSROOT" || return 1; done
    [ -x "$SYSROOT/usr/bin/openssl" ]
}
if arm64_openssl; then
    refs=()
    for i in $(seq "$RUNS"); do
        refs+=("$(python3 - "$SYSROOT" "$WORK/seed/fw.img" <<'PY'
import os, sys
root, path = sys.argv[1:]
pid = os.fork()
if pid == 0:
    fd = os.open(os.devnull, os.O_WRONLY)
    os.dup2(fd, 1)
    os.execvp("qemu-aarch64-static", ["qemu-aarch64-static", "-L", root, f"{root}/usr/bin/openssl", "dgst", "-sha256", path])
_, status, ru = os.wait4(pid, 0)
if os.waitstatus_to_exitcode(status) != 0:
    sys.exit("openssl under qemu failed")
print(f"{ru.ru_utime + ru.ru_stime:.3f}")
PY
)")
    done
    oc=$(median "${refs[@]}")
    printf '   openssl dgst -sha256 of the %s MiB file under the same qemu: %s s CPU (median of %s)\n' "$MIB" "$oc" "$RUNS"
    printf 'fetch CPU / openssl dgst -sha256, both under qemu-aarch64: without a secret %.2fx, with one %.2fx\n' \
        "$(echo "$pc / $oc" | bc -l)" "$(echo "$sc / $oc" | bc -l)"
else
    echo "fetch CPU / openssl dgst -sha256 under qemu: not measured (no arm64 openssl; run as root to fetch it)"
fi
