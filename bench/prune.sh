#!/usr/bin/env bash
# `imagetrail registry prune` (dry run) against a loopback docker-registry with 0, 1k and 10k
# distinct recorded digests (one app's history, gen-history.py), three tags of which one would
# be deleted: the cost of reading the state directory and of the registry closure (one
# manifest read per recorded digest the tags do not show, made only when something would be
# deleted). Baseline: the same prune with no records (the tags listing alone).
#
#   bench/prune.sh                 # uses target/release/imagetrail if built, else target/debug
#   IMAGETRAIL_BIN=... RUNS=3 bench/prune.sh
#
# Needs: hyperfine, docker-registry, curl, python3. Traffic stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${IMAGETRAIL_BIN:-}
if [ -z "$BIN" ]; then
  if [ -x target/release/imagetrail ]; then BIN=target/release/imagetrail; else
    cargo build -q; BIN=target/debug/imagetrail; fi
fi
W=$(mktemp -d /tmp/it-dep-bench.XXXXXX)
cp "$BIN" "$W/imagetrail"; BIN=$W/imagetrail
REG_PID=
cleanup() { [ -n "$REG_PID" ] && kill "$REG_PID" 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
REG=127.0.0.1:$PORT
cat >"$W/registry.yml" <<EOT
version: 0.1
log: {level: error}
storage: {filesystem: {rootdirectory: $W/registry}, delete: {enabled: true}}
http: {addr: $REG}
EOT
docker-registry serve "$W/registry.yml" >"$W/registry.log" 2>&1 &
REG_PID=$!
for _ in $(seq 100); do curl -fs "http://$REG/v2/" >/dev/null && break; sleep 0.1; done

upload() { # repo file -> digest
  local d="sha256:$(sha256sum "$2" | cut -d' ' -f1)" loc
  loc=$(curl -fsS -X POST -D - -o /dev/null "http://$REG/v2/$1/blobs/uploads/" | tr -d '\r' | awk 'tolower($1)=="location:"{print $2}')
  case $loc in http*) ;; *) loc="http://$REG$loc";; esac
  case $loc in *\?*) sep='&';; *) sep='?';; esac
  curl -fsS -X PUT -H 'Content-Type: application/octet-stream' --data-binary "@$2" "$loc${sep}digest=$d" >/dev/null
  echo "$d"
}
REPO=bench/hello
echo "layer $RANDOM" >"$W/layer"
LAYER=$(upload $REPO "$W/layer")
for i in 1 2 3; do
  echo "{\"architecture\":\"amd64\",\"os\":\"linux\",\"created\":\"2026-01-2${i}T22:41:03Z\",\"config\":{\"Labels\":{\"n\":\"$i\"}},\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[\"$LAYER\"]}}" >"$W/config$i"
  CONFIG=$(upload $REPO "$W/config$i")
  echo "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"$CONFIG\",\"size\":$(stat -c %s "$W/config$i")},\"layers\":[{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar\",\"digest\":\"$LAYER\",\"size\":$(stat -c %s "$W/layer")}]}" >"$W/manifest$i"
  curl -fsS -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' --data-binary "@$W/manifest$i" "http://$REG/v2/$REPO/manifests/v$i" >/dev/null
done
mkdir -p "$W/s0"
python3 bench/gen-history.py "$W/s1k" 1000 "$REG/$REPO" >/dev/null
python3 bench/gen-history.py "$W/s10k" 10000 "$REG/$REPO" >/dev/null

RUNS=${RUNS:-5}
hyperfine -N --warmup 1 --runs "$RUNS" --style basic --export-markdown "$W/prune.md" \
  -n "prune, no records"  "$BIN registry prune $REG/$REPO --keep 2 --state-dir $W/s0" \
  -n "prune, 1k digests"  "$BIN registry prune $REG/$REPO --keep 2 --state-dir $W/s1k" \
  -n "prune, 10k digests" "$BIN registry prune $REG/$REPO --keep 2 --state-dir $W/s10k" \
  -n "prune, 10k digests, nothing to delete" "$BIN registry prune $REG/$REPO --keep 3 --state-dir $W/s10k"
for s in s0 s10k; do
  /usr/bin/time -f "peak RSS, $s: %M KB" "$BIN" registry prune "$REG/$REPO" --keep 2 --state-dir "$W/$s" >/dev/null
done
cat "$W/prune.md"
