//! REAPI v2 for wbuild (`runtime/remote`): `wbuild serve`, which serves the local store as
//! Capabilities, ContentAddressableStorage (with `GetTree`), ByteStream and ActionCache to any
//! REAPI client (Bazel, Buck2, BuildGrid's tools, another wbuild), for SHA-256 and BLAKE3
//! digests; [`RemoteCache`], the client builds use with `--remote` (and, with
//! `--remote-executor`, to run actions on an engine's workers: [`RemoteCache::execute`]); and
//! the Remote Workers API ([`bots`]) that `wbuild worker` speaks to an engine.
//!
//! What it must never do: store or serve a blob whose bytes do not hash to its digest, record
//! an action result whose output blobs are not all present, accept a write (action cache or
//! CAS) without the bearer token unless anonymous writes were explicitly allowed, hold a
//! client's upload in memory (uploads stream to a temp file, bounded in size, count and idle
//! time), or leave a partial blob visible (temp file, then rename).

#![forbid(unsafe_code)]

pub mod bots;
mod client;
mod exec;
mod resource;
mod server;
mod transport;

pub use client::{ClientError, RemoteCache, choose_function, take_inlined};
pub use exec::{DEFAULT_EXECUTION_DEADLINE, Executed, Resubmission, SILENCE, speculative_copy};
pub use resource::{ResourceName, parse_read_resource, parse_write_resource};
pub use server::{
    DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_BLOB_SIZE, DEFAULT_MAX_STREAMS, MAX_BATCH_BYTES,
    MAX_WRITE_MESSAGE, READ_CHUNK, ServeConfig, SharedStore, StoreSource, TlsConfig, serve,
    services,
};
pub use transport::{
    AuthChannel, CREDENTIAL_HELPER_DEADLINE, ConnectOptions, Credentials, parse_header,
    run_credential_helper,
};

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
    #[error("cannot listen on {addr}: {error}")]
    Listen { addr: String, error: std::io::Error },
    #[error("the REAPI server failed: {}", source_chain(.0))]
    Transport(tonic::transport::Error),
    #[error("cannot serve: {0}")]
    Config(String),
    #[error("the TLS certificate or key cannot be used (both must be PEM; the key PKCS#8, PKCS#1 or SEC1): {}", source_chain(.0))]
    Tls(tonic::transport::Error),
}

/// An error and its sources, `: `-separated (tonic's transport errors say little alone).
fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
