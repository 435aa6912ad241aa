//! What a build reports: the status of each action, the events the progress display and the
//! `--events` file receive, and the sink they go to.

use serde::Serialize;

/// Result status of one action.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Executed,
    Cached,
    /// Found in the remote cache (outputs fetched from it).
    RemoteCached,
    /// Run by a worker of the remote executor (outputs fetched from the remote CAS).
    RemoteExecuted,
    Failed,
    /// Not run because a dependency failed or the build stopped.
    Skipped,
}

impl Status {
    pub fn as_str(&self) -> &'static str {
        match self {
            Status::Executed => "executed",
            Status::Cached => "cached",
            Status::RemoteCached => "remote_cached",
            Status::RemoteExecuted => "remote_executed",
            Status::Failed => "failed",
            Status::Skipped => "skipped",
        }
    }
}

/// Something that happened, for the progress display and the `--events` file.
// One event exists at a time, passed by reference to the sink: the action variant's size
// costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Action {
        label: String,
        mnemonic: String,
        /// For a target with several actions, what this one works on (the source of a
        /// `CcCompile`); absent for the target's main action.
        #[serde(skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
        status: Status,
        duration_ms: u64,
        /// When it started (microseconds since the Unix epoch) and how long it took
        /// (microseconds), and the worker slot it ran on: the build's timeline.
        start_us: u64,
        duration_us: u64,
        slot: usize,
        #[serde(skip_serializing_if = "Option::is_none")]
        action_digest: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        /// Tool output shown to the user (failed actions, warnings, or on request).
        #[serde(skip_serializing_if = "Option::is_none")]
        output: Option<String>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        warnings: Vec<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        accesses: Option<serde_json::Value>,
        /// Native actions: the target platform (`linux-x86_64`, `linux-arm64`).
        #[serde(skip_serializing_if = "Option::is_none")]
        platform: Option<String>,
        /// The remote worker that ran it (`remote_executed`, or a failure on a worker).
        #[serde(skip_serializing_if = "Option::is_none")]
        worker: Option<String>,
        /// Whether a speculative second submission (a straggler's) delivered the result.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        resubmitted: bool,
        /// Where its time went: key, cache lookup, staging, execution, output ingestion,
        /// upload, ... (a remote worker's queue, fetch, execution and upload times too).
        #[serde(skip_serializing_if = "Vec::is_empty")]
        phases: Vec<crate::Phase>,
    },
    /// Something about the whole build (e.g. the remote cache became unreachable).
    Warning { message: String },
    BuildFinished {
        executed: u64,
        cached: u64,
        /// Actions satisfied by the remote cache (not counted in `cached`).
        remote_cached: u64,
        /// Actions run by remote workers (not counted in `executed`).
        remote_executed: u64,
        /// RPCs made to the remote cache (absent without one).
        #[serde(skip_serializing_if = "Option::is_none")]
        remote_rpcs: Option<u64>,
        /// Bytes received from the remote: downloaded blobs and inlined contents (absent
        /// without one).
        #[serde(skip_serializing_if = "Option::is_none")]
        remote_bytes_downloaded: Option<u64>,
        failed: u64,
        skipped: u64,
        /// Files read and hashed because the stat cache could not vouch for them.
        files_hashed: u64,
        /// Tool modules compiled by cranelift in this build (not found in the on-disk cache).
        modules_compiled: u64,
        duration_ms: u64,
        interrupted: bool,
    },
}

/// Receives events; called from worker threads.
pub trait EventSink: Send + Sync {
    fn event(&self, e: &Event);
}
