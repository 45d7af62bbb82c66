#!/usr/bin/env bash
# Counts the instructions the floor and tokengate execute per authenticated request, under
# valgrind's callgrind: unlike requests/s, the count does not depend on what else the machine
# is doing, so it shows the effect of a change on the per-request path. Each server answers
# REQUESTS keep-alive `GET /-/whoami` (or `CASE=verify`: `/-/auth/verify`) requests from one
# client; a run of 100 requests is subtracted to leave out start-up. See bench/README.md.
#
#   bench/instructions.sh                 # 2,000 requests
#   CASE=verify REQUESTS=3000 bench/instructions.sh
set -euo pipefail
cd "$(dirname "$0")/.."

REQUESTS=${REQUESTS:-2000}
CASE=${CASE:-whoami}
case "$CASE" in whoami | verify) ;; *) echo "CASE is whoami or verify" >&2; exit 2 ;; esac
command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind >/dev/null; }
cargo build --release --locked --quiet --bin tokengate --example bench
TARGET=${CARGO_TARGET_DIR:-$PWD/target}

work=$(mktemp -d)
server=""
cleanup() {
  [ -n "$server" ] && kill -KILL "$server" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

"$TARGET/release/examples/bench" seed --database-url "sqlite://$work/bench.db" --user bench \
  --tokens 1000 --out "$work/tokens.txt" 2>/dev/null
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

# client N PATH: N keep-alive requests on one connection, each answered 200.
client() {
  python3 - "$port" "$1" "$2" "$work/tokens.txt" <<'PY'
import http.client, sys
port, n, path, tokens = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
token = open(tokens).readline().strip()
headers = {"Authorization": "Bearer " + token, "User-Agent": "npm/11.0.0 node/v22.0.0 linux x64",
           "X-Original-Method": "GET", "X-Original-URI": "/bench-pkg"}
conn = http.client.HTTPConnection("127.0.0.1", port)
for _ in range(n):
    conn.request("GET", path, headers=headers)
    answer = conn.getresponse()
    answer.read()
    assert answer.status == 200, answer.status
PY
}

# instructions WHICH N → the instructions executed while starting and answering N requests
instructions() {
  local which=$1 n=$2 path=/-/whoami out="$work/callgrind.$1.$2"
  if [ "$which" = floor ]; then
    valgrind --tool=callgrind --callgrind-out-file="$out" "$TARGET/release/examples/bench" floor \
      --listen "127.0.0.1:$port" --tokens "$work/tokens.txt" 2>/dev/null &
  else
    [ "$CASE" = verify ] && path=/-/auth/verify
    TOKENGATE_DATABASE_URL="sqlite://$work/bench.db" TOKENGATE_LISTEN="127.0.0.1:$port" \
      TOKENGATE_TFA_KEY_FILE="$work/tokengate.key" RUST_LOG=warn \
      valgrind --tool=callgrind --callgrind-out-file="$out" "$TARGET/release/tokengate" serve 2>/dev/null &
  fi
  server=$!
  for _ in $(seq 1 300); do curl -fs -o /dev/null "http://127.0.0.1:$port/-/ping" && break; sleep 0.2; done
  client "$n" "$path"
  # A dump now: the count so far, whatever the server does when stopped.
  callgrind_control --dump "$server" >/dev/null 2>&1
  sleep 1
  kill -KILL "$server"
  wait "$server" 2>/dev/null || true
  server=""
  cat "$out"* | awk '/^(summary|totals):/ { if ($2 > max) max = $2 } END { print max }'
}

printf '%-9s %s instructions per request (%s requests)\n' server "$CASE" "$REQUESTS"
for which in floor tokengate; do
  base=$(instructions "$which" 100)
  full=$(instructions "$which" $((REQUESTS + 100)))
  printf '%-9s %d\n' "$which" $(((full - base) / REQUESTS))
done
