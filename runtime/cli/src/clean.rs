//! `wbuild clean [--expunge]`: removes the workspace's materialised outputs (`wbuild-out/`)
//! and the cache's up-to-date snapshots and analysis entries of this workspace, so the next
//! build checks every action again and re-materialises its outputs (from the action cache,
//! which stays: every action is a hit). `--expunge` also removes the whole cache directory.
//!
//! Nothing here follows a symlink: a symlinked `wbuild-out` (or cache directory) loses the
//! link, never what it points to, and a tree is removed by `std::fs::remove_dir_all`, which
//! unlinks symlinks inside it rather than descending through them.

use std::collections::HashSet;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use wbuild_graph::{OUT_DIR, Workspace};

use super::Cli;

#[derive(clap::Args)]
pub struct CleanArgs {
    /// Also remove the whole cache directory (--cache-dir or the default): every cached
    /// result, blob, toolchain and the build history, for every workspace using it. Waits
    /// for another wbuild using the cache to finish first.
    #[arg(long)]
    expunge: bool,
}

/// What a removal freed.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
struct Freed {
    files: u64,
    bytes: u64,
}

impl Freed {
    fn add(&mut self, other: Freed) {
        self.files += other.files;
        self.bytes += other.bytes;
    }

    fn show(&self) -> String {
        format!(
            "{} file{}, {}",
            self.files,
            if self.files == 1 { "" } else { "s" },
            super::ui::bytes(self.bytes)
        )
    }
}

/// Files under `dir` (not following symlinks; a symlink counts as a file of its own size)
/// and their bytes, each inode once (hard links).
fn measure(dir: &Path) -> Freed {
    let mut freed = Freed::default();
    let mut seen = HashSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(m) = e.metadata() else { continue }; // lstat: DirEntry does not follow
            if m.is_dir() {
                stack.push(e.path());
            } else {
                freed.files += 1;
                if seen.insert((m.dev(), m.ino())) {
                    freed.bytes += m.len();
                }
            }
        }
    }
    freed
}

/// Makes every directory under `dir` writable by its owner (a non-root user cannot remove
/// the entries of a read-only directory), opening each without following symlinks.
fn make_writable(dir: &Path) {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(f) = std::fs::File::options()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
            .open(&d)
        else {
            continue;
        };
        if let Ok(m) = f.metadata() {
            let _ = f.set_permissions(std::fs::Permissions::from_mode(m.mode() | 0o700));
        }
        if let Ok(entries) = std::fs::read_dir(&d) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
        }
    }
}

/// Removes the directory tree at `path` without following any symlink in it.
fn remove_tree(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            make_writable(path);
            std::fs::remove_dir_all(path)
        }
        other => other,
    }
}

/// What was at a path that `remove` removed.
enum Removed {
    Nothing,
    /// A symlink (its target is untouched).
    Link(PathBuf),
    Tree(Freed),
    File(Freed),
}

/// Removes whatever is at `path`: a directory tree, a file, or a symlink (the link only).
fn remove(path: &Path) -> Result<Removed> {
    let m = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Removed::Nothing),
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", path.display())),
    };
    let what = if m.file_type().is_symlink() {
        let target = std::fs::read_link(path).unwrap_or_default();
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove the symlink {}", path.display()))?;
        Removed::Link(target)
    } else if m.is_dir() {
        let freed = measure(path);
        remove_tree(path).with_context(|| {
            format!(
                "cannot remove {}: check its permissions, or remove it by hand",
                path.display()
            )
        })?;
        Removed::Tree(freed)
    } else {
        std::fs::remove_file(path).with_context(|| format!("cannot remove {}", path.display()))?;
        Removed::File(Freed {
            files: 1,
            bytes: m.len(),
        })
    };
    Ok(what)
}

/// Whether the up-to-date snapshot at `path` belongs to the workspace at `root`: one of the
/// files it records (absolute paths of sources and outputs) lies in the workspace. Reads the
/// layout `wbuild_sched::uptodate::write` writes (magic, signature, file count, then each
/// file as a length-prefixed path and five stat words); anything else is not ours.
fn snapshot_of(path: &Path, root: &Path) -> bool {
    let Ok(data) = std::fs::read(path) else {
        return false;
    };
    if !data.starts_with(b"wbutd") || data.len() < 48 {
        return false;
    }
    let mut at = 40;
    let Some(n) = data
        .get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
    else {
        return false;
    };
    at += 8;
    let root = root.as_os_str().as_encoded_bytes();
    for _ in 0..n {
        let Some(len) = data
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(|b| u32::from_le_bytes(b) as usize)
        else {
            return false;
        };
        let Some(p) = data.get(at + 4..at + 4 + len) else {
            return false;
        };
        if p.starts_with(root) && p.get(root.len()) == Some(&b'/') {
            return true;
        }
        at += 4 + len + 5 * 8;
    }
    false
}

/// Whether the analysis-cache entry at `path` was stored under `signature`.
fn analysis_of(path: &Path, signature: &str) -> bool {
    wbuild_graph::analysis_entry_signed(path, signature)
}

/// Removes the files of `dir` that `ours` picks; returns how many and their size.
/// For `wbuild cache gc`: removes every analysis-cache entry (and its reads) of every
/// workspace. They are derived (the next build of each workspace loads it again) and, unlike
/// the store, nothing else bounds them: every wbuild version, pattern set and workspace leaves
/// its own, up to tens of MB each. Returns (files, bytes).
pub(crate) fn drop_analysis_entries(cache: &Path) -> Result<(u64, u64)> {
    let freed = remove_entries(&cache.join("analysis"), |_| true)?;
    Ok((freed.files, freed.bytes))
}

fn remove_entries(dir: &Path, ours: impl Fn(&Path) -> bool) -> Result<Freed> {
    let mut freed = Freed::default();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(freed),
        Err(e) => return Err(e).with_context(|| format!("cannot list {}", dir.display())),
    };
    for e in entries.flatten() {
        let p = e.path();
        let Ok(m) = e.metadata() else { continue };
        if !m.is_file() || !ours(&p) {
            continue;
        }
        match std::fs::remove_file(&p) {
            Ok(()) => freed.add(Freed {
                files: 1,
                bytes: m.len(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot remove {}", p.display())),
        }
    }
    Ok(freed)
}

/// Removes `wbuild-out` of `ws` (the link only, if it is a symlink) and says so.
fn remove_out_dir(ws: &Workspace) -> Result<()> {
    let out = ws.root.join(OUT_DIR);
    match remove(&out)? {
        Removed::Nothing => println!("no {} to remove", out.display()),
        Removed::Link(target) => println!(
            "removed the symlink {} (it pointed to {}, which was left alone)",
            out.display(),
            target.display()
        ),
        Removed::Tree(f) | Removed::File(f) => {
            println!("removed {} ({})", out.display(), f.show())
        }
    }
    Ok(())
}

/// `wbuild-out/` of `ws`, and its snapshots and analysis entries in `cache`.
fn clean_workspace(ws: &Workspace, cache: &Path) -> Result<()> {
    // The signature sees the root's listing, `wbuild-out` included: entries may have been
    // stored with it or without it.
    let mut signatures = vec![wbuild_graph::workspace_signature(ws)?.to_hex()];
    remove_out_dir(ws)?;
    signatures.push(wbuild_graph::workspace_signature(ws)?.to_hex());
    let snapshots = remove_entries(&cache.join("uptodate"), |p| snapshot_of(p, &ws.root))?;
    // An entry is its graph (`.bin`) and what its loading read (`.reads`, which starts with
    // the same signature).
    let is_reads = |p: &Path| p.extension().is_some_and(|x| x == "reads");
    let mut analysis = remove_entries(&cache.join("analysis"), |p| {
        !is_reads(p) && signatures.iter().any(|s| analysis_of(p, s))
    })?;
    let entries = analysis.files;
    analysis.add(remove_entries(&cache.join("analysis"), |p| {
        is_reads(p) && signatures.iter().any(|s| analysis_of(p, s))
    })?);
    println!(
        "removed {} up-to-date snapshot{} and {} analysis cache entr{} of this workspace from {} ({})",
        snapshots.files,
        if snapshots.files == 1 { "" } else { "s" },
        entries,
        if entries == 1 { "y" } else { "ies" },
        cache.display(),
        super::ui::bytes(snapshots.bytes + analysis.bytes)
    );
    Ok(())
}

/// The whole cache directory, once no other wbuild holds it.
fn expunge(cache: &Path) -> Result<()> {
    let m = match std::fs::symlink_metadata(cache) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("no cache directory {} to remove", cache.display());
            return Ok(());
        }
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", cache.display())),
    };
    if !m.is_dir() {
        // A symlink (or a stray file) in place of the directory: the link goes, never what
        // it points to.
        return match remove(cache)? {
            Removed::Link(target) => {
                println!(
                    "removed the symlink {} (it pointed to {}, which was left alone: remove that directory yourself if it is the cache you meant)",
                    cache.display(),
                    target.display()
                );
                Ok(())
            }
            Removed::File(f) => {
                println!("removed {} ({})", cache.display(), f.show());
                Ok(())
            }
            _ => Ok(()),
        };
    }
    // Hold the store's lock (waiting as any command does) while the directory goes, so no
    // build is writing into it.
    let store = super::open_store(&Some(cache.to_path_buf()))?;
    let freed = measure(cache);
    // Moved aside first, so that a process starting now finds no cache (and makes a new one)
    // rather than a half-removed one.
    let aside = cache.with_file_name(format!(
        ".{}.expunging-{}",
        cache
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let doomed = match std::fs::rename(cache, &aside) {
        Ok(()) => aside,
        Err(_) => cache.to_path_buf(), // a mount point: removed in place
    };
    let removed = remove_tree(&doomed).with_context(|| {
        format!(
            "cannot remove the cache directory {}: check its permissions, or remove it by hand",
            doomed.display()
        )
    });
    drop(store);
    removed?;
    println!(
        "removed the cache directory {} ({})",
        cache.display(),
        freed.show()
    );
    Ok(())
}

pub fn run(cli: &Cli, args: &CleanArgs) -> Result<i32> {
    let cache =
        std::path::absolute(super::cache_dir(cli)).context("cannot resolve the cache directory")?;
    match super::workspace() {
        Ok((ws, _pkg)) => {
            if args.expunge {
                remove_out_dir(&ws)?;
            } else {
                // Taking the lock keeps a clean from racing a build that is materialising.
                let store = if cache.join("index.redb").exists() {
                    Some(super::open_store(&Some(cache.clone()))?)
                } else {
                    None
                };
                clean_workspace(&ws, &cache)?;
                drop(store);
            }
        }
        Err(e) if args.expunge => {
            println!("not in a workspace ({e:#}): only the cache directory is removed");
        }
        Err(e) => return Err(e),
    }
    if args.expunge {
        expunge(&cache)?;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removing_a_symlinked_tree_keeps_its_target() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("precious");
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("keep.txt"), "keep").unwrap();
        let link = d.path().join("wbuild-out");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(matches!(remove(&link).unwrap(), Removed::Link(t) if t == target));
        assert!(!link.exists() && target.join("keep.txt").is_file());

        // A symlink inside a removed tree goes, its target stays.
        let tree = d.path().join("tree");
        std::fs::create_dir_all(tree.join("sub")).unwrap();
        std::fs::write(tree.join("sub/a"), "12345").unwrap();
        std::os::unix::fs::symlink(&target, tree.join("sub/escape")).unwrap();
        match remove(&tree).unwrap() {
            Removed::Tree(f) => assert_eq!(f.files, 2),
            _ => panic!("not removed as a tree"),
        }
        assert!(!tree.exists() && target.join("keep.txt").is_file());
    }

    #[test]
    fn read_only_directories_are_made_writable_without_following_symlinks() {
        let d = tempfile::tempdir().unwrap();
        let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().mode() & 0o777;
        let outside = d.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o555)).unwrap();
        let tree = d.path().join("t");
        std::fs::create_dir_all(tree.join("ro/deeper")).unwrap();
        std::fs::write(tree.join("ro/f"), "x").unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("ro/link")).unwrap();
        for p in [tree.join("ro/deeper"), tree.join("ro")] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o555)).unwrap();
        }
        make_writable(&tree);
        assert_eq!(mode(&tree.join("ro")), 0o755);
        assert_eq!(mode(&tree.join("ro/deeper")), 0o755);
        assert_eq!(mode(&outside), 0o555, "followed the symlink");
        remove_tree(&tree).unwrap();
        assert!(!tree.exists() && outside.is_dir());
    }
}
