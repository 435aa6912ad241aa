//! The stat cache: absolute path -> (dev, ino, size, mtime, ctime) -> digest, so unchanged
//! files are not re-hashed. Loaded into memory with one table scan on first use; updates are
//! buffered and written by `flush`.

use std::collections::HashMap;
use std::fs::{self, File, Metadata};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use redb::ReadableTable;

use crate::store::{copy_hashing, lock};
use crate::tables::STAT_CACHE;
use crate::{Digest, DigestFunction, Store, StoreError};

/// Files modified this recently are not trusted by their stat (the stat cache, the
/// up-to-date snapshot): a later change within the file system's timestamp granularity could
/// leave the stat unchanged.
pub const RACY_NS: i128 = 2_000_000_000;

/// What a file's stat says of its contents: same key, same bytes (unless racy).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct StatKey {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

impl StatKey {
    pub fn of(m: &Metadata) -> StatKey {
        StatKey {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: m.mtime().saturating_mul(1_000_000_000) + m.mtime_nsec(),
            ctime_ns: m.ctime().saturating_mul(1_000_000_000) + m.ctime_nsec(),
        }
    }

    /// The key of what `statx` (with `STATX_BASIC_STATS`) filled in: the same as [`StatKey::of`]
    /// of the same file's metadata.
    pub fn of_statx(stx: &libc::statx) -> StatKey {
        let ns = |t: libc::statx_timestamp| {
            t.tv_sec.saturating_mul(1_000_000_000) + i64::from(t.tv_nsec)
        };
        StatKey {
            dev: libc::makedev(stx.stx_dev_major, stx.stx_dev_minor),
            ino: stx.stx_ino,
            size: stx.stx_size,
            mtime_ns: ns(stx.stx_mtime),
            ctime_ns: ns(stx.stx_ctime),
        }
    }

    /// Modified within [`RACY_NS`] of now.
    pub fn is_racy(&self) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        now - (self.mtime_ns as i128) < RACY_NS
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct StatEntry {
    key: StatKey,
    digest: Digest,
}

/// The fields, then 8 bytes of BLAKE3 over them (a damaged row reads as absent).
const BODY_LEN: usize = 8 * 5 + 1 + 32;
const ENCODED_LEN: usize = BODY_LEN + 8;

impl StatEntry {
    pub(crate) fn encode(&self) -> [u8; ENCODED_LEN] {
        let mut b = [0u8; ENCODED_LEN];
        b[0..8].copy_from_slice(&self.key.dev.to_le_bytes());
        b[8..16].copy_from_slice(&self.key.ino.to_le_bytes());
        b[16..24].copy_from_slice(&self.key.size.to_le_bytes());
        b[24..32].copy_from_slice(&self.key.mtime_ns.to_le_bytes());
        b[32..40].copy_from_slice(&self.key.ctime_ns.to_le_bytes());
        b[40] = self.digest.function.code();
        b[41..BODY_LEN].copy_from_slice(&self.digest.hash);
        let sum = blake3::hash(&b[..BODY_LEN]);
        b[BODY_LEN..].copy_from_slice(&sum.as_bytes()[..8]);
        b
    }

    pub(crate) fn decode(b: &[u8]) -> Option<StatEntry> {
        if b.len() != ENCODED_LEN || blake3::hash(&b[..BODY_LEN]).as_bytes()[..8] != b[BODY_LEN..] {
            return None;
        }
        let u = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let key = StatKey {
            dev: u(0),
            ino: u(8),
            size: u(16),
            mtime_ns: u(24) as i64,
            ctime_ns: u(32) as i64,
        };
        let mut hash = [0u8; 32];
        hash.copy_from_slice(&b[41..BODY_LEN]);
        Some(StatEntry {
            key,
            digest: Digest {
                function: DigestFunction::from_code(b[40])?,
                hash,
                size: key.size,
            },
        })
    }
}

pub(crate) fn path_key(p: &Path) -> &[u8] {
    p.as_os_str().as_bytes()
}

/// Stat-cache look-ups answered by reading their own rows before the table is loaded whole.
const POINT_READS: usize = 256;

impl Store {
    /// The in-memory stat cache, loaded with one table scan on first use.
    pub(crate) fn stat_cache(&self) -> Result<&RwLock<HashMap<PathBuf, StatEntry>>, StoreError> {
        if let Some(m) = self.stat_map.get() {
            return Ok(m);
        }
        let _init = lock(&self.stat_init);
        if let Some(m) = self.stat_map.get() {
            return Ok(m);
        }
        let mut map = HashMap::new();
        let txn = self.read_txn()?;
        let table = txn.open_table(STAT_CACHE).map_err(|e| self.db_err(e))?;
        for row in table.iter().map_err(|e| self.db_err(e))? {
            let (k, v) = row.map_err(|e| self.db_err(e))?;
            if let Some(entry) = StatEntry::decode(v.value()) {
                let path = PathBuf::from(std::ffi::OsStr::from_bytes(k.value()));
                map.insert(path, entry);
            }
        }
        // Rows recorded (or removed) by this process before the load, not yet flushed.
        let dirty = lock(&self.stat_dirty);
        for (path, entry) in dirty.iter() {
            match entry {
                Some(e) => map.insert(path.clone(), *e),
                None => map.remove(path),
            };
        }
        let loaded = self.stat_map.get_or_init(|| RwLock::new(map));
        drop(dirty);
        Ok(loaded)
    }

    /// The cached digest of `abs` if its stat (`meta`) is unchanged. The first
    /// [`POINT_READS`] look-ups of a process read their own rows (a build after an edit
    /// looks up a handful of files); after that the whole table is loaded once.
    pub(crate) fn stat_lookup(
        &self,
        abs: &Path,
        meta: &Metadata,
    ) -> Result<Option<Digest>, StoreError> {
        let key = StatKey::of(meta);
        let usable = |e: &StatEntry| {
            (e.key == key && e.digest.function == self.function).then_some(e.digest)
        };
        if self.stat_map.get().is_none() {
            if let Some(e) = lock(&self.stat_dirty).get(abs) {
                return Ok(e.as_ref().and_then(usable));
            }
            if self.stat_point_reads.fetch_add(1, Ordering::Relaxed) < POINT_READS {
                let txn = self.read_txn()?;
                let table = txn.open_table(STAT_CACHE).map_err(|e| self.db_err(e))?;
                let row = table.get(path_key(abs)).map_err(|e| self.db_err(e))?;
                return Ok(row
                    .and_then(|v| StatEntry::decode(v.value()))
                    .as_ref()
                    .and_then(usable));
            }
        }
        let map = self.stat_cache()?.read().unwrap_or_else(|e| e.into_inner());
        Ok(map.get(abs).and_then(usable))
    }

    /// Remember `d` as the digest of `abs`, if the file did not change while it was read
    /// (`before` == `after`) and was not modified within the racy window.
    pub(crate) fn stat_record(&self, abs: &Path, before: &Metadata, after: &Metadata, d: Digest) {
        let key = StatKey::of(before);
        if key != StatKey::of(after) || key.is_racy() {
            return;
        }
        self.stat_insert(abs, key, d);
    }

    /// Remember `d` as the digest of `abs`, a file this process has just written with bytes
    /// it verified (materialised outputs), whatever its age.
    pub(crate) fn stat_record_written(&self, abs: &Path, meta: &Metadata, d: Digest) {
        self.stat_insert(abs, StatKey::of(meta), d);
    }

    fn stat_insert(&self, abs: &Path, key: StatKey, d: Digest) {
        if key.size != d.size {
            return;
        }
        let entry = StatEntry { key, digest: d };
        // Held while the map is updated, so a concurrent first load (which merges the rows
        // recorded so far) cannot miss this one.
        let mut dirty = lock(&self.stat_dirty);
        if let Some(cache) = self.stat_map.get() {
            cache
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(abs.to_path_buf(), entry);
        }
        dirty.insert(abs.to_path_buf(), Some(entry));
    }

    /// Digest of the regular file at `path` (symlinks followed), read and hashed only if its
    /// stat changed since it was last hashed.
    pub fn file_digest(&self, path: &Path) -> Result<Digest, StoreError> {
        let abs = if path.is_absolute() {
            path.to_path_buf()
        } else {
            std::path::absolute(path).map_err(StoreError::io("resolve", path))?
        };
        let meta = fs::metadata(&abs).map_err(StoreError::io("stat", &abs))?;
        if !meta.is_file() {
            return Err(StoreError::NotAFile { path: abs });
        }
        if let Some(d) = self.stat_lookup(&abs, &meta)? {
            return Ok(d);
        }
        let mut file = File::open(&abs).map_err(StoreError::io("open", &abs))?;
        let before = file.metadata().map_err(StoreError::io("stat", &abs))?;
        let d = copy_hashing(self.function, &mut file, &abs, None)?;
        let after = file.metadata().map_err(StoreError::io("stat", &abs))?;
        self.hashed.fetch_add(1, Ordering::Relaxed);
        self.stat_record(&abs, &before, &after, d);
        Ok(d)
    }

    /// Files actually read and hashed by `file_digest` in this process (a no-op build hashes 0).
    pub fn hashed_count(&self) -> u64 {
        self.hashed.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{set_old_mtime, store_in};

    #[test]
    fn encode_round_trip() {
        let e = StatEntry {
            key: StatKey {
                dev: 1,
                ino: 2,
                size: 3,
                mtime_ns: -4,
                ctime_ns: 5,
            },
            digest: Digest {
                function: DigestFunction::Sha256,
                hash: [7; 32],
                size: 3,
            },
        };
        assert_eq!(StatEntry::decode(&e.encode()), Some(e));
        assert_eq!(StatEntry::decode(&[0; 3]), None);
    }

    #[test]
    fn unchanged_file_is_not_rehashed_and_modified_file_is() {
        let (dir, store) = store_in();
        let f = dir.path().join("src.txt");
        fs::write(&f, b"one").unwrap();
        set_old_mtime(&f);
        let d1 = store.file_digest(&f).unwrap();
        assert_eq!(d1, Digest::of(DigestFunction::Blake3, b"one"));
        assert_eq!(store.hashed_count(), 1);
        for _ in 0..3 {
            assert_eq!(store.file_digest(&f).unwrap(), d1);
        }
        assert_eq!(store.hashed_count(), 1, "unchanged file re-hashed");

        fs::write(&f, b"two!").unwrap();
        set_old_mtime(&f);
        let d2 = store.file_digest(&f).unwrap();
        assert_eq!(d2, Digest::of(DigestFunction::Blake3, b"two!"));
        assert_eq!(store.hashed_count(), 2);

        // Same size, same mtime, different content: ctime/inode still differ.
        let tmp = dir.path().join("other");
        fs::write(&tmp, b"TWO!").unwrap();
        fs::rename(&tmp, &f).unwrap();
        set_old_mtime(&f);
        assert_eq!(
            store.file_digest(&f).unwrap(),
            Digest::of(DigestFunction::Blake3, b"TWO!")
        );
        assert_eq!(store.hashed_count(), 3);
    }

    #[test]
    fn stat_cache_survives_reopen() {
        let (dir, store) = store_in();
        let f = dir.path().join("a");
        fs::write(&f, b"persist").unwrap();
        set_old_mtime(&f);
        let d = store.file_digest(&f).unwrap();
        let cache = store.dir().to_path_buf();
        drop(store);
        let store = Store::open(&cache).unwrap();
        assert_eq!(store.file_digest(&f).unwrap(), d);
        assert_eq!(store.hashed_count(), 0);
        assert_eq!(store.stats().unwrap().stat_cache_entries, 1);
    }

    #[test]
    fn racy_files_are_not_cached() {
        let (dir, store) = store_in();
        let f = dir.path().join("fresh");
        fs::write(&f, b"new").unwrap();
        store.file_digest(&f).unwrap();
        store.file_digest(&f).unwrap();
        assert_eq!(store.hashed_count(), 2);
    }

    #[test]
    fn relative_paths_and_non_files() {
        let (dir, store) = store_in();
        assert!(matches!(
            store.file_digest(dir.path()),
            Err(StoreError::NotAFile { .. })
        ));
        let err = store.file_digest(&dir.path().join("missing")).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn put_file_uses_stat_cache() {
        let (dir, store) = store_in();
        let f = dir.path().join("in");
        fs::write(&f, b"payload").unwrap();
        set_old_mtime(&f);
        let d = store.put_file(&f).unwrap();
        assert_eq!(store.file_digest(&f).unwrap(), d);
        assert_eq!(
            store.hashed_count(),
            0,
            "put_file already recorded the stat"
        );
        assert_eq!(store.get_bytes(&d).unwrap(), b"payload");
    }
}
