#!/usr/bin/env bash
# Runs each fuzz target (fuzz/fuzz_targets, cargo-fuzz on the nightly
# toolchain) for SECONDS (default 60), on the corpus kept in fuzz/corpus
# (new inputs that reach new code are added to it; `cargo fuzz cmin` keeps
# it small). A finding stops that target and is left in
# fuzz/artifacts/TARGET/: fix it, and copy the input into fuzz/corpus/TARGET/
# so tests/fuzz_corpus.rs keeps it fixed on the stable toolchain.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-60}"
shift || true
if ! rustup toolchain list | grep -q '^nightly'; then
    echo "fuzz.sh: the nightly toolchain is needed (rustup toolchain list shows none)" >&2
    exit 2
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz from crates.io" >&2
    cargo install cargo-fuzz --locked
fi
targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
failed=0
for target in "${targets[@]}"; do
    echo "== fuzzing ${target} for ${seconds}s"
    if ! cargo +nightly fuzz run "${target}" "corpus/${target}" -- \
        -max_total_time="${seconds}" -max_len=65536 -timeout=10 -rss_limit_mb=4096; then
        echo "== ${target}: a finding, in fuzz/artifacts/${target}/" >&2
        failed=1
    fi
done
exit "${failed}"
