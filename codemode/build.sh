#!/bin/sh
# Builds codemode.wasm, the JavaScript engine of code mode: QuickJS-ng 0.16.2
# (MIT, the sources the crates.io crate rquickjs-sys 0.14.0 carries) with
# codemode.c, the driver, for wasm32-wasi, with Debian bookworm's clang 14,
# lld 14 and wasi-libc (apt-get install clang lld wasi-libc
# libclang-rt-dev-wasm32). The build is reproducible: the test
# `the_engine_is_what_its_sources_build` builds it again and compares it with
# the checked-in module.
#
#   codemode/build.sh [OUT]      (default: codemode/codemode.wasm)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/codemode.wasm}
case "$out" in /*) ;; *) out="$(pwd)/$out" ;; esac
# The toolchain the checked-in module was built with (another gives other
# bytes).
clang-14 --version | grep -q 'clang version 14\.0\.6' || {
  echo "codemode/build.sh needs Debian bookworm's clang 14.0.6 (clang-14)" >&2
  exit 1
}
crate=rquickjs-sys-0.14.0
sha=cee271d0eeba64f0915b846cb7ae02e16faf3dfdffdca91731101d9d30fe3423
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The crate as cargo caches it, else from crates.io; checked either way.
cached=$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/$crate.crate 2>/dev/null | head -n 1 || true)
if [ -n "$cached" ]; then
  cp "$cached" "$work/$crate.crate"
else
  curl -fsSL "https://static.crates.io/crates/rquickjs-sys/$crate.crate" -o "$work/$crate.crate"
fi
echo "$sha  $work/$crate.crate" | sha256sum -c - >/dev/null
tar -xzf "$work/$crate.crate" -C "$work"
src="$work/$crate/quickjs"
# QuickJS-ng turns its stack check off under WASI: on again (the driver
# caps the limit to the shadow stack left).
patch -s -F0 -d "$src" -p0 < "$here/quickjs-wasi-stack.patch"
cp "$here/codemode.c" "$src/"
cd "$src"
CC="clang-14 --target=wasm32-wasi"
CFLAGS="-O2 -D_GNU_SOURCE -DNDEBUG -DCODEMODE_WASI_STACK_CHECK -fno-exceptions -Wno-implicit-const-int-float-conversion"
mkdir -p obj
for f in quickjs libregexp libunicode dtoa codemode; do
  $CC $CFLAGS -c $f.c -o obj/$f.o
done
# reactor: no main, the host calls the exports; stack-first: the 2 MiB
# shadow stack sits at the bottom of memory, so an overflow below it is an
# out-of-bounds trap rather than a silent write over data.
$CC -O2 -mexec-model=reactor \
  -Wl,--stack-first -Wl,-z,stack-size=2097152 \
  -Wl,--strip-all -Wl,--gc-sections \
  obj/quickjs.o obj/libregexp.o obj/libunicode.o obj/dtoa.o obj/codemode.o -o "$out"
