//! Hermetic toolchain bundles: pack a toolchain into one content-addressed file, sign it
//! (minisign format), publish it to an OCI registry, fetch, verify and install it into the
//! cache, where builds use it pinned by digest.
//!
//! - [`manifest`]: the manifest (name, version, platform, entry points, env, every file
//!   with path, mode and SHA-256); the bundle digest is the manifest's SHA-256.
//! - [`file`](mod@file): the bundle file (deterministic tar: manifest, signatures, blobs).
//! - [`pack`]: `toolchain.toml` definitions and directory trees to manifests.
//! - [`sign`]: minisign keys and signatures.
//! - [`install`]: installed toolchains under `<cache>/toolchains/`.
//! - [`oci`], [`registry`]: the OCI distribution client, and bundles as OCI artifacts.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

pub mod capture;
pub mod file;
pub mod install;
pub mod manifest;
pub mod oci;
pub mod pack;
pub mod registry;
pub mod sign;

pub use file::BundleHead;
pub use install::{Installed, Toolchains};
pub use manifest::Manifest;
pub use sign::{Trust, TrustedKey};

/// Errors of this crate. A message includes its cause (an I/O error, a registry's answer,
/// ...), and `source()` returns none, so a report that walks the chain (`{e:#}`) shows
/// each cause once.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        /// Printed in the message (not returned by `source()`, so that it is shown once).
        error: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Definition { path: PathBuf, message: String },
    #[error("{what}: bad manifest: {message}")]
    BadManifest { what: String, message: String },
    #[error("{what}: bad manifest: {error}")]
    InvalidManifest {
        what: String,
        error: manifest::ManifestError,
    },
    #[error("{}: not a valid bundle: {message}", path.display())]
    BadBundle { path: PathBuf, message: String },
    #[error(
        "{what}: blob {digest} ({}) has content {actual}: the bundle was tampered with or \
         corrupted; do not use it",
        paths.join(", ")
    )]
    BlobMismatch {
        what: String,
        digest: String,
        actual: String,
        paths: Vec<String>,
    },
    #[error("{}: changed while it was being packed; pack again", path.display())]
    Changed { path: PathBuf },
    #[error("{}: {message}", path.display())]
    Key { path: PathBuf, message: String },
    #[error("{what}: signature check failed: {message}")]
    Signature { what: String, message: String },
    #[error(
        "{what}: the bundle's digest is {actual}, but {expected} is pinned; if the new \
         bundle is intended, update the pin in wbuild.toml"
    )]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("'{0}' is not a bundle digest (sha256:<64 lowercase hex digits>)")]
    BadDigest(String),
    #[error("{}: {message}; remove the toolchain and fetch it again", path.display())]
    Tampered { path: PathBuf, message: String },
    #[error(transparent)]
    Oci(#[from] oci::OciError),
    #[error("{reference}: {message}")]
    Registry { reference: String, message: String },
    /// Internal: reading stopped because the bundle is already installed.
    #[error("already installed")]
    AlreadyInstalled,
}

pub(crate) fn io_err(path: &Path, error: std::io::Error) -> BundleError {
    BundleError::Io {
        path: path.to_owned(),
        error,
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error;

    use super::*;

    /// What a report that walks the cause chain (anyhow's `{e:#}`) prints.
    fn report(e: &dyn Error) -> String {
        let mut out = e.to_string();
        let mut cause = e.source();
        while let Some(c) = cause {
            out.push_str(": ");
            out.push_str(&c.to_string());
            cause = c.source();
        }
        out
    }

    fn assert_shown_once(e: &BundleError, cause: &str) {
        let shown = report(e);
        assert_eq!(shown.matches(cause).count(), 1, "{cause:?} in {shown:?}");
    }

    #[test]
    fn causes_are_shown_once() {
        let io = || std::io::Error::other("disk on fire");
        assert_shown_once(&io_err(Path::new("/x/y"), io()), "disk on fire");
        let oci_io = oci::OciError::Io {
            action: "reading",
            path: PathBuf::from("/x/z"),
            error: io(),
        };
        assert_shown_once(&BundleError::from(oci_io), "disk on fire");

        // Nothing listens on port 1: a transport error, whose cause is ureq's.
        let client =
            oci::Client::with_options("127.0.0.1:1", &oci::ClientOptions::default()).unwrap();
        let err = client.ping().unwrap_err();
        let oci::OciError::Transport { error, .. } = &err else {
            panic!("not a transport error: {err:?}");
        };
        let cause = error.to_string();
        assert_shown_once(&BundleError::from(err), &cause);

        let invalid = Manifest::parse(b"{}", "m.json").unwrap_err();
        assert!(invalid.source().is_none(), "{invalid:?}");
    }
}
