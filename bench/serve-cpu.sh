#!/usr/bin/env bash
# Server CPU time per request, previous build against this one, alternating, on fresh state
# directories: utime+stime of `imagetrail serve` (from /proc/PID/stat) around a wrk run, divided
# by the requests served. Steadier than req/s on a machine others are loading, because it does
# not count the time the server waits for a core.
#
#   BIN=target/release/imagetrail BASELINE_BIN=/tmp/imagetrail-old ROUNDS=3 bench/serve-cpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/imagetrail}
BASELINE_BIN=${BASELINE_BIN:?give BASELINE_BIN, the previous build}
ROUNDS=${ROUNDS:-3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-6}
W=$(mktemp -d /tmp/it-srv-cpu.XXXXXX)
PID=
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT
export BENCH_KEY=bench-key-$RANDOM
echo "bench $BENCH_KEY" > "$W/keys"
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
echo "| round | build | script | req/s | requests | server CPU | µs CPU/request | load |"
echo "|---:|---|---|---:|---:|---:|---:|---:|"
for round in $(seq 1 "$ROUNDS"); do
  for build in previous this; do
    bin=$BASELINE_BIN; [ "$build" = this ] && bin=$BIN
    out_file="$W/$build-$round.out"
    "$bin" serve --listen 127.0.0.1:0 --state-dir "$W/$build-$round" --api-keys-file "$W/keys" >"$out_file" 2>/dev/null &
    PID=$!
    for _ in $(seq 1 100); do grep -q listening "$out_file" && break; sleep 0.1; done
    url=$(sed -n 's/^listening on //p' "$out_file")
    for script in register deployments; do
      sync
      t0=$(ticks "$PID")
      out=$(wrk -t2 -c16 -d"${SECONDS_PER_RUN}s" -s "bench/wrk/$script.lua" "$url")
      t1=$(ticks "$PID")
      n=$(awk '/requests in/ {print $1}' <<<"$out")
      rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
      tick_ms=$((1000 / $(getconf CLK_TCK)))
      cpu_ms=$(((t1 - t0) * tick_ms))
      per=$(awk -v ms="$cpu_ms" -v n="$n" 'BEGIN{printf "%.1f", ms * 1000 / n}')
      echo "| $round | $build | $script | $rps | $n | $cpu_ms ms | $per | $(cut -d' ' -f1 /proc/loadavg) |"
    done
    kill "$PID"; wait "$PID" 2>/dev/null || true; PID=
  done
done
