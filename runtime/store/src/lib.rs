//! `wbuild-store`: the local content-addressed store and index of wbuild.
//!
//! What it is for:
//! - **Digests** ([`Digest`], [`DigestFunction`], [`Hasher`]): BLAKE3 by default, SHA-256 for
//!   REAPI peers that speak nothing else; conversion to and from REAPI `Digest` messages.
//! - **CAS**: immutable blobs stored as files `<dir>/cas/<2 hex>/<hex>` (SHA-256 blobs under
//!   `cas-sha256/`), mode 0444, written to a temp file and renamed into place.
//! - **Action cache**: REAPI `ActionResult`s keyed by action digest, in a redb index
//!   (`<dir>/index.redb`) with a label index and per-action access logs.
//! - **Stat cache**: (path, dev, inode, size, mtime, ctime) -> digest, so unchanged files are
//!   not re-hashed; held in memory and written by [`Store::flush`].
//! - **Build history**: builds, per-action outcome and duration (for `wbuild explain` and
//!   critical-path priority).
//! - **Maintenance**: [`Store::gc`] (LRU under a size cap), [`Store::verify`] (re-hash, repair).
//!
//! What it must never do:
//! - **Serve unverified bytes.** Every read path hashes the blob (`link_into` at most once per
//!   process and digest); a blob whose bytes do not hash to its name is evicted and reported
//!   as [`StoreError::Corrupt`], never returned.
//! - **Write an action-cache entry before its blobs.** [`Store::ac_put`] refuses a result
//!   that references an absent blob, and [`Store::ac_get`] drops an entry whose blobs have
//!   gone, so a cache hit always has its outputs.
//! - **Hold absolute host paths in action keys.** The store only keys actions by the digest
//!   its callers compute; absolute paths appear only in the stat cache, which is local to
//!   this machine and never part of any key.
//! - **Leave an unusable store after a crash.** Blobs become visible only by rename; redb
//!   commits are atomic (ordinary ones with `Durability::None`, lost as a whole on a crash;
//!   `flush` commits durably); stale temp files are ignored and cleaned by `verify`/`gc`.
//!
//! One process at a time holds a store (redb's file lock); [`Store::open`] waits for it.

mod ac;
mod digest;
mod error;
mod history;
mod incoming;
mod maint;
mod observed;
mod stat;
mod store;
mod tables;
mod types;

#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod store_tests;
#[cfg(test)]
pub(crate) mod test_util;

pub use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
pub use digest::{Digest, DigestFunction, Hasher, digest_message};
pub use error::StoreError;
pub use history::{PENDING_BUILDS, record_pending_build};
pub use incoming::{BlobFile, IncomingBlob, IncomingError};
pub use observed::PATH_SETS_PER_KEY;
pub use stat::{RACY_NS, StatKey};
pub use store::{
    DEFAULT_LOCK_TIMEOUT, INDEX_CHECK_MARKER, IndexCheck, IndexOpener, Store, digest_of_open,
    redb_panic_is_handled,
};
pub use types::{ActionRecord, BuildRecord, CorruptBlob, GcReport, Stats, VerifyReport};
