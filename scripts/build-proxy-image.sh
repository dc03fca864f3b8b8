#!/usr/bin/env bash
# Builds the proxy's own image: `portcullis` (and the example server) linked
# statically, FROM scratch, non-root (the repository's Dockerfile). No
# registry is needed, and none is reached.
#
# Usage: scripts/build-proxy-image.sh [TAG]     (default portcullis/proxy:dev)
#   The last line on stdout is the tag; cargo's and docker's output go to stderr.
#
# Idempotent: cargo rebuilds only what changed, and docker reuses its cache for
# unchanged binaries. Concurrent callers wait on a lock.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TAG="${1:-portcullis/proxy:dev}"

SCRIPT=build-proxy-image.sh
# shellcheck source=static-build.sh
source "$ROOT/scripts/static-build.sh"
lock proxy-image 1800
static_build --bin portcullis --bin portcullis-example-server

CONTEXT="$ROOT/target/proxy-image"
rm -rf "$CONTEXT"
mkdir -p "$CONTEXT"
cp "$ROOT/target/$HOST/$OUT/portcullis" "$CONTEXT/portcullis"
cp "$ROOT/target/$HOST/$OUT/portcullis-example-server" "$CONTEXT/portcullis-example-server"
cp "$ROOT/Dockerfile" "$CONTEXT/Dockerfile"
# The CA certificates `remote` servers and an OTLP collector over https are
# checked against (the client refuses to start without any): this machine's.
CA_BUNDLE="${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
[[ -s "$CA_BUNDLE" ]] || die "no CA certificates at $CA_BUNDLE (install ca-certificates, or set CA_BUNDLE)"
cp "$CA_BUNDLE" "$CONTEXT/ca-certificates.crt"
# The release profile keeps line tables for backtraces on the host; the image
# need not carry them.
if command -v strip >/dev/null 2>&1; then
    strip --strip-debug "$CONTEXT/portcullis" "$CONTEXT/portcullis-example-server"
fi

DOCKER_BUILDKIT=0 docker build --quiet --label dev.portcullis.proxy-image=true \
    -t "$TAG" "$CONTEXT" >&2 || die "docker build of $TAG failed"
echo "$TAG"
