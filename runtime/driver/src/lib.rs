//! The wbuild build driver: what a command that builds needs, as a library.
//!
//! - [`session`]: one build session, load → analyse → platform passes → schedule →
//!   materialise → up-to-date snapshot, from a [`BuildRequest`] to a [`BuildOutcome`];
//! - [`snapshot`]: the key of the up-to-date snapshot and what invalidates it;
//! - [`platform`]: which platform passes a build makes (`--platform`, `platform`
//!   attributes, `[build] platform`) and the cross toolchain they need;
//! - [`toolchain`]: a workspace's pinned toolchain bundles (`wbuild.lock`, the
//!   `wbuild_graph::External`s build files name as `@name//...`);
//! - [`provenance`]: the in-toto statement of a build;
//! - [`worker`]: the Remote Workers API bot session and the lease runner of `wbuild worker`;
//! - [`infer`]: `wbuild infer`, a parallel build inferred from a serial script's observed run.
//!
//! The driver presents nothing itself: lines for the user and the build's events go
//! through a [`Frontend`] (the CLI prints them); errors are [`DriverError`]s.

#![forbid(unsafe_code)]

pub mod infer;
pub mod platform;
pub mod profile;
pub mod provenance;
pub mod session;
pub mod snapshot;
pub mod toolchain;
pub mod worker;

use std::path::PathBuf;

pub use session::{
    BuildOutcome, BuildRequest, Frontend, RemoteAuth, RemoteRequest, SandboxMode, run_build,
};

/// Why a driver operation failed. Each message names the path, flag or label at fault; the
/// cause, when there is one, is the error's `source()`.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// A workspace, pattern, build-file or analysis error.
    #[error(transparent)]
    Graph(Box<wbuild_graph::GraphError>),
    /// The cache could not be opened.
    #[error("cannot open cache {}", path.display())]
    OpenStore {
        path: PathBuf,
        #[source]
        source: Box<wbuild_store::StoreError>,
    },
    /// A store operation (history, flush) failed.
    #[error(transparent)]
    Store(Box<wbuild_store::StoreError>),
    /// The scheduler stopped the build.
    #[error(transparent)]
    Sched(Box<wbuild_sched::SchedError>),
    /// The WASI executor could not be set up.
    #[error(transparent)]
    Exec(Box<wbuild_exec_wasi::ExecError>),
    /// A remote that cannot be used with the options given (a mistake to fix, not an
    /// outage to build through).
    #[error("cannot use the {what} {url}")]
    RemoteOptions {
        what: &'static str,
        url: String,
        #[source]
        source: Box<wbuild_remote::ClientError>,
    },
    /// A remote setting that cannot be used (a malformed `--remote-header`).
    #[error(transparent)]
    Remote(Box<wbuild_remote::ClientError>),
    /// The engine of `wbuild worker` could not be reached.
    #[error("cannot reach the engine {url}")]
    Engine {
        url: String,
        #[source]
        source: Box<wbuild_remote::ClientError>,
    },
    /// A toolchain bundle could not be resolved, installed or verified; `context` names
    /// the pin (`[toolchains.NAME]` in `wbuild.toml` or `wbuild.lock`) or the source.
    #[error("{context}")]
    Bundle {
        context: String,
        #[source]
        source: Box<wbuild_bundle::BundleError>,
    },
    /// `wbuild.lock` is not a lock file wbuild can read.
    #[error("{}: unreadable; delete it to resolve the toolchains again", path.display())]
    Lock {
        path: PathBuf,
        #[source]
        source: Box<toml::de::Error>,
    },
    /// A bundle error that names its subject itself.
    #[error(transparent)]
    BundleDirect(Box<wbuild_bundle::BundleError>),
    /// A file the driver reads or writes (`wbuild.lock`, the current directory, ...).
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A setting that cannot be used: a platform name, conflicting flags, a pinned
    /// toolchain the build cannot use, a missing cross compiler or sandbox. The message
    /// says what to change.
    #[error("{0}")]
    Config(String),
    /// Provenance could not be built, written or read.
    #[error(transparent)]
    Provenance(Box<provenance::ProvenanceError>),
    /// The frontend could not start presenting the build (e.g. the events file).
    #[error(transparent)]
    Frontend(Box<dyn std::error::Error + Send + Sync>),
}

pub type Result<T, E = DriverError> = std::result::Result<T, E>;

/// `?` on the libraries' errors: boxed, so a `Result<T, DriverError>` stays small.
macro_rules! boxed_from {
    ($($variant:ident: $ty:ty),* $(,)?) => {$(
        impl From<$ty> for DriverError {
            fn from(e: $ty) -> DriverError {
                DriverError::$variant(Box::new(e))
            }
        }
    )*};
}

boxed_from! {
    Graph: wbuild_graph::GraphError,
    Store: wbuild_store::StoreError,
    Sched: wbuild_sched::SchedError,
    Exec: wbuild_exec_wasi::ExecError,
    Remote: wbuild_remote::ClientError,
    BundleDirect: wbuild_bundle::BundleError,
    Provenance: provenance::ProvenanceError,
}
