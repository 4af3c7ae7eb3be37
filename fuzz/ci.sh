#!/usr/bin/env bash
# CI's short fuzzing pass (docs/RELIABILITY.md): replays the seeds and every past crash on the
# stable toolchain, then fuzzes each target for FUZZ_SECONDS (default 30) from its seeds.
# A crash fails the script; libFuzzer leaves the input in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")"
secs=${FUZZ_SECONDS:-30}

rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

echo "== fuzz: replay seeds and regressions (stable)"
cargo test --quiet

for target in frame message manifest manifest_resigned announcement state session local_files root_successor; do
    case $target in
        frame | message) max_len=20000 ;;
        manifest | manifest_resigned) max_len=4096 ;;
        announcement) max_len=600 ;;
        state) max_len=20000 ;;
        session) max_len=4096 ;;
        local_files) max_len=9000 ;;
        root_successor) max_len=4096 ;;
    esac
    echo "== fuzz: $target for ${secs}s"
    mkdir -p "corpus/$target" logs
    # libFuzzer's progress goes to a log; the summary (or, on a crash, the tail) is printed.
    if ! cargo +nightly fuzz run --fuzz-dir . "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$secs" -max_len="$max_len" -timeout=10 -print_final_stats=1 >"logs/ci-$target.log" 2>&1; then
        tail -n 40 "logs/ci-$target.log"
        echo "fuzz: $target FAILED (input in fuzz/artifacts/$target/)"
        exit 1
    fi
    grep -E "^Done|stat::number_of_executed_units|stat::average_exec_per_sec" "logs/ci-$target.log" | sed 's/^/   /'
done
echo "fuzz: all targets ran without a crash"
