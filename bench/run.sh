#!/usr/bin/env bash
# Measures tokengate's per-request check against the floor (SHA-512 + an in-memory map lookup
# in a bare axum server) with wrk, on SQLite and PostgreSQL. See bench/README.md.
#
#   bench/run.sh                      # 1,000 tokens, 6 interleaved rounds of 5 s per case
#   TOKENS=1000000 bench/run.sh       # the same with a million tokens stored
#   SMOKE=1 bench/run.sh              # a 1-second round, for CI (no figures asserted)
set -euo pipefail
cd "$(dirname "$0")/.."

TOKENS=${TOKENS:-1000}
DURATION=${DURATION:-5s}
ROUNDS=${ROUNDS:-6}
CONNS=${CONNS:-64}
STORES=${STORES:-"sqlite postgres"}
PG=${BENCH_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432}
if [ -n "${SMOKE:-}" ]; then DURATION=1s; ROUNDS=1; TOKENS=${TOKENS:-100}; fi

command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
cargo build --release --locked --quiet --bin tokengate --example bench
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
BIN=$TARGET/release/tokengate
BENCH=$TARGET/release/examples/bench

work=$(mktemp -d)
pids=()
pg_db=""
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "$pg_db" ]; then psql "$PG/postgres" -q -c "DROP DATABASE IF EXISTS $pg_db" >/dev/null 2>&1 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 1 100); do curl -fs -o /dev/null "$1" && return 0; sleep 0.1; done; echo "no answer from $1" >&2; return 1; }

# wrk ARGS… → "requests/s p50_ms p99_ms"
measure() {
  wrk -t2 -c"$CONNS" -d"$DURATION" --latency "$@" 2>&1 | awk '
    function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
    /Requests\/sec/ { rps = $2 }
    $1 == "50%" { p50 = ms($2) }
    $1 == "99%" { p99 = ms($2) }
    /Non-2xx/ { bad = $NF }
    END { if (bad > 0) print "ERROR non-2xx answers: " bad > "/dev/stderr"; printf "%.0f %.2f %.2f\n", rps, p50, p99 }'
}

# list_ms URL → the median time of 5 authenticated GETs, in ms
list_ms() {
  for _ in 1 2 3 4 5; do curl -fsS -o /dev/null -w '%{time_total}\n' -H "$auth" "$1"; done |
    sort -n | awk 'NR == 3 { printf "%.1f", $1 * 1000 }'
}

printf '%-9s %-22s %10s %8s %8s %8s %8s\n' store case "req/s" "p50 ms" "p99 ms" "x floor" "p99/fl"
for store in $STORES; do
  if [ "$store" = sqlite ]; then
    url="sqlite://$work/bench.db"
  else
    pg_db="tokengate_bench_$$"
    psql "$PG/postgres" -q -c "DROP DATABASE IF EXISTS $pg_db" -c "CREATE DATABASE $pg_db" >/dev/null
    url="$PG/$pg_db"
  fi
  "$BENCH" seed --database-url "$url" --user bench --tokens "$TOKENS" --out "$work/tokens.txt" 2>"$work/seed.log"
  token=$(head -1 "$work/tokens.txt")

  floor_port=$(free_port)
  "$BENCH" floor --listen "127.0.0.1:$floor_port" --tokens "$work/tokens.txt" 2>"$work/floor.log" &
  pids+=($!)
  port=$(free_port)
  started=$(date +%s.%N)
  idle_rss=""

  TOKENGATE_DATABASE_URL="$url" TOKENGATE_LISTEN="127.0.0.1:$port" \
    TOKENGATE_TFA_KEY_FILE="$work/tokengate.key" TOKENGATE_UPSTREAM_URL="http://127.0.0.1:$floor_port" \
    RUST_LOG=${BENCH_RUST_LOG:-warn} "$BIN" serve 2>"$work/server.log" &
  server=$!
  pids+=($server)
  wait_http "http://127.0.0.1:$port/-/ping"
  startup=$(echo "$(date +%s.%N) - $started" | bc)
  idle_rss=$(awk '/VmRSS/ {print $2}' "/proc/$server/status")
  wait_http "http://127.0.0.1:$floor_port/bench-pkg"

  auth="Authorization: Bearer $token"
  declare -A sum_rps=() sum_p50=() sum_p99=()
  cases="floor whoami verify proxied-read"
  # Each round measures every case once, the login storm included, so that a slow stretch of
  # the machine weighs on all of them alike.
  storm_secs=$(( ${DURATION%s} + 3 ))
  sum_logins=0
  for _ in $(seq 1 "$ROUNDS"); do
    for c in $cases storm; do
      case $c in
        floor) r=$(measure -H "$auth" "http://127.0.0.1:$floor_port/-/whoami") ;;
        whoami) r=$(measure -H "$auth" "http://127.0.0.1:$port/-/whoami") ;;
        verify) r=$(measure -H "$auth" -H "X-Original-Method: GET" -H "X-Original-URI: /bench-pkg" "http://127.0.0.1:$port/-/auth/verify") ;;
        proxied-read) r=$(measure -H "$auth" "http://127.0.0.1:$port/bench-pkg") ;;
        storm)
          # 20 clients logging in back to back (argon2id each) while whoami is measured.
          wrk -t1 -c20 -d"${storm_secs}s" -s bench/login.lua "http://127.0.0.1:$port" >"$work/storm.log" 2>&1 &
          storm=$!
          sleep 1
          r=$(measure -H "$auth" "http://127.0.0.1:$port/-/whoami")
          wait "$storm" 2>/dev/null || true
          sum_logins=$(echo "$sum_logins + $(awk '/Requests\/sec/ {print $2}' "$work/storm.log")" | bc -l)
          ;;
      esac
      read -r rps p50 p99 <<<"$r"
      sum_rps[$c]=$(echo "${sum_rps[$c]:-0} + $rps" | bc)
      sum_p50[$c]=$(echo "${sum_p50[$c]:-0} + $p50" | bc -l)
      sum_p99[$c]=$(echo "${sum_p99[$c]:-0} + $p99" | bc -l)
    done
  done
  floor_rps=$(echo "${sum_rps[floor]} / $ROUNDS" | bc -l)
  floor_p99=$(echo "${sum_p99[floor]} / $ROUNDS" | bc -l)
  for c in $cases; do
    rps=$(echo "${sum_rps[$c]} / $ROUNDS" | bc -l)
    p50=$(echo "${sum_p50[$c]} / $ROUNDS" | bc -l)
    p99=$(echo "${sum_p99[$c]} / $ROUNDS" | bc -l)
    printf '%-9s %-22s %10.0f %8.2f %8.2f %8.2f %8.2f\n' "$store" "$c" "$rps" "$p50" "$p99" \
      "$(echo "$rps / $floor_rps" | bc -l)" "$(echo "$p99 / $floor_p99" | bc -l)"
  done
  rps=$(echo "${sum_rps[storm]} / $ROUNDS" | bc -l)
  p50=$(echo "${sum_p50[storm]} / $ROUNDS" | bc -l)
  p99=$(echo "${sum_p99[storm]} / $ROUNDS" | bc -l)
  normal=$(echo "${sum_rps[whoami]} / $ROUNDS" | bc -l)
  printf '%-9s %-22s %10.0f %8.2f %8.2f %8.2f %8s  (x whoami alone)\n' "$store" "whoami+20-logins" "$rps" "$p50" "$p99" \
    "$(echo "$rps / $normal" | bc -l)" "-"
  printf '%-9s %-22s %10.0f  logins/s during those runs (argon2id, bounded to half the cores)\n' "$store" "logins" \
    "$(echo "$sum_logins / $ROUNDS" | bc -l)"
  # The token list of the user who owns every seeded token: the first page, and a page in the
  # middle reached as npm reaches it (the `after` cursor of `urls.next`) and by `?page=N`.
  if [ "$TOKENS" -ge 100 ]; then
    list="http://127.0.0.1:$port/-/npm/v1/tokens"
    middle=$((TOKENS / 20))
    after=$(curl -fsS -H "$auth" "$list?page=$middle&perPage=10" |
      python3 -c 'import json, sys; print(json.load(sys.stdin)["urls"]["next"])')
    printf '%-9s token list of the owner of all %s tokens, median of 5 (ms): first page %.1f, middle page by cursor %.1f, by ?page=N %.1f\n' \
      "$store" "$TOKENS" "$(list_ms "$list")" "$(list_ms "http://127.0.0.1:$port$after")" \
      "$(list_ms "$list?page=$((middle + 1))&perPage=10")"
  fi
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$server/status")
  printf '%-9s tokens %s, start-up %.2f s, RSS idle %s MiB, after the runs %s MiB; %s\n' "$store" "$TOKENS" \
    "$startup" "$((idle_rss / 1024))" "$((rss / 1024))" "$(tail -1 "$work/seed.log")"
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  pids=()
  unset sum_rps sum_p50 sum_p99
  rm -f "$work/bench.db"*
done
