//! The REAPI services over a [`Store`]. Store calls are blocking (files and redb), so every
//! handler runs them on tokio's blocking pool.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bazel_remote_apis::build::bazel::semver::SemVer;
use bazel_remote_apis::google::bytestream::{
    QueryWriteStatusRequest, QueryWriteStatusResponse, ReadRequest, ReadResponse, WriteRequest,
    WriteResponse, byte_stream_server,
};
use bazel_remote_apis::google::rpc;
use prost::Message;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};
use wbuild_store::reapi::{
    self, action_cache_server, capabilities_server, content_addressable_storage_server,
};
use wbuild_store::{Digest, DigestFunction, Store, StoreError};

use crate::RemoteError;
use crate::resource::{parse_read_resource, parse_write_resource};

/// Largest total size of the blobs in one batch request or response (advertised as
/// `max_batch_total_size_bytes`); larger blobs go through ByteStream.
pub const MAX_BATCH_BYTES: u64 = 4 << 20;

/// Largest blob accepted through ByteStream `Write` (held in memory while it is checked).
const MAX_WRITE_BYTES: u64 = 1 << 30;

/// Most bytes of blobs inlined into one `GetActionResult` answer.
const INLINE_BYTES: u64 = 1 << 20;

/// Size of the chunks ByteStream `Read` sends.
const READ_CHUNK: usize = 1 << 20;

/// What `wbuild serve` is configured with.
#[derive(Clone, Debug, Default)]
pub struct ServeConfig {
    /// When set, `UpdateActionResult` needs `authorization: Bearer <token>`; reads stay
    /// anonymous.
    pub token: Option<String>,
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
    token: Option<Arc<str>>,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Serves the REAPI over `store` on `listener` until `shutdown` completes; then in-flight
/// requests finish (blobs are only ever visible complete).
pub async fn serve(
    store: impl Into<StoreSource>,
    listener: tokio::net::TcpListener,
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RemoteError> {
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
    let svc = Service {
        store: store.clone(),
        token: config.token.map(Arc::from),
    };
    // A batch of MAX_BATCH_BYTES of blobs plus the digests and framing around them.
    let max_message = (MAX_BATCH_BYTES + (1 << 20)) as usize;
    tonic::transport::Server::builder()
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
            byte_stream_server::ByteStreamServer::new(svc).max_decoding_message_size(max_message),
        )
        .serve_with_incoming_shutdown(
            // Small request/response pairs: no Nagle delay.
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await?;
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
    Service {
        store: store.into(),
        token: config.token.map(Arc::from),
    }
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

    fn authorize<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let Some(token) = &self.token else {
            return Ok(());
        };
        let given = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            None => Err(Status::unauthenticated(
                "writing to the action cache needs `authorization: Bearer <token>` (the server was started with --token-file)",
            )),
            Some(t) if constant_time_eq(t.as_bytes(), token.as_bytes()) => Ok(()),
            Some(_) => Err(Status::permission_denied(
                "the bearer token does not match the server's --token-file",
            )),
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[tonic::async_trait]
impl capabilities_server::Capabilities for Service {
    async fn get_capabilities(
        &self,
        _req: Request<reapi::GetCapabilitiesRequest>,
    ) -> Result<Response<reapi::ServerCapabilities>, Status> {
        let version = |minor| {
            Some(SemVer {
                major: 2,
                minor,
                ..Default::default()
            })
        };
        Ok(Response::new(reapi::ServerCapabilities {
            cache_capabilities: Some(reapi::CacheCapabilities {
                digest_functions: vec![
                    DigestFunction::Sha256.to_reapi(),
                    DigestFunction::Blake3.to_reapi(),
                ],
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
        self.authorize(&req)?;
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

    async fn read(&self, req: Request<ReadRequest>) -> Result<Response<Self::ReadStream>, Status> {
        let req = req.into_inner();
        let name = parse_read_resource(&req.resource_name).map_err(|e| {
            Status::invalid_argument(format!("resource name {:?}: {e}", req.resource_name))
        })?;
        let d = name.digest;
        let bytes = self.blocking(move |store| read_blob(store, &d)).await?;
        let offset = usize::try_from(req.read_offset)
            .ok()
            .filter(|o| *o <= bytes.len())
            .ok_or_else(|| Status::out_of_range("read_offset is outside the blob"))?;
        let end = match req.read_limit {
            l if l < 0 => return Err(Status::invalid_argument("read_limit is negative")),
            0 => bytes.len(),
            l => bytes.len().min(offset.saturating_add(l as usize)),
        };
        let chunks: Vec<Result<ReadResponse, Status>> = if offset == end {
            vec![Ok(ReadResponse { data: Vec::new() })]
        } else {
            bytes[offset..end]
                .chunks(READ_CHUNK)
                .map(|c| Ok(ReadResponse { data: c.to_vec() }))
                .collect()
        };
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }

    async fn write(
        &self,
        req: Request<Streaming<WriteRequest>>,
    ) -> Result<Response<WriteResponse>, Status> {
        let mut stream = req.into_inner();
        let mut name = None;
        let mut data: Vec<u8> = Vec::new();
        loop {
            let Some(msg) = stream.message().await? else {
                return Err(Status::invalid_argument(
                    "the write stream ended without finish_write",
                ));
            };
            if name.is_none() {
                let parsed = parse_write_resource(&msg.resource_name).map_err(|e| {
                    Status::invalid_argument(format!("resource name {:?}: {e}", msg.resource_name))
                })?;
                if parsed.digest.size > MAX_WRITE_BYTES {
                    return Err(Status::invalid_argument(format!(
                        "blobs over {MAX_WRITE_BYTES} bytes are not accepted"
                    )));
                }
                data.reserve(parsed.digest.size as usize);
                name = Some(parsed);
            }
            let d = name.as_ref().expect("resource name").digest;
            if msg.write_offset != data.len() as i64 {
                return Err(Status::invalid_argument(format!(
                    "write_offset {} does not follow the {} bytes received",
                    msg.write_offset,
                    data.len()
                )));
            }
            if data.len() as u64 + msg.data.len() as u64 > d.size {
                return Err(Status::invalid_argument(format!(
                    "more bytes sent than the {} of {d}",
                    d.size
                )));
            }
            data.extend_from_slice(&msg.data);
            if msg.finish_write {
                break;
            }
        }
        let d = name.expect("resource name").digest;
        let committed = self
            .blocking(move |store| {
                let got = Digest::of(d.function, &data);
                if got != d {
                    return Err(Status::invalid_argument(format!(
                        "the bytes sent for {d} hash to {got}; not stored"
                    )));
                }
                store.put_bytes_as(d.function, &data).map_err(status_of)?;
                Ok(d.size as i64)
            })
            .await?;
        Ok(Response::new(WriteResponse {
            committed_size: committed,
        }))
    }

    async fn query_write_status(
        &self,
        req: Request<QueryWriteStatusRequest>,
    ) -> Result<Response<QueryWriteStatusResponse>, Status> {
        let req = req.into_inner();
        let name = parse_write_resource(&req.resource_name).map_err(|e| {
            Status::invalid_argument(format!("resource name {:?}: {e}", req.resource_name))
        })?;
        let d = name.digest;
        // Uploads are not resumable: a blob is either complete or not there.
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
