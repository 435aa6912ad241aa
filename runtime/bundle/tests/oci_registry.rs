//! The OCI client against a real registry: Debian's `docker-registry` (distribution 2.8),
//! started on a free loopback port with its storage in a temporary directory.
//!
//! The binary is `/usr/bin/docker-registry`, or `$WBUILD_DOCKER_REGISTRY`. When it is
//! missing these tests fail (they do not skip): run tests/setup.sh.

use std::fs;
use std::path::Path;

use serde_json::json;
use wbuild_bundle::oci::{
    Client, MEDIA_TYPE_IMAGE_INDEX, MEDIA_TYPE_IMAGE_MANIFEST, OciError, Reference, sha256_digest,
};
use wbuild_tests::oci::{OciRegistry, free_port};

const ARTIFACT_TYPE: &str = "application/vnd.wbuild.toolchain.v1";
const CONFIG_MEDIA_TYPE: &str = "application/vnd.wbuild.toolchain.manifest.v1+json";
const LAYER_MEDIA_TYPE: &str = "application/vnd.wbuild.toolchain.blob.v1";

fn client(registry: &OciRegistry) -> Client {
    Client::new(&registry.address()).unwrap()
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
