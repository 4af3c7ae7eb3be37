#!/usr/bin/env bash
# scripts/footprint.sh: the footprint budgets of issue 4, measured here and printed as figures,
# each against a budget or a reference measured in the same run.
#
#  1. Size of the stripped aarch64-musl release binary (budget 1 MiB, 450 KiB xz-compressed); the x86_64 gnu and
#     musl release binaries for reference.
#  2. Peak RSS (VmHWM, polled from /proc/PID/status every millisecond) of `fetch`, x86_64 musl
#     (static) build, for a 64 MiB and a 1 GiB release on loopback: from one seed, and from 32
#     seeds at once (32 connected peers). Budget 1.5 MiB; the 1 GiB / 64 MiB ratio shows whether
#     RSS grows with the file.
#  3. Peak RSS of `serve` while 32 fetchers (each its own process on its own 127.0.3.x address)
#     download from it at once, --max-upload-rate so that the downloads overlap in time: once
#     with --upload-slots 32 so that all 32 are served together, once with the default slots.
#     The fetchers also trade among themselves (peer exchange), as a fleet does. Budget 1.5 MiB.
#  4. CPU seconds (user + sys, from wait4) of the 1 GiB fetch against `openssl dgst -sha256` of the
#     same file (in the page cache) in the same run; openssl uses the CPU's SHA instructions, as
#     sha2 does. The least of the runs of each, medians beside. Budget 1.5x.
#
# Runs as root or not; installs nothing but rustup targets (and Debian's `file`/`openssl` if
# missing). About a minute of measuring after the builds (each fetch has a timeout); the data
# lives in a temporary directory that is removed at the end, also on failure or Ctrl-C.
# Environment: CARGO_TARGET_DIR (default target/), FOOTPRINT_BIG_MIB (default 1024),
# FOOTPRINT_SMALL_MIB (64; also the release the 32 fetchers of scenario 3 download),
# FOOTPRINT_SWARM_RATE (seed's --max-upload-rate in scenario 3, 64M), FOOTPRINT_RUNS (3),
# FOOTPRINT_STRICT=1 (exit 1 when a budget is missed; by default a miss is a printed figure).
set -euo pipefail
export LC_ALL=C
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

need=()
command -v file >/dev/null || need+=(file)
command -v openssl >/dev/null || need+=(openssl)
command -v python3 >/dev/null || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q "${need[@]}" </dev/null >/dev/null 2>&1 ||
        { apt-get update -q </dev/null >/dev/null && apt-get install -y -q "${need[@]}" </dev/null >/dev/null; }
fi
for t in aarch64-unknown-linux-musl x86_64-unknown-linux-musl; do
    rustup target list --installed | grep -qx "$t" || rustup target add "$t" </dev/null
done

TD=${CARGO_TARGET_DIR:-target}
build_started=$SECONDS
echo "== building release binaries: x86_64 gnu (host), x86_64 musl, aarch64 musl"
cargo build --release --bin flotilla </dev/null
cargo build --release --bin flotilla --target x86_64-unknown-linux-musl </dev/null
cargo build --release --bin flotilla --target aarch64-unknown-linux-musl </dev/null
echo "   built in $((SECONDS - build_started)) s"
GNU=$TD/release/flotilla
MUSL=$TD/x86_64-unknown-linux-musl/release/flotilla
ARM=$TD/aarch64-unknown-linux-musl/release/flotilla

# The release profile strips (strip = true); if it ever stops doing so, measure a stripped copy.
STRIPPED=$(mktemp "${TMPDIR:-/tmp}/flotilla-aarch64.XXXXXX")
trap 'rm -f "$STRIPPED"' EXIT
cp "$ARM" "$STRIPPED"
case "$(file -b "$ARM")" in
    *", stripped"*) ;;
    *)
        if command -v llvm-strip >/dev/null; then
            llvm-strip "$STRIPPED"
        elif command -v aarch64-linux-gnu-strip >/dev/null; then
            aarch64-linux-gnu-strip "$STRIPPED"
        else
            echo "warning: $ARM is not stripped and no strip for aarch64 was found" >&2
        fi
        ;;
esac
for b in "$MUSL" "$ARM"; do
    case "$(file -b "$b")" in
        *"statically linked"* | *"static-pie linked"*) ;;
        *) echo "FAIL footprint: $b is not statically linked: $(file -b "$b")" >&2; exit 1 ;;
    esac
done

python3 - "$GNU" "$MUSL" "$STRIPPED" <<'PY'
import lzma, os, signal, statistics, subprocess, sys, tempfile, time, shutil

GNU, MUSL, ARM = sys.argv[1:4]
MIB = 1 << 20
KIB = 1024
BIG = int(os.environ.get("FOOTPRINT_BIG_MIB", "1024"))
SMALL = int(os.environ.get("FOOTPRINT_SMALL_MIB", "64"))
SWARM = SMALL  # the 32 fetchers download the small release
SWARM_RATE = os.environ.get("FOOTPRINT_SWARM_RATE", "64M")
RUNS = int(os.environ.get("FOOTPRINT_RUNS", "3"))
SWARM_NAME = "small.img"
PEERS = 32
SIZE_BUDGET_KIB = 1024  # 1 MiB stripped, the standing budget since issue 8
XZ_BUDGET_KIB = 450  # what it costs in a router's squashfs (xz)
RSS_BUDGET_KIB = 1536
CPU_BUDGET = 1.5
FETCH_TIMEOUT = 180.0
T0 = time.monotonic()

children = []
work = tempfile.mkdtemp(prefix="flotilla-footprint.", dir=os.environ.get("TMPDIR", "/tmp"))


def cleanup(*_):
    for p in children:
        if p.returncode is None:
            try:
                p.kill()
                os.waitpid(p.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            p.returncode = -9
    shutil.rmtree(work, ignore_errors=True)


def on_signal(sig, _frame):
    cleanup()
    sys.exit(128 + sig)


signal.signal(signal.SIGINT, on_signal)
signal.signal(signal.SIGTERM, on_signal)


class Failed(Exception):
    pass


def log(msg):
    print(msg, flush=True)


def kib(n):
    return f"{n / KIB:.0f} KiB"


class Proc:
    """A child process whose VmHWM/RssAnon we poll and whose rusage we reap with wait4."""

    def __init__(self, args, logname):
        self.args = args
        self.log = os.path.join(work, logname)
        with open(self.log, "wb") as f:
            self.p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT)
        children.append(self.p)
        self.pid = self.p.pid
        self.started = time.monotonic()
        self.hwm = 0  # bytes
        self.anon = 0
        self.rss = 0  # VmRSS at the last poll: the steady state just before exit
        self.done = False
        self.code = None
        self.cpu = None
        self.user = self.sys = None
        self.wall = None

    def poll_status(self):
        if self.done:
            return
        try:
            with open(f"/proc/{self.pid}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"VmHWM:"):
                        self.hwm = max(self.hwm, int(line.split()[1]) * KIB)
                    elif line.startswith(b"RssAnon:"):
                        self.anon = max(self.anon, int(line.split()[1]) * KIB)
                    elif line.startswith(b"VmRSS:"):
                        self.rss = int(line.split()[1]) * KIB
        except (FileNotFoundError, ProcessLookupError, ValueError):
            pass

    def reap(self, block=False):
        if self.done:
            return True
        pid, status, ru = os.wait4(self.pid, 0 if block else os.WNOHANG)
        if pid == 0:
            return False
        self.done = True
        self.wall = time.monotonic() - self.started
        self.code = os.waitstatus_to_exitcode(status)
        self.p.returncode = self.code
        self.user, self.sys = ru.ru_utime, ru.ru_stime
        self.cpu = self.user + self.sys
        return True

    def stop(self):
        """SIGTERM, then reap (rusage included)."""
        self.poll_status()
        if not self.done:
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            self.reap(block=True)

    def tail(self, n=15):
        try:
            with open(self.log, "rb") as f:
                return b"".join(f.readlines()[-n:]).decode(errors="replace")
        except OSError:
            return ""


def watch(focus, others=(), timeout=FETCH_TIMEOUT, every=None, fail_on_timeout=True):
    """Polls `focus` every millisecond and `others` every 20 ms until every process in `others`
    (or, with none, in `focus`) has exited. `every` is called about every 50 ms. Returns False
    on timeout when `fail_on_timeout` is off."""
    waiting = list(others) if others else list(focus)
    deadline = time.monotonic() + timeout
    i = 0
    while True:
        for w in focus:
            w.poll_status()
            w.reap()
        if i % 20 == 0:
            for w in others:
                w.poll_status()
                w.reap()
        if every and i % 50 == 0:
            every()
        if all(w.done for w in waiting):
            return True
        if time.monotonic() > deadline:
            if not fail_on_timeout:
                return False
            raise Failed(f"timeout after {timeout:.0f} s: " + ", ".join(" ".join(w.args[1:3]) for w in waiting if not w.done))
        i += 1
        time.sleep(0.001)


def run_measured(args, logname):
    w = Proc(args, logname)
    watch([w])
    return w


def tcp_table():
    """(local ip, local port, remote ip, state) of every IPv4 TCP socket on the machine."""
    rows = []
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            def addr(s):
                h, p = s.split(":")
                b = bytes.fromhex(h)[::-1]
                return ".".join(str(x) for x in b), int(p, 16)
            lip, lport = addr(parts[1])
            rip, _ = addr(parts[2])
            rows.append((lip, lport, rip, parts[3]))
    return rows


def free_port(ips):
    import random
    used = {(ip, port) for ip, port, _, st in tcp_table()}
    for _ in range(200):
        port = random.randint(20000, 59999)
        if not any((ip, port) in used or ("0.0.0.0", port) in used for ip in ips):
            return port
    raise Failed("no free port")


def wait_listening(procs, port, timeout=180.0):
    deadline = time.monotonic() + timeout
    want = {ip for ip, _ in procs}
    while True:
        listening = {ip for ip, p, _, st in tcp_table() if p == port and st == "0A"}
        if want <= listening:
            return
        for ip, w in procs:
            if w.reap():
                raise Failed(f"serve on {ip} exited {w.code} before listening:\n{w.tail()}")
        if time.monotonic() > deadline:
            raise Failed(f"seeds not listening after {timeout:.0f} s")
        time.sleep(0.05)


def make_file(path, size):
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 4 * MIB)
            f.write(os.urandom(n))
            left -= n
        f.flush()
        os.fsync(f.fileno())


def parse_rate(s):
    mult = {"K": KIB, "M": MIB, "G": 1 << 30}.get(s[-1:].upper(), 1)
    return float(s[:-1] if s[-1:].upper() in "KMG" else s) * mult


def check(cond, msg):
    if not cond:
        raise Failed(msg)


def same_bytes(a, b):
    return subprocess.run(["cmp", "-s", a, b]).returncode == 0


def median_by_cpu(runs):
    runs = sorted(runs, key=lambda w: w.cpu)
    return runs[len(runs) // 2]


def main():
    fig = {}
    fig["arm"] = os.path.getsize(ARM)
    with open(ARM, "rb") as f:
        fig["arm_xz"] = len(lzma.compress(f.read(), preset=9 | lzma.PRESET_EXTREME))
    fig["gnu"] = os.path.getsize(GNU)
    fig["musl"] = os.path.getsize(MUSL)
    log(f"== work dir {work}")

    # --- data -------------------------------------------------------------------------------
    t = time.monotonic()
    key = os.path.join(work, "op.key")
    pub = subprocess.run([MUSL, "keygen", "--secret", key], check=True, capture_output=True, text=True).stdout.strip()
    src = os.path.join(work, "src")
    os.mkdir(src)
    rel = {}
    for name, mib in (("small.img", SMALL), ("big.img", BIG)):
        path = os.path.join(src, name)
        make_file(path, mib * MIB)
        subprocess.run([MUSL, "publish", path, "--secret", key], check=True, capture_output=True)
        rel[name] = path
    log(f"   generated and published {SMALL} + {BIG} MiB in {time.monotonic() - t:.1f} s")

    # Seeds 1..32, each its own --data dir of hard links (no extra disk), on 127.0.0.N:PORT.
    port = free_port([f"127.0.0.{n}" for n in range(1, PEERS + 2)] + ["127.0.1.1", "127.0.2.1"]
                     + [f"127.0.3.{n}" for n in range(1, PEERS + 1)])
    seeds = []
    t = time.monotonic()
    for n in range(1, PEERS + 1):
        d = os.path.join(work, f"seed{n:02}")
        os.mkdir(d)
        for name in ("small.img", "big.img"):
            os.link(rel[name], os.path.join(d, name))
            os.link(rel[name] + ".flotilla", os.path.join(d, name + ".flotilla"))
        ip = f"127.0.0.{n}"
        seeds.append((ip, Proc([MUSL, "serve", "--data", d, "--listen", f"{ip}:{port}", "--trust", pub, "--no-discovery"], f"seed{n:02}.log")))
    wait_listening(seeds, port)
    log(f"   {PEERS} seeds (serve, x86_64 musl) listening on 127.0.0.1-{PEERS}:{port} after {time.monotonic() - t:.1f} s (each hashes its {SMALL + BIG} MiB first)")

    out = os.path.join(work, "out")
    os.mkdir(out)
    fetch_ip = "127.0.1.1"

    def fetch(binary, name, peers, tag, every=None):
        dst = os.path.join(out, name)
        args = [binary, "fetch", rel[name] + ".flotilla", "--trust", pub, "--out", dst,
                "--listen", f"{fetch_ip}:{port}", "--no-discovery"]
        for ip in peers:
            args += ["--peer", f"{ip}:{port}"]
        w = Proc(args, f"fetch-{tag}.log")
        watch([w], every=every)
        check(w.code == 0, f"fetch {name} ({tag}) exited {w.code}:\n{w.tail()}")
        check(os.path.getsize(dst) == os.path.getsize(rel[name]), f"fetch {name}: wrong size")
        return w, dst

    def finish(dst, name, compare):
        if compare:
            check(same_bytes(dst, rel[name]), f"fetched {name} differs from the published file")
        for suffix in ("", ".part", ".state"):
            try:
                os.unlink(dst + suffix)
            except FileNotFoundError:
                pass

    one = [seeds[0][0]]
    allseeds = [ip for ip, _ in seeds]

    # --- openssl reference --------------------------------------------------------------------
    ossl = []
    for i in range(RUNS):
        # The fetcher's own CPU includes no disk reads (the seed does those), so neither may
        # the reference: read the file into the page cache just before each run.
        with open(rel["big.img"], "rb") as f:
            while f.read(4 * MIB):
                pass
        w = run_measured(["openssl", "dgst", "-sha256", rel["big.img"]], f"openssl{i}.log")
        check(w.code == 0, f"openssl exited {w.code}")
        ossl.append(w)
    o = min(ossl, key=lambda w: w.cpu)
    om = median_by_cpu(ossl)
    log(f"   openssl dgst -sha256 {BIG} MiB: " + ", ".join(f"{w.cpu:.2f} (user {w.user:.2f} sys {w.sys:.2f})" for w in ossl) + " s cpu")

    # --- one seed: RSS vs file size, CPU vs openssl ---------------------------------------------
    res = {"small1": [], "big1": [], "biggnu": []}
    for i in range(RUNS):
        w, dst = fetch(MUSL, "small.img", one, f"small1-{i}")
        finish(dst, "small.img", i == 0)
        res["small1"].append(w)
        w, dst = fetch(MUSL, "big.img", one, f"big1-{i}")
        finish(dst, "big.img", i == 0)
        res["big1"].append(w)
        w, dst = fetch(GNU, "big.img", one, f"biggnu-{i}")
        finish(dst, "big.img", False)
        res["biggnu"].append(w)
        log(f"   run {i + 1}, one seed: fetch {SMALL} MiB peak RSS {kib(res['small1'][-1].hwm)} | "
            f"fetch {BIG} MiB peak RSS {kib(res['big1'][-1].hwm)}, {res['big1'][-1].wall:.2f} s wall, "
            f"cpu {res['big1'][-1].cpu:.2f} s (user {res['big1'][-1].user:.2f} sys {res['big1'][-1].sys:.2f}) | "
            f"gnu build: cpu {res['biggnu'][-1].cpu:.2f} s, RSS {kib(res['biggnu'][-1].hwm)}")

    # --- 32 seeds connected at once ------------------------------------------------------------
    conns = {"max": 0}

    def count_conns():
        n = sum(1 for lip, lport, rip, st in tcp_table() if lip == fetch_ip and st == "01" and lport != port)
        conns["max"] = max(conns["max"], n)

    res["small32"], res["big32"] = [], []
    conns32 = {}
    for name, k in (("small.img", "small32"), ("big.img", "big32")):
        conns["max"] = 0
        w, dst = fetch(MUSL, name, allseeds, k, every=count_conns)
        finish(dst, name, True)
        res[k].append(w)
        conns32[k] = conns["max"]
        log(f"   {PEERS} seeds: fetch {name} peak RSS {kib(w.hwm)} (anon {kib(w.anon)}), {w.wall:.2f} s wall, "
            f"cpu {w.cpu:.2f} s, at most {conns['max']} connections established at once")
    for _, s in seeds:
        s.stop()
    seed_rss = max(s.hwm for _, s in seeds)

    # --- serve with 32 fetchers downloading at once -------------------------------------------------
    # The fetchers know only the seed; they also learn each other by peer exchange and trade,
    # as a fleet does. Run with every fetcher in an upload slot, then with the default slots.
    seed_ip = "127.0.2.1"

    def swarm_run(tag, slot_args):
        sd = os.path.join(work, f"swarmseed-{tag}")
        os.mkdir(sd)
        os.link(rel[SWARM_NAME], os.path.join(sd, SWARM_NAME))
        os.link(rel[SWARM_NAME] + ".flotilla", os.path.join(sd, SWARM_NAME + ".flotilla"))
        server = Proc([MUSL, "serve", "--data", sd, "--listen", f"{seed_ip}:{port}", "--trust", pub, "--no-discovery",
                       *slot_args, "--max-upload-rate", SWARM_RATE], f"swarmseed-{tag}.log")
        wait_listening([(seed_ip, server)], port)
        peak = {"n": 0}

        def count_downloaders():
            n = sum(1 for lip, lport, rip, st in tcp_table() if lip == seed_ip and lport == port and st == "01")
            peak["n"] = max(peak["n"], n)

        fetchers = []
        t = time.monotonic()
        for n in range(1, PEERS + 1):
            ip = f"127.0.3.{n}"
            dst = os.path.join(out, f"swarm{n:02}.img")
            fetchers.append((dst, Proc([MUSL, "fetch", rel[SWARM_NAME] + ".flotilla", "--trust", pub, "--out", dst,
                                        "--listen", f"{ip}:{port}", "--peer", f"{seed_ip}:{port}", "--no-discovery"],
                                       f"swarmfetch-{tag}-{n:02}.log")))
        # Were the seed alone to upload everything at the rate asked, it would take
        # PEERS * SWARM / rate; allow three times that. Past the deadline the fetchers are
        # stopped: the seed's RSS under 32 downloaders is measured either way, and the summary
        # says how many finished.
        expected = PEERS * SWARM * MIB / parse_rate(SWARM_RATE)
        in_time = watch([server], [w for _, w in fetchers], timeout=3 * expected + 5,
                        every=count_downloaders, fail_on_timeout=False)
        wall = time.monotonic() - t
        for _, w in fetchers:
            w.stop()
        server.stop()
        completed = 0
        for dst, w in fetchers:
            if w.code == 0:
                check(same_bytes(dst, rel[SWARM_NAME]), f"swarm fetcher {dst} got wrong bytes")
                completed += 1
            elif in_time:
                raise Failed(f"swarm fetcher exited {w.code}:\n{w.tail()}")
            finish(dst, SWARM_NAME, False)
        note = (f"all {PEERS} complete in {wall:.1f} s" if completed == PEERS else
                f"ONLY {completed} of {PEERS} complete after {wall:.0f} s, stopped; the seed alone at "
                f"{SWARM_RATE}/s would take {expected:.1f} s: downloads stall")
        r = {"server": server, "fetcher_rss": max(w.hwm for _, w in fetchers), "note": note, "conns": peak["n"],
             "slots": slot_args[1] if slot_args else "default"}
        log(f"   serve ({tag}) with {PEERS} fetchers: peak RSS {kib(server.hwm)} (anon {kib(server.anon)}), {PEERS} x {SWARM} MiB, "
            f"{note}, at most {peak['n']} connections to the seed at once, seed cpu {server.cpu:.2f} s, "
            f"fetchers' largest RSS {kib(r['fetcher_rss'])}")
        return r

    swarm_all = swarm_run("slots32", ["--upload-slots", str(PEERS)])
    swarm_default = swarm_run("default", [])

    # --- summary -------------------------------------------------------------------------------------
    s1 = max(res["small1"], key=lambda w: w.hwm)
    b1 = max(res["big1"], key=lambda w: w.hwm)
    s32, b32 = res["small32"][0], res["big32"][0]
    # CPU: the least of the runs, for the fetch and openssl alike (on a shared machine noise only
    # ever adds); the medians are printed beside it.
    bc = min(res["big1"], key=lambda w: w.cpu)
    bm = median_by_cpu(res["big1"])
    gc = min(res["biggnu"], key=lambda w: w.cpu)

    def ratio(a, b):
        return a / b if b else float("nan")

    def verdict(ok):
        return "within budget" if ok else "OVER BUDGET"

    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "")
    except OSError:
        pass
    L = []
    L.append(f"flotilla footprint (figures from this run; {os.cpu_count()} cpus, {cpu})")
    L.append(f"  binary aarch64-musl stripped: {fig['arm'] / KIB:.1f} KiB vs budget {SIZE_BUDGET_KIB} KiB -> "
             f"{ratio(fig['arm'] / KIB, SIZE_BUDGET_KIB):.3f}x, {verdict(fig['arm'] <= SIZE_BUDGET_KIB * KIB)}")
    L.append(f"  binary aarch64-musl stripped, xz -9e: {fig['arm_xz'] / KIB:.1f} KiB vs budget {XZ_BUDGET_KIB} KiB -> "
             f"{ratio(fig['arm_xz'] / KIB, XZ_BUDGET_KIB):.3f}x, {verdict(fig['arm_xz'] <= XZ_BUDGET_KIB * KIB)}")
    L.append(f"    reference: x86_64-gnu release {fig['gnu'] / KIB:.1f} KiB, x86_64-musl release {fig['musl'] / KIB:.1f} KiB")
    L.append(f"  fetch peak RSS (VmHWM, x86_64 musl static), one seed: {SMALL} MiB {kib(s1.hwm)}, {BIG} MiB {kib(b1.hwm)} "
             f"-> {ratio(b1.hwm, s1.hwm):.3f}x (largest of {RUNS}; private/anon {kib(s1.anon)} and {kib(b1.anon)}; "
             f"VmRSS just before exit {kib(s1.rss)} and {kib(b1.rss)})")
    L.append(f"  fetch peak RSS, {PEERS} seeds connected (at most {conns32['small32']} / {conns32['big32']} connections seen): "
             f"{SMALL} MiB {kib(s32.hwm)}, {BIG} MiB {kib(b32.hwm)} -> {ratio(b32.hwm, s32.hwm):.3f}x; "
             f"vs budget {RSS_BUDGET_KIB} KiB -> {ratio(b32.hwm, RSS_BUDGET_KIB * KIB):.3f}x, {verdict(b32.hwm <= RSS_BUDGET_KIB * KIB)}")
    for r in (swarm_all, swarm_default):
        h = r["server"].hwm
        L.append(f"  serve peak RSS, {PEERS} fetchers downloading at once (--upload-slots {r['slots']}, --max-upload-rate "
                 f"{SWARM_RATE}, {PEERS} x {SWARM} MiB, {r['note']}, at most {r['conns']} connections): {kib(h)} vs budget "
                 f"{RSS_BUDGET_KIB} KiB -> {ratio(h, RSS_BUDGET_KIB * KIB):.3f}x, {verdict(h <= RSS_BUDGET_KIB * KIB)} "
                 f"(fetchers' largest {kib(r['fetcher_rss'])})")
    L.append(f"    (the {PEERS} seeds of the fetch test, serving {SMALL} + {BIG} MiB to one fetcher: largest {kib(seed_rss)})")
    L.append(f"  CPU fetch {BIG} MiB one seed, x86_64 musl: {bc.cpu:.2f} s (user {bc.user:.2f} sys {bc.sys:.2f}) vs "
             f"openssl dgst -sha256 {o.cpu:.2f} s (user {o.user:.2f} sys {o.sys:.2f}) -> {ratio(bc.cpu, o.cpu):.2f}x, {verdict(bc.cpu <= CPU_BUDGET * o.cpu)} "
             f"(least of {RUNS} each; medians {bm.cpu:.2f} s vs {om.cpu:.2f} s -> {ratio(bm.cpu, om.cpu):.2f}x; "
             f"{BIG} MiB in {bm.wall:.2f} s wall, {BIG * MIB / 1e6 / bm.wall:.0f} MB/s)")
    L.append(f"    same fetch, x86_64 gnu build: {gc.cpu:.2f} s (user {gc.user:.2f} sys {gc.sys:.2f}) -> {ratio(gc.cpu, o.cpu):.2f}x; "
             f"from {PEERS} seeds (musl): {b32.cpu:.2f} s -> {ratio(b32.cpu, o.cpu):.2f}x")
    L.append(f"  (measured in {time.monotonic() - T0:.0f} s)")
    print("\n" + "\n".join(L), flush=True)
    budgets = (
        ("binary size", fig["arm"] <= SIZE_BUDGET_KIB * KIB),
        ("compressed binary size", fig["arm_xz"] <= XZ_BUDGET_KIB * KIB),
        ("fetch RSS", b32.hwm <= RSS_BUDGET_KIB * KIB),
        ("serve RSS", max(swarm_all["server"].hwm, swarm_default["server"].hwm) <= RSS_BUDGET_KIB * KIB),
        ("fetch CPU", bc.cpu <= CPU_BUDGET * o.cpu))
    over = [name for name, ok in budgets if not ok]
    print(f"footprint: {len(budgets) - len(over)} within budget, {len(over)} over" + (f" ({', '.join(over)})" if over else ""))
    if over and os.environ.get("FOOTPRINT_STRICT") == "1":
        raise Failed("over budget: " + ", ".join(over))


try:
    main()
except Failed as e:
    print(f"FAIL footprint: {e}", flush=True)
    cleanup()
    sys.exit(1)
except BaseException:
    cleanup()
    raise
cleanup()
PY
