#!/usr/bin/env bash
# Builds the proxy's own image: `portcullis` (and the example server) linked
# statically, FROM scratch, non-root (the repository's Dockerfile). No
# registry is needed, and none is reached.
#
# Usage: scripts/build-proxy-image.sh [TAG]     (default portcullis/proxy:dev)
#   The last line on stdout is the tag; cargo's and docker's output go to stderr.
#
# PORTCULLIS_PROXY_BINARY=PATH puts that `portcullis`, a dynamically linked
# build, in the image instead, with the shared libraries it needs (as `ldd`
# lists them): the tests give the binary they were built with, so that no
# second build of the whole proxy (for a static target) is made for them.
#
# Idempotent: cargo rebuilds only what changed, and docker reuses its cache for
# unchanged binaries. Concurrent callers wait on a lock.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TAG="${1:-portcullis/proxy:dev}"

SCRIPT=build-proxy-image.sh
source "$ROOT/scripts/static-build.sh"
lock proxy-image 1800
static_build_small --bin portcullis-example-server

CONTEXT="$ROOT/target/proxy-image"
rm -rf "$CONTEXT"
mkdir -p "$CONTEXT/rootfs"
cp "$ROOT/Dockerfile" "$CONTEXT/Dockerfile"
if [[ -n "${PORTCULLIS_PROXY_BINARY:-}" ]]; then
    [[ -x "$PORTCULLIS_PROXY_BINARY" ]] || die "PORTCULLIS_PROXY_BINARY=$PORTCULLIS_PROXY_BINARY is not an executable"
    cp "$PORTCULLIS_PROXY_BINARY" "$CONTEXT/portcullis"
    copy_libraries "$CONTEXT/portcullis" "$CONTEXT/rootfs"
else
    static_build --bin portcullis
    cp "$ROOT/target/$HOST/$OUT/portcullis" "$CONTEXT/portcullis"
fi
# The Dockerfile's layers, and what the binary needs (nothing when static).
echo 'COPY rootfs/ /' >>"$CONTEXT/Dockerfile"
cp "$STATIC_BINS/portcullis-example-server" "$CONTEXT/portcullis-example-server"
CA_BUNDLE="${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
[[ -s "$CA_BUNDLE" ]] || die "no CA certificates at $CA_BUNDLE (install ca-certificates, or set CA_BUNDLE)"
cp "$CA_BUNDLE" "$CONTEXT/ca-certificates.crt"
if command -v strip >/dev/null 2>&1; then
    strip --strip-debug "$CONTEXT/portcullis" "$CONTEXT/portcullis-example-server"
fi

DOCKER_BUILDKIT=0 docker build --quiet --label dev.portcullis.proxy-image=true \
    -t "$TAG" "$CONTEXT" >&2 || die "docker build of $TAG failed"
echo "$TAG"
