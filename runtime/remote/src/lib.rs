//! REAPI v2 for wbuild (`runtime/remote`): `wbuild serve`, which serves the local store as
//! Capabilities, ContentAddressableStorage (with `GetTree`), ByteStream and ActionCache to any
//! REAPI client (Bazel, Buck2, BuildGrid's tools, another wbuild), for SHA-256 and BLAKE3
//! digests; [`RemoteCache`], the client builds use with `--remote` (and, with
//! `--remote-executor`, to run actions on an engine's workers: [`RemoteCache::execute`]); and
//! the Remote Workers API ([`bots`]) that `wbuild worker` speaks to an engine.
//!
//! What it must never do: store or serve a blob whose bytes do not hash to its digest, record
//! an action result whose output blobs are not all present, accept an action-cache write
//! without the bearer token when one is configured, or leave a partial blob visible (the store
//! writes every blob to a temp file and renames it).

pub mod bots;
mod client;
mod exec;
mod resource;
mod server;

pub use client::{ClientError, RemoteCache, take_inlined};
pub use exec::{Executed, Resubmission, speculative_copy};
pub use resource::{ResourceName, parse_read_resource, parse_write_resource};
pub use server::{MAX_BATCH_BYTES, ServeConfig, SharedStore, StoreSource, serve, services};

/// REAPI types (re-exported from the store, which keys actions with them).
pub use wbuild_store::reapi;

/// Generated gRPC clients and servers of the REAPI and ByteStream services.
pub mod grpc {
    pub use bazel_remote_apis::build::bazel::remote::execution::v2::{
        action_cache_client, action_cache_server, capabilities_client, capabilities_server,
        content_addressable_storage_client, content_addressable_storage_server,
    };
    pub use bazel_remote_apis::google::bytestream::{self, byte_stream_client, byte_stream_server};
    pub use bazel_remote_apis::google::rpc;
}

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("the REAPI server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}
