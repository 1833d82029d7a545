# scanner-analytics-integration: imagetrail as an `atomic scan` scanner image.
#
# Two ways to build the same image (README, "The scanner image"):
#
#   From source, where base images can be pulled (the default, last stage):
#     docker build -t scanner-analytics-integration \
#       --build-arg GIT_SHA=$(git rev-parse HEAD) --build-arg CREATED=$(date -u +%Y-%m-%dT%H:%M:%SZ) .
#
#   From a static binary built on the host, with no pull at all (every stage up to
#   `from-host` is FROM scratch, so the classic builder never needs a base image):
#     RUSTFLAGS='-C target-feature=+crt-static' cargo build --locked --profile image --target x86_64-unknown-linux-gnu
#     .ci/image-rootfs                  # -> dist/rootfs: imagetrail, busybox, sh, CA bundle
#     DOCKER_BUILDKIT=0 docker build --target from-host -t scanner-analytics-integration \
#       --build-arg GIT_SHA=$(git rev-parse HEAD) --build-arg CREATED=$(date -u +%Y-%m-%dT%H:%M:%SZ) .
#
# Both end in the same layout: /imagetrail (static-pie, glibc; names are resolved by
# hickory-dns from the /etc/hosts and /etc/resolv.conf the runtime injects, not by glibc's
# NSS), /bin/busybox + /bin/sh, /etc/ssl/certs/ca-certificates.crt, /analytics-integration
# (the scanner config) and /install.sh.

ARG RUST_IMAGE=docker.io/library/rust:1.95-bookworm

# ---- common: config, installer and labels; no binary yet ---------------------------------
FROM scratch AS common

# The image's own build metadata: the same labels the scanner reads from what it scans, so
# the scanner can register (and verify) itself. An empty value counts as missing.
ARG GIT_URL=https://github.com/imagetrail/imagetrail
ARG GIT_SHA=
ARG EMAIL_IDS=imagetrail@example.com
ARG VERSION=0.1.0
ARG CREATED=

# Single quotes keep `$IMAGE` literal: atomic install substitutes it with the image name.
LABEL INSTALL='docker run --rm --privileged -v /etc/atomic.d/:/host/etc/atomic.d/ $IMAGE sh /install.sh' \
      name="scanner-analytics-integration" \
      summary="imagetrail as an atomic scan scanner: registers images with an analytics server" \
      git-url="${GIT_URL}" \
      git-sha="${GIT_SHA}" \
      email-ids="${EMAIL_IDS}" \
      org.opencontainers.image.title="scanner-analytics-integration" \
      org.opencontainers.image.description="atomic scan scanner: register, verify and deploy images by their git-url, git-sha and email-ids labels" \
      org.opencontainers.image.source="${GIT_URL}" \
      org.opencontainers.image.url="${GIT_URL}" \
      org.opencontainers.image.revision="${GIT_SHA}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY scanner-config /analytics-integration
COPY install.sh /install.sh

# atomic scan runs `<image> /imagetrail scan <type>` from the config's `scans`; a plain
# `docker run IMAGE` does the default scan.
CMD ["/imagetrail", "scan", "register"]

# ---- from-host: the final image from a rootfs staged on the host by .ci/image-rootfs -------
FROM common AS from-host
ARG ROOTFS=dist/rootfs
COPY ${ROOTFS}/ /

# ---- build: the static binary and the rootfs, from source ----------------------------------
FROM ${RUST_IMAGE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends busybox-static ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY tests tests
COPY .ci/image-rootfs .ci/image-rootfs
# --target (the builder's own triple, so arm64 builders work too) keeps +crt-static off
# build scripts and proc macros, which must stay dynamic. Profile `image`: size-optimised.
RUN target=$(rustc -vV | sed -n 's/^host: //p') \
 && RUSTFLAGS='-C target-feature=+crt-static' \
    cargo build --locked --profile image --target "$target" --bin imagetrail \
 && sh .ci/image-rootfs "${CARGO_TARGET_DIR:-target}/$target/image/imagetrail" /rootfs

# ---- from-source (default): the final image from the build stage ---------------------------
FROM common AS from-source
COPY --from=build /rootfs/ /
