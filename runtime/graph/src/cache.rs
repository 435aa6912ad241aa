//! The analysis cache: a no-op build must not re-evaluate every `WBUILD` file.
//!
//! Loading and analysis depend only on the directory structure of the workspace (globs,
//! package boundaries, which referenced files exist) and on the contents of `wbuild.toml`,
//! `WBUILD` and `.bzl` files — never on the contents of source files. The workspace signature
//! hashes exactly that; an `ActionGraph` stored under it is reused as long as it matches.

use std::path::{Path, PathBuf};

use crate::glob::skip_dir;
use crate::label::join;
use crate::{
    ActionGraph, ActionNode, BUILD_FILE, GraphError, Label, TargetPattern, WORKSPACE_FILE,
    Workspace,
};

/// Bumped whenever loading or analysis changes meaning, so stale cache files are ignored.
const FORMAT: &str = "wbuild-analysis/17";

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
/// body (serialized once: the digest is taken over those bytes): the actions in
/// [`ACTION_CHUNKS`] chunks, each serialized apart, so that a large graph is read on several
/// threads, then `roots` and `graph` without its actions, serialized apart. The actions go
/// first: they are written while analysis still makes the rest of the graph (see
/// [`Writer`]).
#[derive(serde::Deserialize)]
struct Entry<'a> {
    signature: String,
    /// See [`Analysed::digest`].
    digest: [u8; 32],
    #[serde(borrow)]
    chunks: Vec<&'a [u8]>,
    /// `(roots, graph)`, the graph without its actions.
    rest: &'a [u8],
}

/// The actions of a cached graph are serialized in this many chunks (a fixed number, so the
/// same graph gives the same bytes on every machine).
const ACTION_CHUNKS: usize = 4;

/// Below this many bytes an entry is read on one thread. On the 2-core machine the benchmarks
/// run on, threads made the 1,000-action C graph's 1.9 MB slower to read (actions 2.6 ->
/// 2.8-3.5 ms), the 10,000-action WASI graph's 2.9 MB faster (12 -> 10.5 ms in all) and the
/// 100,000-action graph's 22 MB faster (actions 55 -> 33-40 ms).
const PARALLEL_READ_BYTES: usize = 2 << 20;

/// The first part of the body of an [`Entry`]: the chunks of `actions`, handed to `emit`
/// piece by piece (as postcard writes a `Vec<&[u8]>`: a length, then each chunk's length and
/// bytes) so that no more than one chunk of it is in memory at a time: the 100,000-action
/// graph's body is 22 MB. `None` if an action cannot be serialized.
fn body_actions(actions: &[ActionNode], emit: &mut dyn FnMut(&[u8])) -> Option<()> {
    let per = actions.len().div_ceil(ACTION_CHUNKS).max(1);
    let chunks = actions.chunks(per);
    emit(&varint(chunks.len())?);
    // One buffer for every chunk, sized for the first (growing it by doubling copied the
    // chunk several times; a new one per chunk was touched page by page again).
    let mut bytes: Vec<u8> = Vec::with_capacity(per.saturating_mul(256));
    for chunk in chunks {
        // Each chunk on its own: a set of inputs shared by several of its actions is written
        // once (chunks are read on several threads, each its own scope).
        bytes.clear();
        let buffer = std::mem::take(&mut bytes);
        bytes = crate::inputs::sharing(|| postcard::to_extend(chunk, buffer)).ok()?;
        emit(&varint(bytes.len())?);
        emit(&bytes);
    }
    Some(())
}

/// The rest of the body of an [`Entry`]: `roots` and `graph` without its actions, as a
/// length and the bytes.
fn body_rest(roots: &[Label], graph: &ActionGraph, emit: &mut dyn FnMut(&[u8])) -> Option<()> {
    let rest = postcard::to_stdvec(&(roots, WithoutActions(graph))).ok()?;
    emit(&varint(rest.len())?);
    emit(&rest);
    Some(())
}

/// A length, as postcard writes every length.
fn varint(n: usize) -> Option<Vec<u8>> {
    postcard::to_stdvec(&n).ok()
}

/// An [`ActionGraph`] serialized as the same graph with no actions would be (its fields in
/// order; the maps [`ActionGraph`] serializes as sequences of entries, as such), without a
/// copy of it being made.
struct WithoutActions<'a>(&'a ActionGraph);

impl serde::Serialize for WithoutActions<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        /// A map as a sequence of its entries.
        struct Entries<'a, K, V>(&'a std::collections::BTreeMap<K, V>);
        impl<K: serde::Serialize, V: serde::Serialize> serde::Serialize for Entries<'_, K, V> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_seq(self.0.iter())
            }
        }
        let ActionGraph {
            actions: _,
            target_files,
            producers,
            root_platforms,
            root_tools,
        } = self.0;
        let mut st = s.serialize_struct("ActionGraph", 5)?;
        st.serialize_field("actions", &[] as &[ActionNode])?;
        st.serialize_field("target_files", &Entries(target_files))?;
        st.serialize_field("producers", &Entries(producers))?;
        st.serialize_field("root_platforms", root_platforms)?;
        st.serialize_field("root_tools", root_tools)?;
        st.end()
    }
}

/// Writes the entry for `roots` and `graph` under `signature` to `file` (through a temporary
/// file in `dir`, best effort: `false` if it could not) and returns its digest (see
/// [`Analysed::digest`]), which is `None` only if the graph cannot be serialized.
#[cfg(test)]
fn write_entry(
    ws: &Workspace,
    dir: &Path,
    file: &Path,
    signature: &str,
    roots: &[Label],
    graph: &ActionGraph,
) -> (Option<blake3::Hash>, bool) {
    Writer::begin(ws, dir, signature, &graph.actions)
        .map_or((None, false), |w| w.end(file, roots, graph))
}

/// An entry being written: begun with the actions, ended with the rest of the graph.
struct Writer {
    /// The temporary file, `None` if it could not be made (the digest is still taken).
    out: Option<std::io::BufWriter<tempfile::NamedTempFile>>,
    /// Where the digest goes: after the signature.
    digest_at: u64,
    /// Whether everything so far was written.
    ok: bool,
    hasher: blake3::Hasher,
}

impl Writer {
    /// The entry under `signature` in a temporary file in `dir`, its actions written;
    /// `None` if an action cannot be serialized.
    fn begin(
        ws: &Workspace,
        dir: &Path,
        signature: &str,
        actions: &[ActionNode],
    ) -> Option<Writer> {
        use std::io::Write;
        let head = postcard::to_stdvec(signature).ok()?;
        let tmp = std::fs::create_dir_all(dir)
            .ok()
            .and_then(|()| tempfile::NamedTempFile::new_in(dir).ok());
        let mut out = tmp.map(std::io::BufWriter::new);
        let ok = out
            .as_mut()
            .is_some_and(|w| w.write_all(&head).and(w.write_all(&[0; 32])).is_ok());
        let mut writer = Writer {
            out,
            digest_at: head.len() as u64,
            ok,
            hasher: digest_hasher(ws),
        };
        body_actions(actions, &mut |piece| writer.emit(piece))?;
        Some(writer)
    }

    fn emit(&mut self, piece: &[u8]) {
        use std::io::Write;
        self.hasher.update(piece);
        if let Some(w) = self.out.as_mut().filter(|_| self.ok) {
            self.ok = w.write_all(piece).is_ok();
        }
    }

    /// Writes `roots` and the rest of `graph` (whose actions began the entry), puts the
    /// entry at `file` and returns its digest and whether it was written.
    fn end(
        mut self,
        file: &Path,
        roots: &[Label],
        graph: &ActionGraph,
    ) -> (Option<blake3::Hash>, bool) {
        use std::io::{Seek, SeekFrom, Write};
        let Some(()) = body_rest(roots, graph, &mut |piece| self.emit(piece)) else {
            return (None, false);
        };
        let digest = self.hasher.finalize();
        // The digest goes before the body: in its place, once the body is written.
        let written = self.ok
            && self
                .out
                .and_then(|w| w.into_inner().ok())
                .is_some_and(|mut tmp| {
                    tmp.seek(SeekFrom::Start(self.digest_at)).is_ok()
                        && tmp.write_all(digest.as_bytes()).is_ok()
                        && tmp.persist(file).is_ok()
                });
        (Some(digest), written)
    }
}

impl<'a> Entry<'a> {
    /// The entry in `bytes`: its signature and digest read, its roots and graph left as
    /// bytes until [`Entry::graph`] (a stale entry is not decoded).
    fn parse(bytes: &'a [u8]) -> Option<Entry<'a>> {
        let entry = postcard::from_bytes::<Entry>(bytes).ok()?;
        // A thread per chunk: never more than wbuild writes (a damaged file could say anything).
        (entry.chunks.len() <= ACTION_CHUNKS).then_some(entry)
    }

    /// The roots and graph; a large entry is read on as many threads as it has parts.
    fn graph(&self) -> Option<(Vec<Label>, ActionGraph)> {
        let (rest, chunks) = (self.rest, &self.chunks);
        let read_rest = || postcard::from_bytes::<(Vec<Label>, ActionGraph)>(rest).ok();
        let read_chunk =
            |c: &[u8]| crate::inputs::sharing(|| postcard::from_bytes::<Vec<ActionNode>>(c)).ok();
        let size = rest.len() + chunks.iter().map(|c| c.len()).sum::<usize>();
        let parallel = size >= PARALLEL_READ_BYTES
            && std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2);
        let (head, parts) = if parallel {
            std::thread::scope(|s| {
                let head = s.spawn(read_rest);
                let others: Vec<_> = chunks
                    .iter()
                    .skip(1)
                    .map(|c| s.spawn(move || read_chunk(c)))
                    .collect();
                let mut parts: Vec<_> = chunks.first().map(|c| read_chunk(c)).into_iter().collect();
                parts.extend(others.into_iter().map(|h| h.join().ok().flatten()));
                (head.join().ok().flatten(), parts)
            })
        } else {
            (read_rest(), chunks.iter().map(|c| read_chunk(c)).collect())
        };
        let (roots, mut graph) = head?;
        graph
            .actions
            .reserve(parts.iter().flatten().map(Vec::len).sum());
        for part in parts {
            graph.actions.extend(part?);
        }
        Some((roots, graph))
    }
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

/// See [`Analysed::digest`]: a hasher given everything but the body, which [`Writer`]
/// adds as it writes it.
fn digest_hasher(ws: &Workspace) -> blake3::Hasher {
    let mut h = blake3::Hasher::new();
    h.update(FORMAT.as_bytes());
    h.update(b"\0config\0");
    h.update(&std::fs::read(ws.root.join(WORKSPACE_FILE)).unwrap_or_default());
    hash_toolchains(&mut h, ws);
    h.update(b"\0body\0");
    h
}

/// The pinned toolchains, as resolved (wbuild.lock may pin what wbuild.toml does not).
fn hash_toolchains(h: &mut blake3::Hasher, ws: &Workspace) {
    for (name, ext) in &ws.externals {
        h.update(b"T\0");
        h.update(name.as_bytes());
        h.update(b"\0");
        h.update(ext.digest.as_bytes());
        h.update(b"\0");
        h.update(ext.root.as_os_str().as_encoded_bytes());
    }
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

/// What [`workspace_signature`] returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Signature {
    /// BLAKE3 over every directory's sorted listing (names and kinds) and the contents of
    /// the build files: any change to either changes it.
    pub all: blake3::Hash,
    /// BLAKE3 over the build files alone (paths and contents of `wbuild.toml`, `WBUILD` and
    /// `*.bzl` files) and the pinned toolchains: with it unchanged, a workspace loads the same
    /// if it answers the loader's questions the same (`load::Reads`).
    pub structure: blake3::Hash,
}

impl Signature {
    pub fn as_bytes(&self) -> &[u8; 32] {
        self.all.as_bytes()
    }

    pub fn to_hex(&self) -> String {
        self.all.to_hex().to_string()
    }
}

/// BLAKE3 over every directory's sorted listing (names and kinds) in the workspace, skipping
/// `wbuild-out/`, `target/` and hidden directories, and over the contents of `wbuild.toml`,
/// `WBUILD` and `*.bzl` files; and over those files alone (see [`Signature`]).
pub fn workspace_signature(ws: &Workspace) -> Result<Signature, GraphError> {
    Ok(signature_of(
        ws,
        read_workspace_dirs(&ws.root, &Memo::default())?.0,
    ))
}

/// [`workspace_signature`], reading again only what changed since the last call with the same
/// `memo` file: a directory whose stamp (device, inode, modification and change times) is
/// the one recorded there has the listing recorded with it, and a build file whose stamp
/// (the same, and its size) is unchanged has the recorded digest. The signature is the same
/// as [`workspace_signature`]'s. Stamps younger than [`RACY`] when recorded are not trusted
/// (a change within the file system's timestamp granularity could leave one as it was), and
/// an unreadable or foreign memo is ignored. The memo is rewritten (atomically, best effort)
/// when what it holds changed.
pub fn workspace_signature_memo(ws: &Workspace, memo: &Path) -> Result<Signature, GraphError> {
    signature_memo_with(ws, memo, RACY).map(|(s, _)| s)
}

/// How recent a stamp may be and still be trusted by the next reading (see
/// [`workspace_signature_memo`]). File systems stamp changes with a coarse clock (a scheduler
/// tick; a second on some network file systems): a change made in the same tick as a stamp
/// taken before it can leave the stamp unchanged.
pub const RACY: std::time::Duration = std::time::Duration::from_secs(2);

fn signature_memo_with(
    ws: &Workspace,
    memo_path: &Path,
    racy: std::time::Duration,
) -> Result<(Signature, usize), GraphError> {
    let root = ws.root.as_os_str().as_encoded_bytes();
    // A stamp changed at or after this moment is not trusted by the next reading.
    let horizon = std::time::SystemTime::now()
        .checked_sub(racy)
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or((0, 0), |d| (d.as_secs() as i64, d.subsec_nanos()));
    let old = std::fs::read(memo_path)
        .ok()
        .and_then(|b| postcard::from_bytes::<Memo>(&b).ok())
        .filter(|m| m.format == FORMAT && m.root == root)
        .unwrap_or_default();
    let (dirs, read, hashed) = read_workspace_dirs(&ws.root, &old)?;
    // Every directory and build file came from the memo, and every entry of the memo was
    // used: it holds what it would be rewritten with.
    let unchanged = read == 0 && hashed == 0 && dirs.len() == old.dirs.len();
    if !unchanged
        && let Some(dir) = memo_path.parent()
        && std::fs::create_dir_all(dir).is_ok()
    {
        let memo = Memo {
            format: FORMAT.to_owned(),
            root: root.to_vec(),
            dirs: dirs
                .iter()
                .filter(|d| d.trusted(horizon))
                .map(|d| MemoDir {
                    rel: d.rel.clone(),
                    stamp: d.stamp,
                    listing: *d.listing.as_bytes(),
                    subdirs: d.subdirs.clone(),
                    build_files: d
                        .build_files
                        .iter()
                        .map(|(name, stamp, digest)| (name.clone(), *stamp, *digest.as_bytes()))
                        .collect(),
                })
                .collect(),
        };
        if memo.dirs != old.dirs
            && let Ok(bytes) = postcard::to_stdvec(&memo)
        {
            write_atomically(dir, memo_path, &[&bytes]);
        }
    }
    Ok((signature_of(ws, dirs), read))
}

fn signature_of(ws: &Workspace, dirs: Vec<DirListing>) -> Signature {
    let mut h = blake3::Hasher::new();
    h.update(FORMAT.as_bytes());
    let mut build_files: Vec<(String, blake3::Hash)> = Vec::new();
    for dir in dirs {
        h.update(b"D\0");
        h.update(dir.rel.as_bytes());
        h.update(b"\0");
        h.update(dir.listing.as_bytes());
        for (name, _, digest) in dir.build_files {
            h.update(name.as_bytes());
            h.update(b"\0");
            h.update(digest.as_bytes());
            build_files.push((join(&dir.rel, &name), digest));
        }
    }
    let mut structure = blake3::Hasher::new();
    structure.update(FORMAT.as_bytes());
    structure.update(b"\0structure\0");
    build_files.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    for (file, digest) in &build_files {
        structure.update(file.as_bytes());
        structure.update(b"\0");
        structure.update(digest.as_bytes());
    }
    hash_toolchains(&mut h, ws);
    hash_toolchains(&mut structure, ws);
    Signature {
        all: h.finalize(),
        structure: structure.finalize(),
    }
}

/// What identifies one state of a directory or file without reading it: any entry created,
/// removed or renamed in a directory, and any write to a file, changes its change time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, u32),
    ctime: (i64, u32),
}

impl Stamp {
    /// The stamp of `path` (symlinks followed, as reading it does).
    fn of(path: &Path) -> std::io::Result<Stamp> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path)?;
        Ok(Stamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec() as u32),
            ctime: (m.ctime(), m.ctime_nsec() as u32),
        })
    }

    fn before(&self, horizon: (i64, u32)) -> bool {
        self.ctime < horizon && self.mtime < horizon
    }
}

/// The file [`workspace_signature_memo`] keeps between builds.
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct Memo {
    format: String,
    root: Vec<u8>,
    dirs: Vec<MemoDir>,
}

#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct MemoDir {
    rel: String,
    stamp: Stamp,
    listing: [u8; 32],
    subdirs: Vec<String>,
    build_files: Vec<(String, Stamp, [u8; 32])>,
}

/// One directory of the workspace as [`workspace_signature`] hashes it.
struct DirListing {
    /// Workspace path (`""` for the root).
    rel: String,
    /// Taken before the listing was read.
    stamp: Stamp,
    /// BLAKE3 over the sorted listing: names and kinds (`d`, `l`, `f`, `?`).
    listing: blake3::Hash,
    /// The directories the loader can look into (names, sorted).
    subdirs: Vec<String>,
    /// The build files (sorted by name), each with its stamp (taken before it was read) and
    /// the digest of its contents.
    build_files: Vec<(String, Stamp, blake3::Hash)>,
}

impl DirListing {
    /// Whether the next reading may trust this directory's stamps.
    fn trusted(&self, horizon: (i64, u32)) -> bool {
        self.stamp.before(horizon) && self.build_files.iter().all(|(_, s, _)| s.before(horizon))
    }
}

/// Every directory of the workspace under `root` the loader can look into (not
/// `wbuild-out/`, `target/` or hidden ones), sorted by path, read on one thread per core;
/// how many directories were listed and how many build files hashed (the others were
/// unchanged since `memo`). An error names the first directory or build file (by path) that
/// could not be read.
fn read_workspace_dirs(
    root: &Path,
    memo: &Memo,
) -> Result<(Vec<DirListing>, usize, usize), GraphError> {
    let known: std::collections::HashMap<&str, &MemoDir> =
        memo.dirs.iter().map(|d| (d.rel.as_str(), d)).collect();
    let read = std::sync::atomic::AtomicUsize::new(0);
    let hashed = std::sync::atomic::AtomicUsize::new(0);
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| GraphError::Io {
            path,
            error: source,
        }
    };
    // A build file: the recorded digest if its stamp is the recorded one, else read.
    let build_file = |path: &Path, recorded: Option<(&Stamp, &[u8; 32])>| {
        let stamp = Stamp::of(path).map_err(io(path))?;
        if let Some((s, d)) = recorded
            && *s == stamp
        {
            return Ok((stamp, blake3::Hash::from_bytes(*d)));
        }
        hashed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let bytes = std::fs::read(path).map_err(io(path))?;
        Ok((stamp, blake3::hash(&bytes)))
    };
    let read_one = |dir: &Path, rel: &str| -> Result<DirListing, GraphError> {
        let stamp = Stamp::of(dir).map_err(io(dir))?;
        if let Some(m) = known.get(rel)
            && m.stamp == stamp
        {
            let mut build_files = Vec::with_capacity(m.build_files.len());
            for (name, s, d) in &m.build_files {
                let (s, d) = build_file(&dir.join(name), Some((s, d)))?;
                build_files.push((name.clone(), s, d));
            }
            return Ok(DirListing {
                rel: rel.to_owned(),
                stamp,
                listing: blake3::Hash::from_bytes(m.listing),
                subdirs: m.subdirs.clone(),
                build_files,
            });
        }
        read.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut entries = Vec::new();
        let mut subdirs = Vec::new();
        let mut build_files = Vec::new();
        for e in std::fs::read_dir(dir).map_err(io(dir))? {
            let e = e.map_err(io(dir))?;
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
            if kind == b'd' {
                if skip_dir(&name) {
                    continue;
                }
                subdirs.push(name.clone());
            } else if name == BUILD_FILE || name == WORKSPACE_FILE || name.ends_with(".bzl") {
                let recorded = known.get(rel).and_then(|m| {
                    m.build_files
                        .iter()
                        .find(|(n, _, _)| *n == name)
                        .map(|(_, s, d)| (s, d))
                });
                let (s, d) = build_file(&e.path(), recorded)?;
                build_files.push((name.clone(), s, d));
            }
            entries.push((name, kind));
        }
        entries.sort_unstable();
        subdirs.sort_unstable();
        build_files.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut h = blake3::Hasher::new();
        for (name, kind) in &entries {
            h.update(&[*kind]);
            h.update(name.as_bytes());
            h.update(b"\0");
        }
        Ok(DirListing {
            rel: rel.to_owned(),
            stamp,
            listing: h.finalize(),
            subdirs,
            build_files,
        })
    };
    let children = |dir: &Path, listing: &DirListing| -> Vec<(PathBuf, String)> {
        listing
            .subdirs
            .iter()
            .map(|name| (dir.join(name), join(&listing.rel, name)))
            .collect()
    };
    // A small workspace (a few hundred directories) is read here: threads would cost more
    // than they save. Past that, threads take over if much is left.
    const ALONE: usize = 256;
    const LEFT: usize = 64;
    let mut first: Vec<DirListing> = Vec::new();
    let mut failed: Option<(String, GraphError)> = None;
    let mut pending = vec![(root.to_path_buf(), String::new())];
    while !(first.len() >= ALONE && pending.len() >= LEFT)
        && let Some((dir, rel)) = pending.pop()
    {
        match read_one(&dir, &rel) {
            Ok(listing) => {
                pending.extend(children(&dir, &listing));
                first.push(listing);
            }
            Err(e) => {
                if failed.as_ref().is_none_or(|(r, _)| rel < *r) {
                    failed = Some((rel, e));
                }
            }
        }
    }
    // Then, if much is left, on every core.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    let results = crate::work_list(pending, threads, |(dir, rel), more| {
        read_one(&dir, &rel)
            .inspect(|listing| more.extend(children(&dir, listing)))
            .map_err(|e| Box::new((rel, e)))
    });
    let mut dirs = first;
    for result in results {
        match result {
            Ok(listing) => dirs.push(listing),
            Err(f) => {
                if failed.as_ref().is_none_or(|(r, _)| f.0 < *r) {
                    failed = Some(*f);
                }
            }
        }
    }
    if let Some((_, e)) = failed {
        return Err(e);
    }
    dirs.sort_unstable_by(|a, b| a.rel.cmp(&b.rel));
    Ok((dirs, read.into_inner(), hashed.into_inner()))
}

/// Beside each analysis-cache entry (`<key>.reads`): what its loading read of the file system
/// besides build files, to tell, when the workspace signature changed, whether loading again
/// would come out the same.
#[derive(serde::Serialize, serde::Deserialize)]
struct ReadsEntry {
    /// The signature of the entry these reads belong to (a pair written apart: an entry
    /// rewritten without its reads, or the reverse, do not match).
    signature: String,
    structure: [u8; 32],
    reads: crate::load::Reads,
}

/// [`crate::load`] + [`crate::analyse`], reusing the result stored in `cache_dir` when the
/// workspace signature (from [`workspace_signature`]) is unchanged.
pub fn load_and_analyse_cached(
    ws: &Workspace,
    patterns: &[TargetPattern],
    include_tests: bool,
    cache_dir: &Path,
    signature: &Signature,
) -> Result<Analysed, GraphError> {
    load_and_analyse_cached_then(ws, patterns, include_tests, cache_dir, signature, |_, _| ())
        .map(|(analysed, ())| analysed)
}

/// [`load_and_analyse_cached`], handing the graph and its roots to `then` before they are
/// returned. When the graph was not in the cache, `then` runs while its entry is written on
/// another thread (serializing, hashing and writing the 100,000-action graph takes about
/// 100 ms): a caller that needs the graph but not its [`Analysed::digest`] at once, as
/// `wbuild outputs` does, does its work meanwhile.
pub fn load_and_analyse_cached_then<R>(
    ws: &Workspace,
    patterns: &[TargetPattern],
    include_tests: bool,
    cache_dir: &Path,
    signature: &Signature,
    then: impl FnOnce(&ActionGraph, &[Label]) -> R,
) -> Result<(Analysed, R), GraphError> {
    let structure = signature.structure;
    let signature = signature.to_hex();
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
    let key = key.finalize().to_hex();
    let file = cache_dir.join(format!("{key}.bin"));
    let reads_file = cache_dir.join(format!("{key}.reads"));
    if let Ok(bytes) = std::fs::read(&file)
        && let Some(entry) = Entry::parse(&bytes)
    {
        // Signed with this signature, or with another that loads the same (then signed again).
        let resigned = (entry.signature != signature)
            .then(|| still_loads_the_same(ws, &reads_file, &entry.signature, &structure));
        if !matches!(resigned, Some(None))
            && let Some((roots, graph)) = entry.graph()
        {
            if let Some(Some(recorded)) = resigned {
                resign(cache_dir, &file, &reads_file, &bytes, recorded, &signature);
            }
            let out = then(&graph, &roots);
            return Ok((
                Analysed {
                    graph,
                    roots,
                    cached: true,
                    digest: Some(blake3::Hash::from_bytes(entry.digest)),
                },
                out,
            ));
        }
    }
    let crate::load::Loaded {
        graph: targets,
        matched: roots,
        learnt,
        ..
    } = crate::load::load_reading(ws, patterns)?;
    // Gathered and serialized on a thread of its own while the targets are analysed: the
    // compact bytes are kept until the entry is written, not the reads (some 200,000 paths for
    // 100,000 targets, about 10 MB more at the analysis's peak).
    let reads = {
        let (signature, structure) = (signature.clone(), *structure.as_bytes());
        std::thread::spawn(move || {
            let entry = ReadsEntry {
                signature,
                structure,
                reads: learnt.reads(),
            };
            postcard::to_stdvec(&entry).ok()
        })
    };
    // Best effort: a cache that cannot be written only costs the next build time. The actions
    // are written while the rest of the graph is made, the rest while `then` runs.
    let (graph, writer) =
        crate::analysis::analyse_during(ws, &targets, &roots, include_tests, |actions| {
            Writer::begin(ws, cache_dir, &signature, actions)
        })?;
    crate::drop_elsewhere(targets);
    let ((digest, written), out) = std::thread::scope(|s| {
        let writer = s.spawn(|| writer.map_or((None, false), |w| w.end(&file, &roots, &graph)));
        let out = then(&graph, &roots);
        (writer.join().unwrap_or((None, false)), out)
    });
    if written && let Ok(Some(bytes)) = reads.join() {
        write_atomically(cache_dir, &reads_file, &[&bytes]);
    }
    Ok((
        Analysed {
            graph,
            roots,
            cached: false,
            digest,
        },
        out,
    ))
}

/// The reads recorded beside the entry signed `entry_signature`, if they say that loading the
/// workspace again would come out the same: the build files are those it was loaded from,
/// and every answer the loader took from the file system is still the same.
fn still_loads_the_same(
    ws: &Workspace,
    reads_file: &Path,
    entry_signature: &str,
    structure: &blake3::Hash,
) -> Option<ReadsEntry> {
    let recorded = postcard::from_bytes::<ReadsEntry>(&std::fs::read(reads_file).ok()?).ok()?;
    (recorded.signature == entry_signature
        && recorded.structure == *structure.as_bytes()
        && recorded.reads.hold(&ws.root))
    .then_some(recorded)
}

/// Stores the entry `bytes` and its `recorded` reads again under the signature `new`, so the
/// next build with this workspace matches at once (best effort: a failed write only costs the
/// next build the check again).
fn resign(
    cache_dir: &Path,
    file: &Path,
    reads_file: &Path,
    bytes: &[u8],
    mut recorded: ReadsEntry,
    new: &str,
) {
    if let (Ok(old_head), Ok(new_head)) = (
        postcard::to_stdvec(&recorded.signature),
        postcard::to_stdvec(new),
    ) && let Some(rest) = bytes.get(old_head.len()..)
    {
        recorded.signature = new.to_owned();
        // The reads first: until the entry is renamed too, they belong to no entry.
        if let Ok(reads) = postcard::to_stdvec(&recorded)
            && write_atomically(cache_dir, reads_file, &[&reads])
        {
            write_atomically(cache_dir, file, &[&new_head, rest]);
        }
    }
}

/// Writes `parts` one after the other to `path`, through a temporary file in `dir` renamed
/// over it.
fn write_atomically(dir: &Path, path: &Path, parts: &[&[u8]]) -> bool {
    let Ok(mut tmp) = tempfile::NamedTempFile::new_in(dir) else {
        return false;
    };
    parts
        .iter()
        .all(|p| std::io::Write::write_all(&mut tmp, p).is_ok())
        && tmp.persist(path).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;

    /// An entry's bytes as the cache file holds them.
    fn entry_bytes(roots: &[Label], graph: &ActionGraph) -> Vec<u8> {
        let mut bytes = postcard::to_stdvec("sig").unwrap();
        bytes.extend_from_slice(&[7u8; 32]);
        body_actions(&graph.actions, &mut |piece| bytes.extend_from_slice(piece)).unwrap();
        body_rest(roots, graph, &mut |piece| bytes.extend_from_slice(piece)).unwrap();
        bytes
    }

    #[test]
    fn an_entry_is_written_piece_by_piece_with_its_digest_in_front() {
        let t = workspace(&[
            ("p/WBUILD", "filegroup(name = 'g', srcs = ['a.txt'])\n"),
            ("p/a.txt", ""),
        ]);
        let ws = Workspace::open(t.dir.path()).unwrap();
        let roots = vec![Label::parse("//p:g", "").unwrap()];
        let mut graph = ActionGraph::default();
        graph
            .target_files
            .insert(roots[0].clone(), vec!["p/a.txt".to_owned()]);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("e.bin");
        let (digest, written) = write_entry(&ws, dir.path(), &file, "sig", &roots, &graph);
        assert!(written);
        let bytes = std::fs::read(&file).unwrap();
        let entry = Entry::parse(&bytes).unwrap();
        let (got_roots, got) = entry.graph().unwrap();
        assert_eq!(
            (entry.signature.as_str(), got_roots, &got),
            ("sig", roots.clone(), &graph)
        );
        assert_eq!(Some(blake3::Hash::from_bytes(entry.digest)), digest);
        // The digest is over the body as written.
        let head = postcard::to_stdvec("sig").unwrap().len() + 32;
        let mut h = digest_hasher(&ws);
        h.update(&bytes[head..]);
        assert_eq!(Some(h.finalize()), digest);
        // Where nothing can be written, the digest is the same.
        let nowhere = dir.path().join("file-not-dir");
        std::fs::write(&nowhere, "").unwrap();
        let (again, written) =
            write_entry(&ws, &nowhere, &nowhere.join("e.bin"), "sig", &roots, &graph);
        assert!(!written);
        assert_eq!(again, digest);
    }

    #[test]
    fn a_graph_without_its_actions_is_serialized_as_the_graph_with_none() {
        let label = |s: &str| Label::parse(s, "").unwrap();
        let mut graph = ActionGraph::default();
        graph.actions.push(ActionNode {
            label: label("//p:t"),
            mnemonic: "Genrule".to_owned(),
            detail: None,
            exec: crate::Exec::Native,
            wasi_tools: Vec::new(),
            argv: vec!["/bin/sh".to_owned()],
            env: Default::default(),
            inputs: Vec::new().into(),
            outputs: vec!["p/o".to_owned()],
            deps: Vec::new(),
            is_test: false,
        });
        for (i, name) in ["//p:t", "//q:u"].into_iter().enumerate() {
            graph
                .target_files
                .insert(label(name), vec![format!("p/o{i}"), format!("p/x{i}")]);
            graph.producers.insert(format!("p/o{i}"), (i, label(name)));
            graph
                .root_platforms
                .insert(label(name), format!("linux-{i}"));
            graph.root_tools.insert(
                label(name),
                crate::ToolRef {
                    label: label("//tools:t"),
                    argv0: "t".to_owned(),
                    module: "tools/t.wasm".to_owned(),
                    data: vec![("/d".to_owned(), format!("tools/d{i}"))],
                },
            );
        }
        let roots = vec![label("//p:t"), label("//q:u")];
        let none = ActionGraph {
            actions: Vec::new(),
            ..graph.clone()
        };
        assert_eq!(
            postcard::to_stdvec(&(&roots, WithoutActions(&graph))).unwrap(),
            postcard::to_stdvec(&(&roots, &none)).unwrap()
        );
    }

    #[test]
    fn entries_read_back_whole_on_one_thread_or_several() {
        let roots = vec![Label::parse("//p:t", "").unwrap()];
        for n in [0usize, 1, 5, 30_000] {
            let mut graph = ActionGraph::default();
            for i in 0..n {
                graph.actions.push(ActionNode {
                    label: Label::parse(&format!("//p{}:t{i}", i % 7), "").unwrap(),
                    mnemonic: "WasiRun".to_owned(),
                    detail: (i % 2 == 0).then(|| format!("d{i}")),
                    exec: crate::Exec::Native,
                    wasi_tools: Vec::new(),
                    argv: vec!["/bin/sh".to_owned(), "-c".to_owned(), "x".repeat(40)],
                    env: Default::default(),
                    inputs: vec![format!("p/in{i}.txt")].into(),
                    outputs: vec![format!("p/out{i}.txt")],
                    deps: (0..i.min(3)).collect(),
                    is_test: false,
                });
                graph
                    .producers
                    .insert(format!("p/out{i}.txt"), (i, roots[0].clone()));
            }
            let bytes = entry_bytes(&roots, &graph);
            // The largest is above the size read on several threads.
            assert_eq!(
                n == 30_000,
                bytes.len() >= PARALLEL_READ_BYTES,
                "{}",
                bytes.len()
            );
            let entry = Entry::parse(&bytes).unwrap();
            assert_eq!((entry.signature.as_str(), entry.digest), ("sig", [7u8; 32]));
            let (got_roots, got) = entry.graph().unwrap();
            assert_eq!(got_roots, roots);
            assert_eq!(got, graph, "{n} actions");
            // Cut short anywhere: no entry (and no panic).
            for cut in [bytes.len() - 1, bytes.len() / 2, 40] {
                assert!(
                    Entry::parse(&bytes[..cut])
                        .and_then(|e| e.graph())
                        .is_none(),
                    "{n} actions cut at {cut}"
                );
            }
        }
        // An entry claiming more chunks than wbuild writes (a thread is started for each) is
        // refused, whatever they hold.
        let rest = postcard::to_stdvec(&(&roots, &ActionGraph::default())).unwrap();
        let empty = postcard::to_stdvec(&Vec::<ActionNode>::new()).unwrap();
        let with_chunks = |n: usize| {
            let chunks: Vec<&[u8]> = vec![empty.as_slice(); n];
            let mut bytes = postcard::to_stdvec("sig").unwrap();
            bytes.extend_from_slice(&[7u8; 32]);
            bytes.extend(postcard::to_stdvec(&(chunks, rest.as_slice())).unwrap());
            bytes
        };
        assert!(Entry::parse(&with_chunks(10_000)).is_none());
        assert!(Entry::parse(&with_chunks(ACTION_CHUNKS + 1)).is_none());
        let four = with_chunks(ACTION_CHUNKS);
        assert_eq!(Entry::parse(&four).unwrap().graph().unwrap().0, roots);
    }

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
        // A file no glob or reference names changes the signature, but the loader's reads
        // still hold: the entry is used, with its digest.
        write(t.dir.path(), "p/.a.txt.swp", "");
        write(t.dir.path(), "q/notes.md", "");
        let other = analysed(&t, cache.path());
        assert!(other.cached);
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

    /// `n` packages `d<p % groups>/p<p>`, each with a build file (`# <p>`, three digits at
    /// least) and `src/a.txt`.
    fn packages(n: usize, groups: usize) -> TestWs {
        let mut files: Vec<(String, String)> = Vec::new();
        for p in 0..n {
            files.push((
                format!("d{}/p{p}/WBUILD", p % groups),
                format!("# {p:03}\n"),
            ));
            files.push((format!("d{}/p{p}/src/a.txt", p % groups), String::new()));
        }
        let refs = as_strs(&files);
        workspace(&refs)
    }

    /// The signature is read on several threads: it is the same on every read of the same
    /// workspace, and follows listings and build files, not `wbuild-out/` or hidden
    /// directories.
    #[test]
    fn the_signature_follows_listings_and_build_files_wherever_they_are() {
        // More directories than are read on one thread.
        let t = packages(600, 5);
        let sig = || workspace_signature(&Workspace::open(t.dir.path()).unwrap()).unwrap();
        let first = sig();
        for _ in 0..5 {
            assert_eq!(sig(), first);
        }
        // Outputs and hidden directories are not part of it.
        write(t.dir.path(), "wbuild-out/d1/x.o", "");
        write(t.dir.path(), "d2/.git/objects/x", "");
        assert_eq!(sig(), first);
        // A file deep down changes the listing, not the build files.
        write(t.dir.path(), "d3/p598/src/b.txt", "");
        let added = sig();
        assert_ne!(added.all, first.all);
        assert_eq!(added.structure, first.structure);
        // A build file's contents change both.
        write(t.dir.path(), "d4/p599/WBUILD", "# changed\n");
        let edited = sig();
        assert_ne!(edited.all, added.all);
        assert_ne!(edited.structure, added.structure);
    }

    /// With a memo, only directories and build files whose stamps changed are read again,
    /// and the signature is the one a full reading gives, whatever changed.
    #[test]
    fn the_memo_reads_again_only_what_changed_and_signs_the_same() {
        let t = packages(300, 3);
        let cache = tempfile::tempdir().unwrap();
        let memo = cache.path().join("uptodate/listings.bin");
        let ws = || Workspace::open(t.dir.path()).unwrap();
        let dirs = 1 + 3 + 300 * 2;
        // Stamps are trusted as soon as they are older than the reading (no margin); each
        // change below comes after the file system's clock has moved on.
        let with_memo = || signature_memo_with(&ws(), &memo, std::time::Duration::ZERO).unwrap();
        let full = || workspace_signature(&ws()).unwrap();
        let later = || std::thread::sleep(std::time::Duration::from_millis(30));
        let first = with_memo();
        assert_eq!(first, (full(), dirs));
        later();
        assert_eq!(with_memo(), (first.0, 0));
        // A file added deep down: its directory is read again.
        later();
        write(t.dir.path(), "d1/p100/src/b.txt", "");
        let added = with_memo();
        assert_eq!(added, (full(), 1));
        assert_ne!(added.0, first.0);
        // A build file rewritten in place, to contents of the same size: no directory is read,
        // and both hashes follow it.
        later();
        write(t.dir.path(), "d2/p5/WBUILD", "# 999\n");
        let edited = with_memo();
        assert_eq!(edited, (full(), 0));
        assert_ne!(edited.0.all, added.0.all);
        assert_ne!(edited.0.structure, added.0.structure);
        // A directory removed, and one replaced by a file of the same name.
        later();
        std::fs::remove_dir_all(t.dir.path().join("d0/p3")).unwrap();
        std::fs::remove_dir_all(t.dir.path().join("d0/p6/src")).unwrap();
        write(t.dir.path(), "d0/p6/src", "");
        let removed = with_memo();
        assert_eq!(removed, (full(), 2));
        assert_ne!(removed.0, edited.0);
        // Hidden directories and outputs stay out of it, memo or not.
        later();
        write(t.dir.path(), "wbuild-out/d1/x.o", "");
        write(t.dir.path(), "d2/.git/x", "");
        assert_eq!(with_memo().0, removed.0);
        // A damaged memo is ignored: everything is read again (three directories fewer).
        let dirs = dirs - 3;
        std::fs::write(&memo, b"\xff\x00garbage").unwrap();
        let again = with_memo();
        assert_eq!(again, (full(), dirs));
        // Another workspace's memo is not used.
        let other = workspace(&[("q/WBUILD", "")]);
        let theirs = signature_memo_with(
            &Workspace::open(other.dir.path()).unwrap(),
            &memo,
            std::time::Duration::ZERO,
        )
        .unwrap();
        assert_eq!(theirs.1, 2);
        assert_eq!(with_memo().1, dirs);
    }

    /// Stamps taken within [`RACY`] of a change are not trusted: a second reading right after
    /// the workspace was written reads it all again.
    #[test]
    fn fresh_stamps_are_not_trusted() {
        let t = workspace(&[("p/WBUILD", ""), ("p/q/WBUILD", ""), ("r/a.txt", "")]);
        let cache = tempfile::tempdir().unwrap();
        let memo = cache.path().join("listings.bin");
        let ws = Workspace::open(t.dir.path()).unwrap();
        let first = signature_memo_with(&ws, &memo, RACY).unwrap();
        let second = signature_memo_with(&ws, &memo, RACY).unwrap();
        assert_eq!(first, (workspace_signature(&ws).unwrap(), 4));
        assert_eq!(second, first);
        assert_eq!(workspace_signature_memo(&ws, &memo).unwrap(), first.0);
    }

    fn load_err(t: &TestWs, cache: &Path) -> String {
        let ws = Workspace::open(t.dir.path()).unwrap();
        let sig = workspace_signature(&ws).unwrap();
        match load_and_analyse_cached(&ws, &patterns(&["//..."]), false, cache, &sig) {
            Ok(a) => panic!("expected an error; cached: {}", a.cached),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_changed_answer_to_any_question_the_loader_asked_loads_again() {
        let files = [
            (
                "p/WBUILD",
                "filegroup(name = 'g', srcs = ['a.txt', 'link.txt'])\n\
                 genrule(name = 'gen', srcs = [], outs = ['out.txt'], cmd = 'touch $@')\n",
            ),
            ("p/a.txt", ""),
            ("p/b.txt", ""),
        ];
        let fresh = || {
            let t = workspace(&files);
            std::os::unix::fs::symlink("b.txt", t.dir.path().join("p/link.txt")).unwrap();
            let cache = tempfile::tempdir().unwrap();
            assert!(!analysed(&t, cache.path()).cached);
            // Unrelated: used as it is.
            write(t.dir.path(), "p/unrelated.md", "");
            assert!(analysed(&t, cache.path()).cached);
            (t, cache)
        };
        // A referenced source deleted: loaded again, and the error names it.
        let (t, cache) = fresh();
        std::fs::remove_file(t.dir.path().join("p/a.txt")).unwrap();
        assert!(load_err(&t, cache.path()).contains("a.txt"));
        // A source file where an output goes.
        let (t, cache) = fresh();
        write(t.dir.path(), "p/out.txt", "");
        assert!(load_err(&t, cache.path()).contains("out.txt"));
        // A referenced file turned into a directory.
        let (t, cache) = fresh();
        std::fs::remove_file(t.dir.path().join("p/a.txt")).unwrap();
        std::fs::create_dir(t.dir.path().join("p/a.txt")).unwrap();
        assert!(load_err(&t, cache.path()).contains("directory"));
        // A symbolic link pointed elsewhere: its target is asked again.
        let (t, cache) = fresh();
        std::fs::remove_file(t.dir.path().join("p/link.txt")).unwrap();
        std::fs::create_dir(t.dir.path().join("p/dir")).unwrap();
        std::os::unix::fs::symlink("dir", t.dir.path().join("p/link.txt")).unwrap();
        assert!(load_err(&t, cache.path()).contains("directory"));
        // A new package: the build files changed.
        let (t, cache) = fresh();
        write(t.dir.path(), "q/WBUILD", "filegroup(name = 'q')\n");
        let a = analysed(&t, cache.path());
        assert!(!a.cached);
        assert!(a.graph.target_files.keys().any(|l| l.package == "q"));
        // Reads that belong to another entry are not trusted.
        let (t, cache) = fresh();
        let reads: Vec<PathBuf> = std::fs::read_dir(cache.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "reads"))
            .collect();
        assert_eq!(reads.len(), 1);
        let mut recorded: ReadsEntry =
            postcard::from_bytes(&std::fs::read(&reads[0]).unwrap()).unwrap();
        recorded.signature = "0".repeat(64);
        std::fs::write(&reads[0], postcard::to_stdvec(&recorded).unwrap()).unwrap();
        write(t.dir.path(), "p/another.md", "");
        assert!(!analysed(&t, cache.path()).cached);
    }
}
