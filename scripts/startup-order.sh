#!/usr/bin/env bash
# Writes startup-order.txt: the functions of the release `portcullis` that
# `serve` runs as it starts and idles on the README's quickstart, as the
# linker names them. build.rs hands the file to the linker
# (`--symbol-ordering-file`), which lays those functions out first and
# together, so that the code a proxy at rest has paged in is a few MiB of
# dense pages rather than one 64 KiB fault-around window in two of the whole
# `.text` (BENCHMARKS.md, "Idle memory").
#
# Usage: scripts/startup-order.sh [OUTPUT]     (default: startup-order.txt)
#   Env: IDLE_SECONDS (default 10, as scripts/idle-memory.sh reads it) how
#        long it idles under valgrind after its first answer, so that the
#        idle loop's timers have run too.
#
# Needs valgrind (callgrind counts which functions run; Debian: `apt-get
# install valgrind`). Takes about a minute beside the release build.
#
# When to run it again: the names carry a hash that changes with the
# compiler, Cargo.lock and the release profile, and new start-up code is not
# in the file until it is. A stale file costs nothing but memory: names the
# linker does not find are skipped (the build passes
# `--no-warn-symbol-ordering`), the rest is still laid out first.
# scripts/idle-memory.sh shows what the file in the tree is worth.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUTPUT="${1:-$ROOT/startup-order.txt}"
IDLE_SECONDS="${IDLE_SECONDS:-10}"

command -v valgrind > /dev/null || {
    echo "startup-order: valgrind is needed (Debian: apt-get install valgrind)" >&2
    exit 1
}

WORK="$(mktemp -d)"
CONFIG="$ROOT/examples/.startup-order-$$.toml"
pid=""
cleanup() {
    if [ -n "$pid" ]; then
        kill -INT "$pid" 2> /dev/null || true
        wait "$pid" 2> /dev/null || true
    fi
    rm -f "$CONFIG"
    rm -rf "$WORK"
}
trap cleanup EXIT

(cd "$ROOT" && cargo build --release --locked --bin portcullis --bin portcullis-example-server >&2)
TARGET_DIR="$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
BINARY="$TARGET_DIR/release/portcullis"

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
sed -e "s|^listen = .*|listen = \"127.0.0.1:$PORT\"|" \
    -e "s|^data_dir = .*|data_dir = \"$WORK/data\"|" \
    "$ROOT/examples/quickstart.toml" > "$CONFIG"

# Names as the object files spell them (--demangle=no), each in full on its
# line (--compress-strings=no); no per-line or per-instruction counts.
valgrind --tool=callgrind --demangle=no --compress-strings=no --dump-line=no \
    --callgrind-out-file="$WORK/callgrind.out" \
    "$BINARY" serve --config "$CONFIG" > "$WORK/log" 2>&1 &
pid=$!
for _ in $(seq 1 1200); do
    curl -fsS -o /dev/null "http://127.0.0.1:$PORT/healthz" 2> /dev/null && break
    kill -0 "$pid" 2> /dev/null || { cat "$WORK/log" >&2; echo "startup-order: serve ended before it answered" >&2; exit 1; }
    sleep 0.1
done
curl -fsS -o /dev/null "http://127.0.0.1:$PORT/healthz" || { echo "startup-order: serve never answered" >&2; exit 1; }
sleep "$IDLE_SECONDS"
kill -INT "$pid" || { cat "$WORK/log" >&2; echo "startup-order: serve ended while it idled" >&2; exit 1; }
wait "$pid" || true
pid=""

# Every function with a cost of its own (`fn=`) in the proxy's binary
# (`ob=`), once, sorted: the order within the group matters little, and a
# sorted file changes by the lines that changed.
python3 - "$WORK/callgrind.out" "$BINARY" > "$WORK/order.txt" <<'PYTHON'
import os
import sys

out, binary = sys.argv[1], os.path.realpath(sys.argv[2])
names, current = set(), None
with open(out, encoding="utf-8", errors="replace") as lines:
    for line in lines:
        if line.startswith("ob="):
            current = os.path.realpath(line[3:].strip())
        elif line.startswith("fn=") and current == binary:
            name = line[3:].strip()
            # Valgrind's own labels ("(below main)", a bare address) are
            # no symbol's.
            if not name.startswith(("(", "0x")):
                names.add(name)
if len(names) < 1000:
    sys.exit(f"startup-order: only {len(names)} functions of {binary} ran: not a start-up")
for name in sorted(names):
    print(name)
PYTHON
# Only a whole list replaces the file in the tree.
mv "$WORK/order.txt" "$OUTPUT"
echo "startup-order: $(wc -l < "$OUTPUT") functions written to $OUTPUT" >&2
