#!/usr/bin/env bash
# The PostgreSQL store (src/records/postgres) on a throwaway local PostgreSQL 15 cluster:
#
# * group-commit writes: examples/pg_bench.rs `record C SECONDS`, C tasks recording one
#   deployment after another (durable: answered after COMMIT, synchronous_commit on, fsync on);
#   the mean batch is deployments / committed transactions (pg_stat_database).
# * queries at a million rows: 1,000,000 deployments bulk-loaded with SQL (10 environments x
#   1000 apps, one a minute), then `query N`: `at` and `current` through the store.
#
#   bench/postgres.sh                 # C=1 and C=64, 10 s each; 10,000 queries
#   SECONDS_EACH=5 QUERIES=2000 bench/postgres.sh
#
# Needs Debian's postgresql (15); run as root (the server runs as the postgres user).
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${SECONDS_EACH:-10}
QUERIES=${QUERIES:-10000}
PGBIN=/usr/lib/postgresql/15/bin
PORT=${PORT:-54329}

cargo build --release --example pg_bench --bin imagetrail
d=$(mktemp -d /tmp/imagetrail-pgbench-XXXX)
chown postgres "$d"
as_pg() { (cd "$d" && runuser -u postgres -- "$@"); }
trap 'as_pg $PGBIN/pg_ctl -D "$d/data" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$d"' EXIT
echo bench >"$d/pw" && chown postgres "$d/pw"
as_pg $PGBIN/initdb -D "$d/data" -U postgres --no-locale -E UTF8 --auth-local=trust \
  --auth-host=scram-sha-256 --pwfile="$d/pw" >/dev/null
as_pg $PGBIN/pg_ctl -D "$d/data" -l "$d/log" -o "-k $d -h 127.0.0.1 -p $PORT" -w start >/dev/null
psql() { as_pg $PGBIN/psql -h "$d" -p "$PORT" -U postgres -X -A -t -v ON_ERROR_STOP=1 "$@"; }
psql -c 'CREATE DATABASE bench' >/dev/null
export IMAGETRAIL_DATABASE_URL="postgres://postgres:bench@127.0.0.1:$PORT/bench"
target/release/imagetrail db migrate
commits() { psql -d bench -c "SELECT xact_commit FROM pg_stat_database WHERE datname = 'bench'"; }

for c in 1 64; do
  before=$(commits)
  target/release/examples/pg_bench record "$c" "$SECONDS_EACH"
  sleep 1  # the statistics collector reports with a short delay
  echo "  transactions committed in the run (incl. a few reads): $(( $(commits) - before ))"
done

echo "bulk-loading 1,000,000 deployments ..."
psql -d bench -c "TRUNCATE current_deployments, deployments" >/dev/null
psql -d bench -c "
INSERT INTO deployments (event_id, environment, app, repository, digest, platform_os,
    platform_architecture, deployed_at, deployed_by)
SELECT gen_random_uuid(), 'env-' || (i % 10), 'app-' || ((i / 10) % 1000), 'reg.example/app',
       'sha256:' || md5(i::text) || md5(i::text), 'linux', 'amd64',
       timestamptz '2021-01-01' + i * interval '1 minute', 'bench'
  FROM generate_series(1, 1000000) i;
INSERT INTO current_deployments (environment, app, seq, deployed_at, deployed_at_ns, repository, digest, name)
SELECT DISTINCT ON (environment, app) environment, app, seq, deployed_at, deployed_at_ns, repository, digest, name
  FROM deployments ORDER BY environment, app, deployed_at DESC, deployed_at_ns DESC, seq DESC;
ANALYZE deployments; ANALYZE current_deployments;" >/dev/null
target/release/examples/pg_bench query "$QUERIES"
