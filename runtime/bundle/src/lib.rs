//! Hermetic toolchain bundles: pack a toolchain into one content-addressed file, sign it
//! (minisign format), publish it to an OCI registry, fetch, verify and install it into the
//! cache, where builds use it pinned by digest.
//!
//! - [`manifest`]: the manifest (name, version, platform, entry points, env, every file
//!   with path, mode and SHA-256); the bundle digest is the manifest's SHA-256.
//! - [`file`]: the bundle file (deterministic tar: manifest, signatures, blobs).
//! - [`pack`]: `toolchain.toml` definitions and directory trees to manifests.
//! - [`sign`]: minisign keys and signatures.
//! - [`install`]: installed toolchains under `<cache>/toolchains/`.
//! - [`oci`], [`registry`]: the OCI distribution client, and bundles as OCI artifacts.

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

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Definition { path: PathBuf, message: String },
    #[error("{what}: bad manifest: {message}")]
    BadManifest { what: String, message: String },
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
    #[error("{0}")]
    Oci(#[from] oci::OciError),
    #[error("{reference}: {message}")]
    Registry { reference: String, message: String },
    /// Internal: reading stopped because the bundle is already installed.
    #[error("already installed")]
    AlreadyInstalled,
}

pub(crate) fn io_err(path: &Path, source: std::io::Error) -> BundleError {
    BundleError::Io {
        path: path.to_owned(),
        source,
    }
}
