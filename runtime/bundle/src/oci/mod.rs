//! Publishing and fetching toolchain bundles as OCI artifacts.
//!
//! A small blocking client for the OCI Distribution Spec (v1.0/v1.1) HTTP API: blob
//! existence checks, monolithic blob uploads (from memory or streamed from a file),
//! manifest push and pull, and blob downloads verified against their sha256 digest.
//!
//! References look like `oci://host[:port]/repo/path[:tag][@sha256:<hex>]`.
//!
//! # Transport
//!
//! `oci://host/...` is reached over **HTTPS**, except loopback registries (`localhost`,
//! `127.0.0.0/8`, `[::1]`), which are reached over plain HTTP unless `WBUILD_OCI_TLS=1`
//! (or [`ClientOptions::force_tls`]). No other host can be reached over plain HTTP, and an
//! https registry is never left for http (not through an upload `Location`, a redirect or
//! a token realm).
//!
//! TLS is rustls (with the ring provider). Trusted roots: Mozilla's, compiled in (webpki
//! roots; the host's certificate store is not read), plus the PEM certificates of the file
//! named by `$WBUILD_OCI_CA_FILE` ([`ClientOptions::ca_file`]), for a registry with its own
//! CA.
//!
//! # Authentication
//!
//! Credentials ([`ClientOptions::from_env`]): `$WBUILD_OCI_USERNAME` +
//! `$WBUILD_OCI_PASSWORD`, or `$WBUILD_OCI_TOKEN` (a bearer token, sent as is); else the
//! registry's `auths` entry (`auth`: base64 of `user:password`) in
//! `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`, as `docker login` writes it
//! (credential helpers are not run).
//!
//! Requests go out anonymous until the registry answers 401, then as Docker clients do:
//! - `WWW-Authenticate: Basic`: retried with the credentials, which are then sent with every
//!   request to the registry;
//! - `WWW-Authenticate: Bearer realm=...,service=...,scope=...`: a token is fetched with
//!   `GET <realm>?service=...&scope=...` (Basic credentials if any, else anonymous; pushes
//!   ask for `repository:<repo>:pull,push`), cached per scope for the client's lifetime
//!   (shared by its clones), and the request retried with `Authorization: Bearer`; a cached
//!   token the registry no longer accepts is replaced once.
//!
//! A 401 or 403 after that is an [`OciError::Unauthorized`] that names the registry and the
//! ways to give credentials. Authorization is sent only to the registry's own
//! scheme/host/port (upload locations there included) and to its token realm, never to
//! other hosts (blob storage redirects, ...). Passwords and tokens appear in no error and
//! no `Debug` output.

mod auth;
mod client;
mod credentials;
mod error;
mod reference;

pub use crate::manifest::sha256 as sha256_digest;
pub use client::Client;
pub use credentials::{
    ClientOptions, Credentials, DockerConfigError, ENV_CA_FILE, ENV_PASSWORD, ENV_TLS, ENV_TOKEN,
    ENV_USERNAME,
};
pub use error::OciError;
pub use reference::{InvalidName, Reference, ReferenceError};

/// Media type of an OCI image manifest (also used for artifacts).
pub const MEDIA_TYPE_IMAGE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Media type of an OCI image index.
pub const MEDIA_TYPE_IMAGE_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// Largest manifest [`Client::pull_manifest`] accepts (the limit distribution enforces too).
pub const MAX_MANIFEST_SIZE: u64 = 4 * 1024 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_helper() {
        assert_eq!(
            sha256_digest(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
