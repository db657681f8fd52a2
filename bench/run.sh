#!/usr/bin/env bash
# Runs every scenario of bench/RESULTS.md and keeps each command's JSON line, one file per
# scenario (OUT_DIR/NAME.json), so a later run can be compared with this one.
#
# Usage: bash bench/run.sh [OUT_DIR] [PREVIOUS_DIR]
#   OUT_DIR       default: target/bench-results/<UTC timestamp> (ignored by git)
#   PREVIOUS_DIR  an earlier OUT_DIR: each scenario is run with --compare PREVIOUS_DIR/NAME.json
#                 and every figure more than 10% worse is flagged (on stderr, and under
#                 "comparison" in the JSON). The script then exits 2 if any scenario regressed.
#
# Builds first; about 9 minutes on the 2-core reference machine, and needs about 6 GB free in
# the temp dir (pending: 5 GB, wheel-flush: 1.3 GB). Run it on an otherwise idle machine: the
# figures include other processes' load, reported as `other_cores_busy`. A scenario that fails
# does not stop the others; the script exits 1 at the end if any failed.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/bench-results/$(date -u +%Y%m%dT%H%M%SZ)}
prev=${2:-}
mkdir -p "$out"
cargo build --release --bin chime
cargo build --release -p chime-bench
B=target/release/chime-bench

failed=()
regressed=()
run() {
  local name=$1; shift
  local cmp=()
  if [[ -n $prev && -f $prev/$name.json ]]; then
    cmp=(--compare "$prev/$name.json")
  fi
  echo "== $name: chime-bench $* (${SECONDS}s into the run)" >&2
  local rc=0
  "$B" --json ${cmp[@]+"${cmp[@]}"} "$@" > "$out/$name.json" || rc=$?
  case $rc in
    0) ;;
    2) regressed+=("$name") ;;
    *) failed+=("$name") ;;
  esac
}

# Storage and HTTP (RESULTS.md, "Storage and HTTP"; key-lookup: "Consumer lifecycle"), about 7 minutes.
run append-256             append --bodies 256 --count 2000000
run append-4096            append --bodies 4096 --count 300000
run append-sync            append --bodies 256 --count 200000 --flush sync --batch 100
run append-sync-1appender  append --bodies 256 --count 200000 --flush sync --batch 100 --appenders 1
run send-1                 http-send --count 200000 --batch 1 --concurrency 64 --runs 3
run send-100               http-send --count 2000000 --batch 100 --concurrency 16 --runs 3
run send-100-durable       http-send --count 1000000 --batch 100 --concurrency 16 --profile durable --runs 3
run receive                http-receive --count 1000000 --max 256 --concurrency 8 --runs 3
run ingest                 ingest --single-count 50000 --batch-count 500000
run cancel                 cancel --count 20000 --concurrency 16
run key-lookup             key-lookup --runs 3
run fifo                   fifo --runs 3
run dedup                  dedup --runs 3
run txn                    txn --runs 3 --prepared 100000

# Timer (RESULTS.md, "Timer"), about 6 minutes.
run wheel-flush            wheel-flush --dirty 10000 --reps 5
run enqueue                enqueue --count 1000000 --runs 3
run same-timestamp         same-timestamp --count 10000 --runs 5
run same-timestamp-warm    same-timestamp --count 10000 --runs 5 --warm-topic
run same-timestamp-timer   same-timestamp --count 10000 --runs 5 --warm-topic --consumers 0
run burst                  burst --count 1000000 --runs 3
run burst-timer            burst --count 1000000 --consumers 0
run burst-ascending        burst --count 1000000 --order ascending
run spread                 spread --slots 20 --per-slot 5000
run steady                 steady --rate 10000 --duration 20
run pending                pending --count 10000000

{
  echo "== dd if=/dev/zero of=/tmp/ddtest bs=1M count=1024 conv=fdatasync (3 times)"
  for _ in 1 2 3; do
    dd if=/dev/zero of=/tmp/ddtest bs=1M count=1024 conv=fdatasync 2>&1 | tail -n 1
    rm -f /tmp/ddtest
  done
} > "$out/dd.txt"
echo "results in $out (${SECONDS}s)" >&2
if ((${#failed[@]})); then
  echo "FAILED: ${failed[*]}" >&2
  exit 1
fi
if ((${#regressed[@]})); then
  echo "more than 10% worse than $prev in: ${regressed[*]}" >&2
  exit 2
fi
