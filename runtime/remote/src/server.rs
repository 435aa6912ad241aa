//! The REAPI services over a [`Store`]. Store calls are blocking (files and redb), so every
//! handler runs them on tokio's blocking pool.
//!
//! Bounds against hostile clients: writes need the bearer token unless anonymous writes were
//! allowed, reads too with `require_token_for_reads`; one instance name; ByteStream uploads
//! stream into a temp file of the store (hashing as they go) with at most one message in
//! memory each, a limit on concurrent streams, a maximum blob size checked at the first
//! message and an idle timeout; ByteStream reads stream the blob file in chunks.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bazel_remote_apis::build::bazel::semver::SemVer;
use bazel_remote_apis::google::bytestream::{
    QueryWriteStatusRequest, QueryWriteStatusResponse, ReadRequest, ReadResponse, WriteRequest,
    WriteResponse, byte_stream_server,
};
use bazel_remote_apis::google::rpc;
use prost::Message;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};
use wbuild_store::reapi::{
    self, action_cache_server, capabilities_server, content_addressable_storage_server,
};
use wbuild_store::{BlobFile, Digest, DigestFunction, IncomingError, Store, StoreError};

use crate::RemoteError;
use crate::resource::{parse_read_resource, parse_write_resource};

/// Largest total size of the blobs in one batch request or response (advertised as
/// `max_batch_total_size_bytes`); larger blobs go through ByteStream.
pub const MAX_BATCH_BYTES: u64 = 4 << 20;

/// Default largest blob accepted through ByteStream `Write` (`--max-blob-size`).
pub const DEFAULT_MAX_BLOB_SIZE: u64 = 4 << 30;

/// Largest ByteStream `Write` message: the memory one upload holds at a time. Clients send
/// chunks of 16 KiB (Bazel) to 1 MiB (wbuild, BuildGrid); this leaves room for the framing.
pub const MAX_WRITE_MESSAGE: usize = 2 << 20;

/// Default limit on ByteStream streams (reads and writes) in progress at once.
pub const DEFAULT_MAX_STREAMS: usize = 32;

/// Default time a ByteStream stream may go without progress before it is dropped.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Most bytes of blobs inlined into one `GetActionResult` answer.
const INLINE_BYTES: u64 = 1 << 20;

/// Size of the chunks ByteStream `Read` sends (and reads from the blob file).
pub const READ_CHUNK: usize = 256 << 10;

/// Chunks of one `Read` buffered ahead of the client.
const READ_AHEAD: usize = 2;

/// What `wbuild serve` is configured with.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// The bearer token (`authorization: Bearer <token>`) writes need, and reads too with
    /// `require_token_for_reads`.
    pub token: Option<String>,
    /// Accept writes without the token (`--allow-anonymous-writes`). Without it and without
    /// a token, every write is refused.
    pub allow_anonymous_writes: bool,
    /// Every read needs the token as well (`--require-token-for-reads`).
    pub require_token_for_reads: bool,
    /// The one instance name served (`--instance`); requests naming another are refused.
    pub instance: String,
    /// Largest blob a ByteStream `Write` may declare (`--max-blob-size`).
    pub max_blob_size: u64,
    /// ByteStream streams (reads and writes) in progress at once; more wait for a slot up to
    /// `idle_timeout`, then get `RESOURCE_EXHAUSTED`.
    pub max_streams: usize,
    /// A ByteStream stream that makes no progress for this long is dropped (an upload's temp
    /// file is removed).
    pub idle_timeout: Duration,
    /// TLS (`--tls-cert`, `--tls-key`, `--tls-client-ca`); plain text without it.
    pub tls: Option<TlsConfig>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            token: None,
            allow_anonymous_writes: false,
            require_token_for_reads: false,
            instance: String::new(),
            max_blob_size: DEFAULT_MAX_BLOB_SIZE,
            max_streams: DEFAULT_MAX_STREAMS,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            tls: None,
        }
    }
}

/// The server's TLS identity (PEM), and the CA client certificates must be signed by.
#[derive(Clone, Debug)]
pub struct TlsConfig {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    /// When set, clients must present a certificate signed by this CA.
    pub client_ca_pem: Option<Vec<u8>>,
}

impl ServeConfig {
    /// Refuses a configuration that would leave the server open or useless: writes need
    /// either a token or an explicit `allow_anonymous_writes`, and reads can need the token
    /// only if there is one.
    pub fn validate(&self) -> Result<(), RemoteError> {
        if self.token.is_none() && !self.allow_anonymous_writes {
            return Err(RemoteError::Config(
                "writes to the cache need a bearer token: pass --token-file FILE, or --allow-anonymous-writes to let anyone who can connect write (and poison) the cache".into(),
            ));
        }
        if self.token.is_none() && self.require_token_for_reads {
            return Err(RemoteError::Config(
                "--require-token-for-reads needs --token-file FILE".into(),
            ));
        }
        if self.max_streams == 0 {
            return Err(RemoteError::Config(
                "the limit on concurrent streams must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// The warning to print when a token would travel in clear text: no TLS, a token, and a
    /// listen address other clients can reach (not loopback).
    pub fn cleartext_token_warning(&self, addr: SocketAddr) -> Option<String> {
        (self.tls.is_none() && self.token.is_some() && !addr.ip().is_loopback()).then(|| {
            format!(
                "warning: serving on {addr} without TLS: the bearer token travels in clear text and can be read by anyone on the network; pass --tls-cert and --tls-key"
            )
        })
    }
}

/// Where the server gets its store from.
#[derive(Clone)]
pub enum StoreSource {
    /// One store, held for the server's lifetime.
    Open(Arc<Store>),
    /// A cache directory shared with local builds: see [`SharedStore`].
    Shared(Arc<SharedStore>),
}

impl From<Arc<Store>> for StoreSource {
    fn from(s: Arc<Store>) -> Self {
        StoreSource::Open(s)
    }
}

impl From<Arc<SharedStore>> for StoreSource {
    fn from(s: Arc<SharedStore>) -> Self {
        StoreSource::Shared(s)
    }
}

/// A cache directory the server opens only while it has requests to answer: the store is
/// one process's at a time (redb's lock), so the server releases it after `idle` without
/// requests (flushing it), and a local `wbuild build` on the same cache gets its turn; while
/// a build holds it, requests wait up to `wait` and then fail with `UNAVAILABLE`, which
/// clients retry (or build locally).
pub struct SharedStore {
    dir: PathBuf,
    function: DigestFunction,
    idle: Duration,
    wait: Duration,
    state: Mutex<(Option<Arc<Store>>, Instant)>,
}

impl SharedStore {
    /// Opens the store once (so a bad directory fails now), then releases it.
    pub fn new(
        dir: PathBuf,
        function: DigestFunction,
        idle: Duration,
        wait: Duration,
    ) -> Result<SharedStore, StoreError> {
        drop(Store::open_with_timeout(&dir, function, wait)?);
        Ok(SharedStore {
            dir,
            function,
            idle,
            wait,
            state: Mutex::new((None, Instant::now())),
        })
    }

    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// The open store, opening it (waiting up to `wait` for a local build) if needed.
    fn get(&self) -> Result<Arc<Store>, StoreError> {
        let mut st = self.state.lock().expect("shared store");
        st.1 = Instant::now();
        if let Some(s) = &st.0 {
            return Ok(s.clone());
        }
        let s = Arc::new(Store::open_with_timeout(
            &self.dir,
            self.function,
            self.wait,
        )?);
        st.0 = Some(s.clone());
        st.1 = Instant::now();
        Ok(s)
    }

    /// Closes the store now (flushing it); the next request opens it again.
    pub fn close(&self) {
        let taken = self.state.lock().expect("shared store").0.take();
        drop(taken);
    }

    /// Closes the store if nothing used it for `idle` and no request holds it.
    fn release_if_idle(&self) {
        let released = {
            let mut st = self.state.lock().expect("shared store");
            match &st.0 {
                Some(s) if Arc::strong_count(s) == 1 && st.1.elapsed() >= self.idle => st.0.take(),
                _ => None,
            }
        };
        drop(released); // flushes and releases the lock, outside the mutex
    }
}

impl StoreSource {
    fn get(&self) -> Result<Arc<Store>, Status> {
        match self {
            StoreSource::Open(s) => Ok(s.clone()),
            StoreSource::Shared(s) => s.get().map_err(|e| match e {
                StoreError::Locked { dir, waited_secs } => Status::unavailable(format!(
                    "the cache {} is in use by a local build (waited {waited_secs} s); retry",
                    dir.display()
                )),
                e => Status::internal(e.to_string()),
            }),
        }
    }
}

#[derive(Clone)]
struct Service {
    store: StoreSource,
    policy: Arc<Policy>,
    streams: Arc<Semaphore>,
    /// ByteStream uploads in progress: resource name -> bytes received so far.
    uploads: Arc<Mutex<HashMap<String, Arc<AtomicU64>>>>,
    /// The digest functions in the order capabilities list them, and when that was decided.
    functions: Arc<Mutex<Option<FunctionOrder>>>,
}

/// When the digest functions were ordered, and the order.
type FunctionOrder = (Instant, Vec<DigestFunction>);

/// How long the order of the digest functions stands before the action cache is counted
/// again.
const FUNCTION_ORDER_TTL: Duration = Duration::from_secs(60);

/// The digest functions, the one most of the action cache's entries are keyed with first
/// (BLAKE3 on a tie): a client that takes the first it supports then finds the entries the
/// cache holds (one filled through a SHA-256 remote serves SHA-256 keys).
fn function_order(counts: &[(DigestFunction, u64)]) -> Vec<DigestFunction> {
    let mut order: Vec<DigestFunction> = DigestFunction::ALL.to_vec();
    let count = |f: &DigestFunction| counts.iter().find(|(g, _)| g == f).map_or(0, |(_, n)| *n);
    // Stable: ALL lists BLAKE3 first.
    order.sort_by_key(|f| std::cmp::Reverse(count(f)));
    order
}

/// Who may do what, and the bounds of a stream.
struct Policy {
    token: Option<String>,
    anonymous_writes: bool,
    token_for_reads: bool,
    instance: String,
    max_blob_size: u64,
    max_streams: usize,
    idle: Duration,
}

impl Service {
    fn new(store: StoreSource, config: &ServeConfig) -> Service {
        Service {
            store,
            policy: Arc::new(Policy {
                token: config.token.clone(),
                anonymous_writes: config.allow_anonymous_writes,
                token_for_reads: config.require_token_for_reads,
                instance: config.instance.clone(),
                max_blob_size: config.max_blob_size,
                max_streams: config.max_streams.max(1),
                idle: config.idle_timeout,
            }),
            streams: Arc::new(Semaphore::new(config.max_streams.max(1))),
            uploads: Arc::default(),
            functions: Arc::default(),
        }
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Serves the REAPI over `store` on `listener` until `shutdown` completes; then in-flight
/// requests finish (blobs are only ever visible complete). Refuses a configuration
/// [`ServeConfig::validate`] refuses, and TLS files that are not a usable PEM identity.
pub async fn serve(
    store: impl Into<StoreSource>,
    listener: tokio::net::TcpListener,
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RemoteError> {
    config.validate()?;
    let mut builder = tonic::transport::Server::builder()
        // Many streams on one connection are many uploads' buffers: bound them.
        .max_concurrent_streams(Some(256))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)));
    if let Some(tls) = &config.tls {
        let mut t = tonic::transport::ServerTlsConfig::new().identity(
            tonic::transport::Identity::from_pem(&tls.cert_pem, &tls.key_pem),
        );
        if let Some(ca) = &tls.client_ca_pem {
            t = t.client_ca_root(tonic::transport::Certificate::from_pem(ca));
        }
        builder = builder.tls_config(t).map_err(RemoteError::Tls)?;
    }
    let store = store.into();
    let releaser = match &store {
        StoreSource::Shared(shared) => {
            let shared = shared.clone();
            Some(tokio::spawn(async move {
                let mut tick =
                    tokio::time::interval((shared.idle / 2).max(Duration::from_millis(10)));
                loop {
                    tick.tick().await;
                    let s = shared.clone();
                    let _ = tokio::task::spawn_blocking(move || s.release_if_idle()).await;
                }
            }))
        }
        StoreSource::Open(_) => None,
    };
    let svc = Service::new(store.clone(), &config);
    // A batch of MAX_BATCH_BYTES of blobs plus the digests and framing around them.
    let max_message = (MAX_BATCH_BYTES + (1 << 20)) as usize;
    builder
        .add_service(capabilities_server::CapabilitiesServer::new(svc.clone()))
        .add_service(
            content_addressable_storage_server::ContentAddressableStorageServer::new(svc.clone())
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(max_message),
        )
        .add_service(
            action_cache_server::ActionCacheServer::new(svc.clone())
                .max_decoding_message_size(max_message),
        )
        .add_service(
            byte_stream_server::ByteStreamServer::new(svc)
                .max_decoding_message_size(MAX_WRITE_MESSAGE),
        )
        .serve_with_incoming_shutdown(
            // Small request/response pairs: no Nagle delay.
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await
        .map_err(RemoteError::Transport)?;
    if let Some(r) = releaser {
        r.abort();
    }
    Ok(())
}

/// The service implementations [`serve`] registers, without a transport: for driving the
/// request handlers in-process (the fuzz targets under `tests/fuzz`). Not a stable API.
#[doc(hidden)]
pub fn services(
    store: impl Into<StoreSource>,
    config: ServeConfig,
) -> impl capabilities_server::Capabilities
+ content_addressable_storage_server::ContentAddressableStorage
+ action_cache_server::ActionCache
+ byte_stream_server::ByteStream
+ Clone {
    Service::new(store.into(), &config)
}

/// The digest function a request names (0, unset: SHA-256, as the spec says for 64-digit
/// hashes).
fn function(value: i32) -> Result<DigestFunction, Status> {
    if value == 0 {
        return Ok(DigestFunction::Sha256);
    }
    DigestFunction::from_reapi(value).ok_or_else(|| {
        Status::invalid_argument(format!(
            "digest function {value} is not supported: use SHA256 (1) or BLAKE3 (9)"
        ))
    })
}

fn digest(f: DigestFunction, d: Option<&reapi::Digest>) -> Result<Digest, Status> {
    let d = d.ok_or_else(|| Status::invalid_argument("a digest is missing"))?;
    Digest::from_proto(f, d).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn status_of(e: StoreError) -> Status {
    match e {
        StoreError::NotFound { digest, .. } | StoreError::Corrupt { digest, .. } => {
            Status::not_found(format!("blob {digest} is not in the cache"))
        }
        e @ StoreError::MissingBlob { .. } => Status::failed_precondition(e.to_string()),
        e @ StoreError::InvalidDigest { .. } => Status::invalid_argument(e.to_string()),
        e => Status::internal(e.to_string()),
    }
}

fn incoming_status(e: IncomingError) -> Status {
    match e {
        IncomingError::Store(e) => status_of(e),
        e => Status::invalid_argument(e.to_string()),
    }
}

/// The bytes of the blob `d` names. The store names blobs by hash alone; a REAPI digest also
/// carries the size, and one whose size is not the blob's names no blob: it is never answered
/// with bytes of another length.
fn read_blob(store: &Store, d: &Digest) -> Result<Vec<u8>, Status> {
    let bytes = store.get_bytes(d).map_err(status_of)?;
    if bytes.len() as u64 != d.size {
        return Err(Status::not_found(format!(
            "blob {d} is not in the cache (a blob with that hash has {} bytes)",
            bytes.len()
        )));
    }
    Ok(bytes)
}

fn rpc_status(code: tonic::Code, message: impl Into<String>) -> Option<rpc::Status> {
    Some(rpc::Status {
        code: code as i32,
        message: message.into(),
        ..Default::default()
    })
}

impl Service {
    /// Runs blocking store work off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, Status> + Send + 'static,
    ) -> Result<T, Status> {
        let source = self.store.clone();
        tokio::task::spawn_blocking(move || f(&*source.get()?))
            .await
            .map_err(|e| Status::internal(format!("store task failed: {e}")))?
    }

    /// The digest functions in preference order ([`function_order`]), counted at most once
    /// per [`FUNCTION_ORDER_TTL`]; if the store cannot be read, the default order.
    async fn functions(&self) -> Vec<DigestFunction> {
        if let Some((at, order)) = &*self.functions.lock().expect("function order")
            && at.elapsed() < FUNCTION_ORDER_TTL
        {
            return order.clone();
        }
        let order = match self
            .blocking(|store| store.ac_entries_by_function().map_err(status_of))
            .await
        {
            Ok(counts) => function_order(&counts),
            Err(_) => return DigestFunction::ALL.to_vec(),
        };
        *self.functions.lock().expect("function order") = Some((Instant::now(), order.clone()));
        order
    }

    /// The open store, for work that spans several blocking steps (a ByteStream upload holds
    /// it, and so keeps its temp file, until it ends).
    async fn open_store(&self) -> Result<Arc<Store>, Status> {
        let source = self.store.clone();
        tokio::task::spawn_blocking(move || source.get())
            .await
            .map_err(|e| Status::internal(format!("store task failed: {e}")))?
    }

    /// Checks the bearer token of `req`; `what` names what needs it.
    fn check_token<T>(&self, req: &Request<T>, what: &str) -> Result<(), Status> {
        let Some(token) = &self.policy.token else {
            return Err(Status::permission_denied(format!(
                "{what} is refused: this server accepts no {what} (it was started without --token-file)"
            )));
        };
        let given = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            None => Err(Status::unauthenticated(format!(
                "{what} needs `authorization: Bearer <token>` (the server was started with --token-file)"
            ))),
            Some(t) if constant_time_eq(t.as_bytes(), token.as_bytes()) => Ok(()),
            Some(_) => Err(Status::permission_denied(
                "the bearer token does not match the server's --token-file",
            )),
        }
    }

    /// Writes (UpdateActionResult, BatchUpdateBlobs, ByteStream Write) need the token unless
    /// anonymous writes were allowed.
    fn authorize_write<T>(&self, req: &Request<T>) -> Result<(), Status> {
        if self.policy.anonymous_writes {
            return Ok(());
        }
        if self.policy.token.is_none() {
            return Err(Status::permission_denied(
                "writing to this cache is refused: the server was started without --token-file or --allow-anonymous-writes",
            ));
        }
        self.check_token(req, "writing to the cache")
    }

    /// Reads need the token only with `require_token_for_reads`.
    fn authorize_read<T>(&self, req: &Request<T>) -> Result<(), Status> {
        if !self.policy.token_for_reads {
            return Ok(());
        }
        self.check_token(req, "reading from the cache (--require-token-for-reads)")
    }

    /// The one instance name this server answers for.
    fn check_instance(&self, name: &str) -> Result<(), Status> {
        if name == self.policy.instance {
            return Ok(());
        }
        Err(Status::invalid_argument(format!(
            "instance name {name:?} is not served here: this server has only instance {:?} (wbuild serve --instance)",
            self.policy.instance
        )))
    }

    /// A slot for a ByteStream stream, waiting up to the idle timeout for one.
    async fn stream_slot(&self) -> Result<OwnedSemaphorePermit, Status> {
        match tokio::time::timeout(self.policy.idle, self.streams.clone().acquire_owned()).await {
            Ok(Ok(p)) => Ok(p),
            _ => Err(Status::resource_exhausted(format!(
                "the server already has {} ByteStream streams in progress; retry later",
                self.policy.max_streams
            ))),
        }
    }
}

/// Removes an upload from the in-progress table when it ends, however it ends.
struct UploadEntry {
    uploads: Arc<Mutex<HashMap<String, Arc<AtomicU64>>>>,
    name: String,
    progress: Arc<AtomicU64>,
}

impl Drop for UploadEntry {
    fn drop(&mut self) {
        let mut u = self.uploads.lock().unwrap_or_else(|e| e.into_inner());
        if u.get(&self.name)
            .is_some_and(|p| Arc::ptr_eq(p, &self.progress))
        {
            u.remove(&self.name);
        }
    }
}

/// The next message of an upload, or `DEADLINE_EXCEEDED` after `idle` without one.
async fn next_message(
    stream: &mut Streaming<WriteRequest>,
    idle: Duration,
) -> Result<Option<WriteRequest>, Status> {
    match tokio::time::timeout(idle, stream.message()).await {
        Ok(r) => r,
        Err(_) => Err(Status::deadline_exceeded(format!(
            "the write stream sent nothing for {} s; dropped, nothing stored",
            idle.as_secs_f64()
        ))),
    }
}

/// Fills `buf` from `blob` at `offset`; a blob shorter than it said is lost data.
fn read_full(blob: &BlobFile, buf: &mut [u8], mut offset: u64, d: &Digest) -> Result<(), Status> {
    let mut filled = 0;
    while filled < buf.len() {
        match blob.read_at(&mut buf[filled..], offset) {
            Ok(0) => {
                return Err(Status::data_loss(format!(
                    "blob {d} ended early while it was read"
                )));
            }
            Ok(n) => {
                filled += n;
                offset += n as u64;
            }
            Err(e) => return Err(Status::internal(format!("cannot read blob {d}: {e}"))),
        }
    }
    Ok(())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[tonic::async_trait]
impl capabilities_server::Capabilities for Service {
    async fn get_capabilities(
        &self,
        req: Request<reapi::GetCapabilitiesRequest>,
    ) -> Result<Response<reapi::ServerCapabilities>, Status> {
        self.authorize_read(&req)?;
        self.check_instance(&req.get_ref().instance_name)?;
        let version = |minor| {
            Some(SemVer {
                major: 2,
                minor,
                ..Default::default()
            })
        };
        Ok(Response::new(reapi::ServerCapabilities {
            cache_capabilities: Some(reapi::CacheCapabilities {
                digest_functions: self
                    .functions()
                    .await
                    .into_iter()
                    .map(DigestFunction::to_reapi)
                    .collect(),
                action_cache_update_capabilities: Some(reapi::ActionCacheUpdateCapabilities {
                    update_enabled: true,
                }),
                max_batch_total_size_bytes: MAX_BATCH_BYTES as i64,
                // Output trees with absolute symlinks are refused.
                symlink_absolute_path_strategy:
                    reapi::symlink_absolute_path_strategy::Value::Disallowed as i32,
                ..Default::default()
            }),
            low_api_version: version(0),
            high_api_version: version(3),
            ..Default::default()
        }))
    }
}

#[tonic::async_trait]
impl content_addressable_storage_server::ContentAddressableStorage for Service {
    async fn find_missing_blobs(
        &self,
        req: Request<reapi::FindMissingBlobsRequest>,
    ) -> Result<Response<reapi::FindMissingBlobsResponse>, Status> {
        self.authorize_read(&req)?;
        self.check_instance(&req.get_ref().instance_name)?;
        let req = req.into_inner();
        let f = function(req.digest_function)?;
        let wanted = req
            .blob_digests
            .iter()
            .map(|d| digest(f, Some(d)))
            .collect::<Result<Vec<_>, _>>()?;
        let missing = self
            .blocking(move |store| {
                Ok(wanted
                    .into_iter()
                    .filter(|d| !store.has(d))
                    .map(|d| d.to_proto())
                    .collect())
            })
            .await?;
        Ok(Response::new(reapi::FindMissingBlobsResponse {
            missing_blob_digests: missing,
        }))
    }

    async fn batch_update_blobs(
        &self,
        req: Request<reapi::BatchUpdateBlobsRequest>,
    ) -> Result<Response<reapi::BatchUpdateBlobsResponse>, Status> {
        self.authorize_write(&req)?;
        self.check_instance(&req.get_ref().instance_name)?;
        let req = req.into_inner();
        let f = function(req.digest_function)?;
        let total: u64 = req.requests.iter().map(|r| r.data.len() as u64).sum();
        if total > MAX_BATCH_BYTES {
            return Err(Status::invalid_argument(format!(
                "batch of {total} bytes is over max_batch_total_size_bytes ({MAX_BATCH_BYTES}); send large blobs with ByteStream"
            )));
        }
        let responses = self
            .blocking(move |store| {
                let mut out = Vec::new();
                for r in req.requests {
                    let proto = r.digest.clone();
                    let status = match digest(f, r.digest.as_ref()) {
                        Err(e) => rpc_status(e.code(), e.message()),
                        Ok(_) if r.compressor != 0 => rpc_status(
                            tonic::Code::InvalidArgument,
                            "compressed uploads are not supported",
                        ),
                        Ok(want) => {
                            let got = Digest::of(f, &r.data);
                            if got != want {
                                rpc_status(
                                    tonic::Code::InvalidArgument,
                                    format!("the bytes sent for {want} hash to {got}; not stored"),
                                )
                            } else {
                                match store.put_bytes_as(f, &r.data) {
                                    Ok(_) => rpc_status(tonic::Code::Ok, ""),
                                    Err(e) => {
                                        let s = status_of(e);
                                        rpc_status(s.code(), s.message())
                                    }
                                }
                            }
                        }
                    };
                    out.push(reapi::batch_update_blobs_response::Response {
                        digest: proto,
                        status,
                    });
                }
                Ok(out)
            })
            .await?;
        Ok(Response::new(reapi::BatchUpdateBlobsResponse { responses }))
    }

    async fn batch_read_blobs(
        &self,
        req: Request<reapi::BatchReadBlobsRequest>,
    ) -> Result<Response<reapi::BatchReadBlobsResponse>, Status> {
        self.authorize_read(&req)?;
        self.check_instance(&req.get_ref().instance_name)?;
        let req = req.into_inner();
        let f = function(req.digest_function)?;
        let wanted = req
            .digests
            .iter()
            .map(|d| digest(f, Some(d)))
            .collect::<Result<Vec<_>, _>>()?;
        let total: u64 = wanted.iter().map(|d| d.size).sum();
        if total > MAX_BATCH_BYTES {
            return Err(Status::invalid_argument(format!(
                "batch of {total} bytes is over max_batch_total_size_bytes ({MAX_BATCH_BYTES}); read large blobs with ByteStream"
            )));
        }
        let responses = self
            .blocking(move |store| {
                Ok(wanted
                    .into_iter()
                    .map(|d| {
                        let (data, status) = match read_blob(store, &d) {
                            Ok(b) => (b, rpc_status(tonic::Code::Ok, "")),
                            Err(s) => (Vec::new(), rpc_status(s.code(), s.message())),
                        };
                        reapi::batch_read_blobs_response::Response {
                            digest: Some(d.to_proto()),
                            data,
                            compressor: 0,
                            status,
                        }
                    })
                    .collect())
            })
            .await?;
        Ok(Response::new(reapi::BatchReadBlobsResponse { responses }))
    }

    type GetTreeStream = BoxStream<reapi::GetTreeResponse>;

    async fn get_tree(
        &self,
        req: Request<reapi::GetTreeRequest>,
    ) -> Result<Response<Self::GetTreeStream>, Status> {
        self.authorize_read(&req)?;
        self.check_instance(&req.get_ref().instance_name)?;
        let req = req.into_inner();
        let f = function(req.digest_function)?;
        let root = digest(f, req.root_digest.as_ref())?;
        let pages = self
            .blocking(move |store| {
                let mut dirs = Vec::new();
                let mut queue = std::collections::VecDeque::from([root]);
                let mut seen = std::collections::HashSet::new();
                while let Some(d) = queue.pop_front() {
                    if !seen.insert(d) {
                        continue;
                    }
                    let bytes = read_blob(store, &d)?;
                    let dir = reapi::Directory::decode(bytes.as_slice()).map_err(|e| {
                        Status::invalid_argument(format!("blob {d} is not a Directory: {e}"))
                    })?;
                    for child in &dir.directories {
                        queue.push_back(digest(f, child.digest.as_ref())?);
                    }
                    dirs.push(dir);
                }
                Ok(dirs
                    .chunks(1000)
                    .map(|c| {
                        Ok(reapi::GetTreeResponse {
                            directories: c.to_vec(),
                            next_page_token: String::new(),
                        })
                    })
                    .collect::<Vec<_>>())
            })
            .await?;
        Ok(Response::new(Box::pin(tokio_stream::iter(pages))))
    }

    async fn split_blob(
        &self,
        _req: Request<reapi::SplitBlobRequest>,
    ) -> Result<Response<reapi::SplitBlobResponse>, Status> {
        Err(Status::unimplemented("blob splitting is not supported"))
    }

    type GetChunkMappingStream = BoxStream<reapi::GetChunkMappingResponse>;

    async fn get_chunk_mapping(
        &self,
        _req: Request<reapi::GetChunkMappingRequest>,
    ) -> Result<Response<Self::GetChunkMappingStream>, Status> {
        Err(Status::unimplemented("blob splitting is not supported"))
    }

    async fn splice_blob(
        &self,
        _req: Request<reapi::SpliceBlobRequest>,
    ) -> Result<Response<reapi::SpliceBlobResponse>, Status> {
        Err(Status::unimplemented("blob splicing is not supported"))
    }

    async fn register_chunk_mapping(
        &self,
        _req: Request<Streaming<reapi::RegisterChunkMappingRequest>>,
    ) -> Result<Response<reapi::RegisterChunkMappingResponse>, Status> {
        Err(Status::unimplemented("blob splitting is not supported"))
    }
}

#[tonic::async_trait]
impl action_cache_server::ActionCache for Service {
    async fn get_action_result(
        &self,
        req: Request<reapi::GetActionResultRequest>,
    ) -> Result<Response<reapi::ActionResult>, Status> {
        self.authorize_read(&req)?;
        self.check_instance(&req.get_ref().instance_name)?;
        let req = req.into_inner();
        let f = function(req.digest_function)?;
        let d = digest(f, req.action_digest.as_ref())?;
        let found = self
            .blocking(move |store| {
                let Some(mut r) = store.ac_get(&d).map_err(status_of)? else {
                    return Ok(None);
                };
                // Inline what was asked for, up to INLINE_BYTES in all.
                let mut budget = INLINE_BYTES;
                let mut inline = |d: Option<&reapi::Digest>| -> Option<Vec<u8>> {
                    let d = Digest::from_proto(f, d?).ok()?;
                    if d.size == 0 || d.size > budget {
                        return None;
                    }
                    let bytes = read_blob(store, &d).ok()?;
                    budget -= d.size;
                    Some(bytes)
                };
                // Only bytes read from the CAS are served inline: what an uploader sent inline
                // with the result was never checked against its digests.
                r.stdout_raw = if req.inline_stdout {
                    inline(r.stdout_digest.as_ref()).unwrap_or_default()
                } else {
                    Vec::new()
                };
                r.stderr_raw = if req.inline_stderr {
                    inline(r.stderr_digest.as_ref()).unwrap_or_default()
                } else {
                    Vec::new()
                };
                for of in &mut r.output_files {
                    of.contents = if req.inline_output_files.contains(&of.path) {
                        inline(of.digest.as_ref()).unwrap_or_default()
                    } else {
                        Vec::new()
                    };
                }
                Ok(Some(r))
            })
            .await?;
        match found {
            Some(r) => Ok(Response::new(r)),
            None => Err(Status::not_found(format!("no action result for {d}"))),
        }
    }

    async fn update_action_result(
        &self,
        req: Request<reapi::UpdateActionResultRequest>,
    ) -> Result<Response<reapi::ActionResult>, Status> {
        self.authorize_write(&req)?;
        self.check_instance(&req.get_ref().instance_name)?;
        let req = req.into_inner();
        let f = function(req.digest_function)?;
        let d = digest(f, req.action_digest.as_ref())?;
        let result = req
            .action_result
            .ok_or_else(|| Status::invalid_argument("action_result is missing"))?;
        // The store refuses a result whose output blobs are not all present.
        self.blocking(move |store| {
            store
                .ac_put(&d, &result, "(uploaded)")
                .map_err(status_of)
                .map(|()| result)
        })
        .await
        .map(Response::new)
    }
}

#[tonic::async_trait]
impl byte_stream_server::ByteStream for Service {
    type ReadStream = BoxStream<ReadResponse>;

    /// Streams the blob file in chunks of [`READ_CHUNK`] (verified before the first byte is
    /// sent), at most [`READ_AHEAD`] chunks ahead of the client.
    async fn read(&self, req: Request<ReadRequest>) -> Result<Response<Self::ReadStream>, Status> {
        self.authorize_read(&req)?;
        let req = req.into_inner();
        let name = parse_read_resource(&req.resource_name).map_err(|e| {
            Status::invalid_argument(format!("resource name {:?}: {e}", req.resource_name))
        })?;
        self.check_instance(&name.instance)?;
        let d = name.digest;
        let offset = u64::try_from(req.read_offset)
            .map_err(|_| Status::out_of_range("read_offset is negative"))?;
        let limit = u64::try_from(req.read_limit)
            .map_err(|_| Status::invalid_argument("read_limit is negative"))?;
        if offset > d.size {
            return Err(Status::out_of_range(format!(
                "read_offset {offset} is outside blob {d}"
            )));
        }
        let slot = self.stream_slot().await?;
        let blob = self
            .blocking(move |store| store.open_blob(&d).map_err(status_of))
            .await?;
        if blob.size() != d.size {
            return Err(Status::not_found(format!(
                "blob {d} is not in the cache (a blob with that hash has {} bytes)",
                blob.size()
            )));
        }
        let end = match limit {
            0 => d.size,
            l => d.size.min(offset.saturating_add(l)),
        };
        let idle = self.policy.idle;
        let (tx, rx) = tokio::sync::mpsc::channel(READ_AHEAD);
        tokio::spawn(async move {
            let _slot = slot;
            if offset == end {
                let _ = tx.send(Ok(ReadResponse { data: Vec::new() })).await;
                return;
            }
            let blob = Arc::new(blob);
            let mut pos = offset;
            while pos < end {
                let n = READ_CHUNK.min((end - pos) as usize);
                let b = blob.clone();
                let chunk = tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0u8; n];
                    read_full(&b, &mut buf, pos, &d).map(|()| buf)
                })
                .await
                .unwrap_or_else(|e| Err(Status::internal(format!("read task failed: {e}"))));
                let failed = chunk.is_err();
                let item = chunk.map(|data| ReadResponse { data });
                // A client that stops reading for the idle timeout is dropped.
                match tokio::time::timeout(idle, tx.send(item)).await {
                    Ok(Ok(())) if !failed => pos += n as u64,
                    _ => return,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    /// Streams the upload into a temp file of the store, hashing as it goes: one message in
    /// memory at a time, the declared size checked against the maximum at the first message,
    /// every later byte against the declared size, the hash at the end; an upload that
    /// fails or goes idle leaves nothing behind.
    async fn write(
        &self,
        req: Request<Streaming<WriteRequest>>,
    ) -> Result<Response<WriteResponse>, Status> {
        self.authorize_write(&req)?;
        let idle = self.policy.idle;
        let mut stream = req.into_inner();
        let Some(mut msg) = next_message(&mut stream, idle).await? else {
            return Err(Status::invalid_argument(
                "the write stream ended before its first message",
            ));
        };
        let resource = msg.resource_name.clone();
        let name = parse_write_resource(&resource)
            .map_err(|e| Status::invalid_argument(format!("resource name {resource:?}: {e}")))?;
        self.check_instance(&name.instance)?;
        let d = name.digest;
        if d.size > self.policy.max_blob_size {
            return Err(Status::invalid_argument(format!(
                "blob {d} declares {} bytes, over this server's maximum blob size of {} bytes (wbuild serve --max-blob-size); not accepted",
                d.size, self.policy.max_blob_size
            )));
        }
        let _slot = self.stream_slot().await?;
        let store = self.open_store().await?;
        let s = store.clone();
        let mut blob = tokio::task::spawn_blocking(move || s.begin_blob(d))
            .await
            .map_err(|e| Status::internal(format!("store task failed: {e}")))?
            .map_err(status_of)?;
        let progress = Arc::new(AtomicU64::new(0));
        let _entry = {
            let mut u = self.uploads.lock().unwrap_or_else(|e| e.into_inner());
            u.insert(resource.clone(), progress.clone());
            UploadEntry {
                uploads: self.uploads.clone(),
                name: resource.clone(),
                progress: progress.clone(),
            }
        };
        loop {
            if !msg.resource_name.is_empty() && msg.resource_name != resource {
                return Err(Status::invalid_argument(format!(
                    "the write stream of {resource:?} changed its resource name to {:?}",
                    msg.resource_name
                )));
            }
            if msg.write_offset != blob.received() as i64 {
                return Err(Status::invalid_argument(format!(
                    "write_offset {} does not follow the {} bytes received",
                    msg.write_offset,
                    blob.received()
                )));
            }
            if !msg.data.is_empty() {
                let data = std::mem::take(&mut msg.data);
                blob = tokio::task::spawn_blocking(move || blob.write(&data).map(|()| blob))
                    .await
                    .map_err(|e| Status::internal(format!("store task failed: {e}")))?
                    .map_err(incoming_status)?;
                progress.store(blob.received(), Ordering::Relaxed);
            }
            if msg.finish_write {
                break;
            }
            msg = next_message(&mut stream, idle).await?.ok_or_else(|| {
                Status::invalid_argument(format!(
                    "the write stream of {d} ended after {} of its {} bytes without finish_write; nothing stored",
                    progress.load(Ordering::Relaxed),
                    d.size
                ))
            })?;
        }
        tokio::task::spawn_blocking(move || store.commit_blob(blob))
            .await
            .map_err(|e| Status::internal(format!("store task failed: {e}")))?
            .map_err(incoming_status)?;
        Ok(Response::new(WriteResponse {
            committed_size: d.size as i64,
        }))
    }

    async fn query_write_status(
        &self,
        req: Request<QueryWriteStatusRequest>,
    ) -> Result<Response<QueryWriteStatusResponse>, Status> {
        self.authorize_read(&req)?;
        let req = req.into_inner();
        let name = parse_write_resource(&req.resource_name).map_err(|e| {
            Status::invalid_argument(format!("resource name {:?}: {e}", req.resource_name))
        })?;
        self.check_instance(&name.instance)?;
        let d = name.digest;
        let in_progress = self
            .uploads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&req.resource_name)
            .map(|p| p.load(Ordering::Relaxed));
        if let Some(received) = in_progress {
            // Uploads are not resumable: this is how far the one in progress got.
            return Ok(Response::new(QueryWriteStatusResponse {
                committed_size: received as i64,
                complete: false,
            }));
        }
        if self.blocking(move |store| Ok(store.has(&d))).await? {
            Ok(Response::new(QueryWriteStatusResponse {
                committed_size: d.size as i64,
                complete: true,
            }))
        } else {
            Err(Status::not_found(format!(
                "no upload of {d} is in progress"
            )))
        }
    }
}
