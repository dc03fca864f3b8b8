#!/usr/bin/env bash
# Creates (on first use) the Python virtualenv the integration tests use, at
# target/pyenv, with the pinned packages of tests/python/requirements.txt
# (the `mcp` SDK and `mcp-server-time`). Idempotent: a stamp file holds the
# requirements' hash, and nothing is reinstalled while it matches.
#
# Usage: scripts/pyenv.sh            -> last (and only) stdout line: the venv's python
#        PY=$(scripts/pyenv.sh | tail -n1)
#
# Environment:
#   PORTCULLIS_PYTHON   base interpreter to build the venv from (default: python3)
#
# All progress and pip output goes to stderr. Needs no standard input. Exits
# non-zero with a message naming the failed step if anything fails.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REQS="$ROOT/tests/python/requirements.txt"
VENV="$ROOT/target/pyenv"
VPY="$VENV/bin/python"
STAMP="$VENV/.portcullis-requirements.sha256"
LOCK="$ROOT/target/pyenv.lock"

die() {
    echo "pyenv.sh: error: $*" >&2
    exit 1
}

[[ -f "$REQS" ]] || die "requirements file not found: $REQS"

hash_file() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | cut -d' ' -f1
    else
        "${PORTCULLIS_PYTHON:-python3}" -c 'import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],"rb").read()).hexdigest())' "$1"
    fi
}

WANT="$(hash_file "$REQS")" || die "cannot hash $REQS"

# Up to date: the stamp matches and the venv's interpreter still runs (a base
# interpreter removed or upgraded underneath the venv leaves it broken).
up_to_date() {
    [[ -x "$VPY" && -f "$STAMP" ]] &&
        [[ "$(cat "$STAMP" 2>/dev/null)" == "$WANT" ]] &&
        "$VPY" -c '' </dev/null >/dev/null 2>&1
}

if up_to_date; then
    echo "$VPY"
    exit 0
fi

mkdir -p "$ROOT/target"

# Serialise concurrent callers (e.g. parallel cargo tests) on a lock file.
if command -v flock >/dev/null 2>&1; then
    exec 9>"$LOCK"
    flock -w 900 9 || die "timed out waiting for the lock $LOCK"
    # Another caller may have finished the install while we waited.
    if up_to_date; then
        echo "$VPY"
        exit 0
    fi
fi

BASE_PY="${PORTCULLIS_PYTHON:-python3}"
command -v "$BASE_PY" >/dev/null 2>&1 || die "no Python interpreter '$BASE_PY' on PATH (set PORTCULLIS_PYTHON)"
"$BASE_PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' </dev/null ||
    die "$BASE_PY is $("$BASE_PY" -V 2>&1); mcp 2.3.0 needs Python >= 3.10"

# The stamp goes first, so an interrupted install is never taken as complete.
rm -f "$STAMP"

if [[ -x "$VPY" ]] && "$VPY" -c '' </dev/null >/dev/null 2>&1; then
    echo "pyenv.sh: updating $VENV (requirements changed)" >&2
else
    echo "pyenv.sh: creating virtualenv $VENV with $("$BASE_PY" -V 2>&1)" >&2
    "$BASE_PY" -m venv --clear "$VENV" </dev/null >&2 ||
        die "'$BASE_PY -m venv $VENV' failed (on Debian: apt-get install python3-venv)"
fi

echo "pyenv.sh: installing $REQS" >&2
if ! "$VPY" -m pip install --no-input --disable-pip-version-check --progress-bar off \
    -r "$REQS" </dev/null >&2; then
    die "pip install -r $REQS failed (see pip's output above); the venv at $VENV is left unstamped and will be retried next run"
fi

# Cheap sanity check that the packages we rely on import.
"$VPY" -c 'import mcp, mcp_server_time' </dev/null >&2 ||
    die "packages installed but 'import mcp, mcp_server_time' fails in $VENV"

echo "$WANT" >"$STAMP.tmp" && mv -f "$STAMP.tmp" "$STAMP" || die "cannot write stamp $STAMP"
echo "pyenv.sh: ready" >&2
echo "$VPY"
