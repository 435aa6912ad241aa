//! Blobs streamed in and out without holding them in memory: [`IncomingBlob`] receives a
//! blob piece by piece into a temp file of the store's tmp dir (hashing as it goes) and
//! [`Store::commit_blob`] renames it into the CAS only if it is exactly the declared size and
//! hashes to the declared digest; [`Store::open_blob`] opens a verified blob for positional
//! reads. Used by the ByteStream service of `wbuild serve`.
//!
//! An `IncomingBlob` that is dropped without being committed removes its temp file; one left
//! by a killed process is cleaned by `verify`/`gc` with the rest of a dead process's tmp dir.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use crate::store::create_new;
use crate::{Digest, Hasher, Store, StoreError};

/// Why an incoming blob was refused. Nothing of it was stored.
#[derive(Debug, thiserror::Error)]
pub enum IncomingError {
    /// More bytes arrived than the digest declares.
    #[error("more bytes were sent for {digest} than its declared size ({} bytes); not stored", digest.size)]
    TooLong { digest: Digest },
    /// The blob was committed before all its declared bytes arrived.
    #[error("only {received} of the {} bytes of {digest} were sent; not stored", digest.size)]
    Short { digest: Digest, received: u64 },
    /// The bytes do not hash to the declared digest.
    #[error("the bytes sent for {digest} hash to {actual}; not stored")]
    Mismatch { digest: Digest, actual: Digest },
    /// Writing the temp file or renaming it into the CAS failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A blob being received: a temp file in the store's tmp dir and the running hash.
pub struct IncomingBlob {
    digest: Digest,
    tmp: PathBuf,
    file: Option<File>,
    hasher: Hasher,
    received: u64,
}

impl IncomingBlob {
    /// The digest the blob was declared with.
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// How many bytes arrived so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Appends `bytes`; refuses (and keeps nothing of) bytes past the declared size.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), IncomingError> {
        if self.received + bytes.len() as u64 > self.digest.size {
            return Err(IncomingError::TooLong {
                digest: self.digest,
            });
        }
        let file = self.file.as_mut().expect("an incoming blob's file is open");
        file.write_all(bytes)
            .map_err(StoreError::io("write", &self.tmp))?;
        self.hasher.update(bytes);
        self.received += bytes.len() as u64;
        Ok(())
    }
}

impl Drop for IncomingBlob {
    fn drop(&mut self) {
        // Committed blobs were renamed away (file is None and the path is gone).
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// A verified blob open for reading at any offset.
pub struct BlobFile {
    file: Option<File>,
    size: u64,
}

impl BlobFile {
    /// The blob's length in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Reads into `buf` from `offset`; 0 at the end.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        match &self.file {
            None => Ok(0),
            Some(f) => loop {
                match f.read_at(buf, offset) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    r => return r,
                }
            },
        }
    }
}

impl Store {
    /// Starts receiving the blob `digest` (of any digest function) into a temp file.
    pub fn begin_blob(&self, digest: Digest) -> Result<IncomingBlob, StoreError> {
        let tmp = self.new_tmp_path("incoming");
        let file = create_new(&tmp, 0o444)?;
        Ok(IncomingBlob {
            digest,
            tmp,
            file: Some(file),
            hasher: Hasher::new(digest.function),
            received: 0,
        })
    }

    /// Checks the received blob (all declared bytes, hashing to the digest) and renames it
    /// into the CAS; on any error the temp file is removed and nothing is stored.
    pub fn commit_blob(&self, mut blob: IncomingBlob) -> Result<Digest, IncomingError> {
        let _g = self.shared();
        let d = blob.digest;
        if blob.received != d.size {
            return Err(IncomingError::Short {
                digest: d,
                received: blob.received,
            });
        }
        let hasher = std::mem::replace(&mut blob.hasher, Hasher::new(d.function));
        let actual = hasher.finish();
        if actual != d {
            return Err(IncomingError::Mismatch { digest: d, actual });
        }
        if d.size > 0 && self.exists(&d) {
            self.touch(&d);
            return Ok(d); // the drop removes the temp file
        }
        let dest = self.blob_path(&d);
        let renamed = match fs::rename(&blob.tmp, &dest) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let shard = dest.parent().expect("blob path has a parent");
                fs::create_dir_all(shard).map_err(StoreError::io("create directory", shard))?;
                fs::rename(&blob.tmp, &dest)
            }
            r => r,
        };
        renamed.map_err(|e| StoreError::from_io("rename into the CAS", dest, e))?;
        blob.file = None; // renamed: nothing for the drop to remove
        self.mark_verified(&d);
        self.touch(&d);
        Ok(d)
    }

    /// Opens the blob `d` for reading, after verifying its bytes (at most once per process,
    /// as `link_into`); a corrupt blob is evicted and `Err(Corrupt)` returned, a missing one
    /// is `Err(NotFound)`. The caller compares [`BlobFile::size`] with what it expects.
    pub fn open_blob(&self, d: &Digest) -> Result<BlobFile, StoreError> {
        let _g = self.shared();
        if d.is_empty_blob() {
            return Ok(BlobFile {
                file: None,
                size: 0,
            });
        }
        self.ensure_verified(d)?;
        let path = self.blob_path(d);
        let file = File::open(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => StoreError::NotFound {
                digest: *d,
                path: path.clone(),
            },
            _ => StoreError::from_io("open", path.clone(), e),
        })?;
        let size = file
            .metadata()
            .map_err(StoreError::io("stat", &path))?
            .len();
        self.touch(d);
        Ok(BlobFile {
            file: Some(file),
            size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DigestFunction;

    fn tmp_entries(s: &Store) -> usize {
        fs::read_dir(s.tmp_dir()).map_or(0, |r| r.count())
    }

    #[test]
    fn streamed_blob_is_stored_only_when_complete_and_matching() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let data = vec![7u8; 200_000];
        for f in [DigestFunction::Blake3, DigestFunction::Sha256] {
            let d = Digest::of(f, &data);
            // Short, then too long, then wrong bytes: refused, temp file gone.
            let mut b = s.begin_blob(d).unwrap();
            b.write(&data[..1000]).unwrap();
            assert!(matches!(
                s.commit_blob(b),
                Err(IncomingError::Short { received: 1000, .. })
            ));
            let mut b = s.begin_blob(d).unwrap();
            b.write(&data).unwrap();
            assert!(matches!(b.write(b"x"), Err(IncomingError::TooLong { .. })));
            drop(b);
            let mut b = s.begin_blob(d).unwrap();
            b.write(&vec![8u8; data.len()]).unwrap();
            assert!(matches!(
                s.commit_blob(b),
                Err(IncomingError::Mismatch { .. })
            ));
            assert!(!s.has(&d));
            assert_eq!(tmp_entries(&s), 0);
            // In pieces: stored, verified on the way out.
            let mut b = s.begin_blob(d).unwrap();
            for c in data.chunks(4096) {
                b.write(c).unwrap();
            }
            assert_eq!(s.commit_blob(b).unwrap(), d);
            assert_eq!(tmp_entries(&s), 0);
            assert_eq!(s.get_bytes(&d).unwrap(), data);
            let r = s.open_blob(&d).unwrap();
            assert_eq!(r.size(), data.len() as u64);
            let mut buf = vec![0u8; 10];
            assert_eq!(r.read_at(&mut buf, 199_995).unwrap(), 5);
        }
    }

    #[test]
    fn open_blob_evicts_a_corrupt_blob() {
        let dir = tempfile::tempdir().unwrap();
        let d = {
            let s = Store::open(dir.path()).unwrap();
            s.put_bytes(b"hello").unwrap()
        };
        let s = Store::open(dir.path()).unwrap();
        let p = s.blob_path(&d);
        fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        fs::write(&p, b"jello").unwrap();
        assert!(s.open_blob(&d).err().is_some_and(|e| e.is_corrupt()));
        assert!(!p.exists());
        assert!(s.open_blob(&d).err().is_some_and(|e| e.is_not_found()));
        let e = s.open_blob(&Digest::empty(DigestFunction::Blake3)).unwrap();
        assert_eq!(e.size(), 0);
    }
}
