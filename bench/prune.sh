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
# Needs: hyperfine, docker-registry, curl, python3. Traffic stays on 127.0.0.1
# (bench/loopback-registry.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

. bench/loopback-registry.sh
bench_binary
start_registry
REPO=bench/hello
make_layer $REPO
for i in 1 2 3; do
  echo "{\"architecture\":\"amd64\",\"os\":\"linux\",\"created\":\"2026-01-2${i}T22:41:03Z\",\"config\":{\"Labels\":{\"n\":\"$i\"}},\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[\"$LAYER\"]}}" >"$W/config$i"
  push_image $REPO "v$i" "$W/config$i" >/dev/null
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
