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
//! invalidated entries) falls back to the full build.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use wbuild_store::StatKey;

const MAGIC: &[u8; 8] = b"wbutd\x00\x00\x02";

/// A file's or directory's stat key (a directory's changes when entries are added, removed
/// or renamed), `None` for anything else. What was modified within
/// [`wbuild_store::RACY_NS`] of the snapshot is not trusted (the stat cache's rule).
fn stat_key(p: &Path) -> Option<StatKey> {
    let m = std::fs::metadata(p).ok()?;
    (m.is_file() || m.is_dir()).then(|| StatKey::of(&m))
}

/// One action of the snapshotted build, for events and history of a no-op.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotAction {
    pub label: String,
    /// [`wbuild_graph::ActionNode::detail`], empty for none.
    pub detail: String,
    pub mnemonic: String,
    pub action_digest: String,
}

/// Where the snapshot of one (workspace, patterns, command) lives in the cache.
pub fn snapshot_path(cache_dir: &Path, key: &str) -> PathBuf {
    cache_dir.join("uptodate").join(format!("{key}.bin"))
}

/// Forget every snapshot (after `cache invalidate`, `gc`, `verify`).
pub fn forget_all(cache_dir: &Path) {
    let _ = std::fs::remove_dir_all(cache_dir.join("uptodate"));
}

/// Write a snapshot. `sources` are files whose stat must be old enough to trust (anything
/// modified within the racy window is left out, which makes the snapshot unusable — the next
/// build then does the full check); `outputs` are files this build wrote itself.
pub fn save(
    path: &Path,
    signature: &[u8; 32],
    sources: &[PathBuf],
    outputs: &[PathBuf],
    actions: &[SnapshotAction],
) -> std::io::Result<()> {
    // Whatever happens below, an older snapshot must not survive this build.
    let _ = std::fs::remove_file(path);
    let mut buf = Vec::with_capacity(64 * (sources.len() + outputs.len()));
    buf.extend_from_slice(MAGIC);
    buf.extend_from_slice(signature);
    let put_str = |buf: &mut Vec<u8>, s: &[u8]| {
        buf.extend_from_slice(&(s.len() as u32).to_le_bytes());
        buf.extend_from_slice(s);
    };
    let files: Vec<(&PathBuf, bool)> = sources
        .iter()
        .map(|p| (p, false))
        .chain(outputs.iter().map(|p| (p, true)))
        .collect();
    buf.extend_from_slice(&(files.len() as u64).to_le_bytes());
    for (p, written_by_us) in files {
        let Some(k) = stat_key(p) else {
            return Ok(()); // a file vanished: no snapshot
        };
        if !written_by_us && k.is_racy() {
            return Ok(()); // too fresh to trust its stat later
        }
        put_str(&mut buf, p.as_os_str().as_encoded_bytes());
        for v in [k.dev, k.ino, k.size, k.mtime_ns as u64, k.ctime_ns as u64] {
            buf.extend_from_slice(&v.to_le_bytes());
        }
    }
    buf.extend_from_slice(&(actions.len() as u64).to_le_bytes());
    for a in actions {
        put_str(&mut buf, a.label.as_bytes());
        put_str(&mut buf, a.detail.as_bytes());
        put_str(&mut buf, a.mnemonic.as_bytes());
        put_str(&mut buf, a.action_digest.as_bytes());
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(&buf)?;
    tmp.persist(path).map(drop).map_err(|e| e.error)
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
}

/// The actions of the snapshotted build if it is still exactly up to date, else `None`.
pub fn check(path: &Path, signature: &[u8; 32]) -> Option<Vec<SnapshotAction>> {
    let mut data = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .read_to_end(&mut data)
        .ok()?;
    let mut r = Reader(&data);
    if r.take(8)? != MAGIC || r.take(32)? != signature {
        return None;
    }
    let n = r.u64()? as usize;
    let mut files = Vec::with_capacity(n);
    for _ in 0..n {
        let p = PathBuf::from(std::ffi::OsStr::new(std::str::from_utf8(r.bytes()?).ok()?));
        let k = StatKey {
            dev: r.u64()?,
            ino: r.u64()?,
            size: r.u64()?,
            mtime_ns: r.u64()? as i64,
            ctime_ns: r.u64()? as i64,
        };
        files.push((p, k));
    }
    let m = r.u64()? as usize;
    let mut actions = Vec::with_capacity(m);
    for _ in 0..m {
        actions.push(SnapshotAction {
            label: r.string()?,
            detail: r.string()?,
            mnemonic: r.string()?,
            action_digest: r.string()?,
        });
    }
    // Stat everything, on two threads: this is the whole cost of a no-op build.
    let (a, b) = files.split_at(files.len() / 2);
    let same = |part: &[(PathBuf, StatKey)]| part.iter().all(|(p, k)| stat_key(p) == Some(*k));
    let (ok_a, ok_b) = std::thread::scope(|s| {
        let h = s.spawn(|| same(a));
        let ok_b = same(b);
        (h.join().unwrap_or(false), ok_b)
    });
    (ok_a && ok_b).then_some(actions)
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

    #[test]
    fn unchanged_files_are_up_to_date_and_any_change_is_not() {
        let d = tempfile::tempdir().unwrap();
        let src = old_file(d.path(), "a.txt", "a");
        let out = d.path().join("out.txt");
        std::fs::write(&out, "o").unwrap();
        let snap = d.path().join("s.bin");
        let sig = [7u8; 32];
        let acts = vec![SnapshotAction {
            label: "//p:x".into(),
            detail: String::new(),
            mnemonic: "WasiRun".into(),
            action_digest: "ab/1".into(),
        }];
        save(
            &snap,
            &sig,
            std::slice::from_ref(&src),
            std::slice::from_ref(&out),
            &acts,
        )
        .unwrap();
        assert_eq!(check(&snap, &sig), Some(acts.clone()));
        assert_eq!(check(&snap, &[8u8; 32]), None, "other signature");
        std::fs::write(&src, "b").unwrap();
        assert_eq!(check(&snap, &sig), None, "source changed");
        let src = old_file(d.path(), "a.txt", "a");
        save(&snap, &sig, &[src], std::slice::from_ref(&out), &acts).unwrap();
        std::fs::remove_file(&out).unwrap();
        assert_eq!(check(&snap, &sig), None, "output deleted");
    }

    #[test]
    fn a_changed_directory_ends_the_no_op() {
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
        save(&snap, &[3; 32], std::slice::from_ref(&sys), &[], &[]).unwrap();
        assert_eq!(check(&snap, &[3; 32]), Some(vec![]));
        // A package upgrade renames a new file into place.
        std::fs::write(sys.join("gcc.new"), "2").unwrap();
        std::fs::rename(sys.join("gcc.new"), sys.join("gcc")).unwrap();
        assert_eq!(check(&snap, &[3; 32]), None);
    }

    #[test]
    fn fresh_sources_make_no_snapshot() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("new.txt");
        std::fs::write(&src, "n").unwrap();
        let snap = d.path().join("s.bin");
        save(&snap, &[1; 32], &[src], &[], &[]).unwrap();
        assert_eq!(check(&snap, &[1; 32]), None);
    }
}
