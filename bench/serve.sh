#!/usr/bin/env bash
# Load benchmark of `imagetrail serve` on loopback with wrk (-t2 -c16), against the original Flask
# mock of the analytics server (Flask's threaded server) and the same app under gunicorn with 2
# workers, measured in the same run.
#
#   bench/serve.sh              # 10 s per wrk run, then a 60 s soak each of register and
#                               # deployments with RSS sampled every second
#   DURATION=5 SOAK=20 bench/serve.sh
#   BASELINE_BIN=/tmp/imagetrail-old bench/serve.sh   # also an earlier build, same run
#   FLOOD_CONNS=400 FLOOD_HOLD=5 bench/serve.sh       # the unauthenticated flood (below)
#   FLASK=0 bench/serve.sh                            # without the Flask/gunicorn baselines
#   PG=0 bench/serve.sh                               # without the PostgreSQL rows
#   FILES=0 SOAK=0 bench/serve.sh                     # PostgreSQL rows only, no soaks
#
# PostgreSQL rows (PG=1, the default; needs Debian's postgresql 15 and root, the server runs as
# the postgres user): a throwaway cluster on 127.0.0.1 with fsync and synchronous_commit on (the
# defaults), `imagetrail serve --database-url` replicas on it: register and deployments through
# one replica, then deployments through two replicas on the one database at once (two wrk
# -t1 -c8, one per replica, the same 16 connections in all: req/s summed, p99 the larger of the
# two), over 16 (environment, app) pairs (every batch wants the same apps' locks) and over 128. Then 1,000,000 deployments are bulk-loaded with SQL (10 environments x 1,000 apps, one a
# minute) and `at` (a random app at a random time) and "current" (a random app's newest) are
# measured through the HTTP API with one connection (wrk -t1 -c1: latency, not throughput)
# and with 16. PG_STATEMENTS=1 also prints pg_stat_statements' top statements of the write runs.
# With BASELINE_BIN the write rows are also run with that build, first, on a database of its
# own (each build migrates its own database).
#
# The flood: FLOOD_CONNS connections each send the headers of a 1 MiB POST /api/v1/deployments
# without an API key and half of its body, and hold the connection FLOOD_HOLD s; the server's
# peak RSS (sampled every 0.1 s) is printed, for BASELINE_BIN too when given.
#
# Needs: wrk (Debian), python3; Flask and gunicorn are installed into a venv under /tmp if missing
# (PyPI). Durability: register callbacks are fdatasync'd per batch (group commit) before the
# answer; deployments are group-committed through records::Store::record_checked_many_with
# (history appends, and the deploy-info.yml temp files due, synced in one round, then renamed)
# before the answer. After the runs the script checks that every deploy-info.yml caught up with
# its history.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
SOAK=${SOAK:-60}
BIN=${BIN:-target/release/imagetrail}
BASELINE_BIN=${BASELINE_BIN:-}
VENV=${VENV:-/tmp/it-srv-venv}
WRK=(wrk -t2 -c16 --latency)
FLOOD_CONNS=${FLOOD_CONNS:-400}
FLOOD_HOLD=${FLOOD_HOLD:-5}

FLASK=${FLASK:-1}
FILES=${FILES:-1}
PG=${PG:-1}
PG_STATEMENTS=${PG_STATEMENTS:-0}
. bench/pg-cluster.sh
[ -x "$BIN" ] || cargo build --release
if [ "$FLASK" = 1 ] && [ ! -x "$VENV/bin/gunicorn" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q flask gunicorn
fi

WORK=$(mktemp -d /tmp/it-srv-bench.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pg_cluster_stop
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "nothing listens on $1" >&2; exit 1; }

# One wrk run: prints "req/s p50 p99" from wrk's --latency report.
measure() {
  local name=$1 url=$2 script=$3 duration=$4
  local out
  # Start each run on a settled disk: the run before may have left writeback behind.
  sync
  sleep 2
  out=$("${WRK[@]}" -d"${duration}s" -s "$script" "$url")
  echo "$out" > "$WORK/wrk-$name.txt"
  local rps p50 p99 non2xx
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  non2xx=$(awk '/Non-2xx/ {print $4}' <<<"$out")
  printf '| %-34s | %10s | %8s | %8s | %s |\n' "$name" "$rps" "$p50" "$p99" "${non2xx:-0}"
}

echo "machine: $(nproc) cores, $(uname -r); wrk -t2 -c16, ${DURATION}s per run; load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| server | req/s | p50 | p99 | non-2xx |"
echo "|---|---:|---:|---:|---:|"

if [ "$FLASK" = 1 ]; then
# --- baseline 1: the original Flask mock, Flask's own threaded server
PORT=$(free_port)
"$VENV/bin/python" bench/flask_mock.py "$PORT" >"$WORK/flask.log" 2>&1 &
PIDS+=($!)
wait_port "$PORT"
measure "Flask mock (flask run, threaded)" "http://127.0.0.1:$PORT" bench/wrk/register.lua "$DURATION"
kill "${PIDS[-1]}"

# --- baseline 2: the same app under gunicorn, 2 workers
PORT=$(free_port)
(cd bench && exec "$VENV/bin/gunicorn" -w 2 -b "127.0.0.1:$PORT" --log-level warning flask_mock:app) >"$WORK/gunicorn.log" 2>&1 &
PIDS+=($!)
wait_port "$PORT"
measure "Flask mock (gunicorn -w 2)" "http://127.0.0.1:$PORT" bench/wrk/register.lua "$DURATION"
kill "${PIDS[-1]}"
fi

# --- imagetrail serve: start BINARY on a state dir of its own; sets SERVE (pid) and URL.
export BENCH_KEY=bench-key-$RANDOM
echo "bench $BENCH_KEY" > "$WORK/keys"
start_serve() {
  local bin=$1 name=$2
  shift 2
  "$bin" serve --listen 127.0.0.1:0 --state-dir "$WORK/$name" --api-keys-file "$WORK/keys" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" &
  SERVE=$!
  PIDS+=($SERVE)
  for _ in $(seq 1 100); do grep -q listening "$WORK/$name.out" 2>/dev/null && break; sleep 0.1; done
  URL=$(sed -n 's/^listening on //p' "$WORK/$name.out")
}

# The unauthenticated flood against the server at $URL: prints a table row with the RSS before,
# the peak during, and the RSS after (KiB).
flood() {
  local name=$1
  local before peak r
  before=$(ps -o rss= -p "$SERVE" | tr -d ' ')
  peak=$before
  python3 - "$URL" "$FLOOD_CONNS" "$FLOOD_HOLD" <<'PY' &
import socket, sys, threading, time, urllib.parse
url = urllib.parse.urlparse(sys.argv[1])
conns, hold = int(sys.argv[2]), float(sys.argv[3])
size = 1024 * 1024
head = ("POST /api/v1/deployments HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        f"Content-Length: {size}\r\n\r\n").encode()
half = b"x" * (size // 2)
socks = []
def one():
    try:
        s = socket.create_connection((url.hostname, url.port), timeout=hold + 5)
        socks.append(s)
        s.sendall(head)
        s.sendall(half)
    except OSError:
        pass  # answered 401 and closed, or refused: the server did not take the body
for t in [threading.Thread(target=one, daemon=True) for _ in range(conns)]:
    t.start()
time.sleep(hold)
for s in socks:
    try:
        s.close()
    except OSError:
        pass
PY
  local fpid=$!
  while kill -0 "$fpid" 2>/dev/null; do
    r=$(ps -o rss= -p "$SERVE" | tr -d ' ')
    [ "$r" -gt "$peak" ] && peak=$r
    sleep 0.1
  done
  wait "$fpid" || true
  sleep 1
  printf '| %-34s | %8s | %8s | %8s |\n' "$name" "$before" "$peak" "$(ps -o rss= -p "$SERVE" | tr -d ' ')"
}
FLOODS=()

if [ "$FILES" = 1 ]; then
if [ -n "$BASELINE_BIN" ]; then
  start_serve "$BASELINE_BIN" baseline
  measure "baseline build: register" "$URL" bench/wrk/register.lua "$DURATION"
  measure "baseline build: deployments, 1 env" "$URL" bench/wrk/deployments.lua "$DURATION"
  BENCH_ENVS=8 measure "baseline build: deployments, 8 envs" "$URL" bench/wrk/deployments.lua "$DURATION"
  BENCH_IDEMPOTENCY=1 measure "baseline build: deployments, keyed" "$URL" bench/wrk/deployments.lua "$DURATION"
  FLOODS+=("$(flood "baseline build")")
  kill "$SERVE"
fi

start_serve "$BIN" state
measure "imagetrail serve: register" "$URL" bench/wrk/register.lua "$DURATION"
measure "imagetrail serve: deployments, 1 env" "$URL" bench/wrk/deployments.lua "$DURATION"
BENCH_ENVS=8 measure "imagetrail serve: deployments, 8 envs" "$URL" bench/wrk/deployments.lua "$DURATION"
BENCH_IDEMPOTENCY=1 measure "imagetrail serve: deployments, keyed" "$URL" bench/wrk/deployments.lua "$DURATION"
FLOODS+=("$(flood "imagetrail serve")")
echo
echo "unauthenticated flood: $FLOOD_CONNS connections, each half of a 1 MiB body without a key, held ${FLOOD_HOLD}s; RSS of the server (KiB)"
echo
echo "| server | before | peak | after |"
echo "|---|---:|---:|---:|"
printf '%s\n' "${FLOODS[@]}"
echo
echo "callback log: $(wc -l <"$WORK/state/.analytics/callbacks.jsonl") lines; deployments recorded: $(cat "$WORK"/state/bench*/*/deploy-history.yml | grep -c '^- ')"
# Every deploy-info.yml names its history's last entry once the paced replaces caught up (50 ms).
sleep 1
behind=0 apps=0
for d in "$WORK"/state/bench*/*/; do
  apps=$((apps + 1))
  last=$(grep 'event_id:' "$d/deploy-history.yml" | tail -1 | tr -d ' ')
  info=$(grep 'event_id:' "$d/deploy-info.yml" | tr -d ' ')
  [ "$last" = "$info" ] || behind=$((behind + 1))
done
echo "deploy-info.yml behind its history after 1 s: $behind of $apps apps"
FILE_URL=$URL FILE_SERVE=$SERVE
fi


# --- PostgreSQL: a throwaway cluster, `serve --database-url` replicas on it.
if [ "$PG" = 1 ]; then
  # Its own directory: $WORK is private to root, and the server runs as postgres.
  pg_cluster_start it-srv-pg "$(free_port)" shared_preload_libraries=pg_stat_statements
  echo
  echo "PostgreSQL 15 on 127.0.0.1 (fsync=$(psql_pg -c 'SHOW fsync'), synchronous_commit=$(psql_pg -c 'SHOW synchronous_commit')); load average $(cut -d' ' -f1-3 /proc/loadavg)"
  echo
  echo "| server | req/s | p50 | p99 | non-2xx |"
  echo "|---|---:|---:|---:|---:|"
  # The write rows of one build on a database of its own: register and deployments through one
  # replica (the default writer tasks, then two: IMAGETRAIL_PG_WRITERS), then two replicas at once, 16 hot
  # (environment, app) pairs (every batch contends for the same apps' locks) and 128 pairs.
  pg_write_rows() {
    local bin=$1 label=$2 db=$3
    [ "$db" = bench ] || psql_pg -c "CREATE DATABASE $db" >/dev/null
    psql_pg -d "$db" -c 'CREATE EXTENSION IF NOT EXISTS pg_stat_statements' >/dev/null
    local url=${PG_URL%/*}/$db
    start_serve "$bin" "$db-1" --database-url "$url"
    local one=$URL
    measure "$label, 1 replica: register" "$URL" bench/wrk/register.lua "$DURATION"
    psql_pg -d "$db" -c 'SELECT pg_stat_statements_reset()' >/dev/null
    BENCH_ENVS=8 measure "$label, 1 replica: deployments" "$URL" bench/wrk/deployments.lua "$DURATION"
    IMAGETRAIL_PG_WRITERS=2 start_serve "$bin" "$db-w2" --database-url "$url"
    BENCH_ENVS=8 measure "$label, 1 replica, 2 writer tasks" "$URL" bench/wrk/deployments.lua "$DURATION"
    kill "$SERVE"
    start_serve "$bin" "$db-2" --database-url "$url"
    local two=$URL
    local envs
    for envs in 1 8; do
      sync
      sleep 2
      BENCH_ENVS=$envs wrk -t1 -c8 --latency -d"${DURATION}s" -s bench/wrk/deployments.lua "$one" >"$WORK/wrk-pg-a.txt" &
      local wa=$!
      BENCH_ENVS=$envs wrk -t1 -c8 --latency -d"${DURATION}s" -s bench/wrk/deployments.lua "$two" >"$WORK/wrk-pg-b.txt" &
      local wb=$!
      wait "$wa" "$wb"
      awk -v name="$label, 2 replicas, $((16 * envs)) apps" '/Requests\/sec/ {rps += $2} $1=="99%" {p = $2; v = p + 0; if (p ~ /us$/) v /= 1000; else if (p ~ /[^m]s$/) v *= 1000; if (v > max) {max = v; maxp = p}}
           $1=="50%" {p50 = p50 (p50 ? " / " : "") $2} /Non-2xx/ {bad += $4}
           END {printf "| %-34s | %10.2f | %8s | %8s | %s |\n", name, rps, p50, maxp, bad + 0}' \
        "$WORK/wrk-pg-a.txt" "$WORK/wrk-pg-b.txt"
    done
    PG_SUMMARY+=("$label: deployments stored: $(psql_pg -d "$db" -c 'SELECT count(*) FROM deployments'); commits: $(psql_pg -d "$db" -c "SELECT xact_commit FROM pg_stat_database WHERE datname = '$db'"); callbacks stored: $(psql_pg -d "$db" -c 'SELECT count(*) FROM callbacks')")
    local r
    for r in "$db-1" "$db-2"; do
      local m
      m=$(curl -s "$(sed -n 's/^listening on //p' "$WORK/$r.out")/metrics")
      PG_SUMMARY+=("$label $r: deployments batches $(awk '/^imagetrail_write_batch_size_(sum|count)\{writer="deployments"\}/ {printf "%s=%s ", $1, $2}' <<<"$m")callback batches $(awk '/^imagetrail_write_batch_size_(sum|count)\{writer="callbacks"\}/ {printf "%s=%s ", $1, $2}' <<<"$m")")
    done
    if [ "$PG_STATEMENTS" = 1 ]; then
      PG_SUMMARY+=("" "$label: pg_stat_statements since the 1-replica deployments run (top 6 by total time):")
      PG_SUMMARY+=("$(psql_pg -d "$db" -F ' | ' -c "SELECT calls, round(total_exec_time::numeric, 1) AS total_ms, round(mean_exec_time::numeric, 3) AS mean_ms, left(regexp_replace(query, '\s+', ' ', 'g'), 70) FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = '$db') ORDER BY total_exec_time DESC LIMIT 6")")
    fi
    kill "$SERVE"
    PG_ONE=$one
  }
  PG_SUMMARY=()
  if [ -n "$BASELINE_BIN" ]; then
    pg_write_rows "$BASELINE_BIN" "baseline PostgreSQL" base
  fi
  pg_write_rows "$BIN" "PostgreSQL" bench
  PG1=$PG_ONE
  echo
  printf '%s\n' "${PG_SUMMARY[@]}"

  echo
  echo "bulk-loading 1,000,000 deployments ..."
  pg_load_million
  psql_pg -d bench -c "VACUUM ANALYZE deployments" >/dev/null
  echo "stored: $(psql_pg -d bench -c 'SELECT count(*) FROM deployments') deployments; load average $(cut -d' ' -f1-3 /proc/loadavg)"
  echo
  echo "| query through replica 1 (1,000,000 deployments) | req/s | p50 | p99 | non-2xx |"
  echo "|---|---:|---:|---:|---:|"
  WRK=(wrk -t1 -c1 --latency)
  measure "at, 1 connection" "$PG1" bench/wrk/at.lua "$DURATION"
  measure "current (at the far future), 1 conn" "$PG1" bench/wrk/current.lua "$DURATION"
  WRK=(wrk -t2 -c16 --latency)
  measure "at, 16 connections" "$PG1" bench/wrk/at.lua "$DURATION"
  measure "current, 16 connections" "$PG1" bench/wrk/current.lua "$DURATION"
fi

# --- soaks: register, then deployments (a new digest every request, 16 apps in 8 environments),
# $SOAK s each, RSS sampled every second
soak() {
  local name=$1 script=$2
  echo
  echo "soak: $name for ${SOAK}s, RSS (KiB) of imagetrail serve every second"
  "${WRK[@]}" -d"${SOAK}s" -s "$script" "$URL" >"$WORK/wrk-soak-$name.txt" &
  local wrkpid=$!
  : >"$WORK/rss-$name.txt"
  while kill -0 "$wrkpid" 2>/dev/null; do
    ps -o rss= -p "$SERVE" >>"$WORK/rss-$name.txt"
    sleep 1
  done
  wait "$wrkpid"
  awk 'NR==1{first=$1} {if(min==""||$1<min)min=$1; if($1>max)max=$1; last=$1; n++}
       END{printf "samples %d, first %d, min %d, max %d, last %d KiB\n", n, first, min, max, last}' "$WORK/rss-$name.txt"
  awk 'NR>5 && NR<=10 {s+=$1; c++} END{if(c) printf "mean of samples 6-10: %d KiB; ", s/c}' "$WORK/rss-$name.txt"
  tail -5 "$WORK/rss-$name.txt" | awk '{s+=$1; c++} END{printf "mean of the last 5: %d KiB\n", s/c}'
  awk '/Requests\/sec/ {print "soak throughput: " $2 " req/s"} $1=="99%" {print "soak p99: " $2}' "$WORK/wrk-soak-$name.txt"
}
if [ "$FILES" = 1 ] && [ "$SOAK" != 0 ]; then
  URL=$FILE_URL SERVE=$FILE_SERVE
  soak register bench/wrk/register.lua
  BENCH_ENVS=8 soak deployments bench/wrk/deployments.lua
fi
