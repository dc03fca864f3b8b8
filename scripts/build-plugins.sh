#!/usr/bin/env bash
# Builds the example plugins (plugins/examples/*) for wasm32-wasip2.
#
#   scripts/build-plugins.sh          refresh the checked-in builds
#                                     (plugins/examples/NAME/NAME.wasm)
#   scripts/build-plugins.sh OUT_DIR  put the builds in OUT_DIR instead
#
# The builds are reproducible: paths are remapped, so the same sources and
# toolchain give the same bytes on any machine (the tests compare them with
# the checked-in files).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-}
cargo_home=${CARGO_HOME:-$HOME/.cargo}

if ! rustc --print target-list >/dev/null 2>&1 ||
   [ ! -d "$(rustc --print sysroot)/lib/rustlib/wasm32-wasip2" ]; then
  echo "the wasm32-wasip2 target is missing: rustup target add wasm32-wasip2" >&2
  exit 2
fi

export CARGO_TARGET_DIR=${PLUGINS_TARGET_DIR:-$root/plugins/examples/target}
export RUSTFLAGS="--remap-path-prefix=$cargo_home=/cargo --remap-path-prefix=$root=/portcullis"
# Flags of the proxy's own build must not leak into the plugins'.
unset CARGO_BUILD_RUSTFLAGS CARGO_ENCODED_RUSTFLAGS
cd "$root/plugins/examples"
cargo build --locked --release --target wasm32-wasip2 --quiet

for crate in noop deny-pattern add-notice mask-pii; do
  file=${crate//-/_}.wasm
  dest=${out:-$root/plugins/examples/$crate}
  mkdir -p "$dest"
  cp "$CARGO_TARGET_DIR/wasm32-wasip2/release/$file" "$dest/$file"
done
