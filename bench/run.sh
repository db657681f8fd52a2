#!/usr/bin/env bash
# Runs every measurement of bench/RESULTS.md and keeps each command's JSON line.
# Usage: bash bench/run.sh [OUT_DIR]   (default: target/bench-results/<UTC timestamp>, ignored by git)
# Builds first; run on an otherwise idle machine (the figures include other processes' load
# as `other_cores_busy`).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/bench-results/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$out"
cargo build --release --bin chime
cargo build --release -p chime-bench
B=target/release/chime-bench

run() {
  local name=$1; shift
  echo "== $name: chime-bench $*" >&2
  "$B" --json "$@" | tail -n 1 > "$out/$name.json"
}

run append-256   append --bodies 256 --count 2000000
run append-4096  append --bodies 4096 --count 300000
run append-sync  append --bodies 256 --count 200000 --flush sync --batch 100
run append-sync-1appender append --bodies 256 --count 200000 --flush sync --batch 100 --appenders 1
run send-1       http-send --count 200000 --batch 1 --concurrency 64 --runs 3
run send-100     http-send --count 2000000 --batch 100 --concurrency 16 --runs 3
run send-100-durable http-send --count 1000000 --batch 100 --concurrency 16 --profile durable --runs 3
run receive      http-receive --count 1000000 --max 256 --concurrency 8 --runs 3

# Timer (RESULTS.md, "Timer"). About 5 minutes; wheel-flush needs about 1.3 GB of free space in
# the temp dir, pending about 5 GB.
run wheel-flush            wheel-flush --dirty 10000 --reps 5
run enqueue                enqueue --count 1000000 --runs 3
run same-timestamp         same-timestamp --count 10000 --runs 5
run same-timestamp-warm    same-timestamp --count 10000 --runs 5 --warm-topic
run same-timestamp-timer   same-timestamp --count 10000 --runs 5 --warm-topic --consumers 0
run burst                  burst --count 1000000 --runs 3
run burst-timer            burst --count 1000000 --runs 3 --consumers 0
run burst-ascending        burst --count 1000000 --order ascending
run pending                pending --count 10000000

{
  echo "== dd if=/dev/zero of=/tmp/ddtest bs=1M count=1024 conv=fdatasync (3 times)"
  for _ in 1 2 3; do
    dd if=/dev/zero of=/tmp/ddtest bs=1M count=1024 conv=fdatasync 2>&1 | tail -n 1
    rm -f /tmp/ddtest
  done
} > "$out/dd.txt"
echo "results in $out" >&2
