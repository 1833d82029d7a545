#!/usr/bin/env bash
# The CLI's record commands on PostgreSQL (`--database-url`) beside the files, in one run, on
# the same 1,000,000 deployments of one app (prod/hello, one every 10 minutes from 2020):
#
# * files: bench/gen-history.py writes deploy-history.yml; read by the baseline build (BASE,
#   main's release build) and by this one;
# * PostgreSQL: the same rows bulk-loaded with SQL into a throwaway local cluster (Debian's
#   PostgreSQL 15, fsync on), read by this build with --database-url.
#
# hyperfine (RUNS runs each, median quoted) for `at`, `history --last 10`, `status`; then
# /usr/bin/time for the whole history streamed as JSON (wall time and peak RSS: memory must stay
# flat, the database is read in keyset pages).
#
#   bench/pgcli.sh
#   RUNS=20 BASE=/work/notes/base-imagetrail bench/pgcli.sh
#
# Run as root (the server runs as the postgres user).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-20}
N=${N:-1000000}
BASE=${BASE:-/work/notes/base-imagetrail}
PORT=${PORT:-54339}
NEW=target/release/imagetrail

cargo build --release --bin imagetrail
. bench/pg-cluster.sh
trap pg_cluster_stop EXIT
pg_cluster_start imagetrail-pgcli "$PORT"
d=$PGD
URL=$PG_URL
$NEW db migrate --database-url "$URL"

echo "writing $N entries of YAML history ..."
state="$d/state"
python3 bench/gen-history.py "$state" "$N" reg.example/hello >/dev/null
echo "bulk-loading $N deployments into PostgreSQL ..."
psql_pg -d bench -c "
INSERT INTO deployments (event_id, environment, app, repository, tag, digest, platform_os,
    platform_architecture, description, built_at, revision, deployed_at, deployed_by)
SELECT gen_random_uuid(), 'prod', 'hello', 'reg.example/hello', lpad(to_hex(i), 7, '0'),
       'sha256:' || encode(sha256(i::text::bytea), 'hex'), 'linux', 'amd64',
       'build ' || i || ': add healthcheck + fix nginx proxy header',
       to_char((timestamptz '2020-01-01 00:00:00+00' + i * interval '10 minutes') AT TIME ZONE 'UTC',
               'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
       lpad(to_hex(i), 7, '0'),
       timestamptz '2020-01-01 00:00:00+00' + i * interval '10 minutes', 'alice'
  FROM generate_series(0, $N - 1) i;
INSERT INTO current_deployments (environment, app, seq, deployed_at, deployed_at_ns, repository, digest, name)
SELECT DISTINCT ON (environment, app) environment, app, seq, deployed_at, deployed_at_ns, repository, digest, name
  FROM deployments ORDER BY environment, app, deployed_at DESC, deployed_at_ns DESC, seq DESC;
ANALYZE deployments; ANALYZE current_deployments;" >/dev/null
psql_pg -d bench -c "SELECT count(*) || ' rows' FROM deployments"

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
# Flags after the subcommand: the records flags are the subcommands'.
files_base="--state-dir $state"
files_new="--state-dir $state"
pg="--state-dir $d/empty --database-url $URL"
mkdir -p "$d/empty"
mid="2024-01-01T00:00:00Z"
for q in "at $mid --env prod --app hello" "history --last 10 --env prod --app hello" "status"; do
  hyperfine -N --warmup 2 --runs "$RUNS" --export-json "$d/h.json" \
    -n "files, base" "$BASE $q $files_base" -n "files, this" "$NEW $q $files_new" \
    -n "postgres" "$NEW $q $pg" \
    >/dev/null
  python3 - "$d/h.json" "$q" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))["results"]
print(f"{sys.argv[2]}: " + "; ".join(f"{x['command']} median {x['median']*1000:.1f} ms" for x in r))
EOF
done
# Where a PostgreSQL command's time goes: the process alone, connecting and checking the schema
# (`status` on an empty migrated database), and the same over the Unix socket (no TCP, no
# SCRAM: the cluster trusts local connections).
psql_pg -c 'CREATE DATABASE empty' >/dev/null
$NEW db migrate --database-url "postgres://postgres:bench@127.0.0.1:$PORT/empty" >/dev/null
sock=$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$d")
hyperfine -N --warmup 2 --runs "$RUNS" --export-json "$d/h.json" \
  -n "process only (--version)" "$NEW --version" \
  -n "status, empty database, TCP + SCRAM" \
  "$NEW status --database-url postgres://postgres:bench@127.0.0.1:$PORT/empty" \
  -n "status, empty database, Unix socket, trust" \
  "$NEW status --database-url postgres://postgres@$sock:$PORT/empty" \
  >/dev/null
python3 - "$d/h.json" <<'EOF'
import json, sys
for x in json.load(open(sys.argv[1]))["results"]:
    print(f"{x['command']}: median {x['median']*1000:.1f} ms")
EOF
for who in "files, base|$BASE|$files_base" "files, this|$NEW|$files_new" "postgres|$NEW|$pg"; do
  IFS='|' read -r name bin flags <<<"$who"
  /usr/bin/time -f "history --format json (all $N), $name: %e s, peak RSS %M KiB" \
    $bin history --format json $flags >"$d/out.json"
  echo "  $(wc -c <"$d/out.json") bytes of JSON"
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
