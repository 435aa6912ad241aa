//! The OCI client against a real registry: Debian's `docker-registry` (distribution 2.8),
//! started on a free loopback port with its storage in a temporary directory.
//!
//! The binary is `/usr/bin/docker-registry`, or `$WBUILD_DOCKER_REGISTRY`. When it is
//! missing these tests fail (they do not skip): run tests/setup.sh.
//!
//! Also: the registry over HTTPS with its own CA (certificates made with `openssl`), with
//! HTTP Basic authentication (htpasswd), and the bearer-token flow against a small
//! in-test registry front and token server. Clients get explicit [`ClientOptions`]:
//! tests run in parallel threads, and the environment is process-wide.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use base64::Engine as _;
use serde_json::json;
use wbuild_bundle::oci::{
    Client, ClientOptions, Credentials, MEDIA_TYPE_IMAGE_INDEX, MEDIA_TYPE_IMAGE_MANIFEST,
    OciError, Reference, sha256_digest,
};
use wbuild_tests::oci::{OciRegistry, OciRegistryOptions, free_port};

const ARTIFACT_TYPE: &str = "application/vnd.wbuild.toolchain.v1";
const CONFIG_MEDIA_TYPE: &str = "application/vnd.wbuild.toolchain.manifest.v1+json";
const LAYER_MEDIA_TYPE: &str = "application/vnd.wbuild.toolchain.blob.v1";

fn client(registry: &OciRegistry) -> Client {
    Client::new(&registry.address()).unwrap()
}

fn client_with(address: &str, options: &ClientOptions) -> Client {
    Client::with_options(address, options).unwrap_or_else(|e| panic!("{address}: {e}"))
}

fn basic(username: &str, password: &str) -> Option<Credentials> {
    Some(Credentials::Basic {
        username: username.into(),
        password: password.into(),
    })
}

/// Deterministic pseudo-random bytes (incompressible enough to be realistic).
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn descriptor(media_type: &str, bytes_digest: &str, size: u64) -> serde_json::Value {
    json!({ "mediaType": media_type, "digest": bytes_digest, "size": size })
}

fn assert_contains(err: &OciError, needles: &[&str]) {
    let msg = err.to_string();
    eprintln!("error: {msg}");
    for needle in needles {
        assert!(msg.contains(needle), "error lacks {needle:?}: {msg}");
    }
}

fn no_temp_files(dir: &Path) {
    let leftovers: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".part"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

#[test]
fn push_and_pull_a_toolchain_artifact() {
    let registry = OciRegistry::start();
    let client = client(&registry);
    let repo = "wbuild/toolchains/clang";
    let work = tempfile::tempdir().unwrap();

    // Blob 1 (the bundle manifest, used as the OCI config): from memory.
    let config = serde_json::to_vec(&json!({"name": "clang", "version": "18.1.8"})).unwrap();
    let config_digest = sha256_digest(&config);
    assert!(!client.blob_exists(repo, &config_digest).unwrap());
    assert!(client.push_blob(repo, &config_digest, &config).unwrap());
    assert!(client.blob_exists(repo, &config_digest).unwrap());
    assert!(
        !client.push_blob(repo, &config_digest, &config).unwrap(),
        "a second push of the same blob is skipped"
    );

    // Blob 2 (a layer): streamed from a file of a few MB.
    let layer = pseudo_random(6 * 1024 * 1024 + 17, 1);
    let layer_digest = sha256_digest(&layer);
    let layer_path = work.path().join("layer.tar");
    fs::write(&layer_path, &layer).unwrap();
    let size = layer.len() as u64;
    assert!(
        client
            .push_blob_file(repo, &layer_digest, size, &layer_path)
            .unwrap()
    );
    assert!(client.blob_exists(repo, &layer_digest).unwrap());
    assert!(
        !client
            .push_blob_file(repo, &layer_digest, size, &layer_path)
            .unwrap()
    );
    // The same blob in another repository of the same registry is uploaded there too
    // (no cross-repository mount), and an empty blob works.
    assert!(
        client
            .push_blob("other/repo", &layer_digest, &layer)
            .unwrap()
    );
    assert!(client.push_blob(repo, &sha256_digest(b""), b"").unwrap());

    // The artifact manifest, with a custom config media type and an artifactType.
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_IMAGE_MANIFEST,
        "artifactType": ARTIFACT_TYPE,
        "config": descriptor(CONFIG_MEDIA_TYPE, &config_digest, config.len() as u64),
        "layers": [
            descriptor(LAYER_MEDIA_TYPE, &layer_digest, size),
            descriptor(LAYER_MEDIA_TYPE, &sha256_digest(b""), 0),
        ],
        "annotations": {"org.opencontainers.image.title": "clang 18.1.8"},
    }))
    .unwrap();
    let digest = client
        .push_manifest(repo, "18.1.8", MEDIA_TYPE_IMAGE_MANIFEST, &manifest)
        .unwrap();
    assert_eq!(digest, sha256_digest(&manifest));

    // Pull by tag, through a parsed reference.
    let reference =
        Reference::parse(&format!("oci://{}/{repo}:18.1.8", registry.address())).unwrap();
    let client2 = Client::new(&reference.registry).unwrap();
    let (media_type, bytes, pulled_digest) = client2
        .pull_manifest(&reference.repository, reference.manifest_ref().unwrap())
        .unwrap();
    assert_eq!(media_type, MEDIA_TYPE_IMAGE_MANIFEST);
    assert_eq!(
        bytes, manifest,
        "the registry keeps the manifest bytes as pushed"
    );
    assert_eq!(pulled_digest, digest);
    let parsed: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(parsed["artifactType"], ARTIFACT_TYPE);
    assert_eq!(parsed["config"]["mediaType"], CONFIG_MEDIA_TYPE);

    // Pull by digest.
    let by_digest =
        Reference::parse(&format!("oci://{}/{repo}@{digest}", registry.address())).unwrap();
    let (media_type, bytes, pulled_digest) = client
        .pull_manifest(repo, by_digest.manifest_ref().unwrap())
        .unwrap();
    assert_eq!(
        (media_type.as_str(), &bytes, &pulled_digest),
        (MEDIA_TYPE_IMAGE_MANIFEST, &manifest, &digest)
    );

    // Pushing the same manifest by digest (no tag) is accepted and gives the same digest.
    assert_eq!(
        client
            .push_manifest(repo, &digest, MEDIA_TYPE_IMAGE_MANIFEST, &manifest)
            .unwrap(),
        digest
    );

    // An index pointing at the manifest.
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_IMAGE_INDEX,
        "manifests": [descriptor(MEDIA_TYPE_IMAGE_MANIFEST, &digest, manifest.len() as u64)],
    }))
    .unwrap();
    let index_digest = client
        .push_manifest(repo, "all", MEDIA_TYPE_IMAGE_INDEX, &index)
        .unwrap();
    let (media_type, bytes, pulled) = client.pull_manifest(repo, "all").unwrap();
    assert_eq!(
        (media_type.as_str(), bytes, pulled),
        (MEDIA_TYPE_IMAGE_INDEX, index, index_digest)
    );

    // Blobs come back identical.
    assert_eq!(
        client.pull_blob(repo, &config_digest, 1 << 20).unwrap(),
        config
    );
    assert_eq!(client.pull_blob(repo, &layer_digest, size).unwrap(), layer);
    assert_eq!(client.pull_blob(repo, &sha256_digest(b""), 0).unwrap(), b"");
    let err = client.pull_blob(repo, &layer_digest, size - 1).unwrap_err();
    assert!(matches!(err, OciError::TooLarge { .. }), "{err:?}");
    assert_contains(&err, &[&layer_digest, &format!("{}", size - 1)]);

    // Streamed to a file.
    let out = work.path().join("out");
    fs::create_dir(&out).unwrap();
    let dest = out.join("layer.tar");
    assert_eq!(
        client.pull_blob_to(repo, &layer_digest, &dest).unwrap(),
        size
    );
    assert_eq!(fs::read(&dest).unwrap(), layer);
    // Overwrites an existing file.
    let dest2 = out.join("config.json");
    fs::write(&dest2, b"old").unwrap();
    assert_eq!(
        client.pull_blob_to(repo, &config_digest, &dest2).unwrap(),
        config.len() as u64
    );
    assert_eq!(fs::read(&dest2).unwrap(), config);
    no_temp_files(&out);
}

#[test]
fn registry_errors_are_reported() {
    let registry = OciRegistry::start();
    let client = client(&registry);
    let repo = "wbuild/errors";
    let work = tempfile::tempdir().unwrap();

    let blob = b"some bytes".to_vec();
    let blob_digest = sha256_digest(&blob);
    client.push_blob(repo, &blob_digest, &blob).unwrap();

    // Unknown blob: the error names the digest and carries the registry's code.
    let unknown = sha256_digest(b"never pushed");
    let err = client.pull_blob(repo, &unknown, 1 << 20).unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    assert_eq!(err.status(), Some(404));
    assert_contains(&err, &[&unknown, "404", "BLOB_UNKNOWN", "blob unknown"]);

    // Unknown blob to a file: nothing is written.
    let dest = work.path().join("unknown");
    let err = client.pull_blob_to(repo, &unknown, &dest).unwrap_err();
    assert_contains(&err, &[&unknown, "BLOB_UNKNOWN"]);
    assert!(!dest.exists());
    no_temp_files(work.path());

    // Unknown tag, unknown manifest digest, unknown repository.
    let err = client.pull_manifest(repo, "nope").unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    assert_contains(
        &err,
        &["/v2/wbuild/errors/manifests/nope", "MANIFEST_UNKNOWN"],
    );
    let err = client.pull_manifest(repo, &unknown).unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    assert_contains(&err, &[&unknown, "MANIFEST_UNKNOWN"]);
    let err = client.pull_manifest("no/such/repo", "latest").unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    assert_contains(&err, &["no/such/repo", "404"]);

    // A manifest whose blobs were never pushed.
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_IMAGE_MANIFEST,
        "artifactType": ARTIFACT_TYPE,
        "config": descriptor(CONFIG_MEDIA_TYPE, &unknown, 12),
        "layers": [descriptor(LAYER_MEDIA_TYPE, &blob_digest, blob.len() as u64)],
    }))
    .unwrap();
    let err = client
        .push_manifest(repo, "broken", MEDIA_TYPE_IMAGE_MANIFEST, &manifest)
        .unwrap_err();
    assert_contains(
        &err,
        &[
            "PUT",
            "400",
            "MANIFEST_BLOB_UNKNOWN",
            &unknown,
            "push the config and layer blobs",
        ],
    );

    // Pushing a manifest under a digest it does not have is refused locally.
    let err = client
        .push_manifest(repo, &unknown, MEDIA_TYPE_IMAGE_MANIFEST, &manifest)
        .unwrap_err();
    assert!(matches!(err, OciError::ContentMismatch { .. }), "{err:?}");

    // A file that does not hash to the digest it is pushed as: refused, nothing stored.
    let path = work.path().join("wrong");
    fs::write(&path, b"other bytes").unwrap();
    let err = client
        .push_blob_file(repo, &unknown, 11, &path)
        .unwrap_err();
    assert!(matches!(err, OciError::ContentMismatch { .. }), "{err:?}");
    assert_contains(&err, &[&unknown, &sha256_digest(b"other bytes"), "wrong"]);
    assert!(!client.blob_exists(repo, &unknown).unwrap());
    // A file of the wrong size.
    let err = client
        .push_blob_file(repo, &unknown, 99, &path)
        .unwrap_err();
    assert_contains(&err, &["is 11 bytes", "99"]);

    // Nothing listening: a transport error with a hint.
    let dead = Client::new(&format!("127.0.0.1:{}", free_port())).unwrap();
    let err = dead.blob_exists(repo, &blob_digest).unwrap_err();
    assert!(matches!(err, OciError::Transport { .. }), "{err:?}");
    assert_contains(&err, &["HEAD http://127.0.0.1:", "is the registry running"]);
}

#[test]
fn corrupted_registry_content_is_rejected() {
    let registry = OciRegistry::start();
    let client = client(&registry);
    let repo = "wbuild/corrupt";
    let work = tempfile::tempdir().unwrap();

    let config = br#"{"name":"x"}"#.to_vec();
    let config_digest = sha256_digest(&config);
    client.push_blob(repo, &config_digest, &config).unwrap();
    let layer = pseudo_random(300_000, 2);
    let layer_digest = sha256_digest(&layer);
    client.push_blob(repo, &layer_digest, &layer).unwrap();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_IMAGE_MANIFEST,
        "artifactType": ARTIFACT_TYPE,
        "config": descriptor(CONFIG_MEDIA_TYPE, &config_digest, config.len() as u64),
        "layers": [descriptor(LAYER_MEDIA_TYPE, &layer_digest, layer.len() as u64)],
    }))
    .unwrap();
    let digest = client
        .push_manifest(repo, "v1", MEDIA_TYPE_IMAGE_MANIFEST, &manifest)
        .unwrap();

    // Flip bytes in the registry's storage (same length): it serves them as they are.
    let flip = |digest: &str| {
        let path = registry.blob_data_path(digest);
        let mut bytes = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        bytes[5] ^= 0x20;
        fs::write(&path, bytes).unwrap();
    };
    flip(&layer_digest);
    let err = client.pull_blob(repo, &layer_digest, 1 << 20).unwrap_err();
    assert!(matches!(err, OciError::DigestMismatch { .. }), "{err:?}");
    assert_contains(&err, &[&layer_digest, "different bytes"]);

    let dest = work.path().join("layer");
    let err = client.pull_blob_to(repo, &layer_digest, &dest).unwrap_err();
    assert!(matches!(err, OciError::DigestMismatch { .. }), "{err:?}");
    assert!(!dest.exists(), "nothing is left at the destination");
    no_temp_files(work.path());

    flip(&digest);
    let err = client.pull_manifest(repo, &digest).unwrap_err();
    assert!(matches!(err, OciError::DigestMismatch { .. }), "{err:?}");
    assert_contains(&err, &[&digest, "different bytes"]);
}

/// Pushes a small artifact (a blob from memory, one streamed from a file, a manifest) and
/// pulls it back in every way.
fn push_and_pull_small(client: &Client, repo: &str, work: &Path) {
    let config = br#"{"name":"small"}"#.to_vec();
    let config_digest = sha256_digest(&config);
    assert!(client.push_blob(repo, &config_digest, &config).unwrap());
    assert!(!client.push_blob(repo, &config_digest, &config).unwrap());
    let layer = pseudo_random(200_000, 3);
    let layer_digest = sha256_digest(&layer);
    let layer_path = work.join("small-layer");
    fs::write(&layer_path, &layer).unwrap();
    assert!(
        client
            .push_blob_file(repo, &layer_digest, layer.len() as u64, &layer_path)
            .unwrap()
    );
    assert!(client.blob_exists(repo, &layer_digest).unwrap());
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_IMAGE_MANIFEST,
        "artifactType": ARTIFACT_TYPE,
        "config": descriptor(CONFIG_MEDIA_TYPE, &config_digest, config.len() as u64),
        "layers": [descriptor(LAYER_MEDIA_TYPE, &layer_digest, layer.len() as u64)],
    }))
    .unwrap();
    let digest = client
        .push_manifest(repo, "v1", MEDIA_TYPE_IMAGE_MANIFEST, &manifest)
        .unwrap();
    let (media_type, bytes, pulled) = client.pull_manifest(repo, "v1").unwrap();
    assert_eq!(
        (media_type.as_str(), &bytes, &pulled),
        (MEDIA_TYPE_IMAGE_MANIFEST, &manifest, &digest)
    );
    assert_eq!(
        client.pull_blob(repo, &config_digest, 1 << 20).unwrap(),
        config
    );
    let dest = work.join("small-layer.out");
    assert_eq!(
        client.pull_blob_to(repo, &layer_digest, &dest).unwrap(),
        layer.len() as u64
    );
    assert_eq!(fs::read(&dest).unwrap(), layer);
}

#[test]
fn https_registry_with_a_private_ca() {
    let registry = OciRegistry::start_with(&OciRegistryOptions {
        tls: true,
        ..OciRegistryOptions::default()
    });
    let address = registry.address();
    let work = tempfile::tempdir().unwrap();
    let client = client_with(
        &address,
        &ClientOptions {
            ca_file: Some(registry.ca_cert().to_path_buf()),
            force_tls: true,
            ..ClientOptions::default()
        },
    );
    assert_eq!(client.base_url(), format!("https://{address}"));
    client.ping().unwrap();
    push_and_pull_small(&client, "wbuild/tls", work.path());

    // Without the CA, the handshake fails and the error says what to do.
    let untrusting = client_with(
        &address,
        &ClientOptions {
            force_tls: true,
            ..ClientOptions::default()
        },
    );
    let err = untrusting.pull_manifest("wbuild/tls", "v1").unwrap_err();
    assert!(matches!(err, OciError::Transport { .. }), "{err:?}");
    assert_contains(
        &err,
        &[
            &format!("GET https://{address}/v2/wbuild/tls/manifests/v1"),
            "certificate",
            "not trusted",
            "WBUILD_OCI_CA_FILE",
        ],
    );

    // Plain HTTP to the HTTPS port: the registry's 400 comes with the fix.
    let plain = client_with(&address, &ClientOptions::default());
    let err = plain.ping().unwrap_err();
    assert_contains(&err, &["400", "WBUILD_OCI_TLS=1"]);
}

#[test]
fn basic_auth_registry() {
    let registry = OciRegistry::start_with(&OciRegistryOptions {
        basic_auth: Some(("alice".into(), "s3cret-pw".into())),
        ..OciRegistryOptions::default()
    });
    let address = registry.address();
    let repo = "wbuild/private";
    let work = tempfile::tempdir().unwrap();
    let blob = b"private bytes".to_vec();
    let blob_digest = sha256_digest(&blob);

    // Anonymous: refused, with the ways to give credentials.
    let anonymous = client_with(&address, &ClientOptions::default());
    for err in [
        anonymous.pull_manifest(repo, "v1").unwrap_err(),
        anonymous.push_blob(repo, &blob_digest, &blob).unwrap_err(),
        anonymous.ping().unwrap_err(),
    ] {
        assert!(err.is_unauthorized(), "{err:?}");
        assert_eq!(err.status(), Some(401));
        assert_contains(
            &err,
            &[
                &format!("registry {address}"),
                "no credentials are set",
                "WBUILD_OCI_USERNAME",
                "WBUILD_OCI_PASSWORD",
                "WBUILD_OCI_TOKEN",
                "~/.docker/config.json",
                &format!("auths.\"{address}\""),
            ],
        );
    }

    // A wrong password: refused, naming the user but never the password.
    let wrong = client_with(
        &address,
        &ClientOptions {
            credentials: basic("alice", "wrong-pw"),
            ..ClientOptions::default()
        },
    );
    let err = wrong.push_blob(repo, &blob_digest, &blob).unwrap_err();
    assert!(err.is_unauthorized(), "{err:?}");
    assert_contains(&err, &[&address, "\"alice\"", "not accepted"]);
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains("wrong-pw"), "the password leaks: {shown}");

    // The right credentials: everything works.
    let client = client_with(
        &address,
        &ClientOptions {
            credentials: basic("alice", "s3cret-pw"),
            ..ClientOptions::default()
        },
    );
    client.ping().unwrap();
    push_and_pull_small(&client, repo, work.path());

    // The same credentials from a docker config.json (as `docker login` writes it).
    let config = work.path().join("config.json");
    let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cret-pw");
    fs::write(
        &config,
        json!({"auths": {(address.clone()): {"auth": auth}}}).to_string(),
    )
    .unwrap();
    let credentials = Credentials::from_docker_config(&config, &address).unwrap();
    assert_eq!(credentials, basic("alice", "s3cret-pw"));
    let from_config = client_with(
        &address,
        &ClientOptions {
            credentials,
            ..ClientOptions::default()
        },
    );
    assert!(from_config.push_blob(repo, &blob_digest, &blob).unwrap());
    assert_eq!(
        from_config.pull_blob(repo, &blob_digest, 100).unwrap(),
        blob
    );
}

// ---------------------------------------------------------------------------------------
// Bearer tokens: a registry front and its token server in one small in-test HTTP server.
// ---------------------------------------------------------------------------------------

const TOKEN: &str = "tok-3f9c2a";
const TOKEN_REPO: &str = "r";

/// What the token endpoint was asked: decoded query parameters, Authorization header.
#[derive(Clone, Debug)]
struct TokenRequest {
    query: Vec<(String, String)>,
    authorization: Option<String>,
}

/// Serves `GET /token` (counting requests) and, for `Authorization: Bearer TOKEN` only,
/// `/v2/`, manifest `r:v1` and one blob of `r`; anything else on `/v2/` gets a 401
/// Bearer challenge. One connection at a time, `Connection: close`.
struct TokenRegistry {
    port: u16,
    token_requests: Arc<Mutex<Vec<TokenRequest>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TokenRegistry {
    fn start(manifest: Vec<u8>, blob: Vec<u8>) -> TokenRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let token_requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (requests, stopped) = (token_requests.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = stream {
                    serve(stream, port, &manifest, &blob, &requests);
                }
            }
        });
        TokenRegistry {
            port,
            token_requests,
            stop,
            thread: Some(thread),
        }
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn token_requests(&self) -> Vec<TokenRequest> {
        self.token_requests.lock().unwrap().clone()
    }
}

impl Drop for TokenRegistry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(if b[i] == b'+' { b' ' } else { b[i] });
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

fn serve(
    stream: TcpStream,
    port: u16,
    manifest: &[u8],
    blob: &[u8],
    token_requests: &Mutex<Vec<TokenRequest>>,
) {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut reader = BufReader::new(&stream);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut authorization = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("authorization")
        {
            authorization = Some(value.trim().to_string());
        }
    }
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let blob_path = format!("/v2/{TOKEN_REPO}/blobs/{}", sha256_digest(blob));
    let manifest_path = format!("/v2/{TOKEN_REPO}/manifests/v1");

    let (status, headers, body): (&str, Vec<String>, Vec<u8>) = if path == "/token" {
        let query: Vec<(String, String)> = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (percent_decode(k), percent_decode(v))
            })
            .collect();
        token_requests.lock().unwrap().push(TokenRequest {
            query: query.clone(),
            authorization,
        });
        let service_ok = query.iter().any(|(k, v)| k == "service" && v == "test");
        if service_ok {
            let body = json!({"token": TOKEN, "expires_in": 300}).to_string();
            (
                "200 OK",
                vec!["Content-Type: application/json".into()],
                body.into_bytes(),
            )
        } else {
            ("400 Bad Request", vec![], b"{}".to_vec())
        }
    } else if path.starts_with("/v2/")
        && authorization.as_deref() != Some(&format!("Bearer {TOKEN}"))
    {
        let scope = if path == "/v2/" {
            String::new()
        } else {
            format!(",scope=\"repository:{TOKEN_REPO}:pull\"")
        };
        let challenge = format!(
            "WWW-Authenticate: Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"test\"{scope}"
        );
        let body = br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#;
        ("401 Unauthorized", vec![challenge], body.to_vec())
    } else if path == "/v2/" {
        ("200 OK", vec![], b"{}".to_vec())
    } else if path == manifest_path {
        let headers = vec![
            format!("Content-Type: {MEDIA_TYPE_IMAGE_MANIFEST}"),
            format!("Docker-Content-Digest: {}", sha256_digest(manifest)),
        ];
        ("200 OK", headers, manifest.to_vec())
    } else if path == blob_path {
        ("200 OK", vec![], blob.to_vec())
    } else {
        (
            "404 Not Found",
            vec![],
            br#"{"errors":[{"code":"NOT_FOUND","message":"no"}]}"#.to_vec(),
        )
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for h in headers {
        out.push_str(&h);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    let mut stream = &stream;
    let _ = stream.write_all(out.as_bytes());
    if method != "HEAD" {
        let _ = stream.write_all(&body);
    }
    let _ = stream.flush();
}

#[test]
fn bearer_token_flow() {
    let blob = pseudo_random(10_000, 4);
    let blob_digest = sha256_digest(&blob);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_IMAGE_MANIFEST,
        "config": descriptor(CONFIG_MEDIA_TYPE, &blob_digest, blob.len() as u64),
        "layers": [],
    }))
    .unwrap();
    let server = TokenRegistry::start(manifest.clone(), blob.clone());
    let address = server.address();

    // Anonymous: one token for the repository's pull scope, then reused.
    let client = client_with(&address, &ClientOptions::default());
    let (_, bytes, _) = client.pull_manifest(TOKEN_REPO, "v1").unwrap();
    assert_eq!(bytes, manifest);
    let requests = server.token_requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    let mut query = requests[0].query.clone();
    query.sort();
    assert_eq!(
        query,
        [
            ("scope".to_string(), format!("repository:{TOKEN_REPO}:pull")),
            ("service".to_string(), "test".to_string()),
        ]
    );
    assert_eq!(requests[0].authorization, None, "anonymous token request");
    assert_eq!(
        client.pull_blob(TOKEN_REPO, &blob_digest, 1 << 20).unwrap(),
        blob
    );
    assert!(client.blob_exists(TOKEN_REPO, &blob_digest).unwrap());
    assert_eq!(
        client.clone().pull_manifest(TOKEN_REPO, "v1").unwrap().1,
        manifest
    );
    assert_eq!(server.token_requests().len(), 1, "the token is reused");
    // /v2/ has no scope: a token without one.
    client.ping().unwrap();
    let requests = server.token_requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(
        requests[1].query,
        [("service".to_string(), "test".to_string())]
    );

    // Basic credentials go to the token server.
    let with_credentials = client_with(
        &address,
        &ClientOptions {
            credentials: basic("bob", "pw:with:colons"),
            ..ClientOptions::default()
        },
    );
    assert_eq!(
        with_credentials
            .pull_blob(TOKEN_REPO, &blob_digest, 1 << 20)
            .unwrap(),
        blob
    );
    let requests = server.token_requests();
    assert_eq!(requests.len(), 3);
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("bob:pw:with:colons")
    );
    assert_eq!(
        requests[2].authorization.as_deref(),
        Some(expected.as_str())
    );

    // A bearer token given directly is sent as is: no token request.
    let with_token = client_with(
        &address,
        &ClientOptions {
            credentials: Some(Credentials::Bearer(TOKEN.into())),
            ..ClientOptions::default()
        },
    );
    assert_eq!(
        with_token.pull_manifest(TOKEN_REPO, "v1").unwrap().1,
        manifest
    );
    assert_eq!(server.token_requests().len(), 3);

    // A wrong one: refused, naming the registry, never showing the token.
    let wrong = client_with(
        &address,
        &ClientOptions {
            credentials: Some(Credentials::Bearer("not-the-token".into())),
            ..ClientOptions::default()
        },
    );
    let err = wrong
        .pull_blob(TOKEN_REPO, &blob_digest, 1 << 20)
        .unwrap_err();
    assert!(err.is_unauthorized(), "{err:?}");
    assert_contains(
        &err,
        &[
            &format!("registry {address}"),
            "bearer token",
            "WBUILD_OCI_TOKEN",
        ],
    );
    assert!(!format!("{err} {err:?}").contains("not-the-token"));
    assert_eq!(server.token_requests().len(), 3);
}
