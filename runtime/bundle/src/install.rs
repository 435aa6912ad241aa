//! Installed toolchains: `<cache>/toolchains/<hex of the bundle digest>/` holds
//! `manifest.json`, `signatures/<KEYID>.minisig` and `root/` (the files, read-only). An
//! installation is built in a temporary directory beside it and renamed into place only
//! after every blob was checked, so a directory named by a digest is always complete.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::file::{BundleHead, MANIFEST_NAME, hash_file, read_bundle};
use crate::manifest::digest_hex;
use crate::sign::{self, Trust};
use crate::{BundleError, io_err};

/// A toolchain installed in the cache.
#[derive(Clone, Debug)]
pub struct Installed {
    pub dir: PathBuf,
    pub head: BundleHead,
}

impl Installed {
    /// The directory holding the bundle's files.
    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }
}

/// The toolchains installed in one cache directory.
#[derive(Clone, Debug)]
pub struct Toolchains {
    dir: PathBuf,
}

/// What a `verify` of an installed toolchain found.
#[derive(Debug, Default)]
pub struct VerifyReport {
    pub files: usize,
    pub bytes: u64,
    /// Key ids whose signatures verified (empty when no trust was given).
    pub signed_by: Vec<String>,
}

impl Toolchains {
    pub fn new(cache_dir: &Path) -> Toolchains {
        Toolchains {
            dir: cache_dir.join("toolchains"),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The installed bundle with this digest, if any.
    pub fn get(&self, digest: &str) -> Result<Option<Installed>, BundleError> {
        let Some(hex) = digest_hex(digest) else {
            return Err(BundleError::BadDigest(digest.to_owned()));
        };
        let dir = self.dir.join(hex);
        if !dir.join(MANIFEST_NAME).is_file() {
            return Ok(None);
        }
        self.load(&dir).map(Some)
    }

    fn load(&self, dir: &Path) -> Result<Installed, BundleError> {
        let mpath = dir.join(MANIFEST_NAME);
        let bytes = std::fs::read(&mpath).map_err(|e| io_err(&mpath, e))?;
        let mut signatures = BTreeMap::new();
        let sdir = dir.join("signatures");
        if let Ok(rd) = std::fs::read_dir(&sdir) {
            for e in rd {
                let e = e.map_err(|e| io_err(&sdir, e))?;
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(id) = name.strip_suffix(".minisig") {
                    let text =
                        std::fs::read_to_string(e.path()).map_err(|x| io_err(&e.path(), x))?;
                    signatures.insert(id.to_owned(), text);
                }
            }
        }
        let head = BundleHead::from_installed(bytes, signatures, &mpath.display().to_string())?;
        if dir.file_name().and_then(|n| n.to_str()) != digest_hex(&head.digest) {
            return Err(BundleError::BadBundle {
                path: mpath,
                message: format!(
                    "the manifest's digest is {}, not the directory's name; remove the \
                     directory and fetch the toolchain again",
                    head.digest
                ),
            });
        }
        Ok(Installed {
            dir: dir.to_owned(),
            head,
        })
    }

    /// Every installed toolchain, sorted by name, version and digest.
    pub fn list(&self) -> Result<Vec<Installed>, BundleError> {
        let mut out = Vec::new();
        let rd = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io_err(&self.dir, e)),
        };
        for e in rd {
            let e = e.map_err(|e| io_err(&self.dir, e))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.len() == 64 && e.path().join(MANIFEST_NAME).is_file() {
                out.push(self.load(&e.path())?);
            }
        }
        out.sort_by(|a, b| {
            (
                &a.head.manifest.name,
                &a.head.manifest.version,
                &a.head.digest,
            )
                .cmp(&(
                    &b.head.manifest.name,
                    &b.head.manifest.version,
                    &b.head.digest,
                ))
        });
        Ok(out)
    }

    /// Installs a bundle file: checks the digest against `expect` (when pinned), the
    /// signatures against `trust` (before reading any blob), and every blob.
    pub fn install_file(
        &self,
        bundle: &Path,
        trust: Option<&Trust>,
        expect: Option<&str>,
    ) -> Result<Installed, BundleError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| io_err(&self.dir, e))?;
        let tmp = self.temp_dir()?;
        let blobs = tmp.path().join("blobs");
        std::fs::create_dir(&blobs).map_err(|e| io_err(&blobs, e))?;
        let what = bundle.display().to_string();
        let mut existing = None;
        let head = read_bundle(bundle, Some(&blobs), &mut |head| {
            check_head(head, trust, expect, &what)?;
            if let Some(inst) = self.get(&head.digest)? {
                existing = Some(inst);
                // Stop reading: already installed.
                return Err(BundleError::AlreadyInstalled);
            }
            Ok(())
        });
        let head = match head {
            Err(BundleError::AlreadyInstalled) => {
                return Ok(existing.expect("set with AlreadyInstalled"));
            }
            h => h?,
        };
        self.commit(tmp, head, &blobs)
    }

    /// A fresh temporary directory next to the installations (same file system).
    pub(crate) fn temp_dir(&self) -> Result<tempfile::TempDir, BundleError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| io_err(&self.dir, e))?;
        tempfile::Builder::new()
            .prefix(".tmp-")
            .tempdir_in(&self.dir)
            .map_err(|e| io_err(&self.dir, e))
    }

    /// Lays out `root/` from checked blobs in `blobs/<hex>`, writes the manifest and
    /// signatures, and renames the directory into place.
    pub(crate) fn commit(
        &self,
        tmp: tempfile::TempDir,
        head: BundleHead,
        blobs: &Path,
    ) -> Result<Installed, BundleError> {
        let dir = tmp.path();
        let root = dir.join("root");
        std::fs::create_dir(&root).map_err(|e| io_err(&root, e))?;
        for f in &head.manifest.files {
            let dest = root.join(&f.path);
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent).map_err(|e| io_err(parent, e))?;
            }
            if let Some(target) = &f.symlink {
                std::os::unix::fs::symlink(target, &dest).map_err(|e| io_err(&dest, e))?;
                continue;
            }
            let hex = digest_hex(f.digest.as_deref().expect("validated")).expect("validated");
            let src = blobs.join(hex);
            // Files with the same content share an inode (they are read-only).
            std::fs::hard_link(&src, &dest).map_err(|e| io_err(&dest, e))?;
        }
        for f in &head.manifest.files {
            if f.symlink.is_none() {
                let dest = root.join(&f.path);
                let mode = if f.is_executable() { 0o555 } else { 0o444 };
                // Hard links share permissions: executable wins.
                let cur = std::fs::metadata(&dest).map_err(|e| io_err(&dest, e))?;
                let mode = if cur.permissions().mode() & 0o111 != 0 && mode == 0o444 {
                    0o555
                } else {
                    mode
                };
                std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(mode))
                    .map_err(|e| io_err(&dest, e))?;
            }
        }
        std::fs::remove_dir_all(blobs).map_err(|e| io_err(blobs, e))?;
        let mpath = dir.join(MANIFEST_NAME);
        std::fs::write(&mpath, &head.manifest_bytes).map_err(|e| io_err(&mpath, e))?;
        let sdir = dir.join("signatures");
        std::fs::create_dir(&sdir).map_err(|e| io_err(&sdir, e))?;
        for (id, text) in &head.signatures {
            let p = sdir.join(format!("{id}.minisig"));
            std::fs::write(&p, text).map_err(|e| io_err(&p, e))?;
        }
        let final_dir = self
            .dir
            .join(digest_hex(&head.digest).expect("computed digest"));
        let tmp_path = tmp.keep();
        match std::fs::rename(&tmp_path, &final_dir) {
            Ok(()) => {}
            Err(_) if final_dir.join(MANIFEST_NAME).is_file() => {
                // Installed concurrently by another process: keep theirs.
                let _ = remove_tree(&tmp_path);
            }
            Err(e) => {
                let _ = remove_tree(&tmp_path);
                return Err(io_err(&final_dir, e));
            }
        }
        Ok(Installed {
            dir: final_dir,
            head,
        })
    }

    /// Re-hashes every file of an installed toolchain against its manifest and, with
    /// `trust`, checks its signatures.
    pub fn verify(
        &self,
        inst: &Installed,
        trust: Option<&Trust>,
    ) -> Result<VerifyReport, BundleError> {
        let mut report = VerifyReport::default();
        let root = inst.root();
        for f in &inst.head.manifest.files {
            let p = root.join(&f.path);
            let meta = std::fs::symlink_metadata(&p).map_err(|e| BundleError::Tampered {
                path: p.clone(),
                message: format!("cannot read it ({e})"),
            })?;
            if let Some(target) = &f.symlink {
                let actual = std::fs::read_link(&p).ok();
                if !meta.file_type().is_symlink() || actual.as_deref() != Some(Path::new(target)) {
                    return Err(BundleError::Tampered {
                        path: p,
                        message: format!("should be a symlink to '{target}'"),
                    });
                }
                continue;
            }
            if !meta.file_type().is_file() {
                return Err(BundleError::Tampered {
                    path: p,
                    message: "should be a regular file".into(),
                });
            }
            let (digest, size) = hash_file(&p)?;
            if Some(digest.as_str()) != f.digest.as_deref() {
                return Err(BundleError::Tampered {
                    path: p,
                    message: format!(
                        "content is {digest}, the manifest says {}",
                        f.digest.as_deref().unwrap_or("")
                    ),
                });
            }
            report.files += 1;
            report.bytes += size;
        }
        if let Some(trust) = trust {
            report.signed_by = sign::verify(&inst.head, trust, &inst.dir.display().to_string())?;
        }
        Ok(report)
    }

    /// Removes an installed toolchain (e.g. after `verify` found it tampered with).
    pub fn remove(&self, inst: &Installed) -> Result<(), BundleError> {
        remove_tree(&inst.dir).map_err(|e| io_err(&inst.dir, e))
    }
}

/// Checks a head against a pinned digest and the trusted keys.
pub(crate) fn check_head(
    head: &BundleHead,
    trust: Option<&Trust>,
    expect: Option<&str>,
    what: &str,
) -> Result<(), BundleError> {
    if let Some(want) = expect
        && want != head.digest
    {
        return Err(BundleError::DigestMismatch {
            what: what.to_owned(),
            expected: want.to_owned(),
            actual: head.digest.clone(),
        });
    }
    if let Some(trust) = trust {
        sign::verify(head, trust, what)?;
    }
    Ok(())
}

/// `rm -r` that first makes read-only directories writable.
pub fn remove_tree(path: &Path) -> std::io::Result<()> {
    fn make_writable(p: &Path) {
        if let Ok(m) = std::fs::symlink_metadata(p)
            && m.is_dir()
        {
            let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755));
            if let Ok(rd) = std::fs::read_dir(p) {
                for e in rd.flatten() {
                    make_writable(&e.path());
                }
            }
        }
    }
    make_writable(path);
    std::fs::remove_dir_all(path)
}
