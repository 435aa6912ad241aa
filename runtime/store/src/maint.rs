//! Maintenance: `stats`, `gc` (LRU under a size cap) and `verify` (re-hash and repair).

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use redb::{ReadableMultimapTable, ReadableTable, ReadableTableMetadata};

use crate::ac::decode_entry;
use crate::store::{Key, copy_hashing, lock};
use crate::tables::*;
use crate::{
    CorruptBlob, Digest, DigestFunction, GcReport, Stats, Store, StoreError, VerifyReport,
};

/// A file in a CAS directory.
pub(crate) struct BlobFile {
    pub(crate) digest: Digest,
    pub(crate) path: PathBuf,
    pub(crate) mtime_ms: u64,
}

/// The result of walking the CAS directories.
#[derive(Default)]
pub(crate) struct Walk {
    pub(crate) blobs: Vec<BlobFile>,
    /// Files that are not named like blobs (or sit in the wrong shard).
    pub(crate) strays: Vec<PathBuf>,
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn read_dir(dir: &Path) -> Result<Vec<fs::DirEntry>, StoreError> {
    match fs::read_dir(dir) {
        Ok(rd) => rd
            .collect::<Result<Vec<_>, _>>()
            .map_err(StoreError::io("list", dir)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(StoreError::Io {
            op: "list",
            path: dir.to_path_buf(),
            error: e,
        }),
    }
}

impl Store {
    /// Every blob file (all digest functions), with sizes from the file system.
    pub(crate) fn walk_cas(&self) -> Result<Walk, StoreError> {
        let mut walk = Walk::default();
        for f in DigestFunction::ALL {
            let root = self.dir.join(f.cas_subdir());
            for shard in read_dir(&root)? {
                let shard_name = shard.file_name().to_string_lossy().into_owned();
                let shard_path = shard.path();
                let is_dir = shard.file_type().is_ok_and(|t| t.is_dir());
                if !is_dir || shard_name.len() != 2 || !is_lower_hex(&shard_name) {
                    walk.strays.push(shard_path);
                    continue;
                }
                for entry in read_dir(&shard_path)? {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    let path = entry.path();
                    let meta = match fs::symlink_metadata(&path) {
                        Ok(m) => m,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                        Err(e) => {
                            return Err(StoreError::Io {
                                op: "stat",
                                path,
                                error: e,
                            });
                        }
                    };
                    let parsed = (meta.is_file()
                        && name.len() == 64
                        && is_lower_hex(&name)
                        && name.starts_with(&shard_name))
                    .then(|| Digest::from_hex(f, &name, meta.len()).ok())
                    .flatten();
                    match parsed {
                        Some(digest) => walk.blobs.push(BlobFile {
                            digest,
                            path,
                            mtime_ms: meta
                                .modified()
                                .ok()
                                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                                .map(|d| d.as_millis() as u64)
                                .unwrap_or(0),
                        }),
                        None => walk.strays.push(path),
                    }
                }
            }
        }
        Ok(walk)
    }

    /// Remove everything in `<dir>/tmp` except this process's own scratch directory. Safe
    /// because only one process holds the store at a time.
    pub(crate) fn clean_stale_tmp(&self) -> u64 {
        let mut removed = 0;
        let Ok(entries) = read_dir(&self.dir.join("tmp")) else {
            return 0;
        };
        for e in entries {
            let p = e.path();
            if p == self.tmp {
                continue;
            }
            let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
            let ok = if is_dir {
                make_writable(&p);
                fs::remove_dir_all(&p).is_ok()
            } else {
                fs::remove_file(&p).is_ok()
            };
            if ok {
                removed += 1;
            }
        }
        removed
    }

    fn blob_meta(&self) -> Result<HashMap<Key, (u64, u64)>, StoreError> {
        let txn = self.read_txn()?;
        let t = txn.open_table(BLOBS).map_err(|e| self.db_err(e))?;
        let mut m = HashMap::new();
        for row in t.iter().map_err(|e| self.db_err(e))? {
            let (k, v) = row.map_err(|e| self.db_err(e))?;
            if let Ok(key) = <Key>::try_from(k.value()) {
                m.insert(key, v.value());
            }
        }
        Ok(m)
    }

    /// Every AC entry: (action key, label, referenced blobs), or `None` refs if the entry is
    /// undecodable or references a missing blob (it is to be dropped).
    #[allow(clippy::type_complexity)]
    fn ac_scan(&self) -> Result<Vec<(Vec<u8>, Option<(String, u64, Vec<Digest>)>)>, StoreError> {
        let rows: Vec<(Vec<u8>, Vec<u8>)> = {
            let txn = self.read_txn()?;
            let t = txn.open_table(AC).map_err(|e| self.db_err(e))?;
            let mut rows = Vec::new();
            for row in t.iter().map_err(|e| self.db_err(e))? {
                let (k, v) = row.map_err(|e| self.db_err(e))?;
                rows.push((k.value().to_vec(), v.value().to_vec()));
            }
            rows
        };
        let mut out = Vec::with_capacity(rows.len());
        for (key, value) in rows {
            let parsed = Digest::from_key(&key, 0).zip(decode_entry(&value));
            let refs = match parsed {
                None => None,
                Some((action, entry)) => match self.all_refs(&action, &entry.result) {
                    Ok(refs) => Some((entry.label, entry.action_size, refs)),
                    Err(StoreError::MissingBlob { .. })
                    | Err(StoreError::Malformed { .. })
                    | Err(StoreError::InvalidDigest { .. })
                    | Err(StoreError::Corrupt { .. }) => None,
                    Err(e) => return Err(e),
                },
            };
            out.push((key, refs));
        }
        Ok(out)
    }

    /// Drop AC rows (and their label-index rows) inside `txn`.
    fn drop_ac_rows(
        &self,
        txn: &redb::WriteTransaction,
        keys: &[Vec<u8>],
    ) -> Result<(), StoreError> {
        let mut ac = txn.open_table(AC).map_err(|e| self.db_err(e))?;
        let mut index = txn
            .open_multimap_table(AC_LABEL)
            .map_err(|e| self.db_err(e))?;
        for key in keys {
            let removed = ac
                .remove(key.as_slice())
                .map_err(|e| self.db_err(e))?
                .and_then(|v| decode_entry(v.value()));
            if let (Some(entry), Some(d)) = (removed, Digest::from_key(key, 0)) {
                let full = Digest {
                    size: entry.action_size,
                    ..d
                }
                .encode_full();
                index
                    .remove(entry.label.as_str(), full.as_slice())
                    .map_err(|e| self.db_err(e))?;
            }
        }
        Ok(())
    }

    /// Counts of what the store holds. Blob counts come from the file system.
    pub fn stats(&self) -> Result<Stats, StoreError> {
        let walk = self.walk_cas()?;
        let stat_cache_entries = self
            .stat_cache()?
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .len() as u64;
        let txn = self.read_txn()?;
        let len = |n: Result<u64, redb::StorageError>| n.map_err(|e| self.db_err(e));
        Ok(Stats {
            blobs: walk.blobs.len() as u64,
            blob_bytes: walk.blobs.iter().map(|b| b.digest.size).sum(),
            ac_entries: len(txn.open_table(AC).map_err(|e| self.db_err(e))?.len())?,
            builds: len(txn.open_table(BUILDS).map_err(|e| self.db_err(e))?.len())?,
            stat_cache_entries,
            access_logs: len(txn
                .open_table(ACCESS_LOGS)
                .map_err(|e| self.db_err(e))?
                .len())?,
        })
    }

    /// Delete least-recently-used blobs until the CAS holds at most `max_bytes`. A blob is
    /// only deleted together with every AC entry that references it, so no kept entry ever
    /// points at a deleted blob. Also drops AC entries already referencing missing blobs and
    /// removes stale temp files.
    pub fn gc(&self, max_bytes: u64) -> Result<GcReport, StoreError> {
        let _x = self.exclusive();
        self.flush()?;
        let mut report = GcReport {
            max_bytes,
            tmp_entries_removed: self.clean_stale_tmp(),
            ..GcReport::default()
        };
        let walk = self.walk_cas()?;
        let meta = self.blob_meta()?;
        report.blobs_before = walk.blobs.len() as u64;
        report.bytes_before = walk.blobs.iter().map(|b| b.digest.size).sum();

        let ac = self.ac_scan()?;
        let mut drop_ac: Vec<Vec<u8>> = Vec::new();
        let mut users: HashMap<Key, Vec<usize>> = HashMap::new();
        for (i, (key, refs)) in ac.iter().enumerate() {
            match refs {
                None => drop_ac.push(key.clone()),
                Some((_, _, refs)) => {
                    for d in refs {
                        users.entry(d.key()).or_default().push(i);
                    }
                }
            }
        }

        let mut order: Vec<(u64, &crate::maint::BlobFile)> = walk
            .blobs
            .iter()
            .map(|b| {
                let last = meta.get(&b.digest.key()).map(|m| m.1).unwrap_or(b.mtime_ms);
                (last, b)
            })
            .collect();
        order.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.digest.cmp(&b.1.digest)));

        let mut total = report.bytes_before;
        let mut delete: Vec<&BlobFile> = Vec::new();
        let mut dropped_idx: HashSet<usize> = HashSet::new();
        for (_, b) in order {
            if total <= max_bytes {
                break;
            }
            if b.digest.size == 0 {
                continue;
            }
            total -= b.digest.size;
            delete.push(b);
            for &i in users.get(&b.digest.key()).map(Vec::as_slice).unwrap_or(&[]) {
                if dropped_idx.insert(i) {
                    drop_ac.push(ac[i].0.clone());
                }
            }
        }

        // Commit the AC drops before deleting files: a crash in between leaves only
        // unreferenced blobs.
        let on_disk: HashSet<Key> = walk.blobs.iter().map(|b| b.digest.key()).collect();
        let txn = self.durable_txn()?;
        self.drop_ac_rows(&txn, &drop_ac)?;
        {
            let mut t = txn.open_table(BLOBS).map_err(|e| self.db_err(e))?;
            for b in &delete {
                t.remove(b.digest.key().as_slice())
                    .map_err(|e| self.db_err(e))?;
            }
            for k in meta.keys().filter(|k| !on_disk.contains(*k)) {
                t.remove(k.as_slice()).map_err(|e| self.db_err(e))?;
            }
        }
        txn.commit().map_err(|e| self.db_err(e))?;
        report.ac_entries_dropped = drop_ac.len() as u64;

        for b in &delete {
            match fs::remove_file(&b.path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(StoreError::Io {
                        op: "delete blob",
                        path: b.path.clone(),
                        error: e,
                    });
                }
            }
            let key = b.digest.key();
            lock(&self.verified).remove(&key);
            lock(&self.pending_access).remove(&key);
            report.blobs_deleted += 1;
            report.bytes_deleted += b.digest.size;
        }
        report.blobs_after = report.blobs_before - report.blobs_deleted;
        report.bytes_after = report.bytes_before - report.bytes_deleted;
        Ok(report)
    }

    /// Re-hash every blob and evict corrupt ones; remove stray files in the CAS directories;
    /// reconcile blob metadata with the files; drop AC entries that are undecodable or
    /// reference missing blobs; drop stat-cache entries of deleted files; remove stale temp
    /// files.
    pub fn verify(&self) -> Result<VerifyReport, StoreError> {
        let _x = self.exclusive();
        self.flush()?;
        let mut report = VerifyReport {
            tmp_entries_removed: self.clean_stale_tmp(),
            ..VerifyReport::default()
        };
        let walk = self.walk_cas()?;
        for stray in walk.strays {
            make_writable(&stray);
            let ok = if stray.is_dir() {
                fs::remove_dir_all(&stray).is_ok()
            } else {
                fs::remove_file(&stray).is_ok()
            };
            if ok {
                report.stray_files_removed.push(stray);
            }
        }

        let mut good: Vec<&BlobFile> = Vec::new();
        for b in &walk.blobs {
            report.blobs_checked += 1;
            report.bytes_checked += b.digest.size;
            let mut f = match File::open(&b.path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(StoreError::Io {
                        op: "open",
                        path: b.path.clone(),
                        error: e,
                    });
                }
            };
            let actual = copy_hashing(b.digest.function, &mut f, &b.path, None)?;
            if actual.hash != b.digest.hash {
                self.evict(&b.digest, &b.path);
                report.corrupt.push(CorruptBlob {
                    digest: b.digest.to_string(),
                    function: b.digest.function,
                    path: b.path.clone(),
                });
                continue;
            }
            if f.metadata().is_ok_and(|m| m.mode() & 0o222 != 0) {
                use std::os::unix::fs::PermissionsExt;
                let _ = f.set_permissions(fs::Permissions::from_mode(0o444));
            }
            self.mark_verified(&b.digest);
            good.push(b);
        }

        let meta = self.blob_meta()?;
        let on_disk: HashSet<Key> = good.iter().map(|b| b.digest.key()).collect();
        let ac = self.ac_scan()?;
        let drop_ac: Vec<Vec<u8>> = ac
            .iter()
            .filter(|(_, refs)| refs.is_none())
            .map(|(k, _)| k.clone())
            .collect();
        // Label-index rows whose AC row is gone.
        let ac_keys: HashSet<Vec<u8>> = ac
            .iter()
            .filter(|(_, r)| r.is_some())
            .map(|(k, _)| k.clone())
            .collect();
        let mut orphan_labels: Vec<(String, Vec<u8>)> = Vec::new();
        {
            let txn = self.read_txn()?;
            let index = txn
                .open_multimap_table(AC_LABEL)
                .map_err(|e| self.db_err(e))?;
            for row in index.iter().map_err(|e| self.db_err(e))? {
                let (label, values) = row.map_err(|e| self.db_err(e))?;
                for v in values {
                    let v = v.map_err(|e| self.db_err(e))?;
                    let full = v.value();
                    if full.len() != 41 || !ac_keys.contains(&full[..33]) {
                        orphan_labels.push((label.value().to_string(), full.to_vec()));
                    }
                }
            }
        }
        // Stat-cache entries of files that no longer exist.
        let gone: Vec<PathBuf> = {
            let map = self.stat_cache()?.read().unwrap_or_else(|e| e.into_inner());
            map.keys()
                .filter(|p| {
                    matches!(fs::symlink_metadata(p), Err(e) if e.kind() == io::ErrorKind::NotFound)
                })
                .cloned()
                .collect()
        };

        let txn = self.durable_txn()?;
        self.drop_ac_rows(&txn, &drop_ac)?;
        {
            let mut index = txn
                .open_multimap_table(AC_LABEL)
                .map_err(|e| self.db_err(e))?;
            for (label, full) in &orphan_labels {
                index
                    .remove(label.as_str(), full.as_slice())
                    .map_err(|e| self.db_err(e))?;
            }
            let mut t = txn.open_table(BLOBS).map_err(|e| self.db_err(e))?;
            for k in meta.keys().filter(|k| !on_disk.contains(*k)) {
                t.remove(k.as_slice()).map_err(|e| self.db_err(e))?;
                report.metadata_removed += 1;
            }
            for b in &good {
                if !meta.contains_key(&b.digest.key()) {
                    t.insert(b.digest.key().as_slice(), (b.digest.size, b.mtime_ms))
                        .map_err(|e| self.db_err(e))?;
                    report.metadata_added += 1;
                }
            }
            let mut st = txn.open_table(STAT_CACHE).map_err(|e| self.db_err(e))?;
            for p in &gone {
                st.remove(crate::stat::path_key(p))
                    .map_err(|e| self.db_err(e))?;
            }
        }
        txn.commit().map_err(|e| self.db_err(e))?;
        {
            let mut map = self
                .stat_cache()?
                .write()
                .unwrap_or_else(|e| e.into_inner());
            for p in &gone {
                map.remove(p);
            }
        }
        report.stat_entries_dropped = gone.len() as u64;
        report.ac_entries_dropped = drop_ac.len() as u64;
        Ok(report)
    }
}

/// Make a directory tree writable so it can be removed (blobs and staged inputs are 0444,
/// which does not matter for unlinking, but read-only directories do).
pub(crate) fn make_writable(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = fs::symlink_metadata(p)
        && m.is_dir()
    {
        let _ = fs::set_permissions(p, fs::Permissions::from_mode(0o755));
        if let Ok(rd) = fs::read_dir(p) {
            for e in rd.flatten() {
                make_writable(&e.path());
            }
        }
    }
}
