//! Plain records the store returns: build history and maintenance reports.

use std::path::PathBuf;

/// One action of a build, as recorded in the build history.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ActionRecord {
    pub label: String,
    pub mnemonic: String,
    pub action_digest: String,
    /// `"executed"`, `"cached"` or `"failed"`.
    pub status: String,
    pub duration_ms: u64,
}

/// One build (`begin_build` .. `finish_build`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BuildRecord {
    pub id: u64,
    pub command: String,
    pub targets: Vec<String>,
    pub start_unix_ms: u64,
    pub end_unix_ms: Option<u64>,
    /// `"success"`, `"failed"` or `"interrupted"`; `None` while running, or if the process died.
    pub outcome: Option<String>,
    pub executed: u64,
    pub cached: u64,
    pub failed: u64,
}

/// What the store holds (`wbuild cache stats`).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    /// Blob files in the CAS (all digest functions).
    pub blobs: u64,
    /// Sum of their sizes.
    pub blob_bytes: u64,
    pub ac_entries: u64,
    pub builds: u64,
    pub stat_cache_entries: u64,
    pub access_logs: u64,
}

/// What `gc` did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GcReport {
    pub max_bytes: u64,
    pub blobs_before: u64,
    pub bytes_before: u64,
    pub blobs_deleted: u64,
    pub bytes_deleted: u64,
    pub blobs_after: u64,
    pub bytes_after: u64,
    /// Action-cache entries dropped because a blob they reference was deleted (or was
    /// already missing).
    pub ac_entries_dropped: u64,
    /// Stale temporary files or directories (left by dead processes) removed.
    pub tmp_entries_removed: u64,
}

/// A blob `verify` found corrupt (and evicted).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CorruptBlob {
    /// `<hex>/<size>` of the name the blob was stored under (size as found on disk).
    pub digest: String,
    pub function: crate::DigestFunction,
    pub path: PathBuf,
}

/// What `verify` found and repaired.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VerifyReport {
    pub blobs_checked: u64,
    pub bytes_checked: u64,
    /// Blobs whose bytes did not hash to their name; all were deleted.
    pub corrupt: Vec<CorruptBlob>,
    /// Files in the CAS directories that are not named like blobs; all were deleted.
    pub stray_files_removed: Vec<PathBuf>,
    /// Action-cache entries dropped: undecodable, or referencing a missing blob.
    pub ac_entries_dropped: u64,
    /// Blob metadata rows added for blobs that had none (e.g. after a crash).
    pub metadata_added: u64,
    /// Blob metadata rows removed for blobs that no longer exist.
    pub metadata_removed: u64,
    /// Stat-cache entries dropped because their file no longer exists.
    pub stat_entries_dropped: u64,
    /// Stale temporary files or directories (left by dead processes) removed.
    pub tmp_entries_removed: u64,
}

impl VerifyReport {
    /// True if verify found nothing to repair (stale temp files and stat entries of deleted
    /// files are routine and do not count).
    pub fn is_clean(&self) -> bool {
        self.corrupt.is_empty()
            && self.stray_files_removed.is_empty()
            && self.ac_entries_dropped == 0
            && self.metadata_added == 0
            && self.metadata_removed == 0
    }
}
