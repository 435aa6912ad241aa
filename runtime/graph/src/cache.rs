//! The analysis cache: a no-op build must not re-evaluate every `WBUILD` file.
//!
//! Loading and analysis depend only on the directory structure of the workspace (globs,
//! package boundaries, which referenced files exist) and on the contents of `wbuild.toml`,
//! `WBUILD` and `.bzl` files — never on the contents of source files. The workspace signature
//! hashes exactly that; an `ActionGraph` stored under it is reused as long as it matches.

use std::path::{Path, PathBuf};

use crate::glob::skip_dir;
use crate::{ActionGraph, BUILD_FILE, GraphError, Label, TargetPattern, WORKSPACE_FILE, Workspace};

/// Bumped whenever loading or analysis changes meaning, so stale cache files are ignored.
const FORMAT: &str = "wbuild-analysis/11";

/// The running wbuild binary (path, size, modification time): a rebuilt or upgraded binary
/// never trusts results cached by another one.
pub fn binary_identity() -> String {
    std::env::current_exe()
        .and_then(|p| {
            let m = std::fs::metadata(&p)?;
            let t = m
                .modified()?
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            Ok(format!("{} {} {}", p.display(), m.len(), t.as_nanos()))
        })
        .unwrap_or_default()
}

/// What the cache file holds. It is written as the signature, then the digest, then the
/// body (`roots` and `graph`, serialized once: the digest is taken over those bytes).
#[derive(serde::Serialize, serde::Deserialize)]
struct Entry {
    signature: String,
    /// See [`Analysed::digest`].
    digest: [u8; 32],
    roots: Vec<Label>,
    graph: ActionGraph,
}

/// The result of [`load_and_analyse_cached`].
pub struct Analysed {
    pub graph: ActionGraph,
    /// The targets the patterns matched.
    pub roots: Vec<Label>,
    /// Whether the cached result was used.
    pub cached: bool,
    /// BLAKE3 over everything the build takes from the workspace besides the files the
    /// actions read: the graph and roots, `wbuild.toml` and the pinned toolchains. Two
    /// analyses with the same digest build the same actions the same way, whatever else
    /// changed in the workspace (`None`: the graph could not be serialized to be hashed).
    pub digest: Option<blake3::Hash>,
}

/// See [`Analysed::digest`]; `body` is the graph and roots serialized as [`Entry`] holds them.
fn analysis_digest(ws: &Workspace, body: &[u8]) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    h.update(FORMAT.as_bytes());
    h.update(b"\0config\0");
    h.update(&std::fs::read(ws.root.join(WORKSPACE_FILE)).unwrap_or_default());
    for (name, ext) in &ws.externals {
        h.update(b"\0toolchain\0");
        h.update(name.as_bytes());
        h.update(b"\0");
        h.update(ext.digest.as_bytes());
        h.update(b"\0");
        h.update(ext.root.as_os_str().as_encoded_bytes());
    }
    h.update(b"\0body\0");
    h.update(body);
    h.finalize()
}

/// Whether the analysis-cache entry at `path` was stored under the workspace `signature`
/// (hex): it starts with the signature field, so only the start is read (for `wbuild clean`).
pub fn analysis_entry_signed(path: &Path, signature: &str) -> bool {
    use std::io::Read;
    let Ok(want) = postcard::to_stdvec(signature) else {
        return false;
    };
    let mut head = vec![0u8; want.len()];
    std::fs::File::open(path).is_ok_and(|mut f| f.read_exact(&mut head).is_ok()) && head == want
}

/// The hash [`workspace_signature`] returns.
pub type Signature = blake3::Hash;

/// BLAKE3 over every directory's sorted listing (names and kinds) in the workspace, skipping
/// `wbuild-out/`, `target/` and hidden directories, and over the contents of `wbuild.toml`,
/// `WBUILD` and `*.bzl` files.
pub fn workspace_signature(ws: &Workspace) -> Result<blake3::Hash, GraphError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| GraphError::Io {
            path,
            error: source,
        }
    };
    let mut h = blake3::Hasher::new();
    h.update(FORMAT.as_bytes());
    let mut stack = vec![(ws.root.clone(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        let mut entries: Vec<(String, u8, PathBuf)> = Vec::new();
        for e in std::fs::read_dir(&dir).map_err(io(&dir))? {
            let e = e.map_err(io(&dir))?;
            let name = e.file_name().to_string_lossy().into_owned();
            let kind = match e.file_type() {
                Ok(t) if t.is_dir() => b'd',
                Ok(t) if t.is_symlink() => b'l',
                Ok(_) => b'f',
                Err(_) => b'?',
            };
            // Directories the loader never looks into (`wbuild-out/`, `target/`, hidden
            // ones) are not part of the structure: a build creating `wbuild-out/` must not
            // change the signature the next build is checked against.
            if kind == b'd' && skip_dir(&name) {
                continue;
            }
            entries.push((name, kind, e.path()));
        }
        entries.sort();
        h.update(b"D\0");
        h.update(rel.as_bytes());
        h.update(b"\0");
        for (name, kind, path) in entries {
            h.update(&[kind]);
            h.update(name.as_bytes());
            h.update(b"\0");
            if kind == b'd' {
                if !skip_dir(&name) {
                    let child = if rel.is_empty() {
                        name
                    } else {
                        format!("{rel}/{name}")
                    };
                    stack.push((path, child));
                }
            } else if name == BUILD_FILE || name == WORKSPACE_FILE || name.ends_with(".bzl") {
                let bytes = std::fs::read(&path).map_err(io(&path))?;
                h.update(blake3::hash(&bytes).as_bytes());
            }
        }
    }
    // Pinned toolchains, as resolved (wbuild.lock may pin what wbuild.toml does not).
    for (name, ext) in &ws.externals {
        h.update(b"T\0");
        h.update(name.as_bytes());
        h.update(b"\0");
        h.update(ext.digest.as_bytes());
        h.update(ext.root.as_os_str().as_encoded_bytes());
    }
    Ok(h.finalize())
}

/// [`crate::load`] + [`crate::analyse`], reusing the result stored in `cache_dir` when the
/// workspace signature (from [`workspace_signature`]) is unchanged.
pub fn load_and_analyse_cached(
    ws: &Workspace,
    patterns: &[TargetPattern],
    include_tests: bool,
    cache_dir: &Path,
    signature: &blake3::Hash,
) -> Result<Analysed, GraphError> {
    let signature = signature.to_hex().to_string();
    let mut key = blake3::Hasher::new();
    key.update(FORMAT.as_bytes());
    key.update(binary_identity().as_bytes());
    key.update(ws.root.as_os_str().as_encoded_bytes());
    for p in patterns {
        key.update(b"\0");
        key.update(p.to_string().as_bytes());
    }
    key.update(&[include_tests as u8]);
    // postcard: a compact binary form, read several times faster than JSON (the cached graph
    // is read on every build after an edit).
    let file = cache_dir.join(format!("{}.bin", key.finalize().to_hex()));
    if let Ok(bytes) = std::fs::read(&file)
        && let Ok(entry) = postcard::from_bytes::<Entry>(&bytes)
        && entry.signature == signature
    {
        return Ok(Analysed {
            graph: entry.graph,
            roots: entry.roots,
            cached: true,
            digest: Some(blake3::Hash::from_bytes(entry.digest)),
        });
    }
    let (targets, roots) = crate::load(ws, patterns)?;
    let graph = crate::analyse(ws, &targets, &roots, include_tests)?;
    crate::drop_elsewhere(targets);
    let body = postcard::to_stdvec(&(&roots, &graph)).ok();
    let digest = body.as_deref().map(|b| analysis_digest(ws, b));
    // Best effort: a cache that cannot be written only costs the next build time.
    if let (Some(body), Some(digest)) = (&body, &digest)
        && std::fs::create_dir_all(cache_dir).is_ok()
        && let Ok(head) = postcard::to_stdvec(&signature)
        && let Ok(mut tmp) = tempfile::NamedTempFile::new_in(cache_dir)
        && std::io::Write::write_all(&mut tmp, &head).is_ok()
        && std::io::Write::write_all(&mut tmp, digest.as_bytes()).is_ok()
        && std::io::Write::write_all(&mut tmp, body).is_ok()
    {
        let _ = tmp.persist(&file);
    }
    Ok(Analysed {
        graph,
        roots,
        cached: false,
        digest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;

    fn analysed(t: &TestWs, cache: &Path) -> Analysed {
        let ws = Workspace::open(t.dir.path()).unwrap();
        let sig = workspace_signature(&ws).unwrap();
        load_and_analyse_cached(&ws, &patterns(&["//..."]), false, cache, &sig).unwrap()
    }

    #[test]
    fn the_digest_follows_what_the_build_uses_not_the_rest_of_the_workspace() {
        let t = workspace(&[
            (
                "p/WBUILD",
                "filegroup(name = 'g', srcs = glob(['*.txt']))\n",
            ),
            ("p/a.txt", ""),
        ]);
        let cache = tempfile::tempdir().unwrap();
        let first = analysed(&t, cache.path());
        assert!(!first.cached);
        let digest = first.digest.unwrap();
        // Read back from the cache file: the same digest.
        let again = analysed(&t, cache.path());
        assert!(again.cached);
        assert_eq!(again.digest, Some(digest));
        assert_eq!(again.graph, first.graph);
        // A file no glob or reference names changes the signature, not the digest.
        write(t.dir.path(), "p/.a.txt.swp", "");
        write(t.dir.path(), "q/notes.md", "");
        let other = analysed(&t, cache.path());
        assert!(!other.cached);
        assert_eq!(other.digest, Some(digest));
        // A file the glob picks up changes the graph, and the digest.
        write(t.dir.path(), "p/b.txt", "");
        let globbed = analysed(&t, cache.path());
        assert_ne!(globbed.digest, Some(digest));
        // So does wbuild.toml, though the graph is the same.
        std::fs::remove_file(t.dir.path().join("p/b.txt")).unwrap();
        write(
            t.dir.path(),
            "wbuild.toml",
            "[build]\nsource_date_epoch = 7\n",
        );
        let configured = analysed(&t, cache.path());
        assert_eq!(configured.graph, first.graph);
        assert_ne!(configured.digest, Some(digest));
    }
}
