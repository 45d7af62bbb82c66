#!/usr/bin/env bash
# Downloads a 50 MB tarball from an upstream registry directly and through tokengate's proxy,
# interleaved, and prints the throughput of each and their ratio, with the server's RSS before
# and after. See bench/README.md. Two upstreams:
# - nginx (Debian's nginx-light) serving the file with sendfile, the default: the fastest
#   upstream there is (no copy in user space), so the ratio shows the proxy's whole cost;
# - Verdaccio 6 (from the npm registry), the registry tokengate is meant to sit in front of,
#   serving the tarball from its storage.
#
#   bench/tarball.sh                       # nginx, 50 MB, 5 interleaved rounds
#   UPSTREAM=verdaccio ROUNDS=9 bench/tarball.sh
#   SIZE_MB=200 ROUNDS=3 bench/tarball.sh
set -euo pipefail
cd "$(dirname "$0")/.."

SIZE_MB=${SIZE_MB:-50}
ROUNDS=${ROUNDS:-5}
UPSTREAM=${UPSTREAM:-nginx}
VERDACCIO_VERSION=6.8.0
case "$UPSTREAM" in nginx | verdaccio) ;; *) echo "UPSTREAM is nginx or verdaccio" >&2; exit 2 ;; esac
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
if [ "$UPSTREAM" = nginx ] && [ ! -x "$NGINX" ]; then
  apt-get update -qq && apt-get install -y -qq nginx-light >/dev/null
  NGINX=/usr/sbin/nginx
fi
cargo build --release --locked --quiet --bin tokengate --example bench
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
BIN=$TARGET/release/tokengate
BENCH=$TARGET/release/examples/bench

work=$(mktemp -d)
chmod 755 "$work"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 1 100); do curl -fs -o /dev/null "$1" && return 0; sleep 0.1; done; echo "no answer from $1" >&2; return 1; }

up_port=$(free_port)
url_path=/big/-/big-1.0.0.tgz

start_verdaccio() {
  # Installed once per target directory, pinned like the acceptance tests' Verdaccio.
  vd_dir=$TARGET/bench-verdaccio-$VERDACCIO_VERSION
  if [ ! -x "$vd_dir/node_modules/.bin/verdaccio" ]; then
    mkdir -p "$vd_dir"
    printf '{"name":"tokengate-bench-verdaccio","private":true,"dependencies":{"verdaccio":"%s"},"overrides":{"node-fetch":"2.7.0"}}\n' \
      "$VERDACCIO_VERSION" >"$vd_dir/package.json"
    (cd "$vd_dir" && npm install --no-audit --no-fund --loglevel=error >/dev/null)
  fi
  # The package as Verdaccio's local storage keeps it: its document and its tarball.
  mkdir -p "$work/storage/big"
  head -c "$((SIZE_MB * 1024 * 1024))" /dev/urandom >"$work/storage/big/big-1.0.0.tgz"
  sha=$(sha1sum "$work/storage/big/big-1.0.0.tgz" | cut -d' ' -f1)
  when=2026-01-01T00:00:00.000Z
  cat >"$work/storage/big/package.json" <<DOC
{"name":"big","versions":{"1.0.0":{"name":"big","version":"1.0.0","dist":{"tarball":"http://127.0.0.1:$up_port$url_path","shasum":"$sha"}}},"dist-tags":{"latest":"1.0.0"},"time":{"created":"$when","modified":"$when","1.0.0":"$when"},"_distfiles":{},"_attachments":{"big-1.0.0.tgz":{"shasum":"$sha","version":"1.0.0"}},"_uplinks":{},"_rev":"1-0000000000000000","readme":""}
DOC
  cat >"$work/verdaccio.yaml" <<CONF
storage: $work/storage
auth: { htpasswd: { file: $work/htpasswd, max_users: -1 } }
uplinks: {}
packages: { '**': { access: \$all, publish: \$all } }
log: { type: stdout, format: pretty, level: warn }
CONF
  "$vd_dir/node_modules/.bin/verdaccio" --config "$work/verdaccio.yaml" --listen "127.0.0.1:$up_port" \
    >"$work/verdaccio.log" 2>&1 &
  pids+=($!)
  # Node takes a few seconds to start.
  for _ in $(seq 1 300); do curl -fs -o /dev/null "http://127.0.0.1:$up_port$url_path" && break; sleep 0.1; done
}

start_nginx() {
  mkdir -p "$work/www/big/-" "$work/tmp"
  head -c "$((SIZE_MB * 1024 * 1024))" /dev/urandom >"$work/www/big/-/big-1.0.0.tgz"
  chmod -R a+rX "$work/www"
  cat >"$work/nginx.conf" <<CONF
daemon on;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
worker_processes 1;
events { worker_connections 64; }
http {
  access_log off;
  sendfile on;
  client_body_temp_path $work/tmp;
  proxy_temp_path $work/tmp;
  fastcgi_temp_path $work/tmp;
  uwsgi_temp_path $work/tmp;
  scgi_temp_path $work/tmp;
  server {
    listen 127.0.0.1:$up_port;
    root $work/www;
  }
}
CONF
  "$NGINX" -c "$work/nginx.conf" -e "$work/nginx-error.log"
}

"start_$UPSTREAM"
wait_http "http://127.0.0.1:$up_port$url_path"

"$BENCH" seed --database-url "sqlite://$work/bench.db" --user bench --tokens 1 --out "$work/tokens.txt" 2>/dev/null
token=$(head -1 "$work/tokens.txt")
port=$(free_port)
TOKENGATE_DATABASE_URL="sqlite://$work/bench.db" TOKENGATE_LISTEN="127.0.0.1:$port" \
  TOKENGATE_TFA_KEY_FILE="$work/tokengate.key" TOKENGATE_UPSTREAM_URL="http://127.0.0.1:$up_port" \
  RUST_LOG=warn "$BIN" serve 2>"$work/server.log" &
server=$!
pids+=($server)
wait_http "http://127.0.0.1:$port/-/ping"
rss_before=$(awk '/VmRSS/ {print $2}' "/proc/$server/status")

# curl URL [AUTH] → bytes per second
fetch() { curl -fsS -o /dev/null -w '%{speed_download}' ${2:+-H "Authorization: Bearer $2"} "$1"; }
fetch "http://127.0.0.1:$up_port$url_path" >/dev/null # warm the page cache
fetch "http://127.0.0.1:$port$url_path" "$token" >/dev/null
direct=() gated=()
for _ in $(seq 1 "$ROUNDS"); do
  direct+=("$(fetch "http://127.0.0.1:$up_port$url_path")")
  gated+=("$(fetch "http://127.0.0.1:$port$url_path" "$token")")
done
rss_after=$(awk '/VmRSS/ {print $2}' "/proc/$server/status")
python3 - "$SIZE_MB" "$rss_before" "$rss_after" "${direct[*]}" "${gated[*]}" "$UPSTREAM" <<'PY'
import statistics, sys
size, before, after, upstream = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[6]
direct = [float(v) / 1e9 for v in sys.argv[4].split()]
gated = [float(v) / 1e9 for v in sys.argv[5].split()]
ratios = [g / d for d, g in zip(direct, gated)]
fmt = lambda xs: " ".join(f"{x:.2f}" for x in xs)
print(f"{size} MB tarball, {len(direct)} interleaved rounds, upstream {upstream}")
print(f"direct from {upstream:9} GB/s: {fmt(direct)}  (median {statistics.median(direct):.2f})")
print(f"through tokengate GB/s:    {fmt(gated)}  (median {statistics.median(gated):.2f})")
print(f"ratio per round:            {fmt(ratios)}  (median {statistics.median(ratios):.2f})")
print(f"tokengate RSS {before // 1024} MiB before, {after // 1024} MiB after")
PY
