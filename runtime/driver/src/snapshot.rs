//! The up-to-date snapshot's key: which snapshot (`<cache>/uptodate/<key>.bin`, see
//! `wbuild_sched::uptodate`) a build may be proven a no-op by.
//!
//! The key covers everything a snapshot's verdict depends on besides the workspace
//! signature and the stats it records: the wbuild binary (path, size, mtime), the WASI
//! executor version, the workspace root, the `--platform` flags, the sandbox mode, the
//! command (build or test), the digest function and the patterns. A change to any of them
//! names another snapshot, so a stale one is never consulted.

use std::path::Path;

use wbuild_graph::TargetPattern;
use wbuild_sched::Platform;
use wbuild_store::{Digest, DigestFunction};

use crate::session::SandboxMode;

/// Everything that names one snapshot.
#[derive(Clone, Debug)]
pub struct SnapshotKey<'a> {
    /// The wbuild version.
    pub version: &'a str,
    /// The running binary (`wbuild_graph::binary_identity`: path, size, mtime).
    pub binary: &'a str,
    /// `wbuild_exec_wasi::EXECUTOR_VERSION`.
    pub executor_version: &'a str,
    pub root: &'a Path,
    /// The `--platform` flags (empty: per-target platforms and the default).
    pub platforms: &'a [Platform],
    pub sandbox: SandboxMode,
    /// `wbuild test` rather than `wbuild build`.
    pub tests: bool,
    pub function: DigestFunction,
    pub patterns: &'a [TargetPattern],
    /// `--remote-download` (which outputs the build left on the remote).
    pub download: &'a str,
}

impl SnapshotKey<'_> {
    /// The key as a file name (BLAKE3 hex).
    pub fn hex(&self) -> String {
        let names: Vec<&str> = self.platforms.iter().map(|p| p.name()).collect();
        let mut text = format!(
            "{}\0{}\0{}\0{}\0{}\0{:?}\0{}\0{}\0{}",
            self.version,
            self.binary,
            self.executor_version,
            self.root.display(),
            names.join(","),
            self.sandbox,
            self.tests,
            self.function.name(),
            self.download
        );
        for p in self.patterns {
            text.push('\0');
            text.push_str(&p.to_string());
        }
        Digest::of(DigestFunction::Blake3, text.as_bytes()).hex()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base<'a>(root: &'a Path, patterns: &'a [TargetPattern]) -> SnapshotKey<'a> {
        SnapshotKey {
            version: "0.1.0",
            binary: "/usr/bin/wbuild 100 1700000000",
            executor_version: "wasi-1",
            root,
            platforms: &[],
            sandbox: SandboxMode::Namespaces,
            tests: false,
            function: DigestFunction::Blake3,
            patterns,
            download: "all",
        }
    }

    #[test]
    fn key_changes_with_everything_it_covers() {
        let root = Path::new("/ws");
        let pats = vec![TargetPattern::parse("//...", "").unwrap()];
        let other_pats = vec![TargetPattern::parse("//a:b", "").unwrap()];
        let k = base(root, &pats);
        let reference = k.hex();
        assert_eq!(
            reference,
            base(root, &pats).hex(),
            "the key is deterministic"
        );
        assert_eq!(reference.len(), 64);
        let variants: Vec<(&str, SnapshotKey<'_>)> = vec![
            (
                "version",
                SnapshotKey {
                    version: "0.2.0",
                    ..k.clone()
                },
            ),
            (
                "binary",
                SnapshotKey {
                    binary: "/usr/bin/wbuild 100 1700000001",
                    ..k.clone()
                },
            ),
            (
                "executor",
                SnapshotKey {
                    executor_version: "wasi-2",
                    ..k.clone()
                },
            ),
            (
                "root",
                SnapshotKey {
                    root: Path::new("/ws2"),
                    ..k.clone()
                },
            ),
            (
                "platform",
                SnapshotKey {
                    platforms: &[Platform::LinuxArm64],
                    ..k.clone()
                },
            ),
            (
                "platforms",
                SnapshotKey {
                    platforms: &[Platform::LinuxX86_64, Platform::LinuxArm64],
                    ..k.clone()
                },
            ),
            (
                "sandbox",
                SnapshotKey {
                    sandbox: SandboxMode::None,
                    ..k.clone()
                },
            ),
            (
                "tests",
                SnapshotKey {
                    tests: true,
                    ..k.clone()
                },
            ),
            (
                "function",
                SnapshotKey {
                    function: DigestFunction::Sha256,
                    ..k.clone()
                },
            ),
            (
                "download",
                SnapshotKey {
                    download: "minimal",
                    ..k.clone()
                },
            ),
            (
                "patterns",
                SnapshotKey {
                    patterns: &other_pats,
                    ..k.clone()
                },
            ),
        ];
        let mut seen = std::collections::BTreeSet::from([reference.clone()]);
        for (what, v) in variants {
            assert!(
                seen.insert(v.hex()),
                "changing the {what} must change the key"
            );
        }
    }
}
