//! The [`Store`]: opening, the process lock, the CAS (blob files) and flushing.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redb::{Database, DatabaseError, Durability, ReadableTable, StorageError};

use crate::history::History;
use crate::stat::StatEntry;
use crate::tables::*;
use crate::{Digest, DigestFunction, Hasher, StoreError};

/// How long `Store::open` waits for another process to release the store.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(600);
const LOCK_POLL: Duration = Duration::from_millis(100);
const COPY_BUF: usize = 64 * 1024;

pub(crate) type Key = [u8; 33];

/// Opens the index database from its file with a custom `redb::StorageBackend`: see
/// [`Store::open_with_index_backend`].
#[doc(hidden)]
pub type IndexOpener =
    std::sync::Arc<dyn Fn(&redb::Builder, File) -> Result<Database, DatabaseError> + Send + Sync>;

/// The local store: CAS blob files plus a redb index (action cache, blob metadata, stat
/// cache, access logs, build history). `Send + Sync`; share it as `Arc<Store>`.
///
/// One process at a time holds a store (redb's file lock); `open` waits for the holder.
pub struct Store {
    pub(crate) dir: PathBuf,
    pub(crate) function: DigestFunction,
    pub(crate) db: Database,
    pub(crate) index_path: PathBuf,
    /// What the integrity check at open found, if one ran.
    pub(crate) index_check: Option<IndexCheck>,
    /// This process's scratch directory under `<dir>/tmp`.
    pub(crate) tmp: PathBuf,
    tmp_counter: AtomicU64,
    /// Blob key -> (size, last access ms), written to the `blobs` table by `flush`.
    pub(crate) pending_access: Mutex<HashMap<Key, (u64, u64)>>,
    /// Blobs whose bytes this process has hashed (or written) and found correct.
    pub(crate) verified: Mutex<HashSet<Key>>,
    pub(crate) stat_map: OnceLock<RwLock<HashMap<PathBuf, StatEntry>>>,
    pub(crate) stat_init: Mutex<()>,
    pub(crate) stat_dirty: Mutex<HashMap<PathBuf, Option<StatEntry>>>,
    /// Stat-cache rows read one by one before the whole table is loaded (see `stat.rs`).
    pub(crate) stat_point_reads: std::sync::atomic::AtomicUsize,
    pub(crate) hashed: AtomicU64,
    pub(crate) history: Mutex<History>,
    /// Held shared by ordinary operations and exclusively by `gc`/`verify`, so maintenance
    /// never deletes a blob under an operation that is using it.
    pub(crate) maintenance: RwLock<()>,
    /// Serialises `flush` (so two flushes do not interleave their taken buffers).
    flush_lock: Mutex<()>,
    /// A `Durability::None` transaction may have committed since the last durable commit.
    undurable: std::sync::atomic::AtomicBool,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn is_already_open(e: &DatabaseError) -> bool {
    matches!(e, DatabaseError::DatabaseAlreadyOpen)
}

impl Store {
    /// Open (creating if needed) the store at `dir` with BLAKE3 as its digest function.
    /// Creates `<dir>/{cas,tmp,modules}` and `<dir>/index.redb`. Waits (up to 10 minutes,
    /// polling every 100 ms) while another process holds the store.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        Store::open_with(dir, DigestFunction::Blake3)
    }

    /// Like [`Store::open`] with another default digest function for `put_*` and
    /// `file_digest`. Blobs of every function live side by side (`cas/`, `cas-sha256/`).
    pub fn open_with(dir: &Path, function: DigestFunction) -> Result<Store, StoreError> {
        Store::open_with_timeout(dir, function, DEFAULT_LOCK_TIMEOUT)
    }

    /// Like [`Store::open_with`] with a custom wait for the process lock.
    pub fn open_with_timeout(
        dir: &Path,
        function: DigestFunction,
        lock_timeout: Duration,
    ) -> Result<Store, StoreError> {
        Store::open_inner(dir, function, lock_timeout, None)
    }

    /// Like [`Store::open_with_timeout`], with the index opened by `open_index` (given the
    /// store's `redb::Builder` and the opened `index.redb` file; it calls
    /// `builder.create_with_backend(...)`). For tests and fuzzing that inject I/O failures
    /// into the index (`tests/fuzz`); not a stable API.
    #[doc(hidden)]
    pub fn open_with_index_backend(
        dir: &Path,
        function: DigestFunction,
        lock_timeout: Duration,
        open_index: IndexOpener,
    ) -> Result<Store, StoreError> {
        Store::open_inner(dir, function, lock_timeout, Some(&open_index))
    }

    fn open_inner(
        dir: &Path,
        function: DigestFunction,
        lock_timeout: Duration,
        open_index: Option<&IndexOpener>,
    ) -> Result<Store, StoreError> {
        let dir = std::path::absolute(dir).map_err(StoreError::io("resolve", dir))?;
        for sub in [function.cas_subdir(), "tmp", "modules"] {
            let p = dir.join(sub);
            fs::create_dir_all(&p).map_err(StoreError::io("create directory", &p))?;
        }
        let index_path = dir.join("index.redb");
        let mut db = open_db(&dir, &index_path, lock_timeout, open_index)?;
        // A damaged index was noticed (a redb panic, or `cache verify` asked): check every
        // page now, repairing what redb can and replacing what it cannot.
        let marker = dir.join(INDEX_CHECK_MARKER);
        let mut index_check = None;
        if marker.exists() {
            let checked = guarded(|| db.check_integrity()).unwrap_or_else(|msg| {
                Err(DatabaseError::Storage(StorageError::Corrupted(format!(
                    "redb panicked checking it: {msg}"
                ))))
            });
            let outcome = match checked {
                Ok(true) => IndexCheck::Clean,
                Ok(false) => IndexCheck::Repaired,
                Err(e) => {
                    drop(db);
                    let aside = index_path.with_extension(format!("redb.broken-{}", now_ms()));
                    fs::rename(&index_path, &aside)
                        .map_err(StoreError::io("move aside", &index_path))?;
                    db = open_db(&dir, &index_path, lock_timeout, open_index)?;
                    IndexCheck::Replaced {
                        aside,
                        reason: e.to_string(),
                    }
                }
            };
            let _ = fs::remove_file(&marker);
            index_check = Some(outcome);
        }

        let tmp = dir.join("tmp").join(format!(
            "p{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        fs::create_dir_all(&tmp).map_err(StoreError::io("create directory", &tmp))?;

        let store = Store {
            dir,
            function,
            db,
            index_path,
            tmp,
            tmp_counter: AtomicU64::new(0),
            pending_access: Mutex::new(HashMap::new()),
            verified: Mutex::new(HashSet::new()),
            stat_map: OnceLock::new(),
            stat_init: Mutex::new(()),
            stat_dirty: Mutex::new(HashMap::new()),
            stat_point_reads: std::sync::atomic::AtomicUsize::new(0),
            hashed: AtomicU64::new(0),
            history: Mutex::new(History::default()),
            maintenance: RwLock::new(()),
            flush_lock: Mutex::new(()),
            undurable: std::sync::atomic::AtomicBool::new(false),
            index_check,
        };
        match store
            .init_tables()
            .and_then(|()| store.fold_pending_builds())
        {
            Ok(()) => Ok(store),
            // A table definition is unreadable (a flipped byte in the table tree): redb's
            // integrity check does not cover it, so the index is replaced.
            Err(StoreError::Damaged { error: source, .. }) => {
                let (dir, index_path) = (store.dir.clone(), store.index_path.clone());
                drop(store);
                let _ = fs::remove_file(dir.join(INDEX_CHECK_MARKER));
                let aside = index_path.with_extension(format!("redb.broken-{}", now_ms()));
                fs::rename(&index_path, &aside)
                    .map_err(StoreError::io("move aside", &index_path))?;
                let mut store = Store::open_inner(&dir, function, lock_timeout, open_index)?;
                store.index_check = Some(IndexCheck::Replaced {
                    aside,
                    reason: source.to_string(),
                });
                Ok(store)
            }
            Err(e) => Err(e),
        }
    }

    /// `$WBUILD_CACHE`, else `$XDG_CACHE_HOME/wbuild`, else `~/.cache/wbuild`.
    pub fn default_dir() -> PathBuf {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        if let Some(d) = var("WBUILD_CACHE") {
            return PathBuf::from(d);
        }
        if let Some(d) = var("XDG_CACHE_HOME").map(PathBuf::from)
            && d.is_absolute()
        {
            return d.join("wbuild");
        }
        if let Some(home) = var("HOME") {
            return PathBuf::from(home).join(".cache").join("wbuild");
        }
        std::env::temp_dir().join("wbuild-cache")
    }

    /// When the device holding the cache has (almost) no space left: a sentence saying so and
    /// what to do, for the error of an action that failed (perhaps because of it).
    pub fn full_device_note(&self) -> Option<String> {
        let c = std::ffi::CString::new(self.dir.as_os_str().as_encoded_bytes()).ok()?;
        // SAFETY: statvfs is plain data, for which all-zero bytes are a valid value.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs.
        if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
            return None;
        }
        let free = st.f_bavail as u64 * st.f_frsize as u64;
        (free < FULL_DEVICE_BYTES).then(|| {
            format!(
                "the device holding the cache {} is full ({} KiB free), which may be why: free space, shrink the cache with `wbuild cache gc --max-size SIZE`, or pass another --cache-dir",
                self.dir.display(),
                free / 1024
            )
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn function(&self) -> DigestFunction {
        self.function
    }

    /// Scratch space on the same file system as the CAS (so `put_file_move` is a rename).
    /// It is private to this process: removed when the store is dropped, and by `verify`/`gc`
    /// of a later process if this one dies.
    pub fn tmp_dir(&self) -> PathBuf {
        self.tmp.clone()
    }

    /// Where exec-wasi keeps compiled modules.
    pub fn modules_dir(&self) -> PathBuf {
        self.dir.join("modules")
    }

    pub(crate) fn db_err(&self, e: impl Into<redb::Error>) -> StoreError {
        let e = e.into();
        if is_damage(&e) {
            Store::request_index_check(&self.dir);
            return StoreError::Damaged {
                path: self.index_path.clone(),
                error: Box::new(e),
            };
        }
        StoreError::from_db(self.index_path.clone(), e)
    }

    fn init_tables(&self) -> Result<(), StoreError> {
        // Every open of an existing store finds them all, of the right types: no write (a
        // durable commit costs two fdatasyncs, a good part of a no-op build). A table of the
        // wrong type is damage, reported as on the write path.
        {
            use redb::ReadableDatabase;
            let read = self.db.begin_read().map_err(|e| self.db_err(e))?;
            let opened = [
                read.open_table(AC).map(drop),
                read.open_multimap_table(AC_LABEL).map(drop),
                read.open_table(BLOBS).map(drop),
                read.open_table(STAT_CACHE).map(drop),
                read.open_table(ACCESS_LOGS).map(drop),
                read.open_table(BUILDS).map(drop),
                read.open_table(BUILD_ACTIONS).map(drop),
                read.open_table(DURATIONS).map(drop),
                read.open_table(PATH_SETS).map(drop),
                read.open_table(OBSERVED).map(drop),
                read.open_table(KEY_MANIFESTS).map(drop),
                read.open_table(FOLDED_BUILDS).map(drop),
            ];
            let mut missing = false;
            for r in opened {
                match r {
                    Ok(()) => {}
                    Err(redb::TableError::TableDoesNotExist(_)) => missing = true,
                    Err(e) => return Err(self.db_err(e)),
                }
            }
            if !missing {
                return Ok(());
            }
        }
        let txn = self.db.begin_write().map_err(|e| self.db_err(e))?;
        {
            txn.open_table(AC).map_err(|e| self.db_err(e))?;
            txn.open_multimap_table(AC_LABEL)
                .map_err(|e| self.db_err(e))?;
            txn.open_table(BLOBS).map_err(|e| self.db_err(e))?;
            txn.open_table(STAT_CACHE).map_err(|e| self.db_err(e))?;
            txn.open_table(ACCESS_LOGS).map_err(|e| self.db_err(e))?;
            txn.open_table(BUILDS).map_err(|e| self.db_err(e))?;
            txn.open_table(BUILD_ACTIONS).map_err(|e| self.db_err(e))?;
            txn.open_table(DURATIONS).map_err(|e| self.db_err(e))?;
            txn.open_table(PATH_SETS).map_err(|e| self.db_err(e))?;
            txn.open_table(OBSERVED).map_err(|e| self.db_err(e))?;
            txn.open_table(KEY_MANIFESTS).map_err(|e| self.db_err(e))?;
            txn.open_table(FOLDED_BUILDS).map_err(|e| self.db_err(e))?;
        }
        txn.commit().map_err(|e| self.db_err(e))
    }

    /// Begin a write transaction with `Durability::None` (fast; lost, consistently, on a crash
    /// unless a later `flush` commits).
    pub(crate) fn write_txn(&self) -> Result<redb::WriteTransaction, StoreError> {
        self.undurable.store(true, Ordering::SeqCst);
        let mut txn = self.db.begin_write().map_err(|e| self.db_err(e))?;
        txn.set_durability(Durability::None)
            .map_err(|e| self.db_err(e))?;
        Ok(txn)
    }

    pub(crate) fn durable_txn(&self) -> Result<redb::WriteTransaction, StoreError> {
        let mut txn = self.db.begin_write().map_err(|e| self.db_err(e))?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| self.db_err(e))?;
        txn.set_quick_repair(true);
        Ok(txn)
    }

    pub(crate) fn read_txn(&self) -> Result<redb::ReadTransaction, StoreError> {
        use redb::ReadableDatabase;
        self.db.begin_read().map_err(|e| self.db_err(e))
    }

    pub(crate) fn shared(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.maintenance.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn exclusive(&self) -> std::sync::RwLockWriteGuard<'_, ()> {
        self.maintenance.write().unwrap_or_else(|e| e.into_inner())
    }

    // ----------------------------------------------------------------------------------------
    // CAS

    /// Path of a blob file: `<dir>/cas/<2 hex>/<hex>` (`cas-sha256/` for SHA-256).
    pub(crate) fn blob_path(&self, d: &Digest) -> PathBuf {
        let hex = d.hex();
        let mut p = self.dir.join(d.function.cas_subdir());
        p.push(&hex[..2]);
        p.push(hex);
        p
    }

    /// A fresh path in this process's tmp dir.
    pub(crate) fn new_tmp_path(&self, what: &str) -> PathBuf {
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        self.tmp.join(format!("{what}-{n}"))
    }

    /// Record a use of a blob (for LRU); written to the index by `flush`.
    pub(crate) fn touch(&self, d: &Digest) {
        let now = now_ms();
        lock(&self.pending_access).insert(d.key(), (d.size, now));
    }

    pub(crate) fn touch_all(&self, ds: &[Digest]) {
        let now = now_ms();
        let mut pending = lock(&self.pending_access);
        for d in ds {
            pending.insert(d.key(), (d.size, now));
        }
    }

    pub(crate) fn mark_verified(&self, d: &Digest) {
        lock(&self.verified).insert(d.key());
    }

    pub(crate) fn is_verified(&self, d: &Digest) -> bool {
        lock(&self.verified).contains(&d.key())
    }

    /// Whether the blob file exists (the empty blob always exists).
    pub(crate) fn exists(&self, d: &Digest) -> bool {
        d.is_empty_blob() || fs::symlink_metadata(self.blob_path(d)).is_ok_and(|m| m.is_file())
    }

    /// Move `tmp` to the blob path of `d`, creating the shard directory if needed.
    /// The rename replaces an existing blob of the same name (same bytes, or a corrupt one).
    fn install(&self, tmp: &Path, d: &Digest) -> Result<PathBuf, StoreError> {
        let dest = self.blob_path(d);
        match fs::rename(tmp, &dest) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let shard = dest.parent().expect("blob path has a parent");
                fs::create_dir_all(shard).map_err(StoreError::io("create directory", shard))?;
                fs::rename(tmp, &dest).map_err(StoreError::io("rename into the CAS", &dest))?;
            }
            Err(e) => return Err(StoreError::from_io("rename into the CAS", dest, e)),
        }
        self.mark_verified(d);
        self.touch(d);
        Ok(dest)
    }

    /// Store `bytes` (digest function of the store).
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<Digest, StoreError> {
        self.put_bytes_as(self.function, bytes)
    }

    /// Store `bytes` under digest function `f`.
    pub fn put_bytes_as(&self, f: DigestFunction, bytes: &[u8]) -> Result<Digest, StoreError> {
        let _g = self.shared();
        let d = Digest::of(f, bytes);
        if d.size > 0 && self.exists(&d) {
            self.touch(&d);
            return Ok(d);
        }
        let tmp = self.new_tmp_path("blob");
        let result = (|| {
            let mut file = create_new(&tmp, 0o444)?;
            file.write_all(bytes)
                .map_err(StoreError::io("write", &tmp))?;
            drop(file);
            self.install(&tmp, &d)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map(|_| d)
    }

    /// Copy the file at `path` into the CAS, hashing while copying. If the stat cache says the
    /// file is unchanged and its blob is present, nothing is read.
    pub fn put_file(&self, path: &Path) -> Result<Digest, StoreError> {
        let _g = self.shared();
        self.put_file_inner(path)
    }

    pub(crate) fn put_file_inner(&self, path: &Path) -> Result<Digest, StoreError> {
        let abs = std::path::absolute(path).map_err(StoreError::io("resolve", path))?;
        let meta = fs::metadata(&abs).map_err(StoreError::io("stat", &abs))?;
        if !meta.is_file() {
            return Err(StoreError::NotAFile { path: abs });
        }
        if let Some(d) = self.stat_lookup(&abs, &meta)?
            && self.exists(&d)
        {
            self.touch(&d);
            return Ok(d);
        }
        let mut src = File::open(&abs).map_err(StoreError::io("open", &abs))?;
        let m1 = src.metadata().map_err(StoreError::io("stat", &abs))?;
        let tmp = self.new_tmp_path("blob");
        let result = (|| {
            let mut out = create_new(&tmp, 0o444)?;
            let d = copy_hashing(self.function, &mut src, &abs, Some((&mut out, &tmp)))?;
            drop(out);
            let m2 = src.metadata().map_err(StoreError::io("stat", &abs))?;
            self.install(&tmp, &d)?;
            self.stat_record(&abs, &m1, &m2, d);
            Ok(d)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Hash the file at `path`, then rename it into the CAS ([`Store::put_file_move_at`] on
    /// its parent directory: a symlink is refused, a file with other hard links or on another
    /// file system is copied and its name removed).
    pub fn put_file_move(&self, path: &Path) -> Result<Digest, StoreError> {
        let (parent, name) = match (path.parent(), path.file_name()) {
            (Some(p), Some(n)) => (
                if p.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    p
                },
                n,
            ),
            _ => {
                return Err(StoreError::NotAFile {
                    path: path.to_path_buf(),
                });
            }
        };
        let dir = File::open(parent).map_err(StoreError::io("open", parent))?;
        Ok(self.put_file_move_at(&dir, name, path)?.0)
    }

    /// Moves the regular file `name` of the directory `dir` into the CAS without following
    /// any symlink: `name` is one path component opened with `O_NOFOLLOW` relative to `dir`
    /// (a directory handle the caller resolved without symlinks), renamed with `renameat`
    /// into this store's scratch space and checked to be the very inode that was opened
    /// before it is hashed and installed. A file with other hard links, one on another file
    /// system, or a name swapped under the move is copied from the opened descriptor instead
    /// (and its name removed). `shown` is its path for messages. Returns the digest and the
    /// file's permission bits before it became read-only.
    pub fn put_file_move_at(
        &self,
        dir: &File,
        name: &std::ffi::OsStr,
        shown: &Path,
    ) -> Result<(Digest, u32), StoreError> {
        use std::os::fd::{AsRawFd, FromRawFd};
        use std::os::unix::ffi::OsStrExt;
        let _g = self.shared();
        let bad_name = || StoreError::Io {
            op: "open",
            path: shown.to_path_buf(),
            error: io::Error::new(io::ErrorKind::InvalidInput, "not a single path component"),
        };
        if name.is_empty() || name.as_bytes().contains(&b'/') || name == ".." || name == "." {
            return Err(bad_name());
        }
        let cname = std::ffi::CString::new(name.as_bytes()).map_err(|_| bad_name())?;
        // SAFETY: openat with a valid directory descriptor and a NUL-terminated name; the
        // descriptor is owned by the `File` below. O_NONBLOCK: a FIFO must not block the open.
        let fd = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                cname.as_ptr(),
                libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK,
            )
        };
        if fd < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ELOOP) {
                return Err(StoreError::NotAFile {
                    path: shown.to_path_buf(),
                });
            }
            return Err(StoreError::from_io("open", shown.to_path_buf(), e));
        }
        // SAFETY: a fresh descriptor nothing else owns.
        let mut src = unsafe { File::from_raw_fd(fd) };
        let meta = src.metadata().map_err(StoreError::io("stat", shown))?;
        if !meta.is_file() {
            return Err(StoreError::NotAFile {
                path: shown.to_path_buf(),
            });
        }
        let mode = meta.mode() & 0o7777;
        let unlink_name = || {
            // SAFETY: unlinkat relative to `dir`; a name swapped in meanwhile is removed, never
            // followed.
            let r = unsafe { libc::unlinkat(dir.as_raw_fd(), cname.as_ptr(), 0) };
            let e = io::Error::last_os_error();
            if r < 0 && e.kind() != io::ErrorKind::NotFound {
                return Err(StoreError::from_io("remove", shown.to_path_buf(), e));
            }
            Ok(())
        };
        if meta.nlink() == 1 {
            let tmp = self.new_tmp_path("blob");
            let ctmp = std::ffi::CString::new(tmp.as_os_str().as_bytes())
                .expect("scratch paths hold no NUL");
            // SAFETY: renameat from `dir`/name to an absolute path in this store's scratch
            // directory; neither side follows a symlink at its last component.
            let r = unsafe {
                libc::renameat(
                    dir.as_raw_fd(),
                    cname.as_ptr(),
                    libc::AT_FDCWD,
                    ctmp.as_ptr(),
                )
            };
            if r == 0 {
                let moved = fs::symlink_metadata(&tmp).map_err(StoreError::io("stat", &tmp))?;
                if moved.ino() == meta.ino() && moved.dev() == meta.dev() {
                    let result = (|| {
                        let d = copy_hashing(self.function, &mut src, shown, None)?;
                        src.set_permissions(fs::Permissions::from_mode(0o444))
                            .map_err(StoreError::io("make read-only", shown))?;
                        self.install(&tmp, &d)?;
                        Ok((d, mode))
                    })();
                    if result.is_err() {
                        let _ = fs::remove_file(&tmp);
                    }
                    return result;
                }
                // Something else was renamed: it is not what was opened; drop it and copy.
                let _ = fs::remove_file(&tmp);
            } else {
                let e = io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EXDEV) {
                    return Err(StoreError::from_io(
                        "move into the CAS",
                        shown.to_path_buf(),
                        e,
                    ));
                }
            }
        }
        // Copy from the opened descriptor (never re-resolving the name).
        let tmp = self.new_tmp_path("blob");
        let result = (|| {
            let mut out = create_new(&tmp, 0o444)?;
            let d = copy_hashing(self.function, &mut src, shown, Some((&mut out, &tmp)))?;
            drop(out);
            self.install(&tmp, &d)?;
            Ok(d)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        let d = result?;
        unlink_name()?;
        Ok((d, mode))
    }

    /// Whether the blob is present (not verified; reading it verifies). Counts as a use.
    pub fn has(&self, d: &Digest) -> bool {
        let present = self.exists(d);
        if present {
            self.touch(d);
        }
        present
    }

    /// [`Store::has`], but true without a look at the disk for a blob this process verified
    /// or stored itself (eviction and collection forget those). For callers about to read
    /// the blob anyway, which report a blob lost meanwhile then.
    pub fn has_known(&self, d: &Digest) -> bool {
        if self.is_verified(d) {
            self.touch(d);
            return true;
        }
        self.has(d)
    }

    /// The blob's bytes, verified against its name. A corrupt blob is evicted and
    /// `Err(Corrupt)` returned; a missing one is `Err(NotFound)`.
    pub fn get_bytes(&self, d: &Digest) -> Result<Vec<u8>, StoreError> {
        let _g = self.shared();
        self.get_bytes_inner(d)
    }

    pub(crate) fn get_bytes_inner(&self, d: &Digest) -> Result<Vec<u8>, StoreError> {
        if d.is_empty_blob() {
            return Ok(Vec::new());
        }
        let path = self.blob_path(d);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound { digest: *d, path });
            }
            Err(e) => {
                return Err(StoreError::Io {
                    op: "read",
                    path,
                    error: e,
                });
            }
        };
        let actual = Digest::of(d.function, &bytes);
        if actual.hash != d.hash {
            return Err(self.evict_corrupt(d, path));
        }
        self.mark_verified(&actual);
        self.touch(&actual);
        Ok(bytes)
    }

    /// Delete a corrupt blob and its metadata; returns the error to report.
    pub(crate) fn evict_corrupt(&self, d: &Digest, path: PathBuf) -> StoreError {
        self.evict(d, &path);
        StoreError::Corrupt { digest: *d, path }
    }

    pub(crate) fn evict(&self, d: &Digest, path: &Path) {
        let _ = fs::remove_file(path);
        let key = d.key();
        lock(&self.verified).remove(&key);
        lock(&self.pending_access).remove(&key);
        // Best effort: gc and verify reconcile metadata with the files anyway.
        let _ = (|| -> Result<(), StoreError> {
            let txn = self.write_txn()?;
            {
                let mut t = txn.open_table(BLOBS).map_err(|e| self.db_err(e))?;
                t.remove(key.as_slice()).map_err(|e| self.db_err(e))?;
            }
            txn.commit().map_err(|e| self.db_err(e))
        })();
    }

    /// Hash the blob file unless this process already did; evict it if corrupt.
    pub(crate) fn ensure_verified(&self, d: &Digest) -> Result<(), StoreError> {
        if d.is_empty_blob() || self.is_verified(d) {
            return Ok(());
        }
        let path = self.blob_path(d);
        let mut f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound { digest: *d, path });
            }
            Err(e) => {
                return Err(StoreError::Io {
                    op: "open",
                    path,
                    error: e,
                });
            }
        };
        let actual = copy_hashing(d.function, &mut f, &path, None)?;
        if actual.hash != d.hash {
            return Err(self.evict_corrupt(d, path));
        }
        self.mark_verified(d);
        Ok(())
    }

    /// Make sure the empty blob has a file (it is "always present" but may never have been
    /// written), so it can be linked.
    fn ensure_empty_file(&self, d: &Digest) -> Result<(), StoreError> {
        if d.is_empty_blob() && !fs::metadata(self.blob_path(d)).is_ok_and(|m| m.len() == 0) {
            let tmp = self.new_tmp_path("blob");
            drop(create_new(&tmp, 0o444)?);
            self.install(&tmp, d)?;
        }
        Ok(())
    }

    /// Present the blob at `dest` as a read-only hard link (a read-only copy if linking is
    /// impossible, e.g. across file systems). Replaces an existing `dest`; creates parent
    /// directories. The blob is verified at most once per process.
    pub fn link_into(&self, d: &Digest, dest: &Path) -> Result<(), StoreError> {
        let _g = self.shared();
        self.ensure_verified(d)?;
        self.ensure_empty_file(d)?;
        let blob = self.blob_path(d);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match fs::hard_link(&blob, dest) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 3 => {
                    remove_existing(dest)?;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound && attempt < 3 => {
                    if !blob.exists() {
                        return Err(StoreError::NotFound {
                            digest: *d,
                            path: blob,
                        });
                    }
                    if let Some(parent) = dest.parent() {
                        fs::create_dir_all(parent)
                            .map_err(StoreError::io("create directory", parent))?;
                    }
                }
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EXDEV | libc::EMLINK | libc::EPERM | libc::ENOTSUP)
                    ) =>
                {
                    self.copy_out(d, dest, 0o444)?;
                    break;
                }
                Err(e) => {
                    return Err(StoreError::Io {
                        op: "hard-link a blob to",
                        path: dest.to_path_buf(),
                        error: e,
                    });
                }
            }
        }
        self.touch(d);
        Ok(())
    }

    /// The path of the blob's file, verified (at most once per process), for presenting it
    /// read-only without a copy (a read-only bind mount in the native sandbox). The caller
    /// must never open it for writing.
    pub fn verified_blob_path(&self, d: &Digest) -> Result<PathBuf, StoreError> {
        let _g = self.shared();
        self.ensure_verified(d)?;
        self.ensure_empty_file(d)?;
        self.touch(d);
        Ok(self.blob_path(d))
    }

    /// Write a verified copy of the blob to `dest` (temp file beside it, then rename), never
    /// sharing the blob's inode. Mode 0555 if `executable`, else 0444 (outputs are read-only,
    /// as in Bazel). Creates parent directories. Replaces an existing file at `dest`.
    pub fn materialize(&self, d: &Digest, dest: &Path, executable: bool) -> Result<(), StoreError> {
        let _g = self.shared();
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(StoreError::io("create directory", parent))?;
        }
        self.copy_out(d, dest, if executable { 0o555 } else { 0o444 })?;
        self.touch(d);
        // The bytes were verified while they were written: remember the file's stat so the
        // next build does not read it again. (Outside the racy-window rule: this process wrote
        // the file a moment ago, read-only, and knows exactly what it holds.)
        if let Ok(abs) = std::path::absolute(dest)
            && let Ok(meta) = fs::metadata(&abs)
        {
            self.stat_record_written(&abs, &meta, *d);
        }
        Ok(())
    }

    /// Write a verified copy of the blob `d` into `out`, a file the caller made (at `path`, for
    /// messages): the bytes are hashed as they are copied, and a corrupt blob is evicted.
    pub fn copy_into(&self, d: &Digest, out: &mut File, path: &Path) -> Result<(), StoreError> {
        let _g = self.shared();
        self.write_verified(d, out, path)?;
        self.touch(d);
        Ok(())
    }

    fn write_verified(
        &self,
        d: &Digest,
        out: &mut File,
        out_path: &Path,
    ) -> Result<(), StoreError> {
        if d.is_empty_blob() {
            return Ok(());
        }
        let blob = self.blob_path(d);
        let mut src = match File::open(&blob) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound {
                    digest: *d,
                    path: blob,
                });
            }
            Err(e) => {
                return Err(StoreError::Io {
                    op: "open",
                    path: blob,
                    error: e,
                });
            }
        };
        // Always hashed: a copy is read in full anyway, and hashing is cheaper than IO.
        let actual = copy_hashing(d.function, &mut src, &blob, Some((out, out_path)))?;
        if actual.hash != d.hash {
            return Err(self.evict_corrupt(d, blob));
        }
        self.mark_verified(d);
        Ok(())
    }

    /// Copy the blob to a temp file beside `dest` while hashing it, set `mode`, rename over
    /// `dest`. A corrupt blob is evicted and nothing is left at `dest`'s temp name.
    fn copy_out(&self, d: &Digest, dest: &Path, mode: u32) -> Result<(), StoreError> {
        let name = dest
            .file_name()
            .ok_or_else(|| StoreError::Io {
                op: "materialize to",
                path: dest.to_path_buf(),
                error: io::Error::new(io::ErrorKind::InvalidInput, "no file name"),
            })?
            .to_string_lossy();
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let tmp = dest.with_file_name(format!(".{name}.wbuild-tmp-{}-{n}", std::process::id()));
        let result = (|| {
            let mut out = create_new(&tmp, 0o644)?;
            self.write_verified(d, &mut out, &tmp)?;
            out.set_permissions(fs::Permissions::from_mode(mode))
                .map_err(StoreError::io("set permissions of", &tmp))?;
            drop(out);
            fs::rename(&tmp, dest).map_err(StoreError::io("rename over", dest))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    // ----------------------------------------------------------------------------------------
    // Flush

    /// Durably commit (`Durability::Immediate`) everything buffered: blob access times, stat
    /// cache updates, build-history records.
    pub fn flush(&self) -> Result<(), StoreError> {
        let _f = lock(&self.flush_lock);
        let access = std::mem::take(&mut *lock(&self.pending_access));
        let stats = std::mem::take(&mut *lock(&self.stat_dirty));
        let hist = lock(&self.history).take_pending();
        // Nothing buffered and nothing committed since the last durable commit: a no-op build
        // (or a second flush) writes nothing.
        let undurable = self.undurable.swap(false, Ordering::SeqCst);
        if !undurable && access.is_empty() && stats.is_empty() && hist.is_empty() {
            return Ok(());
        }
        let result = self.flush_taken(&access, &stats, &hist);
        if result.is_err() {
            self.undurable.store(true, Ordering::SeqCst);
        }
        result
    }

    fn flush_taken(
        &self,
        access: &HashMap<Key, (u64, u64)>,
        stats: &HashMap<PathBuf, Option<StatEntry>>,
        hist: &crate::history::PendingHistory,
    ) -> Result<(), StoreError> {
        let txn = self.durable_txn()?;
        {
            let mut blobs = txn.open_table(BLOBS).map_err(|e| self.db_err(e))?;
            for (key, (size, at)) in access {
                let old = blobs
                    .get(key.as_slice())
                    .map_err(|e| self.db_err(e))?
                    .map(|v| v.value());
                let row = match old {
                    Some((old_size, old_at)) => (old_size, old_at.max(*at)),
                    None => (*size, *at),
                };
                blobs
                    .insert(key.as_slice(), row)
                    .map_err(|e| self.db_err(e))?;
            }
        }
        {
            let mut t = txn.open_table(STAT_CACHE).map_err(|e| self.db_err(e))?;
            for (path, entry) in stats {
                let k = crate::stat::path_key(path);
                match entry {
                    Some(e) => {
                        t.insert(k, e.encode().as_slice())
                            .map_err(|e| self.db_err(e))?;
                    }
                    None => {
                        t.remove(k).map_err(|e| self.db_err(e))?;
                    }
                }
            }
        }
        self.write_history(&txn, hist)?;
        txn.commit().map_err(|e| self.db_err(e))
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = self.flush();
        if fs::remove_dir_all(&self.tmp).is_err() {
            // Staging trees may hold read-only directories.
            crate::maint::make_writable(&self.tmp);
            let _ = fs::remove_dir_all(&self.tmp);
        }
    }
}

thread_local! {
    static GUARDED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the current thread is inside a redb call whose panic the store handles itself
/// (a panic hook should stay quiet about it).
pub fn redb_panic_is_handled() -> bool {
    GUARDED.with(|g| g.get())
}

/// Runs `f`, turning a panic into `Err(message)`.
fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    GUARDED.with(|g| g.set(true));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(false));
    r.map_err(|p| {
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "unknown panic".to_owned())
    })
}

/// File in the cache directory asking the next open to check the index's integrity.
pub const INDEX_CHECK_MARKER: &str = "index.check-needed";

/// Result of a full integrity check of the index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IndexCheck {
    Clean,
    /// redb found damage and repaired it.
    Repaired,
    /// redb could not repair it: the index was moved aside and rebuilt empty (the blobs
    /// stay; action-cache entries are lost, so actions run again).
    Replaced {
        aside: PathBuf,
        reason: String,
    },
}

impl Store {
    /// Asks the next process that opens the cache at `dir` to check its index (after a
    /// panic inside redb, which means the index is damaged).
    pub fn request_index_check(dir: &Path) {
        let _ = fs::write(dir.join(INDEX_CHECK_MARKER), b"");
    }

    /// The integrity check this open ran, if any.
    pub fn index_check(&self) -> Option<&IndexCheck> {
        self.index_check.as_ref()
    }
}

/// Whether a redb error means the index holds damaged data (our table names are versioned,
/// so a table of the wrong type or a changed type definition can only be damage).
fn is_damage(e: &redb::Error) -> bool {
    match e {
        redb::Error::Corrupted(_)
        | redb::Error::TableTypeMismatch { .. }
        | redb::Error::TableIsMultimap(_)
        | redb::Error::TableIsNotMultimap(_)
        | redb::Error::TypeDefinitionChanged { .. } => true,
        redb::Error::Io(io) => is_content_error(io),
        _ => false,
    }
}

/// An I/O error redb makes of what it read, not of the device: a page pointer past the end of
/// the file (unexpected end of file) or a wrong magic number (invalid data).
fn is_content_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData
    )
}

/// Whether opening failed because the file is damaged or of an incompatible version.
fn unreadable_at_open(e: &DatabaseError) -> bool {
    match e {
        DatabaseError::UpgradeRequired(_) | DatabaseError::Storage(StorageError::Corrupted(_)) => {
            true
        }
        DatabaseError::Storage(StorageError::Io(e)) => is_content_error(e),
        _ => false,
    }
}

/// Open the redb index, waiting while another process holds it. An index redb cannot read
/// (corrupted outside redb, or from an incompatible version) is moved aside and recreated:
/// it is only an index, blobs stay valid.
fn open_db(
    dir: &Path,
    index: &Path,
    timeout: Duration,
    open_index: Option<&IndexOpener>,
) -> Result<Database, StoreError> {
    let start = Instant::now();
    let mut moved_aside = false;
    loop {
        // redb trusts its pages: opening a damaged file can panic in its repair pass. That
        // is a corrupted index here, handled like one.
        let opened = guarded(|| {
            let mut builder = redb::Builder::new();
            builder.set_cache_size(64 * 1024 * 1024);
            match open_index {
                None => builder.create(index),
                Some(open_index) => {
                    let file = OpenOptions::new()
                        .read(true)
                        .write(true)
                        .create(true)
                        .truncate(false)
                        .open(index)?;
                    open_index(&builder, file)
                }
            }
        })
        .unwrap_or_else(|msg| {
            Err(DatabaseError::Storage(StorageError::Corrupted(format!(
                "redb panicked reading it: {msg}"
            ))))
        });
        match opened {
            Ok(db) => return Ok(db),
            Err(e) if is_already_open(&e) => {
                if start.elapsed() >= timeout {
                    return Err(StoreError::Locked {
                        dir: dir.to_path_buf(),
                        waited_secs: start.elapsed().as_secs(),
                    });
                }
                std::thread::sleep(LOCK_POLL);
            }
            // Unreadable (or from an incompatible version): move it aside, once.
            Err(e) if !moved_aside && unreadable_at_open(&e) => {
                moved_aside = true;
                let aside = index.with_extension(format!("redb.broken-{}", now_ms()));
                fs::rename(index, &aside)
                    .map_err(|io| StoreError::from_io("move aside", index.to_path_buf(), io))?;
            }
            Err(e) => return Err(StoreError::from_db(index.to_path_buf(), e.into())),
        }
    }
}

/// Below this much free space, [`Store::full_device_note`] calls the device full.
const FULL_DEVICE_BYTES: u64 = 1 << 20;

pub(crate) fn create_new(path: &Path, mode: u32) -> Result<File, StoreError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(StoreError::io("create", path))
}

fn remove_existing(path: &Path) -> Result<(), StoreError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::Io {
            op: "replace",
            path: path.to_path_buf(),
            error: e,
        }),
    }
}

thread_local! {
    static BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; COPY_BUF]);
}

/// The digest of the open file `file` (at `path`, for messages), read from where it is to
/// the end.
pub fn digest_of_open(
    f: DigestFunction,
    file: &mut File,
    path: &Path,
) -> Result<Digest, StoreError> {
    copy_hashing(f, file, path, None)
}

/// Read `src` to the end, hashing it (and writing it to `sink` if given).
pub(crate) fn copy_hashing(
    f: DigestFunction,
    src: &mut File,
    src_path: &Path,
    mut sink: Option<(&mut File, &Path)>,
) -> Result<Digest, StoreError> {
    BUF.with(|buf| {
        let mut buf = buf.borrow_mut();
        let mut h = Hasher::new(f);
        loop {
            let n = match src.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(StoreError::Io {
                        op: "read",
                        path: src_path.to_path_buf(),
                        error: e,
                    });
                }
            };
            h.update(&buf[..n]);
            if let Some((out, out_path)) = sink.as_mut() {
                out.write_all(&buf[..n])
                    .map_err(StoreError::io("write", *out_path))?;
            }
        }
        Ok(h.finish())
    })
}
