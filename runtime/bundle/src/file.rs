//! The bundle file: a deterministic ustar archive holding, in this order,
//!
//! ```text
//! manifest.json                    the manifest's canonical bytes
//! signatures/<KEYID>.minisig       minisign signatures of manifest.json, by key id
//! blobs/sha256/<hex>               each distinct file content, sorted by digest
//! ```
//!
//! Every tar header has mode 0644, owner 0, mtime 0, so the same manifest, signatures and
//! blobs always give the same bytes. `tar -xf x.bundle manifest.json signatures/` and
//! `minisign -Vm manifest.json -x signatures/<KEYID>.minisig -p key.pub` check a signature
//! without wbuild.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::manifest::{Manifest, digest_hex};
use crate::{BundleError, io_err};

pub const MANIFEST_NAME: &str = "manifest.json";
const SIG_DIR: &str = "signatures/";
const BLOB_DIR: &str = "blobs/sha256/";

/// A bundle's manifest and signatures (the blobs are streamed, not held).
#[derive(Clone, Debug)]
pub struct BundleHead {
    pub manifest: Manifest,
    /// The canonical bytes the digest and signatures cover.
    pub manifest_bytes: Vec<u8>,
    /// `sha256:` of `manifest_bytes`: the bundle's identity.
    pub digest: String,
    /// Key id (16 uppercase hex digits, as minisign prints it) -> `.minisig` text.
    pub signatures: BTreeMap<String, String>,
}

impl BundleHead {
    pub fn new(manifest: Manifest) -> BundleHead {
        let manifest_bytes = manifest.to_bytes();
        BundleHead {
            digest: crate::manifest::sha256(&manifest_bytes),
            manifest,
            manifest_bytes,
            signatures: BTreeMap::new(),
        }
    }

    /// From the manifest of an installed bundle: it was validated (and found canonical)
    /// when it was installed, and its digest is checked by the caller, so only parse it.
    pub fn from_installed(
        manifest_bytes: Vec<u8>,
        signatures: BTreeMap<String, String>,
        what: &str,
    ) -> Result<BundleHead, BundleError> {
        let manifest: Manifest =
            serde_json::from_slice(&manifest_bytes).map_err(|e| BundleError::BadManifest {
                what: what.to_owned(),
                message: e.to_string(),
            })?;
        Ok(BundleHead {
            digest: crate::manifest::sha256(&manifest_bytes),
            manifest,
            manifest_bytes,
            signatures,
        })
    }

    /// From manifest bytes received from elsewhere (a registry, a bundle file).
    pub fn from_bytes(
        manifest_bytes: Vec<u8>,
        signatures: BTreeMap<String, String>,
        what: &str,
    ) -> Result<BundleHead, BundleError> {
        let manifest = Manifest::parse(&manifest_bytes, what)?;
        Ok(BundleHead {
            digest: crate::manifest::sha256(&manifest_bytes),
            manifest,
            manifest_bytes,
            signatures,
        })
    }
}

fn header(path: &str, size: u64) -> io::Result<tar::Header> {
    let mut h = tar::Header::new_ustar();
    h.set_path(path)?;
    h.set_size(size);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    Ok(h)
}

/// Writes a bundle file at `out` (through a temporary file and a rename). `blob(digest)`
/// gives the host path holding each blob; contents are re-hashed while they are copied,
/// and a file that changed since it was hashed is an error.
pub fn write_bundle(
    out: &Path,
    head: &BundleHead,
    blob: &dyn Fn(&str) -> PathBuf,
) -> Result<(), BundleError> {
    write_atomically(out, head, &mut |add| {
        for (digest, size) in head.manifest.blobs() {
            let hex = digest_hex(digest).expect("validated digest");
            let src = blob(digest);
            let f = File::open(&src).map_err(|e| io_err(&src, e))?;
            let mut reader = HashingReader::new(BufReader::new(f).take(size));
            add(&format!("{BLOB_DIR}{hex}"), size, &mut reader).map_err(|e| io_err(&src, e))?;
            if reader.count != size || reader.digest() != digest {
                return Err(BundleError::Changed { path: src });
            }
        }
        Ok(())
    })
}

/// Appends one entry to the bundle being written.
type AddEntry<'a> = dyn FnMut(&str, u64, &mut dyn Read) -> io::Result<()> + 'a;

/// Writes `out` through a temporary file beside it and a rename: the manifest and the
/// signatures of `head`, then whatever `blobs` appends (mode 0644, synced before the rename).
fn write_atomically(
    out: &Path,
    head: &BundleHead,
    blobs: &mut dyn FnMut(&mut AddEntry<'_>) -> Result<(), BundleError>,
) -> Result<(), BundleError> {
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".wbuild-bundle")
        .tempfile_in(dir)
        .map_err(|e| io_err(dir, e))?;
    {
        let mut b = tar::Builder::new(BufWriter::new(tmp.as_file()));
        let mut add = |path: &str, size: u64, data: &mut dyn Read| -> io::Result<()> {
            b.append(&header(path, size)?, data)
        };
        add(
            MANIFEST_NAME,
            head.manifest_bytes.len() as u64,
            &mut &head.manifest_bytes[..],
        )
        .map_err(|e| io_err(out, e))?;
        for (id, text) in &head.signatures {
            add(
                &format!("{SIG_DIR}{id}.minisig"),
                text.len() as u64,
                &mut text.as_bytes(),
            )
            .map_err(|e| io_err(out, e))?;
        }
        blobs(&mut add)?;
        b.into_inner()
            .and_then(|mut w| w.flush())
            .map_err(|e| io_err(out, e))?;
    }
    std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .map_err(|e| io_err(out, e))?;
    tmp.as_file().sync_all().map_err(|e| io_err(out, e))?;
    tmp.persist(out).map_err(|e| io_err(out, e.error))?;
    Ok(())
}

/// Reads a bundle file: the manifest and signatures, then every blob, checked against its
/// name and the manifest. `on_head` sees the head before any blob is read (verify the
/// signatures there, before spending time on blobs); with `blobs_to`, each blob is written
/// to `<blobs_to>/<hex>`.
pub fn read_bundle(
    path: &Path,
    blobs_to: Option<&Path>,
    on_head: &mut dyn FnMut(&BundleHead) -> Result<(), BundleError>,
) -> Result<BundleHead, BundleError> {
    let what = path.display().to_string();
    let bad = |message: String| BundleError::BadBundle {
        path: path.to_owned(),
        message,
    };
    let f = File::open(path).map_err(|e| io_err(path, e))?;
    let mut archive = tar::Archive::new(BufReader::new(f));
    let mut entries = archive.entries().map_err(|e| io_err(path, e))?;
    let mut head: Option<BundleHead> = None;
    let mut manifest_bytes = None;
    let mut signatures = BTreeMap::new();
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    loop {
        let entry = entries.next();
        let mut entry = match entry {
            Some(e) => e.map_err(|e| bad(format!("not a readable tar archive: {e}")))?,
            None => break,
        };
        let name = entry
            .path()
            .map_err(|e| bad(e.to_string()))?
            .to_string_lossy()
            .into_owned();
        if entry.header().entry_type() != tar::EntryType::Regular {
            return Err(bad(format!("entry '{name}' is not a regular file")));
        }
        if name == MANIFEST_NAME {
            if manifest_bytes.is_some() {
                return Err(bad("two manifest.json entries".into()));
            }
            let mut v = Vec::new();
            entry
                .by_ref()
                .take(64 << 20)
                .read_to_end(&mut v)
                .map_err(|e| io_err(path, e))?;
            manifest_bytes = Some(v);
            continue;
        }
        if manifest_bytes.is_none() {
            return Err(bad(format!(
                "the first entry is '{name}', not manifest.json"
            )));
        }
        if let Some(sig) = name.strip_prefix(SIG_DIR) {
            if head.is_some() {
                return Err(bad(format!("signature '{name}' after the blobs")));
            }
            let id = sig
                .strip_suffix(".minisig")
                .filter(|id| id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()))
                .ok_or_else(|| bad(format!("bad signature entry name '{name}'")))?;
            let mut text = String::new();
            entry
                .by_ref()
                .take(1 << 16)
                .read_to_string(&mut text)
                .map_err(|e| bad(format!("signature '{name}': {e}")))?;
            signatures.insert(id.to_owned(), text);
            continue;
        }
        let Some(hex) = name.strip_prefix(BLOB_DIR) else {
            return Err(bad(format!("unexpected entry '{name}'")));
        };
        if head.is_none() {
            let h = BundleHead::from_bytes(
                manifest_bytes.take().expect("manifest read"),
                std::mem::take(&mut signatures),
                &format!("{what}: manifest.json"),
            )?;
            on_head(&h)?;
            expected = h
                .manifest
                .blobs()
                .into_iter()
                .map(|(d, s)| (d.to_owned(), s))
                .collect();
            manifest_bytes = Some(Vec::new());
            head = Some(h);
        }
        let digest = format!("sha256:{hex}");
        let Some(&size) = expected.get(&digest) else {
            return Err(bad(format!(
                "blob {digest} is not a file of the manifest (or appears twice)"
            )));
        };
        expected.remove(&digest);
        seen.insert(digest.clone());
        if entry.header().size().ok() != Some(size) {
            return Err(bad(format!(
                "blob {digest} has size {}, the manifest says {size}",
                entry.header().size().unwrap_or(0)
            )));
        }
        let mut reader = HashingReader::new(&mut entry);
        match blobs_to {
            Some(dir) => {
                let dest = dir.join(hex);
                let mut out = BufWriter::new(File::create(&dest).map_err(|e| io_err(&dest, e))?);
                io::copy(&mut reader, &mut out)
                    .and_then(|_| out.flush())
                    .map_err(|e| io_err(&dest, e))?;
            }
            None => {
                io::copy(&mut reader, &mut io::sink()).map_err(|e| io_err(path, e))?;
            }
        }
        if reader.digest() != digest {
            let paths = head
                .as_ref()
                .expect("head")
                .manifest
                .files
                .iter()
                .filter(|f| f.digest.as_deref() == Some(digest.as_str()))
                .map(|f| f.path.clone())
                .collect();
            return Err(BundleError::BlobMismatch {
                what,
                digest,
                actual: reader.digest(),
                paths,
            });
        }
    }
    let head = match head {
        Some(h) => h,
        None => {
            // No blobs at all: a bundle of symlinks only, or truncated.
            let bytes = manifest_bytes.ok_or_else(|| bad("no manifest.json entry".into()))?;
            let h = BundleHead::from_bytes(bytes, signatures, &format!("{what}: manifest.json"))?;
            on_head(&h)?;
            expected = h
                .manifest
                .blobs()
                .into_iter()
                .map(|(d, s)| (d.to_owned(), s))
                .collect();
            h
        }
    };
    if let Some((missing, _)) = expected.iter().next() {
        let paths: Vec<&str> = head
            .manifest
            .files
            .iter()
            .filter(|f| f.digest.as_deref() == Some(missing.as_str()))
            .map(|f| f.path.as_str())
            .collect();
        return Err(bad(format!(
            "blob {missing} ({}) is missing: the file is truncated or was edited",
            paths.join(", ")
        )));
    }
    Ok(head)
}

/// A reader that hashes (SHA-256) and counts what passes through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    pub count: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    pub fn digest(&self) -> String {
        format!("sha256:{}", hex::encode(self.hasher.clone().finalize()))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// `sha256:` and size of a file, streamed.
pub fn hash_file(path: &Path) -> Result<(String, u64), BundleError> {
    let f = File::open(path).map_err(|e| io_err(path, e))?;
    let mut r = HashingReader::new(BufReader::with_capacity(1 << 16, f));
    io::copy(&mut r, &mut io::sink()).map_err(|e| io_err(path, e))?;
    Ok((r.digest(), r.count))
}

/// Rewrites the bundle file at `path` with the signatures `edit` leaves in its head, copying
/// the blobs straight across (each checked against its digest on the way). The file is
/// replaced through a temporary file and a rename.
pub fn rewrite_signatures(
    path: &Path,
    edit: &mut dyn FnMut(&mut BundleHead) -> Result<(), BundleError>,
) -> Result<BundleHead, BundleError> {
    // First pass: the head (reading stops at the first blob).
    let mut found: Option<BundleHead> = None;
    match read_bundle(path, None, &mut |h| {
        found = Some(h.clone());
        Err(BundleError::AlreadyInstalled)
    }) {
        Err(BundleError::AlreadyInstalled) | Ok(_) => {}
        Err(e) => return Err(e),
    }
    let mut head = found.ok_or_else(|| BundleError::BadBundle {
        path: path.to_owned(),
        message: "no manifest.json entry".into(),
    })?;
    edit(&mut head)?;
    let bad = |message: String| BundleError::BadBundle {
        path: path.to_owned(),
        message,
    };
    let mut expected: BTreeMap<String, u64> = head
        .manifest
        .blobs()
        .into_iter()
        .map(|(d, s)| (d.to_owned(), s))
        .collect();
    // The blobs are read from the old file while the new one is written beside it.
    write_atomically(path, &head, &mut |add| {
        let f = File::open(path).map_err(|e| io_err(path, e))?;
        let mut archive = tar::Archive::new(BufReader::new(f));
        for entry in archive.entries().map_err(|e| io_err(path, e))? {
            let mut entry = entry.map_err(|e| bad(format!("not a readable tar archive: {e}")))?;
            let name = entry
                .path()
                .map_err(|e| bad(e.to_string()))?
                .to_string_lossy()
                .into_owned();
            let Some(hex) = name.strip_prefix(BLOB_DIR) else {
                continue; // the manifest and the old signatures
            };
            let digest = format!("sha256:{hex}");
            let size = expected
                .remove(&digest)
                .ok_or_else(|| bad(format!("blob {digest} is not a file of the manifest")))?;
            let mut reader = HashingReader::new((&mut entry).take(size));
            add(&name, size, &mut reader).map_err(|e| io_err(path, e))?;
            if reader.count != size || reader.digest() != digest {
                return Err(BundleError::BlobMismatch {
                    what: path.display().to_string(),
                    actual: reader.digest(),
                    paths: head
                        .manifest
                        .files
                        .iter()
                        .filter(|f| f.digest.as_deref() == Some(digest.as_str()))
                        .map(|f| f.path.clone())
                        .collect(),
                    digest,
                });
            }
        }
        match expected.keys().next() {
            Some(missing) => Err(bad(format!("blob {missing} is missing"))),
            None => Ok(()),
        }
    })?;
    Ok(head)
}
