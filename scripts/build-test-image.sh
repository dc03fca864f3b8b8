#!/usr/bin/env bash
# Builds the example MCP server image that the container tests, the benchmark
# and the README use: `FROM scratch` with `portcullis-example-server` linked
# statically (no registry is needed, and none is reached). It also leaves the
# static `portcullis-bridge` (for `stdio = "fifo"` servers) at
# target/static/portcullis-bridge.
#
# Usage: scripts/build-test-image.sh [TAG]     (default portcullis/example-server:dev)
#   The last line on stdout is the tag; cargo's and docker's output go to stderr.
#
# Idempotent: cargo rebuilds only what changed, and docker reuses its cache for
# an unchanged binary. Concurrent callers (parallel tests) wait on a lock.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TAG="${1:-portcullis/example-server:dev}"

SCRIPT=build-test-image.sh
# shellcheck source=static-build.sh
source "$ROOT/scripts/static-build.sh"
lock test-image 900
static_build_small --bin portcullis-example-server --bin portcullis-bridge
mkdir -p "$ROOT/target/static"
cp -f "$STATIC_BINS/portcullis-bridge" "$ROOT/target/static/portcullis-bridge.tmp"
mv -f "$ROOT/target/static/portcullis-bridge.tmp" "$ROOT/target/static/portcullis-bridge"

BIN="$STATIC_BINS/portcullis-example-server"
CONTEXT="$ROOT/target/test-image"
rm -rf "$CONTEXT"
mkdir -p "$CONTEXT"
cp "$BIN" "$CONTEXT/server"
cat >"$CONTEXT/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY server /server
USER 65534:65534
ENTRYPOINT ["/server"]
DOCKERFILE

DOCKER_BUILDKIT=0 docker build --quiet --label dev.portcullis.test-image=true \
    -t "$TAG" "$CONTEXT" >&2 || die "docker build of $TAG failed"
echo "$TAG"
