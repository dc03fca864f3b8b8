#!/usr/bin/env bash
# Counts the instructions the proxy runs per call, for a 2025-11-25 session
# call and for a 2026-07-28 stateless call, on one `portcullis serve` under
# valgrind's callgrind: a count that barely moves with the machine's load
# (the runtime's idle and timer work still varies a little from run to
# run), where the round-trip benchmark's times move a lot (BENCHMARKS.md). Every thread of
# the proxy is counted (the audit writer's included); the example server is
# not.
#
# Usage: scripts/instructions-per-call.sh [CALLS [REV ...]]   (default 2000)
#   Needs valgrind (installed with apt-get when missing) and the release
#   build of the two binaries (brought up to date first, so that what is
#   counted is the tree as it is; built as each revision is, with no
#   dev-dependency's features).
#   Each REV (a commit, `HEAD~3`, a branch) is also built, in a worktree of
#   its own under target/instructions/ with a target directory of its own
#   (target/instructions/NAME-target: sharing target/, cargo once took the
#   tree's binary for the revision's, as fresh), and counted in the same
#   run, so that a change is compared with what it changed. Each binary
#   counted must carry its own checkout's source paths, or the run stops.
#   Prints one line per build and path, then each build's ratio. The
#   callgrind files stay in the printed directory:
#   `callgrind_annotate --inclusive=yes FILE` shows where the instructions
#   went.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CALLS="${1:-2000}"
shift || true
if ! command -v valgrind > /dev/null; then
    echo "valgrind is missing: installing Debian's package" >&2
    { apt-get update -qq && apt-get install -y -qq valgrind > /dev/null; } \
        || { echo "cannot install valgrind: install it, then run this again" >&2; exit 1; }
fi
# Built as each revision is below: `cargo bench` would turn on the
# dev-dependencies' features (tokio's `test-util`, whose clock takes a lock
# on every read of the timer), and the tree would count more than it runs.
(cd "$ROOT" && cargo build --release --locked --bin portcullis --bin portcullis-example-server >&2)

WORK="$(mktemp -d)"
# The builds counted: NAME -> the directory holding its release binaries.
NAMES=(tree)
declare -A BINARIES=([tree]="$WORK/tree")
mkdir -p "$WORK/tree"
cp "$ROOT/target/release/portcullis" "$ROOT/target/release/portcullis-example-server" "$WORK/tree/"
for rev in "$@"; do
    name="$(git -C "$ROOT" rev-parse --short "$rev")"
    tree="$ROOT/target/instructions/$name"
    if [ ! -d "$tree" ]; then
        git -C "$ROOT" worktree add --detach "$tree" "$rev" >&2
    fi
    (cd "$tree" && CARGO_TARGET_DIR="$tree-target" cargo build --release --locked \
        --bin portcullis --bin portcullis-example-server >&2)
    mkdir -p "$WORK/$name"
    cp "$tree-target/release/portcullis" "$tree-target/release/portcullis-example-server" "$WORK/$name/"
    # Built from that revision's checkout, not taken for another's.
    if ! grep -aqF "$tree" "$WORK/$name/portcullis"; then
        echo "the binary built for $rev does not come from $tree" >&2
        exit 1
    fi
    NAMES+=("$name")
    BINARIES[$name]="$WORK/$name"
done
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
HASH=$(printf 'bench-token' | sha256sum | cut -d' ' -f1)
cat > "$WORK/proxy.toml" <<EOF
[proxy]
listen = "127.0.0.1:$PORT"
data_dir = "data"

[audit]
durability = "buffered"

[[clients]]
name = "bench"
token_sha256 = "$HASH"

[[servers]]
name = "example"
process = { command = "EXAMPLE_SERVER", args = ["--name", "example"] }
EOF

# The bench client's requests, from Python: a kept-alive HTTP/1.1
# connection, the session's after its handshake, or the stateless ones with
# their envelope and headers. After its handshake it says `ready` and waits
# for a line on stdin, so that the counters are zeroed between the two.
cat > "$WORK/client.py" <<'EOF'
import json, socket, sys
port, mode, calls, wait = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4] == "wait"
conn = socket.create_connection(("127.0.0.1", port))
conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
replies = conn.makefile("rb")
def post(message, extra=""):
    body = json.dumps(message).encode()
    head = (f"POST /mcp HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer bench-token\r\n"
            f"content-type: application/json\r\naccept: application/json, text/event-stream\r\n"
            f"content-length: {len(body)}\r\n{extra}\r\n")
    conn.sendall(head.encode() + body)
    headers, length = [], 0
    while (line := replies.readline()) not in (b"\r\n", b""):
        headers.append(line.decode())
        name, _, value = line.decode().partition(":")
        if name.lower() == "content-length":
            length = int(value)
    body = replies.read(length)
    if not headers or not headers[0].startswith("HTTP/1.1 2"):
        sys.exit(f"HTTP error: {headers} {body!r}")
    return headers, body
extra = ""
if mode == "session":
    headers, _ = post({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "bench", "version": "0"}}})
    session = next(h.split(":", 1)[1].strip() for h in headers if h.lower().startswith("mcp-session-id"))
    extra = f"mcp-session-id: {session}\r\nmcp-protocol-version: 2025-11-25\r\n"
    post({"jsonrpc": "2.0", "method": "notifications/initialized"}, extra)
if wait:
    print("ready", flush=True)
    sys.stdin.readline()
for n in range(1, calls + 1):
    call = {"jsonrpc": "2.0", "id": n, "method": "tools/call",
            "params": {"name": "example__echo", "arguments": {"text": "hello"}}}
    headers = extra
    if mode == "stateless":
        call["params"]["_meta"] = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                                   "io.modelcontextprotocol/clientCapabilities": {}}
        headers = "mcp-protocol-version: 2026-07-28\r\nmcp-method: tools/call\r\nmcp-name: example__echo\r\n"
    _, body = post(call, headers)
    if b'"result"' not in body:
        sys.exit(f"call failed: {body!r}")
EOF

# count NAME: both paths counted on the build NAME's proxy and example server.
count() {
    local name=$1 dir=${BINARIES[$1]} run="$WORK/run-$1"
    mkdir -p "$run"
    sed -e "s|EXAMPLE_SERVER|$dir/portcullis-example-server|" "$WORK/proxy.toml" > "$run/proxy.toml"
    cd "$run"
    valgrind --tool=callgrind --callgrind-out-file="$run/callgrind.%p" \
        "$dir/portcullis" serve --config proxy.toml > proxy.log 2>&1 &
    PROXY=$!
    trap 'kill $PROXY 2> /dev/null || true' EXIT
    for _ in $(seq 1 120); do
        grep -q "listening for MCP" proxy.log && break
        sleep 1
    done
    grep -q "listening for MCP" proxy.log || { cat proxy.log >&2; exit 1; }
    # Warm-up: both paths, so that neither pays for a first time.
    python3 "$WORK/client.py" "$PORT" session 200 go
    python3 "$WORK/client.py" "$PORT" stateless 200 go
    for mode in session stateless; do
        coproc CLIENT { python3 "$WORK/client.py" "$PORT" "$mode" "$CALLS" wait; }
        client_pid=$CLIENT_PID
        read -r ready <&"${CLIENT[0]}"
        [ "$ready" = ready ] || { echo "the $mode client did not start" >&2; exit 1; }
        callgrind_control -z "$PROXY" > /dev/null
        echo go >&"${CLIENT[1]}"
        wait "$client_pid"
        callgrind_control -d "$mode" "$PROXY" > /dev/null
        dump=$(grep -l "^desc: Trigger: dump $mode" "$run"/callgrind.*.* | head -1) \
            || { echo "callgrind wrote no dump for $mode" >&2; exit 1; }
        total=$(awk '/^totals:/ {print $2}' "$dump")
        PER_CALL[$name.$mode]=$((total / CALLS))
        echo "$name $mode: ${PER_CALL[$name.$mode]} instructions per call ($dump)"
    done
    kill "$PROXY" 2> /dev/null || true
    wait "$PROXY" 2> /dev/null || true
    cd "$WORK"
}


declare -A PER_CALL
for name in "${NAMES[@]}"; do
    count "$name"
done
for name in "${NAMES[@]}"; do
    python3 -c "print(f'$name stateless / session: {${PER_CALL[$name.stateless]} / ${PER_CALL[$name.session]}:.3f}x')"
done
for name in "${NAMES[@]:1}"; do
    for mode in session stateless; do
        python3 -c "print(f'$mode tree / $name: {${PER_CALL[tree.$mode]} / ${PER_CALL[$name.$mode]}:.3f}x')"
    done
done
