//! The code's shape, checked: no module of the crate imports one of a layer
//! above its own (docs/ARCHITECTURE.md draws them), no file under `src/`
//! over 800 lines, no function over 120, and no import cycle between the
//! files of one module (a file of a module may use its siblings only one
//! way round; `mod.rs` wires them and is exempt). Standard library only; the source is read as
//! rustfmt leaves it.

#![allow(
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MOST_FILE_LINES: usize = 800;
const MOST_FN_LINES: usize = 120;

/// The crate's modules by layer, bottom (0) to top: a module may import
/// only modules of a lower layer than its own.
const LAYERS: &[(&str, usize)] = &[
    ("protocol", 0),
    ("config", 0),
    ("metrics", 0),
    ("private_dir", 0),
    ("sealing", 0),
    ("search", 0),
    ("egress", 1),
    ("codemode", 1),
    ("flow", 1),
    ("traces", 2),
    ("chain", 3),
    ("signin", 3),
    ("audit", 4),
    ("upstream", 4),
    ("identity", 4),
    ("interceptors", 5),
    ("gateway", 6),
    ("downstream", 7),
    ("cli", 8),
    ("fuzzing", 9),
];

fn sources() -> Vec<(String, String)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                out.push(path);
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut paths = Vec::new();
    walk(&root.join("src"), &mut paths);
    paths
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let relative = path.strip_prefix(root).unwrap().display().to_string();
            (relative, text)
        })
        .collect()
}

/// What is over `limit` in `measured` (name → size), one line each.
fn over(what: &str, limit: usize, measured: &BTreeMap<String, usize>) -> Vec<String> {
    measured
        .iter()
        .filter(|&(_, &size)| size > limit)
        .map(|(name, size)| {
            format!("{what} {name} has {size} lines, over the limit of {limit}: split it")
        })
        .collect()
}

#[test]
fn no_file_is_over_800_lines() {
    let measured = sources()
        .into_iter()
        .map(|(path, text)| (path, text.lines().count()))
        .collect();
    let complaints = over("file", MOST_FILE_LINES, &measured);
    assert!(complaints.is_empty(), "{}", complaints.join("\n"));
}

/// Functions of a file as (name, lines): a `fn` line's body runs to the
/// first line that closes it at the same indentation.
fn functions(text: &str) -> Vec<(String, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Vec::new();
    for (at, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        let mut words = trimmed.split_whitespace();
        let mut name = None;
        while let Some(word) = words.next() {
            match word {
                "pub" | "async" | "const" | "unsafe" | "extern" | "\"C\"" => {}
                _ if word.starts_with("pub(") => {}
                "fn" => {
                    name = words.next().and_then(|word| word.split(['(', '<']).next());
                    break;
                }
                _ => break,
            }
        }
        let Some(name) = name else { continue };
        if trimmed.starts_with("//") || line.ends_with(';') || line.ends_with('}') {
            continue;
        }
        let close = format!("{}}}", " ".repeat(indent));
        if let Some(end) = lines[at + 1..].iter().position(|l| *l == close) {
            found.push((name.to_owned(), end + 2));
        }
    }
    found
}

#[test]
fn no_function_is_over_120_lines() {
    let mut measured = BTreeMap::new();
    for (path, text) in sources() {
        for (name, lines) in functions(&text) {
            let key = format!("{path}::{name}");
            let longest = measured.entry(key).or_insert(0);
            *longest = lines.max(*longest);
        }
    }
    let complaints = over("function", MOST_FN_LINES, &measured);
    assert!(complaints.is_empty(), "{}", complaints.join("\n"));
}

/// For each module folder, which of its files (not `mod.rs`, which wires
/// them) uses which sibling: through `super::NAME` or `crate::…::NAME`.
fn sibling_uses(sources: &[(String, String)]) -> BTreeMap<String, BTreeSet<String>> {
    let mut folders: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (path, _) in sources {
        let (folder, file) = path.rsplit_once('/').unwrap();
        if let Some(stem) = file.strip_suffix(".rs")
            && stem != "mod"
            && stem != "lib"
            && stem != "main"
        {
            folders
                .entry(folder.to_owned())
                .or_default()
                .insert(stem.to_owned());
        }
    }
    let mut uses = BTreeMap::new();
    for (path, text) in sources {
        let (folder, file) = path.rsplit_once('/').unwrap();
        let Some(stem) = file.strip_suffix(".rs") else {
            continue;
        };
        if stem == "mod" {
            continue;
        }
        let siblings = &folders[folder];
        let module = folder
            .strip_prefix("src")
            .unwrap()
            .trim_start_matches('/')
            .replace('/', "::");
        let crate_prefix = if module.is_empty() {
            "crate::".to_owned()
        } else {
            format!("crate::{module}::")
        };
        let text = strip_tests(text);
        let mut used = BTreeSet::new();
        for sibling in siblings {
            if sibling == stem {
                continue;
            }
            let named = |prefix: &str| {
                text.match_indices(prefix).any(|(at, _)| {
                    let rest = &text[at + prefix.len()..];
                    starts_with_word(rest, sibling)
                        || (rest.starts_with('{') && braced_names(rest).contains(sibling))
                })
            };
            // A file at the crate's root names its siblings by `crate::`.
            if (!module.is_empty() && named("super::")) || named(&crate_prefix) {
                used.insert(sibling.clone());
            }
        }
        uses.insert(
            format!("{folder}/{stem}"),
            used.into_iter().map(|s| format!("{folder}/{s}")).collect(),
        );
    }
    uses
}

/// The text before the file's `#[cfg(test)]` module, if it has one.
fn strip_tests(text: &str) -> &str {
    text.find("\n#[cfg(test)]\nmod tests")
        .map_or(text, |at| &text[..at])
}

fn starts_with_word(text: &str, word: &str) -> bool {
    text.strip_prefix(word)
        .is_some_and(|rest| !rest.starts_with(|c: char| c.is_alphanumeric() || c == '_'))
}

/// The first path segments named in a `{…}` group.
fn braced_names(text: &str) -> BTreeSet<String> {
    let mut depth = 0;
    let mut end = text.len();
    for (at, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    end = at;
                    break;
                }
            }
            _ => {}
        }
    }
    text[1..end]
        .split(',')
        .filter_map(|part| {
            let part = part.trim();
            let head = part.split("::").next()?.trim();
            (!head.is_empty()).then(|| head.to_owned())
        })
        .collect()
}

/// Every cycle of the graph, each once, as its nodes from the smallest.
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> BTreeSet<Vec<String>> {
    fn visit(
        graph: &BTreeMap<String, BTreeSet<String>>,
        start: &str,
        path: &mut Vec<String>,
        found: &mut BTreeSet<Vec<String>>,
    ) {
        let Some(last) = path.last().cloned() else {
            return;
        };
        for next in graph.get(&last).into_iter().flatten() {
            if next == start {
                found.insert(path.clone());
            } else if next.as_str() > start && !path.contains(next) {
                path.push(next.clone());
                visit(graph, start, path, found);
                path.pop();
            }
        }
    }
    let mut found = BTreeSet::new();
    for start in graph.keys() {
        visit(graph, start, &mut vec![start.clone()], &mut found);
    }
    found
}

#[test]
fn no_two_files_of_a_module_use_each_other() {
    let complaints: Vec<String> = cycles(&sibling_uses(&sources()))
        .iter()
        .map(|cycle| format!(
            "an import cycle: {} → back to the first; move what they share into a module of its own",
            cycle.join(" → ")
        ))
        .collect();
    assert!(complaints.is_empty(), "{}", complaints.join("\n"));
}

/// The crate's top module a file under `src/` belongs to (`None` for
/// `lib.rs`, `main.rs` and the binaries).
fn top_module(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("src/")?;
    let head = rest.split('/').next()?;
    let name = head.strip_suffix(".rs").unwrap_or(head);
    (!matches!(name, "lib" | "main" | "bin")).then_some(name)
}

/// The top modules a file names through `crate::`.
fn crate_modules(text: &str) -> BTreeSet<String> {
    let mut named = BTreeSet::new();
    for (at, _) in text.match_indices("crate::") {
        let rest = &text[at + "crate::".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            named.insert(name);
        } else if rest.starts_with('{') {
            named.extend(braced_names(rest));
        }
    }
    named
}

#[test]
fn no_module_imports_one_above_it() {
    let layer = |module: &str| LAYERS.iter().find(|(name, _)| *name == module).map(|l| l.1);
    let mut complaints = Vec::new();
    for (path, text) in sources() {
        let Some(module) = top_module(&path) else {
            continue;
        };
        let Some(own) = layer(module) else {
            complaints.push(format!(
                "{path}: the module `{module}` has no layer in LAYERS"
            ));
            continue;
        };
        for used in crate_modules(&text) {
            if used == module {
                continue;
            }
            match layer(&used) {
                Some(other) if other < own => {}
                Some(other) => complaints.push(format!(
                    "{path}: `{module}` (layer {own}) uses `{used}` (layer {other}): a module may use only those below it"
                )),
                None => complaints.push(format!("{path}: `crate::{used}` is not a module in LAYERS")),
            }
        }
    }
    assert!(complaints.is_empty(), "{}", complaints.join("\n"));
}

#[test]
fn the_checks_see_what_they_look_for() {
    assert_eq!(top_module("src/gateway/route.rs"), Some("gateway"));
    assert_eq!(top_module("src/chain.rs"), Some("chain"));
    assert_eq!(top_module("src/bin/portcullis-bridge.rs"), None);
    assert_eq!(
        crate_modules("use crate::{audit::X, chain};\nlet a = crate::protocol::code::DENIED;"),
        BTreeSet::from([
            "audit".to_owned(),
            "chain".to_owned(),
            "protocol".to_owned()
        ])
    );
    let text = "fn short() {\n    one();\n}\n\n    pub(crate) async fn longer(\n        a: u8,\n    ) -> u8 {\n        a\n    }\n";
    assert_eq!(
        functions(text),
        [("short".to_owned(), 3), ("longer".to_owned(), 5)]
    );
    let sources = vec![
        ("src/m/a.rs".to_owned(), "use super::b::X;\n".to_owned()),
        (
            "src/m/b.rs".to_owned(),
            "use crate::m::{c, a::Y};\n".to_owned(),
        ),
        ("src/m/c.rs".to_owned(), "use super::bb;\n".to_owned()),
    ];
    let sizes = BTreeMap::from([("a".to_owned(), 3), ("b".to_owned(), 2)]);
    assert_eq!(
        over("file", 2, &sizes),
        ["file a has 3 lines, over the limit of 2: split it"]
    );
    let uses = sibling_uses(&sources);
    assert_eq!(
        uses["src/m/b"],
        BTreeSet::from(["src/m/a".to_owned(), "src/m/c".to_owned()])
    );
    assert!(uses["src/m/c"].is_empty(), "bb is not b");
    assert_eq!(
        cycles(&uses),
        BTreeSet::from([vec!["src/m/a".to_owned(), "src/m/b".to_owned()]])
    );
}

/// The package in `static/` (the test images' static example server and
/// bridge) builds the root's own sources: it keeps the root's version and
/// edition, declares each dependency as the root does, and locks no version
/// the root's lock does not have.
#[test]
fn the_static_package_keeps_the_roots_dependencies() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let read = |path: &str| -> toml::Value {
        let text = std::fs::read_to_string(root.join(path)).unwrap();
        toml::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
    };
    let versions = |path: &str| -> BTreeMap<String, BTreeSet<String>> {
        let mut versions: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for package in read(path)["package"].as_array().unwrap() {
            versions
                .entry(package["name"].as_str().unwrap().to_owned())
                .or_default()
                .insert(package["version"].as_str().unwrap().to_owned());
        }
        versions
    };
    let (ours, theirs) = (versions("Cargo.lock"), versions("static/Cargo.lock"));
    let drifted: Vec<String> = theirs
        .iter()
        .filter(|(name, _)| name.as_str() != "portcullis-static-bins")
        .filter(|(name, locked)| !ours.get(*name).is_some_and(|root| locked.is_subset(root)))
        .map(|(name, locked)| format!("{name} {locked:?} (root: {:?})", ours.get(name)))
        .collect();
    assert!(
        drifted.is_empty(),
        "static/Cargo.lock locks versions the root's does not (copy Cargo.lock to static/ and build there once): {drifted:?}"
    );
    let (root_manifest, static_manifest) = (read("Cargo.toml"), read("static/Cargo.toml"));
    for key in ["version", "edition"] {
        assert_eq!(
            root_manifest["package"][key], static_manifest["package"][key],
            "static/Cargo.toml's package {key}"
        );
    }
    for (name, spec) in static_manifest["dependencies"].as_table().unwrap() {
        assert_eq!(
            root_manifest["dependencies"].get(name),
            Some(spec),
            "static/Cargo.toml declares `{name}` otherwise than the root"
        );
    }
}

/// Every HTTP client of the proxy's is built by `egress` (no redirect
/// followed, no proxy from the environment, the address guard): no other
/// file builds a reqwest client of its own.
#[test]
fn only_egress_builds_an_http_client() {
    let builders = [
        "reqwest::Client::",
        "reqwest::ClientBuilder",
        "reqwest::get(",
        "use reqwest::Client",
        "use reqwest::get",
    ];
    // `use reqwest::{Client, …}` too.
    let imports = |text: &str| {
        text.match_indices("reqwest::{").any(|(at, _)| {
            let names = braced_names(&text[at + "reqwest::".len()..]);
            ["Client", "ClientBuilder", "get"]
                .iter()
                .any(|name| names.contains(*name))
        })
    };
    let complaints: Vec<String> = sources()
        .into_iter()
        .filter(|(path, _)| !path.starts_with("src/egress/"))
        .filter_map(|(path, text)| {
            let text = strip_tests(&text);
            let found = builders
                .iter()
                .find(|builder| text.contains(*builder))
                .copied();
            let found = found.or_else(|| imports(text).then_some("use reqwest::{Client}"));
            found.map(|builder| {
                format!("{path} uses `{builder}`: build the client with egress::HttpClient")
            })
        })
        .collect();
    assert!(complaints.is_empty(), "{}", complaints.join("\n"));
}
