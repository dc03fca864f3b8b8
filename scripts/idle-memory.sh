#!/usr/bin/env bash
# Measures what `portcullis serve` holds at rest: the README's quickstart
# (examples/quickstart.toml, its policies and extra secret rules) on the
# release build, no client connected, read from /proc after it has idled.
#
# Usage: scripts/idle-memory.sh [REV ...]
#   With no argument, the working tree (built with `cargo build --release`).
#   Each REV (a commit, `HEAD~3`, a branch) is also built, in a worktree of
#   its own under target/idle-memory/ (sharing target/ so that only the
#   proxy's own crate is built again), and measured in the same run, so the
#   figures compare on one machine at one time.
#   Env: IDLE_SECONDS (default 10) how long it idles before the reading;
#        RUNS (default 3) readings per build, each a fresh process.
#   Prints, per build and run: VmRSS (what `ps` and the issue call RSS),
#   RssAnon (heap, stacks), RssFile (code and read-only data paged in from
#   the binary, which is dropped from the page cache before each run), all
#   in MiB; then each build's median VmRSS.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
IDLE_SECONDS="${IDLE_SECONDS:-10}"
RUNS="${RUNS:-3}"
WORK="$(mktemp -d)"
CONFIG="$ROOT/examples/.idle-memory-$$.toml"
cleanup() {
    rm -f "$CONFIG"
    rm -rf "$WORK"
}
trap cleanup EXIT

# The quickstart as it is, on a free port and a data directory of its own.
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
sed -e "s|^listen = .*|listen = \"127.0.0.1:$PORT\"|" \
    -e "s|^data_dir = .*|data_dir = \"$WORK/data\"|" \
    "$ROOT/examples/quickstart.toml" > "$CONFIG"

# build NAME DIR: the release binary of the tree in DIR, kept as NAME.
build() {
    (cd "$2" && CARGO_TARGET_DIR="$ROOT/target" cargo build --release --locked --bin portcullis --bin portcullis-example-server >&2)
    cp "$ROOT/target/release/portcullis" "$WORK/portcullis-$1"
    cp "$ROOT/target/release/portcullis-example-server" "$WORK/example-server-$1"
}

# cold FILE: FILE's pages out of the page cache. How a binary came into the
# cache changes what a fault maps: pages written by `cp` sit in large folios,
# each mapped whole on a fault (RssFile some 3.5 MiB higher and noisier than
# from pages read in on demand). Every reading starts from the same state.
cold() {
    sync "$1"
    python3 -c 'import os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)' "$1"
}

# reading BINARY: one process started, idled, read, stopped.
reading() {
    rm -rf "$WORK/data"
    cold "$1"
    "$1" serve --config "$CONFIG" > "$WORK/log" 2>&1 &
    local pid=$!
    for _ in $(seq 1 300); do
        curl -fsS -o /dev/null "http://127.0.0.1:$PORT/healthz" 2> /dev/null && break
        kill -0 "$pid" 2> /dev/null || { cat "$WORK/log" >&2; echo "serve ended before it answered" >&2; exit 1; }
        sleep 0.1
    done
    sleep "$IDLE_SECONDS"
    awk '/^(VmRSS|RssAnon|RssFile):/ { printf "%s %.1f  ", $1, $2 / 1024 } END { print "" }' "/proc/$pid/status"
    kill -INT "$pid"
    wait "$pid" || true
}

NAMES=(tree)
build tree "$ROOT"
for rev in "$@"; do
    name="$(git -C "$ROOT" rev-parse --short "$rev")"
    tree="$ROOT/target/idle-memory/$name"
    if [ ! -d "$tree" ]; then
        git -C "$ROOT" worktree add --detach "$tree" "$rev" >&2
    fi
    build "$name" "$tree"
    NAMES+=("$name")
done
# A revision's build took target/release's place: the tree's binaries back
# (the next cargo build of the tree builds its crate again all the same).
if [ "$#" -gt 0 ]; then
    cp "$WORK/portcullis-tree" "$ROOT/target/release/portcullis"
    cp "$WORK/example-server-tree" "$ROOT/target/release/portcullis-example-server"
fi

for name in "${NAMES[@]}"; do
    for run in $(seq 1 "$RUNS"); do
        printf '%-10s run %s  %s\n' "$name" "$run" "$(reading "$WORK/portcullis-$name")"
    done | tee "$WORK/readings-$name"
    median=$(awk '{ print $5 }' "$WORK/readings-$name" | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')
    echo "$name: median VmRSS $median MiB over $RUNS runs of ${IDLE_SECONDS}s idle"
done
