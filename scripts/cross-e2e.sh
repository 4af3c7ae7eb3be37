#!/usr/bin/env bash
# scripts/cross-e2e.sh TARGET
#
# Builds the static release binary for TARGET, checks with `file` that it is statically linked
# for the right machine, then runs an end-to-end transfer with that cross-built binary under
# qemu-user-static: keygen, publish a few-MiB random file, `serve` on 127.0.0.1, `fetch` on
# 127.0.0.2 from it, compare the bytes, verify. Prints one PASS or FAIL line at the end; exits
# non-zero on failure.
#
# TARGET: aarch64-unknown-linux-musl (routers, 64-bit Pi; static musl, linked by rust-lld)
#         armv7-unknown-linux-gnueabihf (32-bit Pi; static glibc, linked by Debian's
#         gcc-arm-linux-gnueabihf)
#
# Installs what it needs (rustup target, Debian packages) non-interactively; apt-get update runs
# only when a package is missing and cannot be installed from the lists already on the machine.
# Environment: CARGO_TARGET_DIR (default target/), CROSS_E2E_MIB (file size, default 4),
# CROSS_E2E_TIMEOUT (seconds for the fetch, default 180).
set -euo pipefail
export LC_ALL=C
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

usage() {
    echo "usage: $0 aarch64-unknown-linux-musl|armv7-unknown-linux-gnueabihf" >&2
    exit 2
}
[ $# -eq 1 ] || usage
TARGET=$1
case "$TARGET" in
    aarch64-unknown-linux-musl)
        QEMU=qemu-aarch64-static
        MACHINE='ARM aarch64'
        PACKAGES=(qemu-user-static file diffutils)
        ;;
    armv7-unknown-linux-gnueabihf)
        QEMU=qemu-arm-static
        MACHINE='ARM, EABI5'
        PACKAGES=(qemu-user-static file diffutils gcc-arm-linux-gnueabihf libc6-dev-armhf-cross)
        ;;
    *) usage ;;
esac
MIB=${CROSS_E2E_MIB:-4}
TIMEOUT=${CROSS_E2E_TIMEOUT:-180}
TAG="cross-e2e $TARGET"

fail() {
    echo "FAIL $TAG: $*"
    exit 1
}

# --- what the build and the run need -----------------------------------------------------------
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "== installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt_install() { apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null; }
    # Lists already on the machine are tried first, so that several runs update at most once.
    if ! apt_install >/tmp/cross-e2e-apt.$$ 2>&1; then
        apt-get update -q </dev/null >/dev/null || fail "apt-get update failed"
        apt_install >/tmp/cross-e2e-apt.$$ 2>&1 || { tail -20 /tmp/cross-e2e-apt.$$; rm -f /tmp/cross-e2e-apt.$$; fail "cannot install ${missing[*]}"; }
    fi
    rm -f /tmp/cross-e2e-apt.$$
fi
if ! rustup target list --installed 2>/dev/null | grep -qx "$TARGET"; then
    echo "== rustup target add $TARGET"
    rustup target add "$TARGET" </dev/null || fail "rustup target add $TARGET failed"
fi
command -v "$QEMU" >/dev/null || fail "$QEMU not found after installing qemu-user-static"

# --- build and check ---------------------------------------------------------------------------
echo "== cargo build --release --target $TARGET"
cargo build --release --target "$TARGET" </dev/null || fail "build failed"
BIN="${CARGO_TARGET_DIR:-target}/$TARGET/release/flotilla"
[ -x "$BIN" ] || fail "no binary at $BIN"
BIN=$(cd "$(dirname "$BIN")" && pwd)/flotilla
desc=$(file -b "$BIN")
echo "   $BIN: $desc"
case "$desc" in
    *"$MACHINE"*) ;;
    *) fail "$BIN is not an $MACHINE executable: $desc" ;;
esac
case "$desc" in
    *"statically linked"* | *"static-pie linked"*) ;;
    *) fail "$BIN is not statically linked: $desc" ;;
esac
if command -v readelf >/dev/null && readelf -lW "$BIN" | grep -q 'program interpreter'; then
    fail "$BIN asks for a program interpreter (dynamic loader)"
fi
SIZE=$(stat -c %s "$BIN")
echo "   size $SIZE bytes ($((SIZE / 1024)) KiB)"

# --- end-to-end under qemu ---------------------------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/flotilla-cross-e2e.XXXXXX")
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

show_logs() {
    local f
    for f in "$WORK"/*.log; do
        [ -s "$f" ] || continue
        echo "--- last lines of $(basename "$f")"
        tail -n 20 "$f"
    done
}
fail_e2e() {
    show_logs
    fail "$@"
}
run() { "$QEMU" "$BIN" "$@" </dev/null; }

# Is something listening on IP:PORT (or on the wildcard address at PORT)? From /proc/net/tcp,
# without connecting: a probe connection would look like a peer to the seed.
listening() {
    local ip=$1 port=$2 hex a b c d
    IFS=. read -r a b c d <<<"$ip"
    hex=$(printf '%02X%02X%02X%02X:%04X' "$d" "$c" "$b" "$a" "$port")
    awk -v want="$hex" -v any="$(printf '00000000:%04X' "$port")" \
        'NR > 1 && $4 == "0A" && ($2 == want || $2 == any) { found = 1 } END { exit !found }' /proc/net/tcp
}

PORT=
for _ in $(seq 50); do
    p=$((20000 + RANDOM % 40000))
    if ! listening 127.0.0.1 "$p" && ! listening 127.0.0.2 "$p"; then PORT=$p; break; fi
done
[ -n "$PORT" ] || fail "no free port found"

mkdir -p "$WORK/seed" "$WORK/device"
echo "== keygen, publish ${MIB} MiB (+ a short last chunk) under $QEMU"
PUB=$(run keygen --secret "$WORK/operator.key" 2>"$WORK/keygen.log") || fail_e2e "keygen failed"
[[ "$PUB" =~ ^[0-9a-f]{64}$ ]] || fail_e2e "keygen printed no 64-hex public key: '$PUB'"
# A size that is not a multiple of the chunk size, so the short last chunk is exercised too.
head -c $((MIB * 1048576 + 12345)) /dev/urandom >"$WORK/seed/fw.img"
run publish "$WORK/seed/fw.img" --secret "$WORK/operator.key" --release 1 --chunk-size 64K \
    >"$WORK/publish.log" 2>&1 || fail_e2e "publish failed"
[ -s "$WORK/seed/fw.img.flotilla" ] || fail_e2e "publish wrote no manifest"
run inspect "$WORK/seed/fw.img.flotilla" >"$WORK/inspect.log" 2>&1 || fail_e2e "inspect failed"
sed 's/^/   /' "$WORK/inspect.log"
cp "$WORK/seed/fw.img.flotilla" "$WORK/device/"

echo "== serve on 127.0.0.1:$PORT, fetch on 127.0.0.2:$PORT (timeout ${TIMEOUT}s)"
started=$SECONDS
"$QEMU" "$BIN" serve --data "$WORK/seed" --listen "127.0.0.1:$PORT" --trust "$PUB" --no-discovery \
    </dev/null >"$WORK/serve.log" 2>&1 &
SEED_PID=$!
PIDS+=("$SEED_PID")
# The seed hashes its file before it listens; wait for the listening socket.
until listening 127.0.0.1 "$PORT"; do
    kill -0 "$SEED_PID" 2>/dev/null || fail_e2e "serve exited before listening"
    [ $((SECONDS - started)) -lt "$TIMEOUT" ] || fail_e2e "serve not listening after ${TIMEOUT}s"
    sleep 0.1
done

"$QEMU" "$BIN" fetch "$WORK/device/fw.img.flotilla" --trust "$PUB" --out "$WORK/device/fw.img" \
    --listen "127.0.0.2:$PORT" --peer "127.0.0.1:$PORT" --no-discovery </dev/null >"$WORK/fetch.log" 2>&1 &
FETCH_PID=$!
PIDS+=("$FETCH_PID")
fetch_started=$SECONDS
while kill -0 "$FETCH_PID" 2>/dev/null; do
    if [ $((SECONDS - fetch_started)) -ge "$TIMEOUT" ]; then
        fail_e2e "fetch did not finish within ${TIMEOUT}s"
    fi
    kill -0 "$SEED_PID" 2>/dev/null || fail_e2e "serve died during the fetch"
    sleep 0.1
done
rc=0
wait "$FETCH_PID" || rc=$?
elapsed=$((SECONDS - fetch_started))
[ "$rc" -eq 0 ] || fail_e2e "fetch exited $rc"
kill -0 "$SEED_PID" 2>/dev/null || fail_e2e "serve died during the fetch"
kill -TERM "$SEED_PID" 2>/dev/null || true
wait "$SEED_PID" 2>/dev/null || true

[ -f "$WORK/device/fw.img" ] || fail_e2e "fetch exited 0 but wrote no $WORK/device/fw.img"
cmp "$WORK/seed/fw.img" "$WORK/device/fw.img" || fail_e2e "fetched bytes differ from the published file"
[ ! -e "$WORK/device/fw.img.part" ] || fail_e2e "fw.img.part left behind after completion"
run verify "$WORK/device/fw.img.flotilla" "$WORK/device/fw.img" --trust "$PUB" \
    >"$WORK/verify.log" 2>&1 || fail_e2e "verify of the fetched file failed"

echo "PASS $TAG: static $SIZE-byte binary under $QEMU, $MIB MiB fetched from serve, bytes identical, verified (fetch ${elapsed}s)"
