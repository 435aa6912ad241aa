//! The store's error type.

use std::io;
use std::path::PathBuf;

use crate::Digest;

/// Everything that can go wrong in the store. Each message names the thing at fault and,
/// where there is one, what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file-system operation failed.
    #[error("cannot {op} {}: {error}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        error: io::Error,
    },

    /// A blob's bytes do not hash to its name. It has already been evicted (file deleted,
    /// metadata dropped); whatever produced it must be re-run.
    #[error(
        "blob {digest} at {} is corrupt (its contents do not hash to its name); it was evicted from the cache, re-run the build to recreate it",
        path.display()
    )]
    Corrupt { digest: Digest, path: PathBuf },

    /// The blob is not in the CAS.
    #[error("blob {digest} is not in the cache (expected at {})", path.display())]
    NotFound { digest: Digest, path: PathBuf },

    /// `ac_put` was asked to record a result whose blobs are not all stored.
    #[error(
        "cannot record action {action} in the action cache: its {what} {digest} is not in the CAS; store every output blob before the action result"
    )]
    MissingBlob {
        action: Digest,
        what: String,
        digest: Digest,
    },

    /// A digest string or message could not be parsed.
    #[error("invalid digest '{input}': {reason}")]
    InvalidDigest { input: String, reason: String },

    /// Another process holds the store for longer than the open timeout.
    #[error(
        "another wbuild is using cache {} (waited {waited_secs} s); wait for it to finish, or use a different --cache-dir",
        dir.display()
    )]
    Locked { dir: PathBuf, waited_secs: u64 },

    /// The cache directory (or a file in it) cannot be written: a read-only file system or
    /// missing permissions. Nothing was changed.
    #[error(
        "cannot {op} {}: {error}; the cache directory must be writable: fix its permissions, or pass a writable --cache-dir (or set XDG_CACHE_HOME)",
        path.display()
    )]
    NotWritable {
        op: &'static str,
        path: PathBuf,
        error: io::Error,
    },

    /// The device holding the cache is full. What was being written is discarded whole;
    /// the cache stays consistent.
    #[error(
        "cannot {op} {}: {error}; the device holding the cache is full. Nothing partial was kept: free space, shrink the cache with `wbuild cache gc --max-size SIZE`, or pass another --cache-dir",
        path.display()
    )]
    NoSpace {
        op: &'static str,
        path: PathBuf,
        error: io::Error,
    },

    /// The redb index failed.
    #[error(
        "cache index {}: {error}; if this persists, delete that file (blobs stay valid and are re-indexed by `verify`)",
        path.display()
    )]
    Database {
        path: PathBuf,
        error: Box<redb::Error>,
    },

    /// The redb index holds damaged data (a corrupted page or table definition). The next
    /// open checks it and repairs or replaces it.
    #[error(
        "the cache index {} is damaged ({error}); nothing was built from it. The next wbuild command checks and repairs it; `wbuild cache verify` does so now",
        path.display()
    )]
    Damaged {
        path: PathBuf,
        error: Box<redb::Error>,
    },

    /// `file_digest`/`put_file` was given something that is not a regular file.
    #[error("{} is not a regular file", path.display())]
    NotAFile { path: PathBuf },

    /// `record_action`/`finish_build` named a build that `begin_build` never returned.
    #[error("unknown build id {id} in cache {}", dir.display())]
    UnknownBuild { id: u64, dir: PathBuf },

    /// An encoded value read back from the store (or handed to it) is malformed.
    #[error("{what}: {message}")]
    Malformed { what: String, message: String },
}

impl StoreError {
    /// Whether this error is [`StoreError::Corrupt`] (the blob was evicted; re-run its producer).
    pub fn is_corrupt(&self) -> bool {
        matches!(self, StoreError::Corrupt { .. })
    }

    /// Whether this error is [`StoreError::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::NotFound { .. })
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| StoreError::from_io(op, path, source)
    }

    /// An I/O error on a path of the cache, classified: a read-only or full device, or refused
    /// permission to write, get messages that say what to do.
    pub(crate) fn from_io(op: &'static str, path: PathBuf, source: io::Error) -> Self {
        match classify(op, &source) {
            Some(Storage::NotWritable) => StoreError::NotWritable {
                op,
                path,
                error: source,
            },
            Some(Storage::Full) => StoreError::NoSpace {
                op,
                path,
                error: source,
            },
            None => StoreError::Io {
                op,
                path,
                error: source,
            },
        }
    }

    /// A redb failure on the index file: as [`StoreError::from_io`] when it is one of those
    /// device errors, else [`StoreError::Database`].
    pub(crate) fn from_db(path: PathBuf, e: redb::Error) -> Self {
        if let redb::Error::Io(io) = &e
            && let Some(kind) = classify("write", io)
        {
            let source = io::Error::new(io.kind(), io.to_string());
            return match kind {
                Storage::NotWritable => StoreError::NotWritable {
                    op: "write",
                    path,
                    error: source,
                },
                Storage::Full => StoreError::NoSpace {
                    op: "write",
                    path,
                    error: source,
                },
            };
        }
        StoreError::Database {
            path,
            error: Box::new(e),
        }
    }
}

enum Storage {
    NotWritable,
    Full,
}

/// Device errors with their own advice. Permission errors count only for operations that write
/// (a source file the user cannot read is not a cache problem).
fn classify(op: &str, e: &io::Error) -> Option<Storage> {
    const WRITES: [&str; 8] = [
        "create directory",
        "create",
        "move aside",
        "remove",
        "rename into the CAS",
        "rename over",
        "set permissions of",
        "write",
    ];
    match e.kind() {
        io::ErrorKind::ReadOnlyFilesystem => Some(Storage::NotWritable),
        io::ErrorKind::PermissionDenied if WRITES.contains(&op) => Some(Storage::NotWritable),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => Some(Storage::Full),
        _ => None,
    }
}
