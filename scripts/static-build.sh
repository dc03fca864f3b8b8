# Sourced by the image scripts (build-test-image.sh, build-proxy-image.sh):
# the engine check, a lock, and a static release build of some binaries.
# Expects ROOT and SCRIPT (the caller's name, for messages) to be set.

die() {
    echo "$SCRIPT: error: $*" >&2
    exit 1
}

command -v docker >/dev/null 2>&1 || die "the docker command is not installed"
docker version --format '{{.Server.Version}}' >/dev/null 2>&1 ||
    die "the Docker engine is not reachable (is dockerd running, and may this user use /var/run/docker.sock?)"

# Takes the lock target/NAME.lock (waiting at most SECONDS) for the rest of
# the caller: concurrent callers (parallel tests) build one at a time.
lock() {
    mkdir -p "$ROOT/target"
    if command -v flock >/dev/null 2>&1; then
        exec 9>"$ROOT/target/$1.lock"
        flock -w "$2" 9 || die "timed out waiting for the lock target/$1.lock"
    fi
}

# A target triple makes RUSTFLAGS apply to the binaries only, not to build
# scripts and proc macros (which cannot be linked statically). Both image
# scripts use the same flags and target, so they share artifacts.
HOST="$(rustc -vV | sed -n 's/^host: //p')"
[[ -n "$HOST" ]] || die "cannot tell the host target triple from rustc -vV"

# The cargo profile of the static builds: `release` (what an image is made
# of), unless PORTCULLIS_IMAGE_PROFILE names another. The tests set `dev`:
# their images need no optimised code, and a dev build shares the host's
# build scripts and proc macros with the tests' own build and compiles in a
# fraction of a release build's time. OUT is the profile's folder.
PROFILE="${PORTCULLIS_IMAGE_PROFILE:-release}"
case "$PROFILE" in
    dev) OUT=debug ;;
    *) OUT="$PROFILE" ;;
esac

# Builds the named binaries of the root package (`--bin NAME` each)
# statically, in $PROFILE, into target/$HOST/$OUT/.
static_build() {
    (
        cd "$ROOT"
        RUSTFLAGS='-C target-feature=+crt-static' cargo build --profile "$PROFILE" --locked \
            --target "$HOST" "$@"
    ) >&2 || die "the static build of $* failed"
}

# The example server and the bridge, statically, in $PROFILE, from the
# package in static/ (the same sources without the proxy's library, which
# cargo would build with any bin of the root package), into
# target/static-bins/$HOST/$OUT/ (STATIC_BINS).
STATIC_BINS="$ROOT/target/static-bins/$HOST/$OUT"
static_build_small() {
    (
        cd "$ROOT/static"
        RUSTFLAGS='-C target-feature=+crt-static' cargo build --profile "$PROFILE" --locked \
            --target "$HOST" --target-dir "$ROOT/target/static-bins" "$@"
    ) >&2 || die "the static build of $* failed"
}

# Copies the shared libraries the dynamically linked executable $1 needs
# (as `ldd` lists them, the loader too) into the folder $2, at their paths:
# an image FROM scratch can then run it.
copy_libraries() {
    local binary="$1" rootfs="$2" lib
    command -v ldd >/dev/null 2>&1 || die "ldd is not installed (it lists what $binary needs)"
    if ldd "$binary" | grep -q 'not found'; then
        die "$binary needs libraries this machine lacks: $(ldd "$binary" | grep 'not found' | tr -s ' \n' ' ')"
    fi
    for lib in $(ldd "$binary" | grep -o '/[^ ]*'); do
        mkdir -p "$rootfs$(dirname "$lib")"
        cp -L "$lib" "$rootfs$lib"
    done
}
