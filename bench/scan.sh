#!/usr/bin/env bash
# Benchmark: `imagetrail scan register` over N targets (default 200) against the real Docker
# engine and a loopback analytics server, side by side with the hand-made alternative a user
# would write (a shell loop of `docker inspect` + `curl` per target), in one hyperfine run.
# Then the single-target run (process start to exit) and the peak memory (/usr/bin/time -v,
# median of 3 runs).
#
#   bench/scan.sh [N]        # needs docker, hyperfine, curl, python3, /usr/bin/time
#   RUNS=10 bench/scan.sh    # more hyperfine runs (default 5)
#   BIG=2000 bench/scan.sh   # then also BIG targets (imagetrail, and BASE when given)
#   BASE=/tmp/old/imagetrail bench/scan.sh   # the previous build as a contender in every run
#   IMAGE_BIN=target/static/x86_64-unknown-linux-gnu/image/imagetrail bench/scan.sh
#                            # also the peak RSS of the binary the scanner image runs
#   BIN=/path/to/imagetrail bench/scan.sh   # that binary instead of building target/release
#   KEEP=1 bench/scan.sh     # keep the engine's targets for the next run (they are reused:
#                            # 1,800 more `docker create` for BIG=2000 take minutes)
#   SETUP_ONLY=1 BIG=2000 KEEP=1 bench/scan.sh   # only create the targets
#   bench/scan.sh --clean    # remove every target this script created, and stop
#
# Each run writes into a fresh, empty results directory, as under atomic (a new
# /var/lib/atomic/.../<time> per scan): the previous run's results are moved aside and deleted
# between the hyperfine runs, not just before a measured run (ext4's inode allocator then
# skips the just-deleted inodes one by one: half of the scanner's CPU time in `perf`).
#
# Targets are a mix like `atomic scan --all`: 20 images built FROM scratch and N-20 containers
# created from them (named it-scan-bench-c<j>), each container with its own labels. Images and
# containers carry the label it-scan-bench=1 and are removed at the end unless KEEP=1. Only
# 127.0.0.1 is contacted.
set -euo pipefail
cd "$(dirname "$0")/.."

clean_engine() {
  docker ps -aq --filter label=it-scan-bench=1 | xargs -r docker rm >/dev/null
  docker images -q --filter label=it-scan-bench=1 | sort -u | xargs -r docker rmi -f >/dev/null 2>&1 || true
}
if [ "${1:-}" = "--clean" ]; then
  clean_engine
  exit 0
fi

N=${1:-200}
IMAGES=20
RUNS=${RUNS:-5}
BIG=${BIG:-0}
W=$(mktemp -d /tmp/it-scan-bench.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [ "${KEEP:-0}" = 1 ] || clean_engine
  rm -rf "$W"
}
trap cleanup EXIT
load() { cut -d' ' -f1-3 /proc/loadavg; }
echo "== load average at the start: $(load)" >&2
LOAD_START=$(load)

echo "== $N targets: $IMAGES images + $((N - IMAGES)) containers (existing ones reused)" >&2
for i in $(seq 1 "$IMAGES"); do
  docker image inspect "it-scan-bench-$i:1" >/dev/null 2>&1 && continue
  mkdir -p "$W/ctx$i"
  echo "payload $i $RANDOM" >"$W/ctx$i/payload"
  cat >"$W/ctx$i/Dockerfile" <<EOF
FROM scratch
COPY payload /payload
LABEL it-scan-bench=1 git-url=https://github.com/example/app$i git-sha=46e443d$i email-ids=dev$i@example.com
LABEL org.opencontainers.image.created=2026-01-24T22:41:03Z org.opencontainers.image.description="bench image $i"
EOF
  DOCKER_BUILDKIT=0 docker build -q -t "it-scan-bench-$i:1" "$W/ctx$i" 2>/dev/null >/dev/null
done
# Containers 1..COUNT, each created once (by name); several `docker create` at a time.
create_containers() {
  local have
  have=$(docker ps -a --filter label=it-scan-bench=1 --format '{{.Names}}')
  for j in $(seq 1 "$1"); do
    grep -qx "it-scan-bench-c$j" <<<"$have" || echo "$j"
  done | xargs -r -P 4 -I{} sh -c 'j={}; i=$(( (j % '"$IMAGES"') + 1 ));
    docker create --name it-scan-bench-c$j --label it-scan-bench=1 --label git-url=https://github.com/example/svc$j \
      --label git-sha=abcdef$j --label email-ids=svc$j@example.com it-scan-bench-$i:1 /payload >/dev/null'
}
# A /scanin with the 20 images and containers 1..COUNT, one directory per full id.
make_scanin() {
  local dir=$1 count=$2
  mkdir -p "$dir"
  for i in $(seq 1 "$IMAGES"); do
    id=$(docker image inspect -f '{{.Id}}' "it-scan-bench-$i:1")
    mkdir -p "$dir/${id#sha256:}"
  done
  seq 1 "$count" | sed 's/^/it-scan-bench-c/' | xargs docker inspect -f '{{.Id}}' |
    while read -r cid; do mkdir -p "$dir/$cid"; done
}
create_containers $((N - IMAGES))
if [ "$BIG" -gt "$N" ]; then
  echo "== $BIG targets: up to $((BIG - N)) more containers (minutes)" >&2
  create_containers $((BIG - IMAGES))
fi
if [ "${SETUP_ONLY:-0}" = 1 ]; then
  KEEP=1
  echo "targets created and kept (remove them with: bench/scan.sh --clean)" >&2
  exit 0
fi

if [ -z "${BIN:-}" ]; then
  echo "== building the release binary" >&2
  cargo build --release --quiet
  BIN=$PWD/target/release/imagetrail
fi

echo "== loopback analytics server" >&2
cat >"$W/server.py" <<'EOF'
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Without it, headers and body go out in two segments and delayed ACKs add 40 ms per
    # request (to both contenders alike).
    disable_nagle_algorithm = True
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = json.dumps({"success": True, "summary": "registered"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
s = ThreadingHTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
EOF
python3 "$W/server.py" >"$W/port" &
PIDS+=($!)
for _ in $(seq 1 100); do [ -s "$W/port" ] && break; sleep 0.05; done
SERVER="http://127.0.0.1:$(cat "$W/port")"

make_scanin "$W/scanin" $((N - IMAGES))
mkdir -p "$W/scanout" "$W/one-in" "$W/one-out"
mkdir "$W/one-in/$(ls "$W/scanin" | head -1)"

# The hand-made alternative: inspect each target, post its labels.
cat >"$W/loop.sh" <<'EOF'
#!/usr/bin/env bash
set -u
for d in "$1"/*/; do
  id=$(basename "$d")
  labels=$(docker inspect --format '{{json .Config.Labels}}' "$id")
  curl -s -o /dev/null -X POST -H 'Content-Type: application/json' --data "$labels" "$2/api/v1/register"
done
EOF
chmod +x "$W/loop.sh"

# One hyperfine contender per binary: this build, and the previous one when BASE is given.
contenders() { # IN OUT LABEL
  echo "imagetrail scan register ($3)"
  echo "SERVER=$SERVER $BIN scan register --scanin $1 --scanout $2"
  if [ -n "${BASE:-}" ]; then
    echo "previous build ($3)"
    echo "SERVER=$SERVER $BASE scan register --scanin $1 --scanout $2"
  fi
}
hyperfine_args() { # IN OUT LABEL
  local name
  while IFS= read -r name && IFS= read -r cmd; do
    printf '%s\0%s\0%s\0' -n "$name" "$cmd"
  done < <(contenders "$@")
}

echo "== hyperfine: $N targets" >&2
mapfile -d '' MANY < <(hyperfine_args "$W/scanin" "$W/scanout" "$N targets")
mkdir -p "$W/trash"
fresh() { echo "mv $1 $W/trash/\$(date +%s%N) && mkdir $1"; }
hyperfine --warmup 1 --runs "$RUNS" --export-json "$W/many.json" \
  --prepare "$(fresh "$W/scanout")" \
  "${MANY[@]}" \
  -n "docker inspect + curl loop ($N targets)" "$W/loop.sh $W/scanin $SERVER"

echo "== hyperfine: single target" >&2
mapfile -d '' ONE < <(hyperfine_args "$W/one-in" "$W/one-out" "1 target")
rm -rf "$W/trash"/*
hyperfine --warmup 3 --runs 30 --export-json "$W/one.json" \
  --prepare "$(fresh "$W/one-out")" \
  "${ONE[@]}"

echo "== peak memory (median of 3 runs)" >&2
peak_rss() { # BINARY -> KiB
  local b=$1 r=()
  for _ in 1 2 3; do
    rm -rf "$W/scanout" "$W/trash"/*
    mkdir "$W/scanout"
    SERVER=$SERVER /usr/bin/time -v "$b" scan register --scanin "$W/scanin" --scanout "$W/scanout" \
      >/dev/null 2>"$W/time.txt"
    r+=("$(awk -F: '/Maximum resident set size/ {gsub(/ /, "", $2); print $2}' "$W/time.txt")")
  done
  printf '%s\n' "${r[@]}" | sort -n | sed -n 2p
}
RSS="this=$(peak_rss "$BIN")"
[ -n "${BASE:-}" ] && RSS="$RSS base=$(peak_rss "$BASE")"
[ -n "${IMAGE_BIN:-}" ] && RSS="$RSS image=$(peak_rss "$IMAGE_BIN")"

echo '{"results": []}' >"$W/big.json"
if [ "$BIG" -gt "$N" ]; then
  make_scanin "$W/big-in" $((BIG - IMAGES))
  mkdir -p "$W/big-out"
  echo "== hyperfine: $BIG targets" >&2
  mapfile -d '' BIGARGS < <(hyperfine_args "$W/big-in" "$W/big-out" "$BIG targets")
  rm -rf "$W/trash"/*
  hyperfine --warmup 1 --runs 3 --export-json "$W/big.json" \
    --prepare "$(fresh "$W/big-out")" "${BIGARGS[@]}"
fi

python3 - "$W/many.json" "$W/one.json" "$RSS" "$N" "$W/big.json" "$BIG" "$LOAD_START" "$(load)" <<'EOF'
import json, sys
many = json.load(open(sys.argv[1]))["results"]
one = json.load(open(sys.argv[2]))["results"]
rss = dict(kv.split("=") for kv in sys.argv[3].split())
n = int(sys.argv[4])
big = json.load(open(sys.argv[5]))["results"]
by = lambda rs, prefix: next((r for r in rs if r["command"].startswith(prefix)), None)
ours, loop = by(many, "imagetrail")["median"], by(many, "docker")["median"]
base = by(many, "previous")
def met(ok): return "met" if ok else "NOT met"
print(f"load average:      {sys.argv[7]} at the start, {sys.argv[8]} at the end")
print(f"targets: {n}")
print(f"imagetrail median: {ours*1000:.1f} ms ({ours/n*1000:.2f} ms/target; goal <= 120 ms for 200: {met(ours <= 0.12)})")
print(f"loop median:       {loop*1000:.1f} ms ({loop/n*1000:.2f} ms/target)")
print(f"ratio:             {ours/loop:.4f} x the loop (goal <= 0.025: {met(ours/loop <= 0.025)})")
if base:
    b = base["median"]
    print(f"previous build:    {b*1000:.1f} ms median ({b/loop:.4f} x the loop; this build {b/ours:.2f}x faster)")
o = by(one, "imagetrail")["median"]
print(f"single target:     {o*1000:.1f} ms median (goal < 20 ms: {met(o < 0.02)})")
if by(one, "previous"):
    print(f"  previous build:  {by(one, 'previous')['median']*1000:.1f} ms median")
for k, name in [("this", "this build"), ("base", "previous build"), ("image", "image binary")]:
    if k in rss:
        mib = int(rss[k]) / 1024
        print(f"peak RSS, {name + ':':15s} {mib:.1f} MiB (goal <= 12 MiB: {met(mib <= 12)})")
if big:
    b = by(big, "imagetrail")["median"]
    print(f"{sys.argv[6]} targets:      {b*1000:.1f} ms median = {b/ours:.1f}x the {n}-target time (goal <= 10x: {met(b/ours <= 10)})")
    if by(big, "previous"):
        print(f"  previous build:  {by(big, 'previous')['median']*1000:.1f} ms median")
EOF
