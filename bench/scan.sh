#!/usr/bin/env bash
# Benchmark: `imagetrail scan register` over N targets (default 200) against the real Docker
# engine and a loopback analytics server, side by side with the hand-made alternative a user
# would write (a shell loop of `docker inspect` + `curl` per target), in one hyperfine run.
# Then the single-target run (process start to exit) and the peak memory (/usr/bin/time -v).
#
#   bench/scan.sh [N]        # needs docker, hyperfine, curl, python3, /usr/bin/time
#   BIG=2000 bench/scan.sh   # then also N -> BIG targets (imagetrail only), for linearity
#   BASE=/tmp/old/imagetrail bench/scan.sh   # also the previous build, in the same hyperfine run
#
# Targets are a mix like `atomic scan --all`: 20 images built FROM scratch and N-20 containers
# created from them, each container with its own labels. Everything lives under a temp dir and
# in images/containers named it-scan-bench-*, removed at the end. Only 127.0.0.1 is contacted.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${1:-200}
IMAGES=20
RUNS=${RUNS:-5}
W=$(mktemp -d /tmp/it-scan-bench.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  docker ps -aq --filter label=it-scan-bench=1 | xargs -r docker rm >/dev/null
  docker images -q --filter label=it-scan-bench=1 | sort -u | xargs -r docker rmi -f >/dev/null 2>&1 || true
  rm -rf "$W"
}
trap cleanup EXIT

echo "== building the release binary" >&2
cargo build --release --quiet
BIN=$PWD/target/release/imagetrail

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

echo "== $N targets: $IMAGES images + $((N - IMAGES)) containers" >&2
mkdir -p "$W/scanin" "$W/scanout" "$W/one-in" "$W/one-out"
echo payload >"$W/payload"
for i in $(seq 1 "$IMAGES"); do
  mkdir -p "$W/ctx$i"
  echo "payload $i $RANDOM" >"$W/ctx$i/payload"
  cat >"$W/ctx$i/Dockerfile" <<EOF
FROM scratch
COPY payload /payload
LABEL it-scan-bench=1 git-url=https://github.com/example/app$i git-sha=46e443d$i email-ids=dev$i@example.com
LABEL org.opencontainers.image.created=2026-01-24T22:41:03Z org.opencontainers.image.description="bench image $i"
EOF
  DOCKER_BUILDKIT=0 docker build -q -t "it-scan-bench-$i:1" "$W/ctx$i" 2>/dev/null >/dev/null
  id=$(docker image inspect -f '{{.Id}}' "it-scan-bench-$i:1"); id=${id#sha256:}
  mkdir "$W/scanin/$id"
done
for j in $(seq 1 $((N - IMAGES))); do
  i=$(( (j % IMAGES) + 1 ))
  cid=$(docker create --label it-scan-bench=1 --label "git-url=https://github.com/example/svc$j" \
    --label "git-sha=abcdef$j" --label "email-ids=svc$j@example.com" "it-scan-bench-$i:1" /payload)
  mkdir "$W/scanin/$cid"
done
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

echo "== hyperfine: $N targets" >&2
# A previous build as a third contender, so before/after come from one run on a shared machine.
BASE_ARGS=()
if [ -n "${BASE:-}" ]; then
  BASE_ARGS=(-n "previous build ($N targets)"
    "SERVER=$SERVER $BASE scan register --scanin $W/scanin --scanout $W/scanout")
fi
hyperfine --warmup 1 --runs "$RUNS" --export-json "$W/many.json" \
  --prepare "rm -rf $W/scanout/*" \
  -n "imagetrail scan register ($N targets)" \
  "SERVER=$SERVER $BIN scan register --scanin $W/scanin --scanout $W/scanout" \
  -n "docker inspect + curl loop ($N targets)" \
  "$W/loop.sh $W/scanin $SERVER" \
  "${BASE_ARGS[@]}"

echo "== hyperfine: single target" >&2
hyperfine --warmup 3 --runs 30 --export-json "$W/one.json" \
  --prepare "rm -rf $W/one-out/*" \
  -n "imagetrail scan register (1 target)" \
  "SERVER=$SERVER $BIN scan register --scanin $W/one-in --scanout $W/one-out"

echo "== peak memory" >&2
rm -rf "$W/scanout"/*
SERVER=$SERVER /usr/bin/time -v "$BIN" scan register --scanin "$W/scanin" --scanout "$W/scanout" \
  >/dev/null 2>"$W/time.txt"
RSS_KB=$(awk -F: '/Maximum resident set size/ {gsub(/ /, "", $2); print $2}' "$W/time.txt")

BIG=${BIG:-0}
echo '{"results": []}' >"$W/big.json"
if [ "$BIG" -gt "$N" ]; then
  echo "== $BIG targets: $((BIG - N)) more containers" >&2
  for j in $(seq $((N - IMAGES + 1)) $((BIG - IMAGES))); do
    i=$(( (j % IMAGES) + 1 ))
    cid=$(docker create --label it-scan-bench=1 --label "git-url=https://github.com/example/svc$j" \
      --label "git-sha=abcdef$j" --label "email-ids=svc$j@example.com" "it-scan-bench-$i:1" /payload)
    mkdir "$W/scanin/$cid"
  done
  hyperfine --warmup 1 --runs 3 --export-json "$W/big.json" \
    --prepare "rm -rf $W/scanout/*" \
    -n "imagetrail scan register ($BIG targets)" \
    "SERVER=$SERVER $BIN scan register --scanin $W/scanin --scanout $W/scanout"
fi

python3 - "$W/many.json" "$W/one.json" "$RSS_KB" "$N" "$W/big.json" "$BIG" <<'EOF'
import json, sys
many = json.load(open(sys.argv[1]))["results"]
one = json.load(open(sys.argv[2]))["results"][0]
rss_kb, n = int(sys.argv[3]), int(sys.argv[4])
big = json.load(open(sys.argv[5]))["results"]
ours, loop = many[0]["median"], many[1]["median"]
def met(ok): return "met" if ok else "NOT met"
print(f"targets: {n}")
print(f"imagetrail median: {ours*1000:.1f} ms ({ours/n*1000:.2f} ms/target; goal <= 120 ms for 200: {met(ours <= 0.12)})")
print(f"loop median:       {loop*1000:.1f} ms ({loop/n*1000:.2f} ms/target)")
print(f"ratio:             {ours/loop:.4f} x the loop (goal <= 0.025: {met(ours/loop <= 0.025)})")
if len(many) > 2:
    base = many[2]["median"]
    print(f"previous build:    {base*1000:.1f} ms median ({base/loop:.4f} x the loop; this build {base/ours:.2f}x faster)")
print(f"single target:     {one['median']*1000:.1f} ms median (goal < 20 ms: {met(one['median'] < 0.02)})")
print(f"peak RSS:          {rss_kb/1024:.1f} MiB (goal <= 12 MiB: {met(rss_kb/1024 <= 12)})")
if big:
    b = big[0]["median"]
    print(f"{sys.argv[6]} targets:      {b*1000:.1f} ms median = {b/ours:.1f}x the {n}-target time (goal <= 10x: {met(b/ours <= 10)})")
EOF
