//! Build facts `wbuild version` reports: the wasmtime version this binary links (from the
//! workspace's Cargo.lock) and the git commit it was built from, when built from a git
//! checkout. Neither may fail the build: without them the fields read "unknown" / absent.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let lock = manifest.join("../../Cargo.lock");
    println!("cargo:rerun-if-changed={}", lock.display());
    println!("cargo:rerun-if-changed=build.rs");
    let wasmtime = std::fs::read_to_string(&lock)
        .ok()
        .and_then(|text| locked_version(&text, "wasmtime"))
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=WBUILD_WASMTIME_VERSION={wasmtime}");
    let commit = git_commit(&manifest).unwrap_or_default();
    println!("cargo:rustc-env=WBUILD_GIT_COMMIT={commit}");
}

/// The version of package `name` in a Cargo.lock (`[[package]]` tables of `name = "..."`
/// followed by `version = "..."`).
fn locked_version(lock: &str, name: &str) -> Option<String> {
    let wanted = format!("name = \"{name}\"");
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line.trim() == wanted {
            let version = lines.next()?.trim();
            return Some(
                version
                    .strip_prefix("version = \"")?
                    .strip_suffix('"')?
                    .to_owned(),
            );
        }
    }
    None
}

/// `git rev-parse HEAD` in `dir`, if that is a git checkout and git is installed. Asks cargo
/// to run this again when HEAD moves (HEAD itself, the branch it points to, packed refs).
fn git_commit(dir: &Path) -> Option<String> {
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .current_dir(dir)
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let git_dir = PathBuf::from(git(&["rev-parse", "--absolute-git-dir"])?);
    let head = git_dir.join("HEAD");
    // Only files that exist: cargo reruns every time for a missing one.
    let mut watched = vec![head.clone(), git_dir.join("packed-refs")];
    if let Ok(text) = std::fs::read_to_string(&head)
        && let Some(r) = text.trim().strip_prefix("ref: ")
    {
        watched.push(git_dir.join(r));
    }
    for p in watched.iter().filter(|p| p.is_file()) {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    let commit = git(&["rev-parse", "HEAD"])?;
    (commit.len() >= 7 && commit.bytes().all(|b| b.is_ascii_hexdigit())).then_some(commit)
}
