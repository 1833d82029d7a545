#!/usr/bin/env bash
# The dashboard, delivery metrics and history range reads at real sizes:
#
#   * the matrix page (50 apps x 5 environments, each history 100,000 entries), now and ?at=;
#   * one app's timeline page, last 90 days;
#   * GET /api/v1/metrics/delivery for 30 days across all apps;
#   * `imagetrail history --last 20` on a 100,000-entry history;
#   * `imagetrail history` (the whole 100,000 entries) peak RSS, beside a baseline binary.
#
#   bench/dashboard.sh                       # target/release/imagetrail (built if missing)
#   BASELINE=/path/to/main/imagetrail bench/dashboard.sh   # also measure main's build
#   ENTRIES=100000 SPACING_MIN=60 APPS=50 ENVS=5 RUNS=20 bench/dashboard.sh
#
# Page times are curl's time_total over loopback: the first request of each page (cold: a
# server's point cache is empty for the histories it has not read yet; CPU from 10 ms ticks, so
# coarse), then the median of RUNS (server time plus a loopback round trip), and the server's CPU time per request (user + system, from /proc/PID/stat over
# the RUNS requests): on a shared machine the wall time follows the load, the CPU time much
# less. With BASELINE, a second server runs the baseline build on the same records and each
# page is measured on both, alternately, in the same run. The 250 histories are hard links to one generated file (250 x 40 MB would be
# 10 GB of disk): every read still goes through its own path, but the page cache is shared.
# Needs: python3, curl, hyperfine, /usr/bin/time. Traffic stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

ENTRIES=${ENTRIES:-100000}
SPACING_MIN=${SPACING_MIN:-60}
APPS=${APPS:-50}
ENVS=${ENVS:-5}
RUNS=${RUNS:-20}
BIN=${IMAGETRAIL_BIN:-target/release/imagetrail}
[ -x "$BIN" ] || cargo build -q --release --bin imagetrail
W=$(mktemp -d /tmp/it-dash-bench.XXXXXX)
cp "$BIN" "$W/imagetrail"
BIN=$W/imagetrail
# The baseline is copied the same way: a peak RSS counts the binary's pages mapped from the
# page cache, and how many are mapped per fault depends on how the file was written (a fresh
# `cp` and the linker's output of the same bytes measured 11.2 against 8.9 MiB for `history`).
if [ -n "${BASELINE:-}" ]; then
  cp "$BASELINE" "$W/baseline"
  BASELINE=$W/baseline
fi
SRV_PID=
BASE_PID=
cleanup() {
  [ -n "$SRV_PID" ] && kill "$SRV_PID" 2>/dev/null
  [ -n "$BASE_PID" ] && kill "$BASE_PID" 2>/dev/null
  rm -rf "$W"
}
trap cleanup EXIT

echo "generating $ENTRIES entries, one every $SPACING_MIN min, ending now; $APPS apps x $ENVS envs" >&2
python3 - "$W" "$ENTRIES" "$SPACING_MIN" "$APPS" "$ENVS" <<'EOF'
import datetime, hashlib, os, sys, uuid
w, n, spacing, apps, envs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
start = now - datetime.timedelta(minutes=spacing * n)
tpl = os.path.join(w, "history.yml")
last = None
with open(tpl, "w") as f:
    for i in range(n):
        t = start + datetime.timedelta(minutes=spacing * i)
        ts = t.strftime("%Y-%m-%dT%H:%M:%SZ")
        built = (t - datetime.timedelta(minutes=40)).strftime("%Y-%m-%dT%H:%M:%SZ")
        # Every 50th deployment goes back to the digest two before it: a rollback.
        k = i - 2 if i % 50 == 49 else i
        digest = "sha256:" + hashlib.sha256(str(k).encode()).hexdigest()
        ev = str(uuid.uuid4())
        f.write(
            f'- image:\n    repo: "reg.example/app"\n    tag: "{k:07x}"\n    digest: "{digest}"\n'
            f'    platform:\n      os: "linux"\n      architecture: "amd64"\n'
            f'    built_at: "{built}"\n    revision: "{k:07x}"\n\n'
            f'  deployment:\n    deployed_at: "{ts}"\n    deployed_by: "alice"\n'
            f'    workspace: "prod"\n    event_id: "{ev}"\n\n'
        )
        last = (k, digest, built, ts, ev)
k, digest, built, ts, ev = last
for e in range(envs):
    env = f"env{e}"
    for a in range(apps):
        app = f"app{a:02d}"
        d = os.path.join(w, "state", env, app)
        os.makedirs(d)
        os.link(tpl, os.path.join(d, "deploy-history.yml"))
        with open(os.path.join(d, "deploy-info.yml"), "w") as f:
            f.write(
                f'app: "{app}"\nworkspace: "{env}"\n\nimage:\n  repo: "reg.example/app"\n'
                f'  tag: "{k:07x}"\n  digest: "{digest}"\n  platform:\n    os: "linux"\n'
                f'    architecture: "amd64"\n  built_at: "{built}"\n  revision: "{k:07x}"\n\n'
                f'deployment:\n  deployed_at: "{ts}"\n  deployed_by: "alice"\n  event_id: "{ev}"\n'
            )
# One plain 100,000-entry history for the CLI.
d = os.path.join(w, "one", "prod", "hello")
os.makedirs(d)
os.link(tpl, os.path.join(d, "deploy-history.yml"))
EOF
ls -la "$W/history.yml" >&2

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
"$BIN" serve --state-dir "$W/state" --listen "127.0.0.1:$PORT" >"$W/serve.log" 2>&1 &
SRV_PID=$!
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.1; done
if [ -n "${BASELINE:-}" ]; then
  BASE_PORT=$(free_port)
  "$BASELINE" serve --state-dir "$W/state" --listen "127.0.0.1:$BASE_PORT" >"$W/base.log" 2>&1 &
  BASE_PID=$!
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$BASE_PORT/healthz" >/dev/null && break; sleep 0.1; done
fi

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
measure() { # label port pid path: the first (cold) request, then median time_total and CPU per request over RUNS
  local url="http://127.0.0.1:$2$4" before after cold
  before=$(cpu_ticks "$3")
  cold=$(curl -fs -o /dev/null -w '%{time_total}' "$url")
  after=$(cpu_ticks "$3")
  awk -v name="$1" -v t="$cold" -v cpu="$(( (after - before) * 1000 / $(getconf CLK_TCK) ))" \
    'BEGIN {printf "%-52s first  %7.1f ms, CPU %5.1f ms\n", name, t*1000, cpu}'
  before=$(cpu_ticks "$3")
  for _ in $(seq "$RUNS"); do curl -fs -o /dev/null -w '%{time_total}\n' "$url"; done >"$W/times"
  after=$(cpu_ticks "$3")
  sort -n "$W/times" | awk -v name="$1" -v runs="$RUNS" -v cpu="$(( (after - before) * 1000 / $(getconf CLK_TCK) ))" \
    '{a[NR]=$1} END {printf "%-52s median %7.1f ms  (min %.1f, max %.1f, %d runs), CPU %5.1f ms/request\n", name, a[int((NR+1)/2)]*1000, a[1]*1000, a[NR]*1000, runs, cpu/runs}'
}
page() { # name path: this build, then the baseline's (when given)
  measure "$1" "$PORT" "$SRV_PID" "$2"
  [ -z "$BASE_PID" ] || measure "  baseline: $1" "$BASE_PORT" "$BASE_PID" "$2"
}
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
AT=$(python3 -c 'import datetime; print((datetime.datetime.now(datetime.timezone.utc)-datetime.timedelta(days=200)).strftime("%Y-%m-%dT%H:%M:%SZ"))')
echo
echo "== pages ($APPS apps x $ENVS envs, $ENTRIES-entry histories)"
page "matrix /" "/"
page "matrix /?at= (200 days ago)" "/?at=$AT"
page "timeline /apps?app=app07&days=90" "/apps?app=app07&days=90"
page "GET /api/v1/metrics/delivery?since=30d" "/api/v1/metrics/delivery?since=30d"
page "delivery page /delivery?since=30d" "/delivery?since=30d"
curl -fs -o "$W/timeline.html" "http://127.0.0.1:$PORT/apps?app=app07&days=90"
echo "timeline marks drawn: $(grep -o 'class="point' "$W/timeline.html" | wc -l)" \
  "($(grep -o '[0-9,]* deployments in the last' "$W/timeline.html" | head -n1))"

echo "server RSS after the pages: this $(awk '/VmRSS/ {print $2, $3}' "/proc/$SRV_PID/status")${BASE_PID:+, baseline $(awk '/VmRSS/ {print $2, $3}' "/proc/$BASE_PID/status")}"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"

# Cold: a new server for each request (an empty point cache), COLD times per build,
# alternately; CPU is the whole process's (start included), from 10 ms ticks.
COLD=${COLD:-5}
cold() { # label binary path
  local port pid t cpu
  port=$(free_port)
  "$2" serve --state-dir "$W/state" --listen "127.0.0.1:$port" >>"$W/cold.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
  t=$(curl -fs -o /dev/null -w '%{time_total}' "http://127.0.0.1:$port$3")
  cpu=$(( $(cpu_ticks "$pid") * 1000 / $(getconf CLK_TCK) ))
  kill "$pid"; wait "$pid" 2>/dev/null || true
  echo "$1 $t $cpu"
}
if [ "$COLD" -gt 0 ]; then
  echo
  echo "== cold: a new server per request, $COLD each"
  for path in "/api/v1/metrics/delivery?since=30d" "/apps?app=app07&days=90"; do
    for _ in $(seq "$COLD"); do
      cold this "$BIN" "$path"
      [ -z "${BASELINE:-}" ] || cold baseline "$BASELINE" "$path"
    done >"$W/cold"
    for b in this baseline; do
      grep "^$b " "$W/cold" | sort -k2 -n | awk -v name="$b: $path" \
        '{t[NR]=$2; c[NR]=$3; s+=$3} END {if (NR) printf "%-52s first request median %7.1f ms (min %.1f, max %.1f), process CPU mean %5.1f ms\n", name, t[int((NR+1)/2)]*1000, t[1]*1000, t[NR]*1000, s/NR}'
    done
  done
  echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
fi
if [ -n "$BASE_PID" ]; then
  kill "$BASE_PID" 2>/dev/null
  BASE_PID=
fi

echo
echo "== imagetrail history on one $ENTRIES-entry history"
hyperfine -N --warmup 3 --runs "$RUNS" --export-markdown "$W/last.md" \
  "$BIN history --state-dir $W/one --last 20" >/dev/null
cat "$W/last.md"
rss() { /usr/bin/time -f '%M' "$@" 2>&1 >/dev/null | tail -n1; }
secs() { /usr/bin/time -f '%e' "$@" 2>&1 >/dev/null | tail -n1; }
echo
printf '%-12s %-28s %10s %8s\n' binary command "peak RSS" seconds
for b in "$BIN" ${BASELINE:+"$BASELINE"}; do
  label=this; [ "$b" = "$BIN" ] || label=baseline
  for args in "history" "history --format json" "history --last 20"; do
    [ "$label" = baseline ] && [[ "$args" == *--last* ]] && continue # main has no --last
    # shellcheck disable=SC2086
    printf '%-12s %-28s %7s KiB %8s\n' "$label" "$args" \
      "$(rss "$b" $args --state-dir "$W/one")" "$(secs "$b" $args --state-dir "$W/one")"
  done
done
