#!/usr/bin/env bash
# Idle cost of a chime server (README "Idle cost"): starts the release binary with the default
# profile on a fresh data directory, waits until it is ready, lets it idle for SECS seconds
# (default 10) and prints the CPU it used meanwhile (all threads, from /proc/PID/task/*/stat),
# the busiest threads, the thread count and its anonymous memory.
#
#   cargo build --release && bench/scripts/idle_cost.sh [SECS]
set -euo pipefail
secs=${1:-10}
bin=${CHIME_BIN:-target/release/chime}
dir=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
CHIME_LISTEN=127.0.0.1:18098 CHIME_DATA_DIR="$dir/data" "$bin" 2>"$dir/stderr" &
pid=$!
for _ in $(seq 200); do
  curl -fs http://127.0.0.1:18098/readyz >/dev/null 2>&1 && break
  sleep 0.05
done
sleep 1 # start-up work (recovery, first checkpoints) is not idle
ticks=$(getconf CLK_TCK)
snap() { for t in /proc/"$pid"/task/*; do echo "${t##*/} $(cat "$t/comm") $(awk '{print $14+$15}' "$t/stat")"; done | LC_ALL=C sort; }
before=$(snap)
sleep "$secs"
after=$(snap)
LC_ALL=C join <(echo "$before") <(echo "$after") |
  awk -v s="$secs" -v hz="$ticks" '{d=$5-$3; tot+=d; if (d>0) printf "  %-16s %5.2f%% of a core\n", $2, 100*d/hz/s} END {printf "all threads: %.2f%% of one core over %d s\n", 100*tot/hz/s, s}'
echo "threads: $(ls /proc/"$pid"/task | wc -l); $(grep RssAnon /proc/"$pid"/status)"
