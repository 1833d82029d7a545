#!/usr/bin/env bash
# The quick start: build imagetrail, start `imagetrail serve` on loopback as the embedded
# default server, build an example image FROM scratch with the labels a CI job sets, register
# it, and show what the scanner wrote and what the server stored. Needs cargo and a Docker
# engine (`docker info`); touches nothing outside a temporary directory and the image
# `imagetrail-example/app:1`.
set -euo pipefail
cd "$(dirname "$0")"

work=$(mktemp -d /tmp/imagetrail-quickstart.XXXXXX)
server_pid=
cleanup() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; wait 2>/dev/null; }
trap cleanup EXIT

step() { printf '\n$ %s\n' "$*" >&2; }

step cargo build --release
cargo build --release --locked -q
bin=$PWD/target/release/imagetrail

# The server picks a free port on 127.0.0.1 and says which on its first line.
step imagetrail serve --listen 127.0.0.1:0 --state-dir "$work/state"
"$bin" serve --listen 127.0.0.1:0 --state-dir "$work/state" >"$work/serve.out" 2>"$work/serve.log" &
server_pid=$!
for _ in $(seq 1 50); do grep -q '^listening on ' "$work/serve.out" 2>/dev/null && break; sleep 0.1; done
server=$(sed -n 's/^listening on //p' "$work/serve.out")
[ -n "$server" ] || { cat "$work/serve.log" >&2; echo "the server did not start" >&2; exit 1; }
echo "listening on $server"

mkdir -p "$work/app"
echo "hello from imagetrail's quick start" >"$work/app/hello.txt"
cat >"$work/app/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY hello.txt /hello.txt
LABEL git-url=https://github.com/example/app git-sha=46e443d email-ids=dev@example.com
LABEL org.opencontainers.image.created=2026-01-24T22:41:03Z org.opencontainers.image.description="add healthcheck"
DOCKERFILE
step docker build -t imagetrail-example/app:1 app
DOCKER_BUILDKIT=0 docker build -q -t imagetrail-example/app:1 "$work/app"

step imagetrail verify imagetrail-example/app:1
"$bin" verify imagetrail-example/app:1

step imagetrail register imagetrail-example/app:1 --server "$server" --output results
"$bin" register imagetrail-example/app:1 --server "$server" --output "$work/results"

step cat results/*/analytics_scanner_results.json
cat "$work"/results/*/analytics_scanner_results.json; echo

step "what the server stored (state/.analytics/callbacks.jsonl)"
cat "$work/state/.analytics/callbacks.jsonl"

printf '\nEverything is in %s\n' "$work" >&2
