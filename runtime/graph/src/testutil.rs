//! Helpers for tests: temporary workspaces.

use std::path::Path;

use crate::{Label, TargetPattern, Workspace};

/// A temporary workspace with the given files (path, contents); `wbuild.toml` is added if absent.
pub(crate) struct TestWs {
    pub dir: tempfile::TempDir,
    pub ws: Workspace,
}

pub(crate) fn workspace(files: &[(&str, &str)]) -> TestWs {
    let dir = tempfile::tempdir().unwrap();
    if !files.iter().any(|(p, _)| *p == "wbuild.toml") {
        std::fs::write(dir.path().join("wbuild.toml"), "").unwrap();
    }
    for (p, content) in files {
        write(dir.path(), p, content);
    }
    let ws = Workspace::open(dir.path()).unwrap();
    TestWs { dir, ws }
}

pub(crate) fn write(root: &Path, p: &str, content: &str) {
    let path = root.join(p);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

pub(crate) fn label(s: &str) -> Label {
    Label::parse(s, "").unwrap()
}

pub(crate) fn patterns(ps: &[&str]) -> Vec<TargetPattern> {
    ps.iter()
        .map(|p| TargetPattern::parse(p, "").unwrap())
        .collect()
}

/// Files built as owned strings, as [`workspace`] takes them.
pub(crate) fn as_strs(files: &[(String, String)]) -> Vec<(&str, &str)> {
    files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_str()))
        .collect()
}
