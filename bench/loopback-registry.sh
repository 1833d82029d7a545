# Sourced by bench/prune.sh and bench/records.sh: the binary under test, a work directory that
# is removed on exit, and a loopback docker-registry to push small images into through the
# registry API. Traffic stays on 127.0.0.1.
#
#   bench_binary      BIN := a private copy of $IMAGETRAIL_BIN (default target/release, built
#                     into target/debug when there is none), W := the work directory
#   start_registry    REG := host:port of a fresh registry (deletes enabled) under $W
#   upload REPO FILE  push FILE as a blob of REPO; prints its digest
#   make_layer REPO   LAYER := the digest of a one-line layer $W/layer pushed to REPO
#   push_image REPO TAG CONFIG
#                     push CONFIG (an image config file) and a manifest of it and $W/layer
#                     as REPO:TAG; prints the config's digest

bench_binary() {
  BIN=${IMAGETRAIL_BIN:-}
  if [ -z "$BIN" ]; then
    if [ -x target/release/imagetrail ]; then BIN=target/release/imagetrail; else
      cargo build -q; BIN=target/debug/imagetrail; fi
  fi
  W=$(mktemp -d /tmp/it-dep-bench.XXXXXX)
  # A private copy, so a rebuild during the run cannot change what is measured.
  cp "$BIN" "$W/imagetrail"; BIN=$W/imagetrail
  REG_PID=
  trap bench_cleanup EXIT
  echo "binary: ${IMAGETRAIL_BIN:-target/*/imagetrail} copied to $BIN" >&2
}

bench_cleanup() { [ -n "$REG_PID" ] && kill "$REG_PID" 2>/dev/null; rm -rf "$W"; }

start_registry() {
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  REG=127.0.0.1:$port
  cat >"$W/registry.yml" <<EOT
version: 0.1
log: {level: error}
storage: {filesystem: {rootdirectory: $W/registry}, delete: {enabled: true}}
http: {addr: $REG}
EOT
  docker-registry serve "$W/registry.yml" >"$W/registry.log" 2>&1 &
  REG_PID=$!
  for _ in $(seq 100); do curl -fs "http://$REG/v2/" >/dev/null && break; sleep 0.1; done
}

upload() { # repo file -> digest
  local d="sha256:$(sha256sum "$2" | cut -d' ' -f1)" loc
  loc=$(curl -fsS -X POST -D - -o /dev/null "http://$REG/v2/$1/blobs/uploads/" | tr -d '\r' | awk 'tolower($1)=="location:"{print $2}')
  case $loc in http*) ;; *) loc="http://$REG$loc";; esac
  case $loc in *\?*) sep='&';; *) sep='?';; esac
  curl -fsS -X PUT -H 'Content-Type: application/octet-stream' --data-binary "@$2" "$loc${sep}digest=$d" >/dev/null
  echo "$d"
}

make_layer() { # repo
  echo "layer $RANDOM" >"$W/layer"
  LAYER=$(upload "$1" "$W/layer")
}

push_image() { # repo tag config-file -> config digest
  local config manifest="$3.manifest"
  config=$(upload "$1" "$3")
  echo "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"$config\",\"size\":$(stat -c %s "$3")},\"layers\":[{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar\",\"digest\":\"$LAYER\",\"size\":$(stat -c %s "$W/layer")}]}" >"$manifest"
  curl -fsS -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' --data-binary "@$manifest" "http://$REG/v2/$1/manifests/$2" >/dev/null
  echo "$config"
}
