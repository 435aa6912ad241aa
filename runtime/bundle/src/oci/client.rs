//! The registry client: blob and manifest operations.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ureq::config::RedirectAuthHeaders;
use ureq::http::{Response, StatusCode};
use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};
use ureq::{Body, SendBody};

use super::auth::{AuthState, repo_scope, with_auth};
use super::credentials::{ClientOptions, Credentials, load_ca_file};
use super::error::{OciError, invalid, registry_error, transport};
use super::reference::{
    InvalidName, check_registry_arg, validate_digest, validate_manifest_ref, validate_repository,
};
use super::{MAX_MANIFEST_SIZE, MEDIA_TYPE_IMAGE_INDEX, MEDIA_TYPE_IMAGE_MANIFEST, sha256_digest};
use crate::file::HashingReader;

/// Connect / per-read / per-write timeout.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Whole-request budget (headers + body), generous enough for large blobs.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// A blocking client for one registry.
#[derive(Clone)]
pub struct Client {
    pub(super) registry: String,
    /// `http[s]://host[:port]`, without a trailing slash.
    pub(super) base: String,
    pub(super) agent: ureq::Agent,
    pub(super) credentials: Option<Credentials>,
    /// Where the credentials came from (`from $WBUILD_OCI_TOKEN`, ...), for errors.
    pub(super) credentials_source: Option<String>,
    /// What the registry asked for, and bearer tokens: shared by clones.
    pub(super) auth: Arc<Mutex<AuthState>>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("registry", &self.registry)
            .field("base", &self.base)
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client configured from the environment (see [`ClientOptions::from_env`]):
    /// HTTPS, except plain HTTP for loopback registries unless `WBUILD_OCI_TLS=1`.
    pub fn new(registry: &str) -> Result<Client, OciError> {
        check_registry_arg(registry)?;
        let (options, source) = ClientOptions::from_env_with_source(registry)?;
        let mut client = Client::with_options(registry, &options)?;
        client.credentials_source = source;
        Ok(client)
    }

    /// A client with explicit options (the environment is not read).
    pub fn with_options(registry: &str, options: &ClientOptions) -> Result<Client, OciError> {
        let host = check_registry_arg(registry)?;
        let tls = options.force_tls || !host.is_loopback();
        let root_certs = match &options.ca_file {
            None => RootCerts::WebPki,
            Some(path) => {
                let mut certs: Vec<Certificate<'static>> = webpki_root_certs::TLS_SERVER_ROOT_CERTS
                    .iter()
                    .map(|c| Certificate::from_der(c.as_ref()))
                    .collect();
                certs.extend(load_ca_file(path)?);
                RootCerts::from(certs)
            }
        };
        let tls_config = TlsConfig::builder()
            .provider(TlsProvider::Rustls)
            .root_certs(root_certs)
            .build();
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            // An https registry never falls back to http, not even through a redirect.
            .https_only(tls)
            .max_redirects(5)
            .redirect_auth_headers(RedirectAuthHeaders::SameHost)
            .tls_config(tls_config)
            .user_agent(concat!("wbuild/", env!("CARGO_PKG_VERSION")))
            .timeout_connect(Some(IO_TIMEOUT))
            .timeout_per_read(Some(IO_TIMEOUT))
            .timeout_per_write(Some(IO_TIMEOUT))
            .timeout_per_call(Some(REQUEST_TIMEOUT))
            .build();
        Ok(Client {
            registry: registry.to_string(),
            base: format!("{}://{registry}", if tls { "https" } else { "http" }),
            agent: config.new_agent(),
            credentials: options.credentials.clone(),
            credentials_source: None,
            auth: Arc::default(),
        })
    }

    /// The registry this client talks to (`host[:port]`).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// `http://host[:port]` or `https://host[:port]`.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `GET /v2/`: checks that the registry speaks the distribution API (authenticating
    /// if it asks).
    pub fn ping(&self) -> Result<(), OciError> {
        let url = format!("{}/v2/", self.base);
        let mut resp = self.send("GET", &url, None, true, |auth| {
            with_auth(self.agent.get(&url), auth).call()
        })?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(registry_error("GET", &url, &mut resp))
        }
    }

    fn blob_url(&self, repository: &str, digest: &str) -> String {
        format!("{}/v2/{repository}/blobs/{digest}", self.base)
    }

    fn manifest_url(&self, repository: &str, reference: &str) -> String {
        format!("{}/v2/{repository}/manifests/{reference}", self.base)
    }

    /// `HEAD /v2/<repo>/blobs/<digest>`.
    pub fn blob_exists(&self, repository: &str, digest: &str) -> Result<bool, OciError> {
        validate_repository(repository)?;
        validate_digest(digest)?;
        self.blob_exists_in_scope(repository, digest, &repo_scope(repository, false))
    }

    fn blob_exists_in_scope(
        &self,
        repository: &str,
        digest: &str,
        scope: &str,
    ) -> Result<bool, OciError> {
        let url = self.blob_url(repository, digest);
        let mut resp = self.send("HEAD", &url, Some(scope), true, |auth| {
            with_auth(self.agent.head(&url), auth).call()
        })?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(registry_error("HEAD", &url, &mut resp)),
        }
    }

    /// Upload unless present (HEAD first). `POST /v2/<repo>/blobs/uploads/` then
    /// `PUT <Location>?digest=...` (monolithic). Returns whether it uploaded.
    pub fn push_blob(
        &self,
        repository: &str,
        digest: &str,
        bytes: &[u8],
    ) -> Result<bool, OciError> {
        validate_repository(repository)?;
        validate_digest(digest)?;
        let actual = sha256_digest(bytes);
        if actual != digest {
            return Err(OciError::ContentMismatch {
                what: format!("blob of {} bytes", bytes.len()),
                digest: digest.to_string(),
                actual,
            });
        }
        let scope = repo_scope(repository, true);
        if self.blob_exists_in_scope(repository, digest, &scope)? {
            return Ok(false);
        }
        let location = self.start_upload(repository, &scope)?;
        let url = upload_url(&location, digest);
        let result = self.send("PUT", &url, Some(&scope), false, |auth| {
            with_auth(self.agent.put(&url), auth)
                .header("Content-Type", "application/octet-stream")
                .send(bytes)
        });
        self.finish_upload(&location, &url, digest, &scope, result)?;
        Ok(true)
    }

    /// Like [`Client::push_blob`], streaming `size` bytes from the file at `path`
    /// (hashed while sending; a file that does not match `digest` is an error).
    pub fn push_blob_file(
        &self,
        repository: &str,
        digest: &str,
        size: u64,
        path: &Path,
    ) -> Result<bool, OciError> {
        validate_repository(repository)?;
        validate_digest(digest)?;
        let io_err = |action, error| OciError::Io {
            action,
            path: path.to_path_buf(),
            error,
        };
        let file = File::open(path).map_err(|e| io_err("opening", e))?;
        let len = file
            .metadata()
            .map_err(|e| io_err("reading metadata of", e))?
            .len();
        if len != size {
            return Err(io_err(
                "uploading",
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("the file is {len} bytes, but the blob {digest} should be {size}"),
                ),
            ));
        }
        let scope = repo_scope(repository, true);
        if self.blob_exists_in_scope(repository, digest, &scope)? {
            return Ok(false);
        }
        let location = self.start_upload(repository, &scope)?;
        let url = upload_url(&location, digest);
        // (bytes sent, their digest) of the last attempt; a retry after an authentication
        // challenge reads the file again from the start.
        let mut sent: Option<(u64, String)> = None;
        let mut file = Some(file);
        let result = self.send("PUT", &url, Some(&scope), false, |auth| {
            let f = match file.take() {
                Some(f) => f,
                None => File::open(path).map_err(ureq::Error::Io)?,
            };
            let mut reader = HashingReader::new(f.take(size));
            let r = with_auth(self.agent.put(&url), auth)
                .header("Content-Type", "application/octet-stream")
                .header("Content-Length", size.to_string())
                .send(SendBody::from_reader(&mut reader));
            sent = Some((reader.count, reader.digest()));
            r
        });
        if result.is_ok()
            && let Some((count, actual)) = sent
            && count == size
            && actual != digest
        {
            self.cancel_upload(&location, &scope);
            return Err(OciError::ContentMismatch {
                what: format!("file {}", path.display()),
                digest: digest.to_string(),
                actual,
            });
        }
        self.finish_upload(&location, &url, digest, &scope, result)?;
        Ok(true)
    }

    /// `POST /v2/<repo>/blobs/uploads/`: returns the absolute upload URL.
    fn start_upload(&self, repository: &str, scope: &str) -> Result<String, OciError> {
        let url = format!("{}/v2/{repository}/blobs/uploads/", self.base);
        let mut resp = self.send("POST", &url, Some(scope), false, |auth| {
            with_auth(self.agent.post(&url), auth).send_empty()
        })?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(registry_error("POST", &url, &mut resp));
        }
        let location = header(&resp, "location").ok_or_else(|| OciError::Protocol {
            method: "POST",
            url: url.clone(),
            reason: "202 Accepted without a Location header for the upload".to_string(),
        })?;
        self.resolve_location(&url, &location)
    }

    /// Makes a Location header absolute (it may be absolute, scheme-relative,
    /// absolute-path or relative to the request URL). An https registry's uploads never
    /// go to a plain http URL.
    fn resolve_location(&self, request_url: &str, location: &str) -> Result<String, OciError> {
        let tls = self.base.starts_with("https://");
        let has_scheme = |scheme: &str| {
            location
                .get(..scheme.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(scheme))
        };
        if has_scheme("https://") {
            return Ok(location.to_string());
        }
        if has_scheme("http://") {
            if tls {
                return Err(OciError::Protocol {
                    method: "POST",
                    url: request_url.to_string(),
                    reason: format!(
                        "the upload Location {location:?} is plain http, but the registry is \
                         reached over https: refusing to send the blob unencrypted (check the \
                         registry's external URL / proxy headers)"
                    ),
                });
            }
            return Ok(location.to_string());
        }
        if let Some(rest) = location.strip_prefix("//") {
            let scheme = if tls { "https" } else { "http" };
            return Ok(format!("{scheme}://{rest}"));
        }
        if location.starts_with('/') {
            return Ok(format!("{}{location}", self.base));
        }
        if location.contains("://") {
            return Err(OciError::Protocol {
                method: "POST",
                url: request_url.to_string(),
                reason: format!("upload Location {location:?} has an unsupported scheme"),
            });
        }
        // Relative reference: resolve against the request URL's directory.
        let path = request_url.split('?').next().unwrap_or(request_url);
        let dir = &path[..path.rfind('/').map_or(path.len(), |i| i + 1)];
        Ok(format!("{dir}{location}"))
    }

    /// Checks the answer to the upload PUT; on failure, best-effort cancels the upload.
    fn finish_upload(
        &self,
        location: &str,
        url: &str,
        digest: &str,
        scope: &str,
        result: Result<Response<Body>, OciError>,
    ) -> Result<(), OciError> {
        let mut resp = match result {
            Ok(r) => r,
            Err(e) => {
                self.cancel_upload(location, scope);
                return Err(e);
            }
        };
        if !resp.status().is_success() {
            let err = registry_error("PUT", url, &mut resp);
            self.cancel_upload(location, scope);
            return Err(err);
        }
        if let Some(reported) = header(&resp, "docker-content-digest")
            && reported != digest
        {
            return Err(OciError::DigestMismatch {
                url: url.to_string(),
                expected: digest.to_string(),
                actual: reported,
            });
        }
        Ok(())
    }

    fn cancel_upload(&self, location: &str, scope: &str) {
        let auth = self.authorization(location, Some(scope));
        let _ = with_auth(self.agent.delete(location), auth.as_deref()).call();
    }

    /// `PUT /v2/<repo>/manifests/<reference>` with Content-Type `media_type`; returns the
    /// manifest digest (computed locally, checked against `Docker-Content-Digest`).
    pub fn push_manifest(
        &self,
        repository: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<String, OciError> {
        validate_repository(repository)?;
        let by_digest = validate_manifest_ref(reference)?;
        if media_type.is_empty() || !media_type.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid("media type", media_type, InvalidName::MediaType));
        }
        let digest = sha256_digest(bytes);
        if by_digest && digest != reference {
            return Err(OciError::ContentMismatch {
                what: format!("manifest of {} bytes", bytes.len()),
                digest: reference.to_string(),
                actual: digest,
            });
        }
        let url = self.manifest_url(repository, reference);
        let scope = repo_scope(repository, true);
        let mut resp = self.send("PUT", &url, Some(&scope), false, |auth| {
            with_auth(self.agent.put(&url), auth)
                .header("Content-Type", media_type)
                .send(bytes)
        })?;
        if !resp.status().is_success() {
            return Err(registry_error("PUT", &url, &mut resp));
        }
        if let Some(reported) = header(&resp, "docker-content-digest")
            && reported != digest
        {
            return Err(OciError::DigestMismatch {
                url,
                expected: digest,
                actual: reported,
            });
        }
        Ok(digest)
    }

    /// `GET /v2/<repo>/manifests/<reference>` accepting OCI image manifests and indexes;
    /// returns (media type, bytes, digest). The digest is computed locally and checked
    /// against `reference` when that is a digest, and against `Docker-Content-Digest`.
    pub fn pull_manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<(String, Vec<u8>, String), OciError> {
        validate_repository(repository)?;
        let by_digest = validate_manifest_ref(reference)?;
        let url = self.manifest_url(repository, reference);
        let accept = format!("{MEDIA_TYPE_IMAGE_MANIFEST}, {MEDIA_TYPE_IMAGE_INDEX}");
        let scope = repo_scope(repository, false);
        let mut resp = self.send("GET", &url, Some(&scope), true, |auth| {
            with_auth(self.agent.get(&url), auth)
                .header("Accept", &accept)
                .call()
        })?;
        if resp.status() != StatusCode::OK {
            return Err(registry_error("GET", &url, &mut resp));
        }
        let content_type = header(&resp, "content-type");
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(MAX_MANIFEST_SIZE)
            .read_to_vec()
            .map_err(|e| match e {
                ureq::Error::BodyExceedsLimit(_) => OciError::TooLarge {
                    url: url.clone(),
                    digest: format!("manifest {reference}"),
                    limit: MAX_MANIFEST_SIZE,
                },
                e => transport("GET", &url, e),
            })?;
        let digest = sha256_digest(&bytes);
        let expected = if by_digest {
            Some(reference.to_string())
        } else {
            header(&resp, "docker-content-digest")
        };
        if let Some(expected) = expected
            && expected != digest
        {
            return Err(OciError::DigestMismatch {
                url,
                expected,
                actual: digest,
            });
        }
        let media_type = content_type
            .map(|ct| ct.split(';').next().unwrap_or_default().trim().to_string())
            .filter(|ct| !ct.is_empty())
            .or_else(|| {
                let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
                Some(v.get("mediaType")?.as_str()?.to_string())
            })
            .ok_or_else(|| OciError::Protocol {
                method: "GET",
                url: url.clone(),
                reason: "the manifest has neither a Content-Type header nor a mediaType field"
                    .to_string(),
            })?;
        Ok((media_type, bytes, digest))
    }

    /// `GET /v2/<repo>/blobs/<digest>` (following redirects), at most `max_size` bytes,
    /// verified against `digest`.
    pub fn pull_blob(
        &self,
        repository: &str,
        digest: &str,
        max_size: u64,
    ) -> Result<Vec<u8>, OciError> {
        validate_repository(repository)?;
        validate_digest(digest)?;
        let url = self.blob_url(repository, digest);
        let mut resp = self.get_blob(repository, &url)?;
        let too_large = || OciError::TooLarge {
            url: url.clone(),
            digest: digest.to_string(),
            limit: max_size,
        };
        if resp.body().content_length().is_some_and(|n| n > max_size) {
            return Err(too_large());
        }
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(max_size)
            .read_to_vec()
            .map_err(|e| match e {
                ureq::Error::BodyExceedsLimit(_) => too_large(),
                e => transport("GET", &url, e),
            })?;
        let actual = sha256_digest(&bytes);
        if actual != digest {
            return Err(OciError::DigestMismatch {
                url,
                expected: digest.to_string(),
                actual,
            });
        }
        Ok(bytes)
    }

    /// Streams a blob to `dest`: written to a temporary file next to it, verified while
    /// streaming, then renamed into place. Returns the blob's size.
    pub fn pull_blob_to(
        &self,
        repository: &str,
        digest: &str,
        dest: &Path,
    ) -> Result<u64, OciError> {
        validate_repository(repository)?;
        validate_digest(digest)?;
        let url = self.blob_url(repository, digest);
        let mut resp = self.get_blob(repository, &url)?;

        let mut temp = temp_file_next_to(dest)?;
        let io_err = |action, path: &Path, error| OciError::Io {
            action,
            path: path.to_path_buf(),
            error,
        };
        let mut buf = vec![0u8; 64 * 1024];
        let mut reader = HashingReader::new(resp.body_mut().as_reader());
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(transport("GET", &url, ureq::Error::Io(e)));
                }
            };
            temp.as_file_mut()
                .write_all(&buf[..n])
                .map_err(|e| io_err("writing", temp.path(), e))?;
        }
        let (total, actual) = (reader.count, reader.digest());
        if actual != digest {
            // `temp` is removed on drop.
            return Err(OciError::DigestMismatch {
                url,
                expected: digest.to_string(),
                actual,
            });
        }
        temp.as_file()
            .sync_all()
            .map_err(|e| io_err("syncing", temp.path(), e))?;
        temp.persist(dest).map_err(|e| OciError::Io {
            action: "renaming the downloaded blob to",
            path: dest.to_path_buf(),
            error: e.error,
        })?;
        Ok(total)
    }

    fn get_blob(&self, repository: &str, url: &str) -> Result<Response<Body>, OciError> {
        let scope = repo_scope(repository, false);
        let mut resp = self.send("GET", url, Some(&scope), true, |auth| {
            with_auth(self.agent.get(url), auth).call()
        })?;
        if resp.status() != StatusCode::OK {
            return Err(registry_error("GET", url, &mut resp));
        }
        Ok(resp)
    }
}

/// Appends `digest=<digest>` to an upload URL that may already have a query string.
fn upload_url(location: &str, digest: &str) -> String {
    let sep = if location.contains('?') {
        if location.ends_with('?') || location.ends_with('&') {
            ""
        } else {
            "&"
        }
    } else {
        "?"
    };
    format!("{location}{sep}digest={}", digest.replace(':', "%3A"))
}

fn header(resp: &Response<Body>, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_string())
}

pub(super) fn is_retryable(e: &ureq::Error) -> bool {
    match e {
        // rustls reports TLS failures as InvalidData I/O errors: retrying does not help.
        ureq::Error::Io(io) => io.kind() != io::ErrorKind::InvalidData,
        ureq::Error::ConnectionFailed => true,
        _ => false,
    }
}

/// A temporary file beside `dest` (`.<name>.<random>.part`, created with mode 0666 less
/// the umask, as a plain create would), removed on drop unless persisted.
fn temp_file_next_to(dest: &Path) -> Result<tempfile::NamedTempFile, OciError> {
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "blob".to_string());
    tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".part")
        .permissions(std::fs::Permissions::from_mode(0o666))
        .tempfile_in(dir)
        .map_err(|error| OciError::Io {
            action: "creating a temporary file in",
            path: dir.to_path_buf(),
            error,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn client(registry: &str, options: &ClientOptions) -> Client {
        Client::with_options(registry, options).unwrap_or_else(|e| panic!("{registry}: {e}"))
    }

    #[test]
    fn https_except_loopback() {
        let plain = ClientOptions::default();
        let tls = ClientOptions {
            force_tls: true,
            ..ClientOptions::default()
        };
        for ok in [
            "localhost:5000",
            "127.0.0.1:1234",
            "127.8.9.10",
            "[::1]:5000",
            "LOCALHOST",
        ] {
            let c = client(ok, &plain);
            assert_eq!(c.registry(), ok);
            assert_eq!(c.base_url(), format!("http://{ok}"));
            assert_eq!(client(ok, &tls).base_url(), format!("https://{ok}"));
        }
        for remote in [
            "ghcr.io",
            "registry.example.com:5000",
            "10.0.0.1:5000",
            "[2001:db8::1]",
        ] {
            assert_eq!(
                client(remote, &plain).base_url(),
                format!("https://{remote}")
            );
            assert_eq!(client(remote, &tls).base_url(), format!("https://{remote}"));
        }
        let e = Client::with_options("http://localhost:5000", &plain)
            .unwrap_err()
            .to_string();
        assert!(e.contains("without a scheme"), "{e}");
        let e = Client::new("local_host").unwrap_err().to_string();
        assert!(e.contains("invalid registry \"local_host\""), "{e}");
    }

    #[test]
    fn upload_urls() {
        assert_eq!(
            upload_url("http://h/v2/r/blobs/uploads/u", D),
            format!(
                "http://h/v2/r/blobs/uploads/u?digest={}",
                D.replace(':', "%3A")
            )
        );
        assert_eq!(
            upload_url("http://h/v2/r/blobs/uploads/u?_state=abc", D),
            format!(
                "http://h/v2/r/blobs/uploads/u?_state=abc&digest={}",
                D.replace(':', "%3A")
            )
        );
        let c = client("127.0.0.1:5000", &ClientOptions::default());
        let req = "http://127.0.0.1:5000/v2/r/blobs/uploads/";
        assert_eq!(
            c.resolve_location(req, "/v2/r/blobs/uploads/u?x=1")
                .unwrap(),
            "http://127.0.0.1:5000/v2/r/blobs/uploads/u?x=1"
        );
        assert_eq!(
            c.resolve_location(req, "http://127.0.0.1:5001/up/u")
                .unwrap(),
            "http://127.0.0.1:5001/up/u"
        );
        assert_eq!(
            c.resolve_location(req, "//127.0.0.1:5001/up").unwrap(),
            "http://127.0.0.1:5001/up"
        );
        assert_eq!(
            c.resolve_location(req, "u?x=1").unwrap(),
            "http://127.0.0.1:5000/v2/r/blobs/uploads/u?x=1"
        );
        assert_eq!(
            c.resolve_location(req, "https://cdn.example.com/u")
                .unwrap(),
            "https://cdn.example.com/u"
        );
        assert!(c.same_origin("http://127.0.0.1:5000/v2/"));
        assert!(!c.same_origin("http://127.0.0.1:50000/v2/"));
        assert!(!c.same_origin("http://127.0.0.1:5001/up"));

        // An https registry: never downgraded to http.
        let c = client("registry.example.com", &ClientOptions::default());
        let req = "https://registry.example.com/v2/r/blobs/uploads/";
        assert_eq!(
            c.resolve_location(req, "/v2/r/blobs/uploads/u").unwrap(),
            "https://registry.example.com/v2/r/blobs/uploads/u"
        );
        assert_eq!(
            c.resolve_location(req, "//storage.example.com/u").unwrap(),
            "https://storage.example.com/u"
        );
        let e = c
            .resolve_location(req, "http://registry.example.com/v2/r/blobs/uploads/u")
            .unwrap_err();
        assert!(matches!(e, OciError::Protocol { .. }), "{e:?}");
        assert!(e.to_string().contains("plain http"), "{e}");
        assert!(c.same_origin("https://REGISTRY.example.com/v2/r?x"));
        assert!(!c.same_origin("https://registry.example.com.evil/v2/"));
        assert!(!c.same_origin("http://registry.example.com/v2/"));
    }

    #[test]
    fn client_methods_validate_arguments() {
        let c = client("127.0.0.1:1", &ClientOptions::default());
        let e = c.blob_exists("Bad", D).unwrap_err().to_string();
        assert!(
            e.contains("invalid repository \"Bad\"") && e.contains("lowercase"),
            "{e}"
        );
        let e = c.pull_blob("ok", "sha256:xyz", 10).unwrap_err().to_string();
        assert!(e.contains("invalid digest \"sha256:xyz\""), "{e}");
        let e = c.pull_manifest("ok", "bad tag").unwrap_err().to_string();
        assert!(e.contains("invalid tag \"bad tag\""), "{e}");
        let e = c.push_blob("ok", D, b"hello").unwrap_err().to_string();
        assert!(e.contains(D) && e.contains(&sha256_digest(b"hello")), "{e}");
    }

    #[test]
    fn download_temp_files_sit_beside_the_destination() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("blob.bin");
        let temp = temp_file_next_to(&dest).unwrap();
        assert_eq!(temp.path().parent(), Some(dir.path()));
        let name = temp.path().file_name().unwrap().to_str().unwrap();
        assert!(
            name.starts_with(".blob.bin.") && name.ends_with(".part"),
            "{name}"
        );
        // The same mode as a plainly created file (0666 less the umask), not 0600.
        let plain = dir.path().join("plain");
        File::create(&plain).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(temp.path()), mode(&plain));
        let temp_path = temp.path().to_path_buf();
        drop(temp);
        assert!(!temp_path.exists(), "a dropped temporary file is removed");
        let e = temp_file_next_to(&dir.path().join("missing/blob"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing"), "{e}");
    }
}
