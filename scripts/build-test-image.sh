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

die() {
    echo "build-test-image.sh: error: $*" >&2
    exit 1
}

command -v docker >/dev/null 2>&1 || die "the docker command is not installed"
docker version --format '{{.Server.Version}}' >/dev/null 2>&1 ||
    die "the Docker engine is not reachable (is dockerd running, and may this user use /var/run/docker.sock?)"

mkdir -p "$ROOT/target"
if command -v flock >/dev/null 2>&1; then
    exec 9>"$ROOT/target/test-image.lock"
    flock -w 900 9 || die "timed out waiting for the lock target/test-image.lock"
fi

# A target triple makes RUSTFLAGS apply to the server only, not to build
# scripts and proc macros (which cannot be linked statically).
HOST="$(rustc -vV | sed -n 's/^host: //p')"
[[ -n "$HOST" ]] || die "cannot tell the host target triple from rustc -vV"
(
    cd "$ROOT"
    RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --locked \
        --target "$HOST" --bin portcullis-example-server --bin portcullis-bridge
) >&2 || die "the static build of portcullis-example-server failed"
mkdir -p "$ROOT/target/static"
cp -f "$ROOT/target/$HOST/release/portcullis-bridge" "$ROOT/target/static/portcullis-bridge.tmp"
mv -f "$ROOT/target/static/portcullis-bridge.tmp" "$ROOT/target/static/portcullis-bridge"

BIN="$ROOT/target/$HOST/release/portcullis-example-server"
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
