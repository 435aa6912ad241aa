//! Fuzzes the WBUILD loader the way `wbuild build` uses it: a workspace on disk is opened
//! (`Workspace::open`, which parses `wbuild.toml`), its packages are loaded (`load`: Starlark
//! evaluation of `WBUILD` and `.bzl` files, label and file resolution) and analysed
//! (`analyse`: targets to actions).
//!
//! Input: up to five parts separated by a line `#####` (see `SEP`):
//! `wbuild.toml`, the root `WBUILD`, `sub/WBUILD`, `defs.bzl` (loadable as
//! `//:defs.bzl`), and target patterns (whitespace-separated; default `//...`). A missing
//! part means the file is absent (an empty `wbuild.toml`). The workspace also holds a few
//! fixed source files so references can resolve.
//!
//! Invariant: never panics (errors are fine); a successful load is analysable or fails
//! with an error.

#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use wbuild_graph::{TargetPattern, Workspace};

const SEP: &[u8] = b"\n#####\n";

/// Source files every workspace has.
const FIXED: &[(&str, &[u8])] = &[
    ("a.txt", b"a\n"),
    ("b.c", b"int b(void) { return 1; }\n"),
    ("tool.wasm", b"\0asm\x01\0\0\0"),
    ("bin/t.wasm", b"\0asm\x01\0\0\0"),
    ("data/d.txt", b"data\n"),
    ("sub/x.h", b"int x(void);\n"),
    ("sub/y.c", b"int x(void) { return 2; }\n"),
    ("sub/in.tmpl", b"@v@\n"),
    ("sub/deep/z.txt", b"z\n"),
];

struct Ws {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

fn workspace() -> &'static Ws {
    static WS: OnceLock<Ws> = OnceLock::new();
    WS.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("wbuild-fuzz-loader")
            .tempdir_in(scratch())
            .expect("temp dir");
        let root = dir.path().to_path_buf();
        for (p, bytes) in FIXED {
            let path = root.join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, bytes).unwrap();
        }
        Ws { _dir: dir, root }
    })
}

#[path = "common.rs"]
mod common;
use common::scratch;

fn split(data: &[u8]) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    let mut rest = data;
    while parts.len() < 4 {
        match rest.windows(SEP.len()).position(|w| w == SEP) {
            Some(i) => {
                parts.push(&rest[..i]);
                rest = &rest[i + SEP.len()..];
            }
            None => break,
        }
    }
    parts.push(rest);
    parts
}

fn put(root: &Path, path: &str, content: Option<&[u8]>) {
    let p = root.join(path);
    match content {
        Some(c) => std::fs::write(p, c).unwrap(),
        None => {
            let _ = std::fs::remove_file(p);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let ws_dir = workspace();
    let root = &ws_dir.root;
    let parts = split(data);
    let part = |i: usize| parts.get(i).copied();
    put(root, "wbuild.toml", Some(part(0).unwrap_or(b"")));
    put(root, "WBUILD", part(1));
    put(root, "sub/WBUILD", part(2));
    put(root, "defs.bzl", part(3));

    let Ok(ws) = Workspace::open(root) else {
        return;
    };
    let patterns: Vec<TargetPattern> = match part(4) {
        Some(p) => {
            let text = String::from_utf8_lossy(p);
            let ps: Vec<TargetPattern> = text
                .split_whitespace()
                .take(8)
                .filter_map(|s| TargetPattern::parse(s, "").ok())
                .collect();
            if ps.is_empty() {
                return;
            }
            ps
        }
        None => vec![TargetPattern::parse("//...", "").unwrap()],
    };
    // The CLI computes the workspace signature first (the up-to-date check).
    let _ = wbuild_graph::workspace_signature(&ws);
    let Ok((graph, roots)) = wbuild_graph::load(&ws, &patterns) else {
        return;
    };
    for (label, target) in &graph.targets {
        // Every target records where it was defined, in a loaded WBUILD file.
        assert!(target.location.line >= 1, "{label}: {:?}", target.location);
        assert_eq!(&target.label, label);
    }
    for include_tests in [false, true] {
        if let Ok(actions) = wbuild_graph::analyse(&ws, &graph, &roots, include_tests) {
            // Nothing host-absolute reaches an action: inputs and outputs are workspace paths.
            for (i, a) in actions.actions.iter().enumerate() {
                // Topological order.
                assert!(
                    a.deps.iter().all(|d| *d < i),
                    "{}: deps {:?}",
                    a.label,
                    a.deps
                );
                for p in a.inputs.iter().chain(a.outputs.iter()) {
                    assert!(!p.starts_with('/'), "absolute workspace path {p:?}");
                    assert!(
                        !p.contains(root.to_str().unwrap()),
                        "host path in action: {p:?}"
                    );
                }
            }
        }
    }
});
