//! Plain records the store returns: build history and maintenance reports.

use std::path::PathBuf;

/// One action of a build, as recorded in the build history. The fields after `duration_ms`
/// were added later: rows written before them decode with their defaults (`None`).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ActionRecord {
    /// The action's name: its label, then its detail (`ActionNode::name`).
    pub label: String,
    pub mnemonic: String,
    /// `<hex>/<size>` of the action digest (empty if none was computed): finds its access log.
    pub action_digest: String,
    /// `"executed"`, `"cached"`, `"remote_cached"`, `"remote_executed"` or `"failed"`.
    pub status: String,
    pub duration_ms: u64,
    /// When it started, in microseconds from the build's start (`BuildRecord::start_unix_ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_us: Option<u64>,
    /// How long it took, in microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_us: Option<u64>,
    /// The worker slot it ran on (0 .. jobs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<u64>,
    /// Why it failed: the error and the first lines of the tool's output
    /// ([`ActionRecord::failure_excerpt`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The names of the actions it depends on; `None` when not recorded (older rows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deps: Option<Vec<String>>,
}

impl ActionRecord {
    /// At most this many lines of a failure are kept in the history.
    pub const FAILURE_LINES: usize = 20;
    /// At most this many bytes of a failure are kept in the history.
    pub const FAILURE_BYTES: usize = 4096;

    /// What the history keeps of a failure: the error, then the tool's output, cut to the
    /// first [`Self::FAILURE_LINES`] lines and [`Self::FAILURE_BYTES`] bytes (on a character
    /// boundary), with a last line saying how much was left out.
    pub fn failure_excerpt(error: Option<&str>, output: Option<&str>) -> Option<String> {
        let text = [error, output]
            .into_iter()
            .flatten()
            .map(str::trim_end)
            .filter(|t| !t.is_empty())
            .collect::<Vec<_>>()
            .join("\n");
        if text.is_empty() {
            return None;
        }
        let total_lines = text.lines().count();
        let mut kept = String::new();
        let mut lines = 0;
        for line in text.lines().take(Self::FAILURE_LINES) {
            if !kept.is_empty() {
                kept.push('\n');
            }
            kept.push_str(line);
            lines += 1;
        }
        let mut cut = lines < total_lines;
        if kept.len() > Self::FAILURE_BYTES {
            let mut end = Self::FAILURE_BYTES;
            while !kept.is_char_boundary(end) {
                end -= 1;
            }
            kept.truncate(end);
            cut = true;
        }
        if cut {
            kept.push_str(&format!(
                "\n[... cut: {} lines, {} bytes in all]",
                total_lines,
                text.len()
            ));
        }
        Some(kept)
    }
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
