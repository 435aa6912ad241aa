//! Bundles as OCI artifacts. A published bundle is one OCI image manifest:
//!
//! - `artifactType`: `application/vnd.wbuild.toolchain.v1`;
//! - `config`: the bundle's `manifest.json` (media type
//!   `application/vnd.wbuild.toolchain.manifest.v1+json`), so the config digest *is* the
//!   bundle digest;
//! - `layers`: every distinct file blob (`application/vnd.wbuild.toolchain.blob.v1`,
//!   sorted by digest), then the signatures
//!   (`application/vnd.wbuild.toolchain.signature.v1+minisign`);
//! - annotations naming the toolchain, version, platform and bundle digest.
//!
//! Fetching checks the pinned digest and the signatures before downloading any file blob,
//! then verifies every blob against its digest and installs the bundle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::file::{BundleHead, read_bundle};
use crate::install::{Installed, Toolchains, check_head};
use crate::manifest::digest_hex;
use crate::oci::{self, Client, Reference};
use crate::sign::{Trust, key_id};
use crate::{BundleError, io_err};

pub const ARTIFACT_TYPE: &str = "application/vnd.wbuild.toolchain.v1";
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.wbuild.toolchain.manifest.v1+json";
pub const BLOB_MEDIA_TYPE: &str = "application/vnd.wbuild.toolchain.blob.v1";
pub const SIGNATURE_MEDIA_TYPE: &str = "application/vnd.wbuild.toolchain.signature.v1+minisign";

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct OciManifest {
    schema_version: u32,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    artifact_type: Option<String>,
    config: Descriptor,
    layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
}

/// What `publish` did.
pub struct Published {
    pub head: BundleHead,
    /// `oci://registry/repository@sha256:...` of the OCI manifest.
    pub pinned: String,
    /// Blobs uploaded (the others were already in the registry).
    pub uploaded: usize,
    pub blobs: usize,
}

/// Publishes a signed bundle file to `reference` (`oci://host/repo:tag`).
pub fn publish(bundle: &Path, reference: &str) -> Result<Published, BundleError> {
    let r = Reference::parse(reference)?;
    let reg = |message: String| BundleError::Registry {
        reference: reference.to_owned(),
        message,
    };
    if r.digest.is_some() {
        return Err(reg(
            "publish to a tag (oci://host/repo:tag); the digest is computed".into(),
        ));
    }
    let tag = r.tag.clone().unwrap_or_else(|| "latest".to_owned());
    let tmp = tempfile::tempdir().map_err(|e| io_err(Path::new("/tmp"), e))?;
    let what = bundle.display().to_string();
    let head = read_bundle(bundle, Some(tmp.path()), &mut |head| {
        if head.signatures.is_empty() {
            return Err(BundleError::Signature {
                what: what.clone(),
                message: "the bundle is unsigned; sign it with `wbuild toolchain sign BUNDLE \
                          --key KEY` before publishing"
                    .into(),
            });
        }
        Ok(())
    })?;
    let client = Client::new(&r.registry)?;
    let repo = &r.repository;
    let mut uploaded = 0;
    if client.push_blob(repo, &head.digest, &head.manifest_bytes)? {
        uploaded += 1;
    }
    let mut layers = Vec::new();
    let blobs = head.manifest.blobs();
    for (digest, size) in &blobs {
        let hex = digest_hex(digest).expect("validated");
        if client.push_blob_file(repo, digest, *size, &tmp.path().join(hex))? {
            uploaded += 1;
        }
        layers.push(Descriptor {
            media_type: BLOB_MEDIA_TYPE.into(),
            digest: (*digest).to_owned(),
            size: *size,
            annotations: BTreeMap::new(),
        });
    }
    for (id, text) in &head.signatures {
        let digest = oci::sha256_digest(text.as_bytes());
        if client.push_blob(repo, &digest, text.as_bytes())? {
            uploaded += 1;
        }
        layers.push(Descriptor {
            media_type: SIGNATURE_MEDIA_TYPE.into(),
            digest,
            size: text.len() as u64,
            annotations: [("dev.wbuild.key-id".to_owned(), id.clone())].into(),
        });
    }
    let m = &head.manifest;
    let manifest = OciManifest {
        schema_version: 2,
        media_type: Some(oci::MEDIA_TYPE_IMAGE_MANIFEST.into()),
        artifact_type: Some(ARTIFACT_TYPE.into()),
        config: Descriptor {
            media_type: CONFIG_MEDIA_TYPE.into(),
            digest: head.digest.clone(),
            size: head.manifest_bytes.len() as u64,
            annotations: BTreeMap::new(),
        },
        layers,
        annotations: [
            ("dev.wbuild.toolchain.name", m.name.clone()),
            ("dev.wbuild.toolchain.version", m.version.clone()),
            ("dev.wbuild.toolchain.platform", m.platform.clone()),
            ("dev.wbuild.toolchain.digest", head.digest.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect(),
    };
    let bytes = serde_json::to_vec(&manifest).expect("serialises");
    let digest = client.push_manifest(repo, &tag, oci::MEDIA_TYPE_IMAGE_MANIFEST, &bytes)?;
    Ok(Published {
        pinned: format!("oci://{}/{}@{digest}", r.registry, r.repository),
        uploaded,
        blobs: blobs.len() + 1 + head.signatures.len(),
        head,
    })
}

/// Fetches the bundle at `reference` (`oci://host/repo:tag` or `...@sha256:...`), checks
/// it against `expect` (a pinned bundle digest) and `trust`, and installs it.
pub fn fetch(
    toolchains: &Toolchains,
    reference: &str,
    trust: Option<&Trust>,
    expect: Option<&str>,
) -> Result<Installed, BundleError> {
    let r = Reference::parse(reference)?;
    let reg = |message: String| BundleError::Registry {
        reference: reference.to_owned(),
        message,
    };
    let mref = r
        .manifest_ref()
        .ok_or_else(|| reg("name a tag (:1.0) or a digest (@sha256:...)".into()))?
        .to_owned();
    let client = Client::new(&r.registry)?;
    let repo = &r.repository;
    let (_, bytes, _) = client.pull_manifest(repo, &mref)?;
    let manifest: OciManifest = serde_json::from_slice(&bytes)
        .map_err(|e| reg(format!("not an OCI image manifest: {e}")))?;
    if manifest.config.media_type != CONFIG_MEDIA_TYPE {
        return Err(reg(format!(
            "not a wbuild toolchain (config media type is '{}', expected '{CONFIG_MEDIA_TYPE}')",
            manifest.config.media_type
        )));
    }
    let bundle_digest = manifest.config.digest.clone();
    if let Some(want) = expect
        && want != bundle_digest
    {
        return Err(BundleError::DigestMismatch {
            what: reference.to_owned(),
            expected: want.to_owned(),
            actual: bundle_digest,
        });
    }
    if let Some(inst) = toolchains.get(&bundle_digest)? {
        check_head(&inst.head, trust, expect, reference)?;
        return Ok(inst);
    }
    let manifest_bytes = client.pull_blob(repo, &bundle_digest, 64 << 20)?;
    let mut signatures = BTreeMap::new();
    let mut layer_blobs = BTreeSet::new();
    for l in &manifest.layers {
        match l.media_type.as_str() {
            SIGNATURE_MEDIA_TYPE => {
                let text = String::from_utf8(client.pull_blob(repo, &l.digest, 1 << 16)?)
                    .map_err(|_| reg(format!("signature layer {} is not text", l.digest)))?;
                let sig = minisign::SignatureBox::from_string(&text)
                    .map_err(|e| reg(format!("signature layer {} is unreadable: {e}", l.digest)))?;
                signatures.insert(key_id(sig.keynum()), text);
            }
            BLOB_MEDIA_TYPE => {
                layer_blobs.insert(l.digest.clone());
            }
            other => return Err(reg(format!("unexpected layer media type '{other}'"))),
        }
    }
    let head = BundleHead::from_bytes(
        manifest_bytes,
        signatures,
        &format!("{reference}: manifest.json"),
    )?;
    check_head(&head, trust, expect, reference)?;
    let blobs = head.manifest.blobs();
    let wanted: BTreeSet<String> = blobs.keys().map(|d| (*d).to_owned()).collect();
    if wanted != layer_blobs {
        return Err(reg(
            "the OCI manifest's layers are not the bundle's files; republish the bundle".into(),
        ));
    }
    let tmp = toolchains.temp_dir()?;
    let dir = tmp.path().join("blobs");
    std::fs::create_dir(&dir).map_err(|e| io_err(&dir, e))?;
    for (digest, size) in &blobs {
        let hex = digest_hex(digest).expect("validated");
        let n = client.pull_blob_to(repo, digest, &dir.join(hex))?;
        if n != *size {
            return Err(reg(format!(
                "blob {digest} has {n} bytes, the manifest says {size}"
            )));
        }
    }
    toolchains.commit(tmp, head, &dir)
}
