#!/usr/bin/env bash
# Alternates receive + ack runs (chime-bench http-receive, 1M messages) against two chime
# binaries, each on a fresh data directory: old, new, new, old. Prints msgs/s of each run.
# Usage: bash bench/scripts/receive_compare.sh OLD_BINARY NEW_BINARY (build chime-bench first)
set -u
OLD=${1:?old binary}
NEW=${2:?new binary}
BENCH=$(cd "$(dirname "$0")/../.." && pwd)/target/release/chime-bench
run() { # name binary
  local name=$1 bin=$2 dir port
  dir=$(mktemp -d /tmp/rb-XXXX); port=$((18100 + RANDOM % 500))
  "$bin" --listen 127.0.0.1:$port --data-dir "$dir/data" 2>"$dir/log" & local pid=$!
  for _ in $(seq 100); do curl -sf localhost:$port/readyz >/dev/null && break; sleep 0.1; done
  $BENCH --json http-receive --url http://127.0.0.1:$port --count 1000000 --skip-receive-only > "/tmp/rb-$name.json" 2>"/tmp/rb-$name.err"
  kill $pid; wait $pid 2>/dev/null; rm -rf "$dir"
  python3 -c "import json;d=json.load(open('/tmp/rb-$name.json'));r=d['runs'][0];print('$name', {k:v for k,v in r.items() if 'msgs_per_s' in k or k.endswith('_per_s')})"
}
run old1 "$OLD"
run new1 "$NEW"
run new2 "$NEW"
run old2 "$OLD"
