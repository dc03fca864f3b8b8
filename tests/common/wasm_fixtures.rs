//! Hostile (and one plain) plugin components for the tests: core modules in
//! WAT, made into components of the `interceptor` world with wit-component.
//! Shared by the unit tests of `interceptors::wasm` and the integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

/// What a fixture's `on-message` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Returns `continue` with one annotation (`fixture=ok`).
    Continue,
    /// Never returns.
    Loop,
    /// Grows its memory until it may not.
    MemoryBomb,
    /// Hits `unreachable`.
    Trap,
    /// Returns `modify` with text that is not JSON.
    Garbage,
    /// Returns `modify` with 8 MiB of text.
    Oversized,
    /// Returns `deny` with a code JSON-RPC reserves.
    ReservedCode,
    /// Returns `modify` with the request's tool name changed.
    Retarget,
    /// Traps on requests, lets responses and notifications through.
    TrapOnRequest,
    /// Returns `continue` with 1,000 (empty) annotations.
    AnnotationFlood,
    /// Returns `continue` with an annotation under the proxy's own key.
    ErrorKey,
    /// Returns a million annotations that all point at one 1 MiB string: a
    /// terabyte if the host copied them all.
    AliasBomb,
}

const WIT: &str = include_str!("../../plugins/wit/interceptor.wit");

/// The `on-message` body: it returns a pointer to the outcome (a verdict at
/// 0: tag byte, payload at 4; annotations list at 16).
fn body(behaviour: Behaviour) -> &'static str {
    match behaviour {
        Behaviour::Continue => {
            r#"
    (i32.store8 (i32.const 1024) (i32.const 0))
    (i32.store (i32.const 1040) (i32.const 1100))
    (i32.store (i32.const 1044) (i32.const 1))
    ;; one annotation: ("fixture", "ok")
    (i32.store (i32.const 1100) (i32.const 2048))
    (i32.store (i32.const 1104) (i32.const 7))
    (i32.store (i32.const 1108) (i32.const 2056))
    (i32.store (i32.const 1112) (i32.const 2))
    (i32.const 1024)"#
        }
        Behaviour::Loop => "(loop $forever (br $forever)) (unreachable)",
        Behaviour::MemoryBomb => {
            "(loop $more (drop (memory.grow (i32.const 16))) (br $more)) (unreachable)"
        }
        Behaviour::Trap => "(unreachable)",
        Behaviour::Garbage => {
            r#"
    (i32.store8 (i32.const 1024) (i32.const 1))
    (i32.store (i32.const 1028) (i32.const 2064))
    (i32.store (i32.const 1032) (i32.const 12))
    (i32.store (i32.const 1040) (i32.const 0))
    (i32.store (i32.const 1044) (i32.const 0))
    (i32.const 1024)"#
        }
        Behaviour::Oversized => {
            r#"
    ;; 8 MiB of NUL characters past the first 1 MiB
    (drop (memory.grow (i32.const 160)))
    (i32.store8 (i32.const 1024) (i32.const 1))
    (i32.store (i32.const 1028) (i32.const 1048576))
    (i32.store (i32.const 1032) (i32.const 8388608))
    (i32.store (i32.const 1040) (i32.const 0))
    (i32.store (i32.const 1044) (i32.const 0))
    (i32.const 1024)"#
        }
        Behaviour::ReservedCode => {
            r#"
    (i32.store8 (i32.const 1024) (i32.const 2))
    (i32.store (i32.const 1028) (i32.const -32600))
    (i32.store (i32.const 1032) (i32.const 2064))
    (i32.store (i32.const 1036) (i32.const 12))
    (i32.store (i32.const 1040) (i32.const 0))
    (i32.store (i32.const 1044) (i32.const 0))
    (i32.const 1024)"#
        }
        Behaviour::TrapOnRequest => {
            r#"
    ;; the arguments start with the phase: 0 is a request
    (if (i32.eqz (i32.load8_u (local.get 0))) (then (unreachable)))
    (i32.store8 (i32.const 1024) (i32.const 0))
    (i32.store (i32.const 1040) (i32.const 0))
    (i32.store (i32.const 1044) (i32.const 0))
    (i32.const 1024)"#
        }
        Behaviour::AnnotationFlood => {
            r#"
    (i32.store8 (i32.const 1024) (i32.const 0))
    (i32.store (i32.const 1040) (i32.const 16384))
    (i32.store (i32.const 1044) (i32.const 1000))
    (i32.const 1024)"#
        }
        Behaviour::AliasBomb => {
            r#"
    (local $i i32)
    (local $at i32)
    ;; 20 MiB more: the list (16 MiB) from 2 MiB on; the string is the
    ;; first MiB
    (drop (memory.grow (i32.const 320)))
    (local.set $at (i32.const 2097152))
    (loop $fill
      (i32.store (local.get $at) (i32.const 0))
      (i32.store (i32.add (local.get $at) (i32.const 4)) (i32.const 1048576))
      (i32.store (i32.add (local.get $at) (i32.const 8)) (i32.const 0))
      (i32.store (i32.add (local.get $at) (i32.const 12)) (i32.const 1048576))
      (local.set $at (i32.add (local.get $at) (i32.const 16)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $fill (i32.lt_u (local.get $i) (i32.const 1000000))))
    (i32.store8 (i32.const 1024) (i32.const 0))
    (i32.store (i32.const 1040) (i32.const 2097152))
    (i32.store (i32.const 1044) (i32.const 1000000))
    (i32.const 1024)"#
        }
        Behaviour::ErrorKey => {
            r#"
    (i32.store8 (i32.const 1024) (i32.const 0))
    (i32.store (i32.const 1040) (i32.const 1100))
    (i32.store (i32.const 1044) (i32.const 1))
    (i32.store (i32.const 1100) (i32.const 2160))
    (i32.store (i32.const 1104) (i32.const 5))
    (i32.store (i32.const 1108) (i32.const 2056))
    (i32.store (i32.const 1112) (i32.const 2))
    (i32.const 1024)"#
        }
        Behaviour::Retarget => {
            r#"
    (i32.store8 (i32.const 1024) (i32.const 1))
    (i32.store (i32.const 1028) (i32.const 2080))
    (i32.store (i32.const 1032) (i32.const 76))
    (i32.store (i32.const 1040) (i32.const 0))
    (i32.store (i32.const 1044) (i32.const 0))
    (i32.const 1024)"#
        }
    }
}

/// The core module: memory, a bump allocator, `configure` (always ok) and
/// `on-message`, exported under `version`'s names.
fn core_module(behaviour: Behaviour, version: &str) -> String {
    let export = format!("portcullis:interceptor/handler@{version}");
    format!(
        r#"(module
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 8192))
  (data (i32.const 2048) "fixture")
  (data (i32.const 2056) "ok")
  (data (i32.const 2064) "not json {{{{{{")
  (data (i32.const 2160) "error")
  (data (i32.const 2080) "{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{{\"name\":\"elsewhere\"}}}}")
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (local $at i32)
    ;; wrap around before the second page ends: each call's data is fresh
    (if (i32.gt_u (i32.add (global.get $heap) (local.get 3)) (i32.const 131000))
      (then (global.set $heap (i32.const 8192))))
    (local.set $at
      (i32.and
        (i32.add (global.get $heap) (i32.sub (local.get 2) (i32.const 1)))
        (i32.sub (i32.const 0) (local.get 2))))
    (global.set $heap (i32.add (local.get $at) (local.get 3)))
    (local.get $at))
  (func (export "{export}#configure") (param i32 i32) (result i32)
    (i32.store8 (i32.const 1024) (i32.const 0))
    (i32.const 1024))
  (func (export "{export}#on-message") (param i32) (result i32)
    {body})
)"#,
        body = body(behaviour)
    )
}

/// A component with the behaviour, for interface `version` (the proxy's is
/// `0.1.0`).
pub fn component(behaviour: Behaviour, version: &str) -> Vec<u8> {
    let wit = WIT.replace(
        "package portcullis:interceptor@0.1.0;",
        &format!("package portcullis:interceptor@{version};"),
    );
    let mut module = wat::parse_str(core_module(behaviour, version)).expect("fixture WAT");
    let mut resolve = wit_parser::Resolve::default();
    let package = resolve
        .push_str("interceptor.wit", &wit)
        .expect("the WIT parses");
    let world = resolve
        .select_world(&[package], Some("interceptor"))
        .expect("the world");
    wit_component::embed_component_metadata(
        &mut module,
        &resolve,
        world,
        wit_component::StringEncoding::UTF8,
    )
    .expect("metadata");
    wit_component::ComponentEncoder::default()
        .module(&module)
        .expect("module")
        .validate(true)
        .encode()
        .expect("component")
}

/// Writes the fixture to `dir/NAME.wasm` and returns the path.
pub fn write(dir: &Path, name: &str, behaviour: Behaviour, version: &str) -> std::path::PathBuf {
    let path = dir.join(format!("{name}.wasm"));
    std::fs::write(&path, component(behaviour, version)).expect("write the fixture");
    path
}
