# Sourced by bench/serve.sh, bench/pgcli.sh and bench/postgres.sh: a throwaway local PostgreSQL
# 15 cluster (Debian's postgresql; run as root, the server runs as the postgres user) on
# 127.0.0.1, password "bench" over TCP (SCRAM), fsync and synchronous_commit on (the defaults),
# and the 1,000,000-deployment load the server and store benchmarks query.
#
#   pg_cluster_start PREFIX PORT [SERVER OPTION ...]
#                     PGD := a fresh directory /tmp/PREFIX-XXXX owned by postgres (the
#                     cluster in $PGD/data, its socket and log in $PGD); start the server on
#                     127.0.0.1:PORT with the options given (postgres -c ...); create database
#                     bench; PG_URL := postgres://postgres:bench@127.0.0.1:PORT/bench
#   pg_cluster_stop   stop the cluster at once and remove $PGD; never fails, nothing to do
#                     before pg_cluster_start (call it from the script's EXIT trap)
#   as_pg CMD ...     run CMD as the postgres user in $PGD
#   psql_pg ARG ...   psql as postgres over the socket: unaligned tuples only, stops at an error
#   pg_load_million   replace the deployments of database bench with 1,000,000 (10
#                     environments x 1,000 apps, one a minute from 2021) and their current
#                     rows, ANALYZE current_deployments (deployments is left to the caller:
#                     VACUUM cannot run inside this one transaction)

PGBIN=/usr/lib/postgresql/15/bin

pg_cluster_start() {
  local prefix=$1 port=$2 opts=""
  shift 2
  local o
  for o in "$@"; do opts="$opts -c $o"; done
  PGD=$(mktemp -d "/tmp/$prefix-XXXX")
  chown postgres "$PGD"
  echo bench >"$PGD/pw" && chown postgres "$PGD/pw"
  PGPORT=$port
  as_pg $PGBIN/initdb -D "$PGD/data" -U postgres --no-locale -E UTF8 --auth-local=trust \
    --auth-host=scram-sha-256 --pwfile="$PGD/pw" >/dev/null
  as_pg $PGBIN/pg_ctl -D "$PGD/data" -l "$PGD/log" -w start \
    -o "-k $PGD -h 127.0.0.1 -p $PGPORT$opts" >/dev/null
  psql_pg -c 'CREATE DATABASE bench' >/dev/null
  PG_URL="postgres://postgres:bench@127.0.0.1:$PGPORT/bench"
}

pg_cluster_stop() {
  [ -n "${PGD:-}" ] || return 0
  if [ -d "$PGD/data" ]; then
    as_pg $PGBIN/pg_ctl -D "$PGD/data" -m immediate stop >/dev/null 2>&1 || true
  fi
  rm -rf "$PGD"
}

as_pg() { (cd "$PGD" && runuser -u postgres -- "$@"); }

psql_pg() { as_pg $PGBIN/psql -h "$PGD" -p "$PGPORT" -U postgres -X -A -t -v ON_ERROR_STOP=1 "$@"; }

pg_load_million() {
  psql_pg -d bench -c "TRUNCATE current_deployments, deployments" >/dev/null
  psql_pg -d bench -c "
INSERT INTO deployments (event_id, environment, app, repository, digest, platform_os,
    platform_architecture, deployed_at, deployed_by)
SELECT gen_random_uuid(), 'env-' || (i % 10), 'app-' || ((i / 10) % 1000), 'reg.example/app',
       'sha256:' || md5(i::text) || md5(i::text), 'linux', 'amd64',
       timestamptz '2021-01-01' + i * interval '1 minute', 'bench'
  FROM generate_series(1, 1000000) i;
INSERT INTO current_deployments (environment, app, seq, deployed_at, deployed_at_ns, repository, digest, name)
SELECT DISTINCT ON (environment, app) environment, app, seq, deployed_at, deployed_at_ns, repository, digest, name
  FROM deployments ORDER BY environment, app, deployed_at DESC, deployed_at_ns DESC, seq DESC;
ANALYZE current_deployments;" >/dev/null
}
