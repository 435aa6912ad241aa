//! The remote-cache client: a blocking facade over tonic (its own tokio runtime), so the
//! scheduler's worker threads can call it directly. Every call has a deadline and is retried
//! with backoff on transient errors; every downloaded blob is verified against its digest
//! before it is returned.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bazel_remote_apis::google::bytestream::{ReadRequest, WriteRequest, byte_stream_client};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use wbuild_store::reapi::{
    self, action_cache_client, capabilities_client, content_addressable_storage_client,
};
use wbuild_store::{Digest, DigestFunction};

use crate::server::MAX_BATCH_BYTES;
use crate::transport::{AuthChannel, ConnectOptions, Credentials, Scheme, endpoint_uri};

/// How long one RPC may take.
const RPC_DEADLINE: Duration = Duration::from_secs(60);
/// How long connecting may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts per RPC on a transient error (UNAVAILABLE and the like).
const ATTEMPTS: u32 = 3;
/// ByteStream chunk size.
const CHUNK: usize = 1 << 20;
/// Up to this many bytes, blobs are uploaded without asking which ones the remote lacks.
const SEND_WITHOUT_ASKING: u64 = 64 << 10;

/// Moves what the server inlined out of `result` (which can then be stored as is): the
/// contents of output files, stdout and stderr, each with its digest. Inlined bytes that do
/// not hash to their digest are an error.
pub fn take_inlined(
    result: &mut reapi::ActionResult,
    f: DigestFunction,
) -> Result<Vec<(Digest, Vec<u8>)>, ClientError> {
    let mut out = Vec::new();
    let mut check = |d: Option<&reapi::Digest>, bytes: Vec<u8>| -> Result<(), ClientError> {
        let Some(Ok(want)) = d.map(|d| Digest::from_proto(f, d)) else {
            return Ok(());
        };
        if bytes.is_empty() && want.size != 0 {
            return Ok(()); // not inlined
        }
        let got = Digest::of(f, &bytes);
        if got != want {
            return Err(ClientError::BadBlob { want, got });
        }
        out.push((want, bytes));
        Ok(())
    };
    for of in &mut result.output_files {
        let bytes = std::mem::take(&mut of.contents);
        check(of.digest.as_ref(), bytes)?;
    }
    let stdout = std::mem::take(&mut result.stdout_raw);
    check(result.stdout_digest.as_ref(), stdout)?;
    let stderr = std::mem::take(&mut result.stderr_raw);
    check(result.stderr_digest.as_ref(), stderr)?;
    Ok(out)
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("bad remote address {url:?}: {message}")]
    Url { url: String, message: String },
    #[error("cannot connect to {url}: {}{hint}", error_chain(.source))]
    Connect {
        url: String,
        source: tonic::transport::Error,
        /// What to do about it (empty when there is nothing to say).
        hint: String,
    },
    #[error("{op} failed: {}: {}{}", status.code(), status.message(), rpc_hint(status))]
    Rpc { op: &'static str, status: Status },
    /// The connection options cannot be used (a header, a certificate, the token file).
    #[error("{0}")]
    Options(String),
    /// A TLS server ended the session before answering the first call and no client
    /// certificate was offered: under TLS 1.3 a server that wants one refuses it after the
    /// handshake, and whether the client reads its alert or only sees the connection go
    /// depends on timing.
    #[error(
        "{op} on {url} failed: {}: {}{CLIENT_CERT_MAYBE}",
        status.code(),
        status.message()
    )]
    TlsSessionEnded {
        url: String,
        op: &'static str,
        status: Status,
    },
    #[error(
        "the remote cache offers none of the digest functions wbuild speaks (it offers {0:?}; wbuild speaks SHA-256 and BLAKE3)"
    )]
    NoDigestFunction(Vec<i32>),
    #[error("the remote cache sent bytes for {want} that hash to {got}; they were not used")]
    BadBlob { want: Digest, got: Digest },
    #[error("the remote cache did not return blob {0}")]
    MissingBlob(Digest),
}

impl ClientError {
    /// The remote said it does not have what was asked for (`NOT_FOUND`, or a blob missing
    /// from a batch read).
    pub fn is_not_found(&self) -> bool {
        match self {
            ClientError::MissingBlob(_) => true,
            ClientError::Rpc { status, .. } => status.code() == Code::NotFound,
            _ => false,
        }
    }
}

/// What to do about an RPC error, when wbuild knows: credentials for UNAUTHENTICATED and
/// PERMISSION_DENIED, a client certificate for a TLS handshake the server ended for want of
/// one.
fn rpc_hint(status: &Status) -> &'static str {
    match status.code() {
        Code::Unauthenticated | Code::PermissionDenied => {
            " (if the remote wants credentials: pass its token with --remote-token-file FILE, \
             or a header with --remote-header NAME=VALUE; [remote] token_file or headers in \
             wbuild.toml)"
        }
        _ if client_certificate_wanted(&status_chain(status)) => CLIENT_CERT_HINT,
        _ => "",
    }
}

const CLIENT_CERT_MAYBE: &str = " (the server ended the TLS session after the handshake, \
     as one that wants a client certificate does: if it does, pass one with \
     --remote-client-cert FILE --remote-client-key FILE)";

const CLIENT_CERT_HINT: &str = " (the server wants a client certificate signed by a CA it \
     trusts: pass one with --remote-client-cert FILE --remote-client-key FILE)";

/// A status's message and the errors under it.
fn status_chain(status: &Status) -> String {
    let mut s = status.message().to_owned();
    let mut cur = std::error::Error::source(status);
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Whether a TLS failure is the server's refusal of a missing (or unknown) client
/// certificate (rustls reports the alert it received).
fn client_certificate_wanted(chain: &str) -> bool {
    let lower = chain.to_ascii_lowercase();
    lower.contains("certificaterequired")
        || lower.contains("certificate required")
        || lower.contains("unknownca")
        || lower.contains("badcertificate")
}

/// An error and its sources, `: `-separated, each message once (rustls's errors repeat
/// themselves through tonic's wrappers).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !parts.iter().any(|p| p.contains(&m)) {
            parts.push(m);
        }
        cur = c.source();
    }
    parts.join(": ")
}

/// What to do about a failed connection.
fn connect_hint(scheme: Scheme, source: &tonic::transport::Error) -> String {
    let chain = error_chain(source).to_ascii_lowercase();
    if scheme == Scheme::Plain {
        return String::new();
    }
    if client_certificate_wanted(&chain) {
        return CLIENT_CERT_HINT.to_owned();
    }
    let hint = if chain.contains("notvalidforname") || chain.contains("not valid for name") {
        "the server's certificate does not name the URL's host: use a host name the \
         certificate holds (and its CA with --remote-ca FILE if it is private)"
    } else if chain.contains("invalid peer certificate") {
        "the server's certificate is not vouched for by a CA wbuild trusts (Mozilla's roots \
         and --remote-ca): if it comes from a private CA, pass that CA with --remote-ca FILE \
         (PEM), or [remote] ca in wbuild.toml"
    } else if [
        "certificate",
        "tls",
        "handshake",
        "peer",
        "corrupt message",
        "alert",
    ]
    .iter()
    .any(|w| chain.contains(w))
    {
        "the TLS handshake failed: is the server speaking TLS (a plain-text server needs \
         grpc://)? If its certificate comes from a private CA, pass it with --remote-ca FILE \
         (PEM)"
    } else {
        return String::new();
    };
    format!(" ({hint})")
}

/// A connection to a REAPI cache (`--remote`).
pub struct RemoteCache {
    pub(crate) rt: tokio::runtime::Runtime,
    /// The bare connection (no credentials): RPCs go through [`RemoteCache::channel`].
    pub(crate) channel: Channel,
    pub(crate) credentials: Credentials,
    pub(crate) instance: String,
    pub(crate) function: DigestFunction,
    max_batch: u64,
    url: String,
    pub(crate) rpcs: AtomicU64,
    /// Bytes received (see [`RemoteCache::bytes_downloaded`]).
    pub(crate) bytes_down: AtomicU64,
    /// How long `execute` waits for an operation (see `exec::DEFAULT_EXECUTION_DEADLINE`).
    pub(crate) exec_deadline: std::sync::Mutex<std::time::Duration>,
}

fn rpc_err(op: &'static str) -> impl Fn(Status) -> ClientError {
    move |status| ClientError::Rpc { op, status }
}

fn transient(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted | Code::Aborted
    )
}

/// The digest function to use with a server offering `offered`: the first of them wbuild
/// supports, in the server's order (a server lists first the function it prefers; `wbuild
/// serve` lists first the one most of its action cache is keyed with, so a cache filled through
/// a SHA-256 remote is used with SHA-256 keys); SHA-256 when it lists none (REAPI before 2.3).
pub fn choose_function(offered: &[i32]) -> Result<DigestFunction, ClientError> {
    if offered.is_empty() {
        return Ok(DigestFunction::Sha256);
    }
    offered
        .iter()
        .find_map(|v| DigestFunction::from_reapi(*v))
        .ok_or_else(|| ClientError::NoDigestFunction(offered.to_vec()))
}

impl RemoteCache {
    /// Connects to `url` (`grpc://host:port`), asks for the server's capabilities and picks
    /// the digest function: BLAKE3 where offered, else SHA-256.
    pub fn connect(url: &str, instance: &str) -> Result<RemoteCache, ClientError> {
        RemoteCache::connect_with(url, instance, &ConnectOptions::default())
    }

    /// Connects to `url` (`grpc://host:port` in plain text, `grpcs://host:port` over TLS)
    /// with `options` (CA, client certificate, headers, token file), asks for the server's
    /// capabilities and picks the digest function: BLAKE3 where offered, else SHA-256. A
    /// header or file that cannot be used is [`ClientError::Options`], before anything is
    /// sent.
    pub fn connect_with(
        url: &str,
        instance: &str,
        options: &ConnectOptions,
    ) -> Result<RemoteCache, ClientError> {
        let (scheme, http) = endpoint_uri(url)?;
        let credentials = options.credentials_for(url)?;
        let tls = match scheme {
            Scheme::Tls => Some(options.tls_config(&http)?),
            Scheme::Plain => None,
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| ClientError::Url {
                url: url.into(),
                message: format!("cannot start the async runtime: {e}"),
            })?;
        let endpoint = Endpoint::from_shared(http).map_err(|e| ClientError::Url {
            url: url.into(),
            message: e.to_string(),
        })?;
        let mut endpoint = endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(RPC_DEADLINE);
        if let Some(tls) = tls {
            endpoint = endpoint.tls_config(tls).map_err(|e| {
                ClientError::Options(format!(
                    "the TLS settings for {url} cannot be used: {}",
                    error_chain(&e)
                ))
            })?;
        }
        let channel = rt
            .block_on(endpoint.connect())
            .map_err(|source| ClientError::Connect {
                url: url.into(),
                hint: connect_hint(scheme, &source),
                source,
            })?;
        let mut client = RemoteCache {
            rt,
            channel,
            credentials,
            instance: instance.to_owned(),
            function: DigestFunction::Sha256,
            max_batch: MAX_BATCH_BYTES,
            url: url.to_owned(),
            rpcs: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
            exec_deadline: std::sync::Mutex::new(crate::exec::DEFAULT_EXECUTION_DEADLINE),
        };
        let instance_name = client.instance.clone();
        let caps = client
            .call("GetCapabilities", |ch| {
                let req = reapi::GetCapabilitiesRequest {
                    instance_name: instance_name.clone(),
                };
                async move {
                    capabilities_client::CapabilitiesClient::new(ch)
                        .get_capabilities(req)
                        .await
                }
            })
            .map_err(|e| match e {
                ClientError::Rpc { op, status }
                    if scheme == Scheme::Tls
                        && options.client_cert.is_none()
                        && matches!(
                            status.code(),
                            Code::Cancelled | Code::Unavailable | Code::Unknown
                        )
                        && rpc_hint(&status).is_empty() =>
                {
                    ClientError::TlsSessionEnded {
                        url: url.to_owned(),
                        op,
                        status,
                    }
                }
                e => e,
            })?;
        let cache = caps.cache_capabilities.unwrap_or_default();
        client.function = choose_function(&cache.digest_functions)?;
        if cache.max_batch_total_size_bytes > 0 {
            // Leave room for the digests and framing around the blobs.
            client.max_batch = (cache.max_batch_total_size_bytes as u64)
                .saturating_sub(64 << 10)
                .clamp(64 << 10, MAX_BATCH_BYTES);
        }
        Ok(client)
    }

    /// The digest function every key and blob for this remote uses (see
    /// [`choose_function`]).
    pub fn function(&self) -> DigestFunction {
        self.function
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The connection, with the credentials on every request (for other services on the
    /// same endpoint, such as the Bots API).
    pub fn channel(&self) -> AuthChannel {
        self.credentials.wrap(self.channel.clone())
    }

    /// The names of the headers sent with every request (values are never shown).
    pub fn header_names(&self) -> Vec<&str> {
        self.credentials.names()
    }

    /// The runtime the blocking calls run on.
    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        &self.rt
    }

    /// RPCs made so far (each attempt counts).
    pub fn rpc_count(&self) -> u64 {
        self.rpcs.load(Ordering::Relaxed)
    }

    /// Bytes received so far: downloaded blobs and the contents a server inlined in action
    /// results (stdout, stderr, output files).
    pub fn bytes_downloaded(&self) -> u64 {
        self.bytes_down.load(Ordering::Relaxed)
    }

    /// One RPC with retries and backoff on transient errors.
    fn call<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T, ClientError>
    where
        F: Fn(AuthChannel) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.rpcs.fetch_add(1, Ordering::Relaxed);
            match self.rt.block_on(f(self.channel())) {
                Ok(r) => return Ok(r.into_inner()),
                Err(s) if transient(s.code()) && attempt < ATTEMPTS => {
                    std::thread::sleep(Duration::from_millis(100 << (2 * (attempt - 1))));
                }
                Err(s) => return Err(rpc_err(op)(s)),
            }
        }
    }

    /// The cached result of `action`, if the remote has one, asking the server to inline
    /// stdout, stderr and the files at `inline_paths` (servers may inline what they choose;
    /// see [`take_inlined`]), so a small result needs no second round trip.
    pub fn get_action_result(
        &self,
        action: &Digest,
        inline_paths: &[String],
    ) -> Result<Option<reapi::ActionResult>, ClientError> {
        let req = reapi::GetActionResultRequest {
            instance_name: self.instance.clone(),
            action_digest: Some(action.to_proto()),
            inline_stdout: true,
            inline_stderr: true,
            inline_output_files: inline_paths.to_vec(),
            digest_function: self.function.to_reapi(),
        };
        match self.call("GetActionResult", |ch| {
            let req = req.clone();
            async move {
                action_cache_client::ActionCacheClient::new(ch)
                    .get_action_result(req)
                    .await
            }
        }) {
            Ok(r) => {
                let inlined = r.stdout_raw.len()
                    + r.stderr_raw.len()
                    + r.output_files
                        .iter()
                        .map(|f| f.contents.len())
                        .sum::<usize>();
                self.bytes_down.fetch_add(inlined as u64, Ordering::Relaxed);
                Ok(Some(r))
            }
            Err(ClientError::Rpc { status, .. }) if status.code() == Code::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Records `result` for `action` (its blobs must be uploaded first).
    pub fn update_action_result(
        &self,
        action: &Digest,
        result: &reapi::ActionResult,
    ) -> Result<(), ClientError> {
        let req = reapi::UpdateActionResultRequest {
            instance_name: self.instance.clone(),
            action_digest: Some(action.to_proto()),
            action_result: Some(result.clone()),
            digest_function: self.function.to_reapi(),
            ..Default::default()
        };
        self.call("UpdateActionResult", |ch| {
            let req = req.clone();
            async move {
                action_cache_client::ActionCacheClient::new(ch)
                    .update_action_result(req)
                    .await
            }
        })
        .map(|_| ())
    }

    /// Which of `blobs` the remote does not have.
    pub fn find_missing(&self, blobs: &[Digest]) -> Result<Vec<Digest>, ClientError> {
        if blobs.is_empty() {
            return Ok(Vec::new());
        }
        let req = reapi::FindMissingBlobsRequest {
            instance_name: self.instance.clone(),
            blob_digests: blobs.iter().map(Digest::to_proto).collect(),
            digest_function: self.function.to_reapi(),
        };
        let r = self.call("FindMissingBlobs", |ch| {
            let req = req.clone();
            async move {
                content_addressable_storage_client::ContentAddressableStorageClient::new(ch)
                    .find_missing_blobs(req)
                    .await
            }
        })?;
        r.missing_blob_digests
            .iter()
            .map(|d| {
                Digest::from_proto(self.function, d).map_err(|e| ClientError::Rpc {
                    op: "FindMissingBlobs",
                    status: Status::internal(e.to_string()),
                })
            })
            .collect()
    }

    /// The `Directory` messages of the tree under `root`, in one `GetTree` call (every page
    /// read), each with the digest of its encoding. The caller walks them by digest from the
    /// root, so a message the server made up is never reached; at most `limit` messages (and
    /// pages) are read (a larger tree is an error, not unbounded memory or calls).
    pub fn get_tree(
        &self,
        root: &Digest,
        limit: usize,
    ) -> Result<Vec<(Digest, reapi::Directory)>, ClientError> {
        use prost::Message;
        let mut out = Vec::new();
        let mut page_token = String::new();
        let too_large = || ClientError::Rpc {
            op: "GetTree",
            status: Status::resource_exhausted(format!(
                "the tree under {root} has more than {limit} directories"
            )),
        };
        for _page in 0..=limit {
            let req = reapi::GetTreeRequest {
                instance_name: self.instance.clone(),
                root_digest: Some(root.to_proto()),
                page_size: 0,
                page_token: page_token.clone(),
                digest_function: self.function.to_reapi(),
            };
            let mut stream = self.call("GetTree", |ch| {
                let req = req.clone();
                async move {
                    content_addressable_storage_client::ContentAddressableStorageClient::new(ch)
                        .get_tree(req)
                        .await
                }
            })?;
            let mut next = String::new();
            while let Some(msg) = self
                .rt
                .block_on(stream.message())
                .map_err(rpc_err("GetTree"))?
            {
                let bytes: usize = msg.directories.iter().map(|d| d.encoded_len()).sum();
                self.bytes_down.fetch_add(bytes as u64, Ordering::Relaxed);
                for d in msg.directories {
                    out.push((Digest::of(self.function, &d.encode_to_vec()), d));
                }
                if out.len() > limit {
                    return Err(too_large());
                }
                next = msg.next_page_token;
            }
            if next.is_empty() || next == page_token {
                return Ok(out);
            }
            page_token = next;
        }
        // More pages than directories allowed: pages that never end (empty ones included).
        Err(too_large())
    }

    /// Groups small blobs into batches under the size limit; large ones go alone (ByteStream).
    fn batches<'a, T>(&self, items: &'a [T], size: impl Fn(&T) -> u64) -> Vec<Vec<&'a T>> {
        let mut out: Vec<Vec<&T>> = Vec::new();
        let mut current: Vec<&T> = Vec::new();
        let mut total = 0;
        for it in items {
            let s = size(it);
            if s > self.max_batch {
                out.push(vec![it]);
                continue;
            }
            if total + s > self.max_batch && !current.is_empty() {
                out.push(std::mem::take(&mut current));
                total = 0;
            }
            total += s;
            current.push(it);
        }
        if !current.is_empty() {
            out.push(current);
        }
        out
    }

    /// Uploads the blobs the remote lacks: small sets that are all here are sent at once
    /// (one round trip; the server keeps one copy), others after `FindMissingBlobs` (a
    /// blob that only the remote holds, such as an output left there by a build without
    /// the bytes, is not read). A blob the remote lacks that `read` cannot give is
    /// [`ClientError::MissingBlob`].
    pub fn upload_missing(
        &self,
        blobs: &[Digest],
        read: impl Fn(&Digest) -> Option<Vec<u8>>,
    ) -> Result<(), ClientError> {
        let total: u64 = blobs.iter().map(|d| d.size).sum();
        if total <= SEND_WITHOUT_ASKING {
            let data: Option<Vec<(Digest, Vec<u8>)>> =
                blobs.iter().map(|d| read(d).map(|b| (*d, b))).collect();
            if let Some(data) = data {
                return self.upload(&data);
            }
        }
        let mut data = Vec::new();
        for d in self.find_missing(blobs)? {
            match read(&d) {
                Some(b) => data.push((d, b)),
                None => return Err(ClientError::MissingBlob(d)),
            }
        }
        self.upload(&data)
    }

    /// Uploads blobs: batched under the server's limit, larger ones through ByteStream.
    pub fn upload(&self, blobs: &[(Digest, Vec<u8>)]) -> Result<(), ClientError> {
        for batch in self.batches(blobs, |(d, _)| d.size) {
            if batch.len() == 1 && batch[0].0.size > self.max_batch {
                self.write_stream(&batch[0].0, &batch[0].1)?;
                continue;
            }
            let req = reapi::BatchUpdateBlobsRequest {
                instance_name: self.instance.clone(),
                requests: batch
                    .iter()
                    .map(|(d, data)| reapi::batch_update_blobs_request::Request {
                        digest: Some(d.to_proto()),
                        data: data.clone(),
                        compressor: 0,
                    })
                    .collect(),
                digest_function: self.function.to_reapi(),
            };
            let r = self.call("BatchUpdateBlobs", |ch| {
                let req = req.clone();
                async move {
                    content_addressable_storage_client::ContentAddressableStorageClient::new(ch)
                        .batch_update_blobs(req)
                        .await
                }
            })?;
            for resp in r.responses {
                if let Some(s) = resp.status
                    && s.code != Code::Ok as i32
                {
                    return Err(ClientError::Rpc {
                        op: "BatchUpdateBlobs",
                        status: Status::new(Code::from(s.code), s.message),
                    });
                }
            }
        }
        Ok(())
    }

    fn resource_segment(&self, d: &Digest) -> String {
        let function = match self.function {
            DigestFunction::Sha256 => String::new(),
            f => format!("{}/", f.name()),
        };
        let instance = if self.instance.is_empty() {
            String::new()
        } else {
            format!("{}/", self.instance)
        };
        format!("{instance}{{}}/{function}{}/{}", d.hex(), d.size)
    }

    fn write_stream(&self, d: &Digest, data: &[u8]) -> Result<(), ClientError> {
        let name = self.resource_segment(d).replacen(
            "{}",
            &format!("uploads/{:032x}/blobs", rand_id(d)),
            1,
        );
        self.call("ByteStream.Write", |ch| {
            let chunks: Vec<WriteRequest> = if data.is_empty() {
                vec![WriteRequest {
                    resource_name: name.clone(),
                    write_offset: 0,
                    finish_write: true,
                    data: Vec::new(),
                }]
            } else {
                data.chunks(CHUNK)
                    .enumerate()
                    .map(|(i, c)| WriteRequest {
                        resource_name: if i == 0 { name.clone() } else { String::new() },
                        write_offset: (i * CHUNK) as i64,
                        finish_write: (i + 1) * CHUNK >= data.len(),
                        data: c.to_vec(),
                    })
                    .collect()
            };
            async move {
                byte_stream_client::ByteStreamClient::new(ch)
                    .write(tokio_stream::iter(chunks))
                    .await
            }
        })
        .map(|_| ())
    }

    /// Downloads `blobs`, each verified against its digest.
    pub fn download(&self, blobs: &[Digest]) -> Result<Vec<(Digest, Vec<u8>)>, ClientError> {
        let mut out = Vec::new();
        for batch in self.batches(blobs, |d| d.size) {
            if batch.len() == 1 && batch[0].size > self.max_batch {
                let d = *batch[0];
                let bytes = self.read_stream(&d)?;
                out.push((d, bytes));
                continue;
            }
            let req = reapi::BatchReadBlobsRequest {
                instance_name: self.instance.clone(),
                digests: batch.iter().map(|d| d.to_proto()).collect(),
                acceptable_compressors: Vec::new(),
                digest_function: self.function.to_reapi(),
            };
            let r = self.call("BatchReadBlobs", |ch| {
                let req = req.clone();
                async move {
                    content_addressable_storage_client::ContentAddressableStorageClient::new(ch)
                        .batch_read_blobs(req)
                        .await
                }
            })?;
            for want in batch {
                let resp = r
                    .responses
                    .iter()
                    .find(|x| x.digest.as_ref() == Some(&want.to_proto()))
                    .filter(|x| x.status.as_ref().is_none_or(|s| s.code == 0))
                    .ok_or(ClientError::MissingBlob(*want))?;
                out.push((*want, resp.data.clone()));
            }
        }
        let received: usize = out.iter().map(|(_, b)| b.len()).sum();
        self.bytes_down
            .fetch_add(received as u64, Ordering::Relaxed);
        for (want, bytes) in &out {
            let got = Digest::of(self.function, bytes);
            if got != *want {
                return Err(ClientError::BadBlob { want: *want, got });
            }
        }
        Ok(out)
    }

    fn read_stream(&self, d: &Digest) -> Result<Vec<u8>, ClientError> {
        let name = self.resource_segment(d).replacen("{}", "blobs", 1);
        let mut stream = self.call("ByteStream.Read", |ch| {
            let req = ReadRequest {
                resource_name: name.clone(),
                read_offset: 0,
                read_limit: 0,
            };
            async move {
                byte_stream_client::ByteStreamClient::new(ch)
                    .read(req)
                    .await
            }
        })?;
        let mut data = Vec::with_capacity(d.size as usize);
        while let Some(msg) = self
            .rt
            .block_on(stream.message())
            .map_err(rpc_err("ByteStream.Read"))?
        {
            data.extend_from_slice(&msg.data);
        }
        Ok(data)
    }
}

/// An upload id for a ByteStream resource name (unique per process and blob).
fn rand_id(d: &Digest) -> u128 {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed) as u128;
    let pid = std::process::id() as u128;
    let h = u128::from_le_bytes(d.hash[..16].try_into().unwrap_or([0; 16]));
    h ^ (pid << 64) ^ n
}
