//! redb table definitions (the on-disk schema of `index.redb`).
//!
//! Digest keys are 33 bytes: a digest-function code (1 = BLAKE3, 2 = SHA-256) and the hash.
//! A full digest (e.g. in the label index) appends the size as u64 little endian (41 bytes).

use redb::{MultimapTableDefinition, TableDefinition};

/// Action digest key -> encoded entry (see `ac.rs`: version, checksum, time, label, action
/// size, prost-encoded `ActionResult`).
pub(crate) const AC: TableDefinition<&[u8], &[u8]> = TableDefinition::new("ac_v2");
/// Label -> full action digest (41 bytes), for `ac_find_by_label`.
pub(crate) const AC_LABEL: MultimapTableDefinition<&str, &[u8]> =
    MultimapTableDefinition::new("ac_label_v1");
/// Blob key -> (size, last access unix ms). An index for GC; the blob files are the truth.
pub(crate) const BLOBS: TableDefinition<&[u8], (u64, u64)> = TableDefinition::new("blobs_v1");
/// Absolute path bytes -> encoded stat entry (see `stat.rs`).
pub(crate) const STAT_CACHE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("stat_v2");
/// Action digest key -> access log JSON (opaque, from exec-wasi).
pub(crate) const ACCESS_LOGS: TableDefinition<&[u8], &str> = TableDefinition::new("access_v1");
/// Build id -> `BuildRecord` JSON.
pub(crate) const BUILDS: TableDefinition<u64, &str> = TableDefinition::new("builds_v1");
/// (build id, sequence) -> `ActionRecord` JSON.
pub(crate) const BUILD_ACTIONS: TableDefinition<(u64, u64), &str> =
    TableDefinition::new("build_actions_v1");
/// Name of a file of no-op builds already folded into `BUILDS` (see `history.rs`) -> when.
/// Kept until the file is gone, so a fold interrupted before it removed the file does not
/// fold it twice.
pub(crate) const FOLDED_BUILDS: TableDefinition<&str, u64> =
    TableDefinition::new("folded_builds_v1");
/// Action label -> most recent executed duration in ms.
pub(crate) const DURATIONS: TableDefinition<&str, u64> = TableDefinition::new("durations_v1");
/// Weak key (33 bytes) ++ path-set hash (32 bytes) -> encoded path set (see `observed.rs`:
/// version, checksum, last use, the path set's bytes). At most `PATH_SETS_PER_KEY` per weak key.
pub(crate) const PATH_SETS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("path_sets_v1");
/// Strong key (33 bytes) -> checksummed full digest of the action whose run recorded it.
pub(crate) const OBSERVED: TableDefinition<&[u8], &[u8]> = TableDefinition::new("observed_v1");
/// Action identity (label, mnemonic, detail, platform, NUL-separated) -> what its last run's
/// key was made of (JSON, opaque to the store; see `wbuild why`).
pub(crate) const KEY_MANIFESTS: TableDefinition<&str, &str> =
    TableDefinition::new("key_manifests_v1");
