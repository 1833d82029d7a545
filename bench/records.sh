#!/usr/bin/env bash
# Deployment records and the registry: `imagetrail at` on 1k and 100k-entry histories, the
# cost of an append (deploy into a 1k vs a 100k history), and `imagetrail deploy` against a
# loopback docker-registry, each beside a baseline measured in the same run.
#
#   bench/records.sh            # uses target/release/imagetrail if built, else target/debug
#   IMAGETRAIL_BIN=... bench/records.sh
#   QUICK=1 bench/records.sh    # fewer runs, no 100k PyYAML baseline (takes minutes)
#
# Needs: hyperfine, docker-registry, curl, python3 with PyYAML. Traffic stays on 127.0.0.1
# (bench/loopback-registry.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

. bench/loopback-registry.sh
bench_binary

# --- a loopback registry with one image (OCI labels) pushed through the API -------------------
start_registry
REPO=bench/hello
make_layer $REPO
cat >"$W/config" <<EOF
{"architecture":"amd64","os":"linux","created":"2026-01-24T22:41:03Z","config":{"Labels":{"org.opencontainers.image.created":"2026-01-24T22:41:03Z","org.opencontainers.image.revision":"1f3a9c2","org.opencontainers.image.description":"add healthcheck + fix nginx proxy header"}},"rootfs":{"type":"layers","diff_ids":["$LAYER"]}}
EOF
CONFIG=$(push_image $REPO 1f3a9c2 "$W/config")

# --- histories of 1k and 100k entries ---------------------------------------------------------
python3 bench/gen-history.py "$W/s1k" 1000 "$REG/$REPO" >/dev/null
python3 bench/gen-history.py "$W/s100k" 100000 "$REG/$REPO" >/dev/null
ls -l "$W"/s1k/prod/hello/deploy-history.yml "$W"/s100k/prod/hello/deploy-history.yml >&2

RUNS=${QUICK:+5}; RUNS=${RUNS:-20}
H="hyperfine -N --warmup 2 --runs $RUNS --style basic"
# Points in time: near the start, the middle and the end of each history.
$H --export-markdown "$W/at.md" --export-json "$W/at.json" \
  -n "at 1k, early"    "$BIN at 2020-01-01T12:00:00Z --state-dir $W/s1k" \
  -n "at 1k, late"     "$BIN at 2020-01-07T00:00:00Z --state-dir $W/s1k" \
  -n "at 100k, early"  "$BIN at 2020-01-01T12:00:00Z --state-dir $W/s100k" \
  -n "at 100k, middle" "$BIN at 2020-12-15T08:00:00Z --state-dir $W/s100k" \
  -n "at 100k, late"   "$BIN at 2021-11-25T10:00:00Z --state-dir $W/s100k"
# Baseline: parse the whole history with PyYAML (C loader) and scan it.
$H --export-markdown "$W/at-naive-1k.md" --export-json "$W/at-naive-1k.json" \
  -n "PyYAML whole file, 1k" "python3 bench/naive_at.py $W/s1k/prod/hello/deploy-history.yml 2020-01-07T00:00:00Z"
if [ -z "${QUICK:-}" ]; then
  hyperfine -N --runs 2 --style basic --export-markdown "$W/at-naive-100k.md" --export-json "$W/at-naive-100k.json" \
    -n "PyYAML whole file, 100k" "python3 bench/naive_at.py $W/s100k/prod/hello/deploy-history.yml 2020-12-15T08:00:00Z"
fi

# --- appends: deploy into a 1k and a 100k history (same registry, same image) ------------------
$H --export-markdown "$W/deploy.md" --export-json "$W/deploy.json" \
  -n "deploy into 1k history"   "$BIN deploy --app hello --env prod --by bench --image $REG/$REPO:1f3a9c2 --state-dir $W/s1k" \
  -n "deploy into 100k history" "$BIN deploy --app hello --env prod --by bench --image $REG/$REPO:1f3a9c2 --state-dir $W/s100k" \
  -n "baseline: curl HEAD + manifest + config (crane-like lookup, writes nothing)" \
     "sh -c 'curl -fsI -H \"Accept: application/vnd.oci.image.manifest.v1+json\" http://$REG/v2/$REPO/manifests/1f3a9c2 >/dev/null && curl -fs -H \"Accept: application/vnd.oci.image.manifest.v1+json\" http://$REG/v2/$REPO/manifests/1f3a9c2 >/dev/null && curl -fs http://$REG/v2/$REPO/blobs/$CONFIG >/dev/null'"
# The history files are whole after all those appends.
"$BIN" history --state-dir "$W/s1k" --format json | python3 -c 'import json,sys; print("1k history entries after the runs:", len(json.load(sys.stdin)))' >&2

for s in s1k s100k; do
  printf '%s: max RSS of `at` (KiB): ' "$s" >&2
  /usr/bin/time -v "$BIN" at 2020-12-15T08:00:00Z --state-dir "$W/$s" 2>&1 >/dev/null | awk '/Maximum resident/{print $6}' >&2
done

echo
for f in at at-naive-1k at-naive-100k deploy; do [ -f "$W/$f.md" ] && cat "$W/$f.md" && echo; done
echo "| command | median |"
echo "|:---|---:|"
for f in at at-naive-1k at-naive-100k deploy; do
  [ -f "$W/$f.json" ] && python3 -c 'import json,sys
for r in json.load(open(sys.argv[1]))["results"]:
    print("| %s | %.1f ms |" % (r["command"], r["median"] * 1000))' "$W/$f.json"
done
