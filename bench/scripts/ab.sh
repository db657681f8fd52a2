#!/usr/bin/env bash
# Alternates runs of one chime-bench scenario against two chime binaries, each on a fresh data
# directory: old, new, new, old. Prints each run's rates (figures ending in _per_s).
# Usage: bash bench/scripts/ab.sh OLD_BINARY NEW_BINARY SCENARIO [ARGS...]
#   e.g. bash bench/scripts/ab.sh /tmp/old/target/release/chime target/release/chime \
#          http-send --count 2000000 --batch 100 --concurrency 16
# (build chime-bench first: cargo build --release -p chime-bench)
set -u
OLD=${1:?old binary}
NEW=${2:?new binary}
shift 2
BENCH=$(cd "$(dirname "$0")/../.." && pwd)/target/release/chime-bench
run() { # name binary scenario args...
  local name=$1 bin=$2 dir port
  shift 2
  dir=$(mktemp -d /tmp/ab-XXXX); port=$((18100 + RANDOM % 500))
  "$bin" --listen 127.0.0.1:$port --data-dir "$dir/data" 2>"$dir/log" & local pid=$!
  for _ in $(seq 100); do curl -sf localhost:$port/readyz >/dev/null && break; sleep 0.1; done
  "$BENCH" --json "$@" --url http://127.0.0.1:$port > "/tmp/ab-$name.json" 2>"/tmp/ab-$name.err"
  kill $pid; wait $pid 2>/dev/null; rm -rf "$dir"
  python3 -c "import json;d=json.loads(open('/tmp/ab-$name.json').read().strip().splitlines()[-1]);r=d['runs'][0];print('$name', {k:round(v) for k,v in r.items() if k.endswith('_per_s')})"
}
run old1 "$OLD" "$@"
run new1 "$NEW" "$@"
run new2 "$NEW" "$@"
run old2 "$OLD" "$@"
