#!/usr/bin/env bash
# Runs every fuzz target for a bounded time, one after another, and reports per target the
# runs libFuzzer executed and whether it found a crash.
#
#   bash fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]    (default: 60 s, every target)
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). Builds go to
# fuzz/target, never to a shared CARGO_TARGET_DIR: nightly and sanitizer builds would only
# evict the stable ones there.
set -u
cd "$(dirname "$0")"
unset CARGO_TARGET_DIR
secs="${1:-60}"
shift || true
targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
mkdir -p logs
cargo +nightly fuzz build >logs/build.log 2>&1 || { tail -20 logs/build.log; exit 2; }
status=0
printf '%-16s %8s %12s  %s\n' target seconds runs result
for t in "${targets[@]}"; do
    log="logs/$t.log"
    cargo +nightly fuzz run "$t" -- -max_total_time="$secs" >"$log" 2>&1
    rc=$?
    runs=$(grep -Eo 'Done [0-9]+ runs' "$log" | grep -Eo '[0-9]+' | tail -1)
    if [ -z "$runs" ]; then
        runs=$(grep -Eo '^#[0-9]+' "$log" | tail -1 | tr -d '#')
    fi
    if [ "$rc" -eq 0 ]; then
        result="no crash"
    else
        status=1
        artifact=$(grep -Eo 'artifacts/[^ ]+' "$log" | tail -1)
        result="CRASH (exit $rc) ${artifact:-see $log}"
    fi
    printf '%-16s %8s %12s  %s\n' "$t" "$secs" "${runs:-?}" "$result"
done
exit "$status"
