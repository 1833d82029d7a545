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
PORT=${PORT:-54329}

cargo build --release --example pg_bench --bin imagetrail
. bench/pg-cluster.sh
trap pg_cluster_stop EXIT
pg_cluster_start imagetrail-pgbench "$PORT"
export IMAGETRAIL_DATABASE_URL=$PG_URL
target/release/imagetrail db migrate
commits() { psql_pg -d bench -c "SELECT xact_commit FROM pg_stat_database WHERE datname = 'bench'"; }

for c in 1 64; do
  before=$(commits)
  target/release/examples/pg_bench record "$c" "$SECONDS_EACH"
  sleep 1  # the statistics collector reports with a short delay
  echo "  transactions committed in the run (incl. a few reads): $(( $(commits) - before ))"
done

echo "bulk-loading 1,000,000 deployments ..."
pg_load_million
psql_pg -d bench -c "ANALYZE deployments" >/dev/null
target/release/examples/pg_bench query "$QUERIES"
