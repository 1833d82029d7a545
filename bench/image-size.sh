#!/usr/bin/env bash
# Scanner image size: build scanner-analytics-integration the host way (static binary +
# .ci/image-rootfs + `docker build --target from-host`, as tests/it/image.rs does) and report
# its size beside baselines measured in the same run:
#   - the same static binary built with the plain release profile (what profile `image`,
#     opt-level s + fat LTO + one codegen unit, saves),
#   - the static imagetrail binary alone (the floor for any image that ships it),
#   - a FROM scratch image holding only that binary (what the CA bundle, busybox and config add),
#   - the parts: busybox-static and the CA bundle.
# With hyperfine installed it also times `docker run` of the image against the same run of
# busybox `true` in it (the container start-up floor), so the binary's own start-up shows.
#
# usage: bench/image-size.sh            (prints a Markdown table for BENCHMARKS.md)
#   IMAGETRAIL_STATIC_BIN=path          reuse a static binary instead of building one
set -euo pipefail
cd "$(dirname "$0")/.."

tag=it-img-bench-scanner:size
floor_tag=it-img-bench-binary-only:size
work=$(mktemp -d /tmp/it-img-bench-XXXXXX)
trap 'rm -rf "$work"; docker rmi -f "$tag" "$floor_tag" >/dev/null 2>&1 || true' EXIT

static_build() {
  RUSTFLAGS='-C target-feature=+crt-static' \
    cargo build --locked --profile "$1" --target x86_64-unknown-linux-gnu --bin imagetrail \
      --target-dir target/static >&2
}
bin=${IMAGETRAIL_STATIC_BIN:-}
if [ -z "$bin" ]; then
  static_build image
  bin=target/static/x86_64-unknown-linux-gnu/image/imagetrail
fi
static_build release
release_bin=target/static/x86_64-unknown-linux-gnu/release/imagetrail

# The scanner image, from exactly the files the Dockerfile's from-host path uses.
cp Dockerfile .dockerignore scanner-config install.sh "$work/"
.ci/image-rootfs "$bin" "$work/dist/rootfs" >&2
DOCKER_BUILDKIT=0 docker build -q --target from-host -t "$tag" \
  --build-arg GIT_SHA="$(git rev-parse HEAD 2>/dev/null || echo 0000000)" \
  --build-arg CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$work" >/dev/null

# Baseline image: the binary and nothing else.
mkdir -p "$work/floor"
cp "$bin" "$work/floor/imagetrail"
printf 'FROM scratch\nCOPY imagetrail /imagetrail\n' >"$work/floor/Dockerfile"
DOCKER_BUILDKIT=0 docker build -q -t "$floor_tag" "$work/floor" >/dev/null

size() { stat -c %s "$1"; }
img() { docker image inspect --format '{{.Size}}' "$1"; }
mb() { awk -v b="$1" 'BEGIN { printf "%.2f MB", b / 1000000 }'; }

bin_size=$(size "$bin")
release_size=$(size "$release_bin")
busybox_size=$(size "$work/dist/rootfs/bin/busybox")
ca_size=$(size "$work/dist/rootfs/etc/ssl/certs/ca-certificates.crt")
floor_size=$(img "$floor_tag")
image_size=$(img "$tag")
target=20000000

echo "| what | bytes | size |"
echo "|---|---:|---:|"
echo "| static \`imagetrail\`, profile \`release\` (baseline) | $release_size | $(mb "$release_size") |"
echo "| static \`imagetrail\`, profile \`image\`: the binary alone (baseline) | $bin_size | $(mb "$bin_size") |"
echo "| image with only the binary (baseline) | $floor_size | $(mb "$floor_size") |"
echo "| busybox-static (\`sh\`, \`cp\` for install.sh) | $busybox_size | $(mb "$busybox_size") |"
echo "| CA bundle | $ca_size | $(mb "$ca_size") |"
echo "| **scanner-analytics-integration** | **$image_size** | **$(mb "$image_size")** |"
echo "| target | $target | $(mb "$target") |"
echo
echo "image - binary: $((image_size - bin_size)) bytes; image is $(awk -v a="$image_size" -v b="$target" 'BEGIN { printf "%.0f%%", 100 * a / b }') of the 20 MB target"
[ "$image_size" -le "$target" ] || { echo "OVER the 20 MB target" >&2; exit 1; }

if command -v hyperfine >/dev/null; then
  echo
  hyperfine --warmup 2 --runs 10 --export-markdown "$work/startup.md" \
    -n 'docker run IMAGE /bin/busybox true (baseline)' "docker run --rm --network none $tag /bin/busybox true" \
    -n 'docker run IMAGE /imagetrail --version' "docker run --rm --network none $tag /imagetrail --version" >&2
  cat "$work/startup.md"
fi
