//! The up-to-date snapshot: how a no-op build finishes in a few stat calls.
//!
//! After a successful build, the scheduler records the workspace signature (directory
//! structure and build files, see `wbuild_graph::workspace_signature`) and the stat of every
//! source file the actions read and every output it materialised. If the next build finds
//! the same signature and every one of those files with an unchanged stat, then every action
//! key would come out the same (source digests come from the same stat-cache entries) and
//! every output is already in place: the build is a no-op, known without evaluating build
//! files, computing keys or reading the action cache. Anything else (a changed stat, a file
//! modified too recently to trust its stat, a different signature, a cache command that
//! invalidated entries) falls back to the full build. A snapshot written for another
//! signature still serves a build whose analysis has the digest it recorded (see [`check`]):
//! the workspace changed only where the graph does not look.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use wbuild_store::{Digest, StatKey};

const MAGIC: &[u8; 8] = b"wbutd\x00\x00\x05";

/// A file's or directory's stat key (a directory's changes when entries are added, removed
/// or renamed), `None` for anything else. What was modified within
/// [`wbuild_store::RACY_NS`] of the snapshot is not trusted (the stat cache's rule).
fn stat_key(p: &Path) -> Option<StatKey> {
    let m = std::fs::metadata(p).ok()?;
    (m.is_file() || m.is_dir()).then(|| StatKey::of(&m))
}

/// Stats absolute paths through an open descriptor of the last parent directory: recorded
/// files are sorted, so most sit beside the one before, and looking up one name under an open
/// directory skips walking the whole path again (the walk was most of a stat's cost). The
/// same key as [`stat_key`].
#[derive(Default)]
struct DirStat {
    dir: Option<(PathBuf, std::os::fd::OwnedFd)>,
}

impl DirStat {
    fn stat_key(&mut self, p: &Path) -> Option<StatKey> {
        use std::os::fd::{AsRawFd, FromRawFd};
        use std::os::unix::ffi::OsStrExt;
        let (Some(parent), Some(name)) = (p.parent(), p.file_name()) else {
            return stat_key(p);
        };
        if !p.is_absolute() || name == ".." {
            return stat_key(p);
        }
        if self.dir.as_ref().map(|(d, _)| d.as_path()) != Some(parent) {
            self.dir = None;
            let c = std::ffi::CString::new(parent.as_os_str().as_bytes()).ok()?;
            // SAFETY: a valid C string; the descriptor is owned below.
            let fd = unsafe {
                libc::open(
                    c.as_ptr(),
                    libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
                )
            };
            if fd < 0 {
                return None; // no such directory: no such file
            }
            // SAFETY: `fd` was just opened and nothing else owns it.
            self.dir = Some((parent.to_path_buf(), unsafe {
                std::os::fd::OwnedFd::from_raw_fd(fd)
            }));
        }
        let dirfd = self.dir.as_ref()?.1.as_raw_fd();
        let name = std::ffi::CString::new(name.as_bytes()).ok()?;
        // SAFETY: an all-zero statx is a valid value for the kernel to fill.
        let mut stx: libc::statx = unsafe { std::mem::zeroed() };
        // SAFETY: valid descriptor, C string and output buffer.
        let r = unsafe { libc::statx(dirfd, name.as_ptr(), 0, libc::STATX_BASIC_STATS, &mut stx) };
        if r != 0 {
            return None;
        }
        let kind = u32::from(stx.stx_mode) & libc::S_IFMT;
        if kind != libc::S_IFREG && kind != libc::S_IFDIR {
            return None;
        }
        Some(StatKey::of_statx(&stx))
    }
}

/// One action of the snapshotted build: for events and history of a no-op, and, after an
/// edit, to know its result without computing its key (see [`Snapshot::changed`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotAction {
    pub label: String,
    /// [`wbuild_graph::ActionNode::detail`], empty for none.
    pub detail: String,
    pub mnemonic: String,
    pub action_digest: String,
    /// Its platform's output directory (`wbuild-out`, `wbuild-out/linux-arm64`).
    pub out_dir: String,
    /// Its outputs (paths under `out_dir`), digests and whether each is executable.
    pub outputs: Vec<(String, Digest, bool)>,
    /// The outputs among them the build left on the remote (`--remote-download`).
    pub remote_only: Vec<String>,
}

impl SnapshotAction {
    /// Its identity across builds (`wbuild_sched::action_identity` of its node).
    pub fn identity(&self) -> String {
        crate::observed::identity_of(&self.label, &self.mnemonic, &self.detail, &self.out_dir)
    }
}

/// The host toolchain identity a build's native actions were keyed with, and the sentinels
/// whose stats the snapshot records for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotToolchain {
    pub platform: String,
    pub identity: String,
    pub sentinels: Vec<PathBuf>,
}

/// What a snapshot says about the workspace now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub actions: Vec<SnapshotAction>,
    /// Sources and outputs whose stat changed (or that were too fresh to trust when the
    /// snapshot was written): empty, the build is a no-op; otherwise the actions that read
    /// none of them, directly or through a changed output, still have the results recorded.
    pub changed: Vec<PathBuf>,
    pub toolchains: Vec<SnapshotToolchain>,
    /// Every recorded source and output with its stat, and whether the check found it
    /// unchanged and trusted (see [`Snapshot::unchanged`]).
    files: Vec<(PathBuf, StatKey, bool)>,
}

impl Snapshot {
    /// The recorded sources and outputs the check found with the stat recorded (and not too
    /// fresh to trust): the next snapshot may record them again without a second stat. A file
    /// changed since the check is then recorded with its old stat, so the build after sees it
    /// as changed: the safe side.
    pub fn unchanged(&self) -> Unchanged<'_> {
        Unchanged {
            files: &self.files,
            next: std::cell::Cell::new(0),
            index: std::cell::OnceCell::new(),
        }
    }
}

/// [`Snapshot::unchanged`]: looked up in the order the snapshot recorded them (the next
/// snapshot of the same graph records the same files in the same order), by a map built on
/// the first miss otherwise.
pub struct Unchanged<'s> {
    files: &'s [(PathBuf, StatKey, bool)],
    next: std::cell::Cell<usize>,
    index: std::cell::OnceCell<rustc_hash::FxHashMap<&'s Path, usize>>,
}

impl Unchanged<'_> {
    pub fn get(&self, p: &Path) -> Option<StatKey> {
        let at = self.next.get();
        let i = match self.files.get(at) {
            Some((q, _, _)) if q == p => at,
            _ => *self
                .index
                .get_or_init(|| {
                    self.files
                        .iter()
                        .enumerate()
                        .map(|(i, (q, _, _))| (q.as_path(), i))
                        .collect()
                })
                .get(p)?,
        };
        self.next.set(i + 1);
        let (_, k, same) = &self.files[i];
        same.then_some(*k)
    }
}

/// Where the snapshot of one (workspace, patterns, command) lives in the cache.
pub fn snapshot_path(cache_dir: &Path, key: &str) -> PathBuf {
    cache_dir.join("uptodate").join(format!("{key}.bin"))
}

/// Where the workspace at `root` keeps the stamps of its directories and build files
/// between builds (`wbuild_graph::workspace_signature_memo`).
pub fn listings_path(cache_dir: &Path, root: &Path) -> PathBuf {
    let id = blake3::hash(root.as_os_str().as_encoded_bytes()).to_hex();
    cache_dir
        .join("uptodate")
        .join(format!("listings-{}.bin", &id[..32]))
}

/// Forget every snapshot (after `cache invalidate`, `gc`, `verify`).
pub fn forget_all(cache_dir: &Path) {
    let _ = std::fs::remove_dir_all(cache_dir.join("uptodate"));
}

/// How a recorded file is checked.
const TRUSTED: u8 = 0;
/// Modified within the racy window when recorded: always counts as changed.
const FRESH: u8 = 1;
/// A toolchain sentinel: if it changed the snapshot is useless (keys may all change).
const SENTINEL: u8 = 2;

/// A snapshot written beside its place and not yet in it ([`write`]).
pub struct Written {
    tmp: tempfile::NamedTempFile,
    path: PathBuf,
}

impl Written {
    /// Puts the snapshot in its place (a rename): from then on builds read it.
    pub fn persist(self) -> std::io::Result<()> {
        self.tmp.persist(&self.path).map(drop).map_err(|e| e.error)
    }
}

/// Write a snapshot for `path`. `sources` are files read (a source modified within the
/// racy window is recorded as changed, so the next build re-keys what reads it); `outputs`
/// are files this build wrote itself; `toolchains` the host toolchains its native actions
/// were keyed with. `known` gives the stat of a source or output known not to have changed
/// since the check of the snapshot before ([`Snapshot::unchanged`]); the others are stat'ed.
/// Any snapshot at `path` is removed first; the new one is written to a temporary file
/// beside it, which [`Written::persist`] renames into place (a build puts it there once its
/// results are durably in the store). `None`: no snapshot can be written (a file vanished,
/// or the toolchain is changing).
pub fn write(
    path: &Path,
    basis: Basis<'_>,
    sources: &[PathBuf],
    outputs: &[PathBuf],
    actions: &[impl std::borrow::Borrow<SnapshotAction>],
    toolchains: &[SnapshotToolchain],
    known: &dyn Fn(&Path) -> Option<StatKey>,
) -> std::io::Result<Option<Written>> {
    // Whatever happens below, an older snapshot must not survive this build.
    let _ = std::fs::remove_file(path);
    let mut buf = Vec::with_capacity(64 * (sources.len() + outputs.len()));
    buf.extend_from_slice(MAGIC);
    buf.extend_from_slice(basis.signature);
    let put_str = |buf: &mut Vec<u8>, s: &[u8]| {
        buf.extend_from_slice(&(s.len() as u32).to_le_bytes());
        buf.extend_from_slice(s);
    };
    let sentinels = toolchains.iter().flat_map(|t| t.sentinels.iter());
    let files: Vec<(&PathBuf, u8)> = sources
        .iter()
        .map(|p| (p, TRUSTED))
        .chain(outputs.iter().map(|p| (p, TRUSTED)))
        .chain(sentinels.map(|p| (p, SENTINEL)))
        .collect();
    let n_outputs_start = sources.len();
    let n_outputs_end = sources.len() + outputs.len();
    buf.extend_from_slice(&(files.len() as u64).to_le_bytes());
    let mut flags = Vec::with_capacity(files.len());
    let mut dirs = DirStat::default();
    for (i, (p, kind)) in files.iter().enumerate() {
        // Trusted when checked (not racy then), unchanged since.
        let reused = match *kind {
            SENTINEL => None,
            _ => known(p),
        };
        let Some(k) = reused.or_else(|| dirs.stat_key(p)) else {
            return Ok(None); // a file vanished: no snapshot
        };
        let written_by_us = (n_outputs_start..n_outputs_end).contains(&i);
        let flag = match *kind {
            SENTINEL if k.is_racy() => return Ok(None), // the toolchain is changing
            SENTINEL => SENTINEL,
            _ if reused.is_some() => TRUSTED,
            _ if !written_by_us && k.is_racy() => FRESH,
            _ => TRUSTED,
        };
        flags.push(flag);
        put_str(&mut buf, p.as_os_str().as_encoded_bytes());
        for v in [k.dev, k.ino, k.size, k.mtime_ns as u64, k.ctime_ns as u64] {
            buf.extend_from_slice(&v.to_le_bytes());
        }
    }
    buf.extend_from_slice(&flags);
    buf.extend_from_slice(&(actions.len() as u64).to_le_bytes());
    for a in actions.iter().map(std::borrow::Borrow::borrow) {
        put_str(&mut buf, a.label.as_bytes());
        put_str(&mut buf, a.detail.as_bytes());
        put_str(&mut buf, a.mnemonic.as_bytes());
        put_str(&mut buf, a.action_digest.as_bytes());
        put_str(&mut buf, a.out_dir.as_bytes());
        buf.extend_from_slice(&(a.outputs.len() as u64).to_le_bytes());
        for (p, d, x) in &a.outputs {
            put_str(&mut buf, p.as_bytes());
            // The digest as bytes (function, hash, size): parsing hex text was a tenth of a
            // no-op build's CPU.
            buf.push(function_code(d.function));
            buf.extend_from_slice(&d.hash);
            buf.extend_from_slice(&d.size.to_le_bytes());
            buf.push(u8::from(*x) | (u8::from(a.remote_only.contains(p)) << 1));
        }
    }
    buf.extend_from_slice(&(toolchains.len() as u64).to_le_bytes());
    for t in toolchains {
        put_str(&mut buf, t.platform.as_bytes());
        put_str(&mut buf, t.identity.as_bytes());
        buf.extend_from_slice(&(t.sentinels.len() as u64).to_le_bytes());
        for p in &t.sentinels {
            put_str(&mut buf, p.as_os_str().as_encoded_bytes());
        }
    }
    // Last, so that `check` finds it without parsing the rest.
    match basis.analysis {
        Some(d) => {
            buf.push(1);
            buf.extend_from_slice(d);
        }
        None => buf.extend_from_slice(&[0; 33]),
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(&buf)?;
    Ok(Some(Written {
        tmp,
        path: path.to_owned(),
    }))
}

/// What a snapshot is written for: the workspace signature and, when known, the digest of
/// the build's analysis (`wbuild_graph::Analysed::digest`).
#[derive(Clone, Copy, Debug)]
pub struct Basis<'a> {
    pub signature: &'a [u8; 32],
    pub analysis: Option<&'a [u8; 32]>,
}

/// A digest function as one byte of the snapshot.
fn function_code(f: wbuild_store::DigestFunction) -> u8 {
    match f {
        wbuild_store::DigestFunction::Blake3 => 0,
        wbuild_store::DigestFunction::Sha256 => 1,
    }
}

fn function_of(code: u8) -> Option<wbuild_store::DigestFunction> {
    match code {
        0 => Some(wbuild_store::DigestFunction::Blake3),
        1 => Some(wbuild_store::DigestFunction::Sha256),
        _ => None,
    }
}

struct Reader<'a>(&'a [u8]);
impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<&[u8]> {
        let n = u32::from_le_bytes(self.take(4)?.try_into().ok()?) as usize;
        self.take(n)
    }
    fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }
    fn path(&mut self) -> Option<PathBuf> {
        Some(PathBuf::from(std::ffi::OsStr::new(
            std::str::from_utf8(self.bytes()?).ok()?,
        )))
    }
}

/// The snapshot at `path` if it was written for `signature`, or for a build whose analysis
/// had the digest `analysis` (`wbuild_graph::Analysed::digest`: the same actions, built the
/// same way, though the workspace signature changed), and no toolchain sentinel changed
/// since, with what changed of its sources and outputs; `None` otherwise (the build then
/// takes the full path).
pub fn check(path: &Path, signature: &[u8; 32], analysis: Option<&[u8; 32]>) -> Option<Snapshot> {
    let mut data = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .read_to_end(&mut data)
        .ok()?;
    let (body, tail) = data.split_at_checked(data.len().checked_sub(33)?)?;
    let same_analysis = analysis.is_some_and(|a| tail[0] == 1 && tail[1..] == a[..]);
    let mut r = Reader(body);
    if r.take(8)? != MAGIC || (r.take(32)? != signature && !same_analysis) {
        return None;
    }
    let n = r.u64()? as usize;
    let mut files = Vec::with_capacity(n.min(1 << 24));
    for _ in 0..n {
        let p = r.path()?;
        let k = StatKey {
            dev: r.u64()?,
            ino: r.u64()?,
            size: r.u64()?,
            mtime_ns: r.u64()? as i64,
            ctime_ns: r.u64()? as i64,
        };
        files.push((p, k));
    }
    let flags = r.take(n)?.to_vec();
    let m = r.u64()? as usize;
    let mut actions = Vec::with_capacity(m.min(1 << 24));
    for _ in 0..m {
        let label = r.string()?;
        let detail = r.string()?;
        let mnemonic = r.string()?;
        let action_digest = r.string()?;
        let out_dir = r.string()?;
        let k = r.u64()? as usize;
        let mut outputs = Vec::with_capacity(k.min(1 << 16));
        let mut remote_only = Vec::new();
        for _ in 0..k {
            let p = r.string()?;
            let function = function_of(r.take(1)?[0])?;
            let hash: [u8; 32] = r.take(32)?.try_into().ok()?;
            let size = r.u64()?;
            let d = Digest {
                function,
                hash,
                size,
            };
            let flags = r.take(1)?[0];
            if flags & 2 != 0 {
                remote_only.push(p.clone());
            }
            outputs.push((p, d, flags & 1 != 0));
        }
        actions.push(SnapshotAction {
            label,
            detail,
            mnemonic,
            action_digest,
            out_dir,
            outputs,
            remote_only,
        });
    }
    let t = r.u64()? as usize;
    let mut toolchains = Vec::with_capacity(t.min(16));
    for _ in 0..t {
        let platform = r.string()?;
        let identity = r.string()?;
        let s = r.u64()? as usize;
        let mut sentinels = Vec::with_capacity(s.min(1 << 16));
        for _ in 0..s {
            sentinels.push(r.path()?);
        }
        toolchains.push(SnapshotToolchain {
            platform,
            identity,
            sentinels,
        });
    }
    // Stat everything, on two threads: this is the whole cost of a no-op build.
    let entries: Vec<(&(PathBuf, StatKey), u8)> = files.iter().zip(flags.iter().copied()).collect();
    let (a, b) = entries.split_at(entries.len() / 2);
    // Some(whether each is unchanged), or None if a sentinel changed.
    let scan = |part: &[(&(PathBuf, StatKey), u8)]| -> Option<Vec<bool>> {
        let mut same = Vec::with_capacity(part.len());
        let mut dirs = DirStat::default();
        for ((p, k), flag) in part {
            let unchanged = *flag != FRESH && dirs.stat_key(p) == Some(*k);
            if *flag == SENTINEL && !unchanged {
                return None;
            }
            same.push(unchanged);
        }
        Some(same)
    };
    let (got_a, got_b) = std::thread::scope(|s| {
        let h = s.spawn(|| scan(a));
        let got_b = scan(b);
        (h.join().unwrap_or(None), got_b)
    });
    let mut same = got_a?;
    same.extend(got_b?);
    let mut changed = Vec::new();
    let files = files
        .into_iter()
        .zip(flags)
        .zip(same)
        .filter_map(|(((p, k), flag), same)| {
            if !same {
                changed.push(p.clone());
            }
            // Sentinels are checked apart, always.
            (flag != SENTINEL).then_some((p, k, same))
        })
        .collect();
    Some(Snapshot {
        actions,
        changed,
        toolchains,
        files,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn old_file(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        let f = std::fs::File::options().write(true).open(&p).unwrap();
        f.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(60))
            .unwrap();
        p
    }

    /// [`write`] and [`Written::persist`] at once, as a successful build ends.
    fn save(
        path: &Path,
        basis: Basis<'_>,
        sources: &[PathBuf],
        outputs: &[PathBuf],
        actions: &[SnapshotAction],
        toolchains: &[SnapshotToolchain],
        known: &dyn Fn(&Path) -> Option<StatKey>,
    ) -> std::io::Result<()> {
        match write(path, basis, sources, outputs, actions, toolchains, known)? {
            Some(written) => written.persist(),
            None => Ok(()),
        }
    }

    fn action() -> SnapshotAction {
        SnapshotAction {
            label: "//p:x".into(),
            detail: String::new(),
            mnemonic: "WasiRun".into(),
            action_digest: "ab/1".into(),
            out_dir: "wbuild-out".into(),
            outputs: vec![
                (
                    "p/out.txt".into(),
                    Digest::of(wbuild_store::DigestFunction::Blake3, b"o"),
                    true,
                ),
                (
                    "p/remote.txt".into(),
                    Digest::of(wbuild_store::DigestFunction::Sha256, b"r"),
                    false,
                ),
            ],
            remote_only: vec!["p/remote.txt".into()],
        }
    }

    #[test]
    fn a_written_snapshot_counts_only_once_persisted_and_the_old_one_is_gone_at_once() {
        let d = tempfile::tempdir().unwrap();
        let src = old_file(d.path(), "a.txt", "a");
        let snap = d.path().join("s.bin");
        let sig = [7u8; 32];
        let acts = vec![action()];
        let basis = Basis {
            signature: &sig,
            analysis: None,
        };
        let sources = [src.clone()];
        save(&snap, basis, &sources, &[], &acts, &[], &|_| None).unwrap();
        assert!(check(&snap, &sig, None).is_some());
        // Written beside its place: until persisted (the build's results durable), no
        // snapshot vouches for anything, not even the previous one.
        let written = write(&snap, basis, &sources, &[], &acts, &[], &|_| None)
            .unwrap()
            .expect("a snapshot");
        assert_eq!(check(&snap, &sig, None), None, "the old snapshot survived");
        written.persist().unwrap();
        assert_eq!(check(&snap, &sig, None).unwrap().actions, acts);
        // Dropped unpersisted (the durable commit failed): nothing is left behind.
        let written = write(&snap, basis, &sources, &[], &acts, &[], &|_| None)
            .unwrap()
            .expect("a snapshot");
        drop(written);
        assert_eq!(check(&snap, &sig, None), None);
        let left: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["a.txt"], "a temporary snapshot was left behind");
        // A source that vanished: no snapshot at all.
        std::fs::remove_file(&src).unwrap();
        assert!(
            write(&snap, basis, &sources, &[], &acts, &[], &|_| None)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn unchanged_files_are_up_to_date_and_changes_are_named() {
        let d = tempfile::tempdir().unwrap();
        let src = old_file(d.path(), "a.txt", "a");
        let other = old_file(d.path(), "b.txt", "b");
        let out = d.path().join("out.txt");
        std::fs::write(&out, "o").unwrap();
        let snap = d.path().join("s.bin");
        let sig = [7u8; 32];
        let acts = vec![action()];
        let tc = SnapshotToolchain {
            platform: "linux-x86_64".into(),
            identity: "id".into(),
            sentinels: vec![other.clone()],
        };
        let sources = [src.clone()];
        let outs = [out.clone()];
        save(
            &snap,
            Basis {
                signature: &sig,
                analysis: None,
            },
            &sources,
            &outs,
            &acts,
            std::slice::from_ref(&tc),
            &|_| None,
        )
        .unwrap();
        let got = check(&snap, &sig, None).unwrap();
        assert_eq!(got.actions, acts);
        assert!(got.changed.is_empty());
        assert_eq!(got.toolchains, std::slice::from_ref(&tc));
        assert_eq!(check(&snap, &[8u8; 32], None), None, "other signature");
        std::fs::write(&src, "b").unwrap();
        assert_eq!(
            check(&snap, &sig, None).unwrap().changed,
            std::slice::from_ref(&src)
        );
        std::fs::remove_file(&out).unwrap();
        let mut changed = check(&snap, &sig, None).unwrap().changed;
        changed.sort();
        assert_eq!(changed, [src.clone(), out.clone()]);
        // A changed sentinel: the toolchain's identity may have changed, nothing is known.
        std::fs::write(&other, "changed").unwrap();
        assert_eq!(check(&snap, &sig, None), None);
    }

    #[test]
    fn a_changed_directory_sentinel_ends_the_fast_paths() {
        let d = tempfile::tempdir().unwrap();
        let sys = d.path().join("usr-bin");
        std::fs::create_dir(&sys).unwrap();
        old_file(&sys, "gcc", "1");
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
        std::fs::File::open(&sys)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let snap = d.path().join("s.bin");
        let tc = SnapshotToolchain {
            platform: "linux-x86_64".into(),
            identity: "id".into(),
            sentinels: vec![sys.clone()],
        };
        save(
            &snap,
            Basis {
                signature: &[3; 32],
                analysis: None,
            },
            &[],
            &[],
            &[] as &[SnapshotAction],
            std::slice::from_ref(&tc),
            &|_| None,
        )
        .unwrap();
        assert!(check(&snap, &[3; 32], None).unwrap().changed.is_empty());
        // A package upgrade renames a new file into place.
        std::fs::write(sys.join("gcc.new"), "2").unwrap();
        std::fs::rename(sys.join("gcc.new"), sys.join("gcc")).unwrap();
        assert_eq!(check(&snap, &[3; 32], None), None);
    }

    #[test]
    fn stats_through_open_directories_match_plain_stats() {
        let d = tempfile::tempdir().unwrap();
        let sub = d.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        let a = old_file(&sub, "a.txt", "a");
        let b = old_file(&sub, "b.txt", "bb");
        std::os::unix::fs::symlink(&a, sub.join("link")).unwrap();
        std::os::unix::fs::symlink(d.path().join("nowhere"), sub.join("dangling")).unwrap();
        let fifo = sub.join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        let mut dirs = DirStat::default();
        for p in [
            a.clone(),
            b.clone(),
            sub.join("link"),
            sub.join("dangling"),
            fifo,
            sub.join("missing"),
            sub.clone(),
            d.path().join("nodir").join("x"),
            sub.join("..").join("sub").join("a.txt"),
            a.clone(),
        ] {
            assert_eq!(dirs.stat_key(&p), stat_key(&p), "{}", p.display());
        }
        assert!(dirs.stat_key(&a).is_some());
        assert_eq!(dirs.stat_key(&sub.join("dangling")), None);
    }

    #[test]
    fn stats_vouched_for_are_recorded_without_a_stat() {
        let d = tempfile::tempdir().unwrap();
        let a = old_file(d.path(), "a.txt", "a");
        let b = old_file(d.path(), "b.txt", "b");
        let snap = d.path().join("s.bin");
        let files = [a.clone(), b.clone()];
        save_sources(&snap, &[4; 32], &files, &|_| None);
        let first = check(&snap, &[4; 32], None).unwrap();
        assert!(first.changed.is_empty());
        let unchanged = first.unchanged();
        assert!(unchanged.get(&a).is_some() && unchanged.get(&b).is_some());
        // `b` changes after the check; the next snapshot records the stat the check saw, so
        // the build after still sees the change.
        std::fs::write(&b, "changed").unwrap();
        save_sources(&snap, &[4; 32], &files, &|p| unchanged.get(p));
        assert_eq!(
            check(&snap, &[4; 32], None).unwrap().changed,
            std::slice::from_ref(&b)
        );
        // A file that changed before the check is not vouched for: stat'ed, and too fresh.
        let second = check(&snap, &[4; 32], None).unwrap();
        // Out of order, and asked twice: the same answers.
        let u = second.unchanged();
        assert_eq!(u.get(&b), None);
        assert!(u.get(&a).is_some());
        assert!(u.get(&a).is_some());
        assert_eq!(u.get(&d.path().join("other")), None);
    }

    #[test]
    fn fresh_sources_count_as_changed() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("new.txt");
        std::fs::write(&src, "n").unwrap();
        let snap = d.path().join("s.bin");
        save_sources(&snap, &[1; 32], std::slice::from_ref(&src), &|_| None);
        assert_eq!(check(&snap, &[1; 32], None).unwrap().changed, [src]);
    }

    /// Saves a snapshot of `sources` and one action, with no outputs or toolchains.
    /// A snapshot of `sources` alone (no outputs, actions or toolchains).
    fn save_sources(
        snap: &Path,
        signature: &[u8; 32],
        sources: &[PathBuf],
        known: &dyn Fn(&Path) -> Option<StatKey>,
    ) {
        let basis = Basis {
            signature,
            analysis: None,
        };
        save(
            snap,
            basis,
            sources,
            &[],
            &[] as &[SnapshotAction],
            &[],
            known,
        )
        .unwrap();
    }

    fn save_one(
        snap: &Path,
        signature: &[u8; 32],
        analysis: Option<&[u8; 32]>,
        sources: &[PathBuf],
    ) {
        let basis = Basis {
            signature,
            analysis,
        };
        save(snap, basis, sources, &[], &[action()], &[], &|_| None).unwrap();
    }

    #[test]
    fn a_snapshot_serves_another_signature_only_for_the_same_analysis() {
        let d = tempfile::tempdir().unwrap();
        let src = old_file(d.path(), "a.txt", "a");
        let snap = d.path().join("s.bin");
        save_one(&snap, &[2; 32], Some(&[6; 32]), &[src]);
        assert!(check(&snap, &[2; 32], None).is_some());
        assert!(check(&snap, &[9; 32], Some(&[6; 32])).is_some());
        assert_eq!(check(&snap, &[9; 32], Some(&[7; 32])), None);
        assert_eq!(check(&snap, &[9; 32], None), None);
        // Saved without an analysis digest: only its signature matches.
        save_one(&snap, &[2; 32], None, &[]);
        assert!(check(&snap, &[2; 32], Some(&[0; 32])).is_some());
        assert_eq!(check(&snap, &[9; 32], Some(&[0; 32])), None);
    }

    #[test]
    fn truncated_snapshots_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let src = old_file(d.path(), "a.txt", "a");
        let snap = d.path().join("s.bin");
        save_one(&snap, &[2; 32], Some(&[6; 32]), &[src]);
        let full = std::fs::read(&snap).unwrap();
        for cut in [9, 41, 60, full.len() - 1] {
            std::fs::write(&snap, &full[..cut]).unwrap();
            assert_eq!(check(&snap, &[2; 32], None), None, "cut at {cut}");
        }
    }
}
