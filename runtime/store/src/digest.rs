//! Content digests: (function, hash, size), streaming hashing and REAPI conversion.

use std::fmt;
use std::str::FromStr;

use crate::StoreError;
use crate::reapi;

/// The hash function of a [`Digest`]. BLAKE3 is the local default; SHA-256 exists for REAPI
/// peers that speak nothing else (BuildGrid, older Bazel).
#[derive(
    Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum DigestFunction {
    Blake3,
    Sha256,
}

impl DigestFunction {
    /// All supported functions.
    pub const ALL: [DigestFunction; 2] = [DigestFunction::Blake3, DigestFunction::Sha256];

    /// The REAPI `DigestFunction.Value` number (BLAKE3 = 9, SHA256 = 1).
    pub fn to_reapi(self) -> i32 {
        match self {
            DigestFunction::Blake3 => reapi::digest_function::Value::Blake3 as i32,
            DigestFunction::Sha256 => reapi::digest_function::Value::Sha256 as i32,
        }
    }

    /// The function for an REAPI `DigestFunction.Value` number, if supported.
    pub fn from_reapi(value: i32) -> Option<DigestFunction> {
        DigestFunction::ALL
            .into_iter()
            .find(|f| f.to_reapi() == value)
    }

    /// Lower-case name: `blake3` or `sha256`.
    pub fn name(self) -> &'static str {
        match self {
            DigestFunction::Blake3 => "blake3",
            DigestFunction::Sha256 => "sha256",
        }
    }

    /// The directory (under the store dir) holding this function's blobs.
    pub fn cas_subdir(self) -> &'static str {
        match self {
            DigestFunction::Blake3 => "cas",
            DigestFunction::Sha256 => "cas-sha256",
        }
    }

    /// One-byte code used in index keys (never change: it is on disk).
    pub(crate) fn code(self) -> u8 {
        match self {
            DigestFunction::Blake3 => 1,
            DigestFunction::Sha256 => 2,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<DigestFunction> {
        match code {
            1 => Some(DigestFunction::Blake3),
            2 => Some(DigestFunction::Sha256),
            _ => None,
        }
    }
}

impl fmt::Display for DigestFunction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DigestFunction {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, StoreError> {
        match s.to_ascii_lowercase().as_str() {
            "blake3" => Ok(DigestFunction::Blake3),
            "sha256" | "sha-256" => Ok(DigestFunction::Sha256),
            _ => Err(StoreError::InvalidDigest {
                input: s.to_string(),
                reason: "unknown digest function; use blake3 or sha256".to_string(),
            }),
        }
    }
}

/// A content digest. The identity of a blob is `(function, hash)`; `size` is carried along for
/// REAPI and accounting.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    pub function: DigestFunction,
    pub hash: [u8; 32],
    pub size: u64,
}

impl Digest {
    /// Digest of `bytes`.
    pub fn of(f: DigestFunction, bytes: &[u8]) -> Digest {
        let mut h = Hasher::new(f);
        h.update(bytes);
        h.finish()
    }

    /// Digest of the empty blob.
    pub fn empty(f: DigestFunction) -> Digest {
        Digest::of(f, &[])
    }

    /// Whether this is the digest of the empty blob (which every store always has).
    pub fn is_empty_blob(&self) -> bool {
        self.size == 0 && *self == Digest::empty(self.function)
    }

    /// Lower-case hex of the hash (64 characters). Every file node of every input tree is
    /// written this way, so it is a table lookup per byte, not a formatter.
    pub fn hex(&self) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 64];
        for (i, b) in self.hash.iter().enumerate() {
            out[2 * i] = DIGITS[usize::from(b >> 4)];
            out[2 * i + 1] = DIGITS[usize::from(b & 0xf)];
        }
        String::from_utf8(out.to_vec()).expect("hex digits are ASCII")
    }

    /// Parse a hex hash (64 characters, any case) and a size.
    pub fn from_hex(f: DigestFunction, hash_hex: &str, size: u64) -> Result<Digest, StoreError> {
        let bad = |reason: &str| StoreError::InvalidDigest {
            input: hash_hex.to_string(),
            reason: reason.to_string(),
        };
        if hash_hex.len() != 64 {
            return Err(bad("the hash must be 64 hexadecimal characters"));
        }
        // By pairs of digits through a table (an up-to-date snapshot of 10,000 actions holds
        // as many digests, all decoded after every edit).
        const fn nibbles() -> [u8; 256] {
            let mut t = [0xffu8; 256];
            let mut i = 0;
            while i < 10 {
                t[b'0' as usize + i] = i as u8;
                i += 1;
            }
            let mut i = 0;
            while i < 6 {
                t[b'a' as usize + i] = 10 + i as u8;
                t[b'A' as usize + i] = 10 + i as u8;
                i += 1;
            }
            t
        }
        const NIBBLE: [u8; 256] = nibbles();
        let mut hash = [0u8; 32];
        for (b, pair) in hash.iter_mut().zip(hash_hex.as_bytes().chunks_exact(2)) {
            let (hi, lo) = (NIBBLE[usize::from(pair[0])], NIBBLE[usize::from(pair[1])]);
            if (hi | lo) & 0xf0 != 0 {
                return Err(bad("the hash must be 64 hexadecimal characters"));
            }
            *b = hi << 4 | lo;
        }
        Ok(Digest {
            function: f,
            hash,
            size,
        })
    }

    /// REAPI form: `{hash: lower-case hex, size_bytes}`.
    pub fn to_proto(&self) -> reapi::Digest {
        reapi::Digest {
            hash: self.hex(),
            size_bytes: self.size as i64,
        }
    }

    /// From the REAPI form; the function is not part of the message and must be supplied.
    pub fn from_proto(f: DigestFunction, d: &reapi::Digest) -> Result<Digest, StoreError> {
        if d.size_bytes < 0 {
            return Err(StoreError::InvalidDigest {
                input: format!("{}/{}", d.hash, d.size_bytes),
                reason: "negative size".to_string(),
            });
        }
        Digest::from_hex(f, &d.hash, d.size_bytes as u64)
    }

    /// Index key: function code + hash (33 bytes). Size is not part of a blob's identity.
    pub(crate) fn key(&self) -> [u8; 33] {
        let mut k = [0u8; 33];
        k[0] = self.function.code();
        k[1..].copy_from_slice(&self.hash);
        k
    }

    /// Full encoding: key + size little endian (41 bytes).
    pub(crate) fn encode_full(&self) -> [u8; 41] {
        let mut k = [0u8; 41];
        k[..33].copy_from_slice(&self.key());
        k[33..].copy_from_slice(&self.size.to_le_bytes());
        k
    }

    pub(crate) fn from_key(key: &[u8], size: u64) -> Option<Digest> {
        if key.len() != 33 {
            return None;
        }
        let function = DigestFunction::from_code(key[0])?;
        let mut hash = [0u8; 32];
        hash.copy_from_slice(&key[1..]);
        Some(Digest {
            function,
            hash,
            size,
        })
    }

    pub(crate) fn decode_full(bytes: &[u8]) -> Option<Digest> {
        if bytes.len() != 41 {
            return None;
        }
        let size = u64::from_le_bytes(bytes[33..].try_into().ok()?);
        Digest::from_key(&bytes[..33], size)
    }
}

impl fmt::Display for Digest {
    /// `<hex>/<size>`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.hex(), self.size)
    }
}

impl FromStr for Digest {
    type Err = StoreError;
    /// BLAKE3 digest from `<hex>/<size>` or `<hex>` (size 0, meaning "unknown": lookups by
    /// hash, such as `ac_get` or `get_bytes`, do not use the size).
    fn from_str(s: &str) -> Result<Digest, StoreError> {
        let (hash, size) = match s.split_once('/') {
            Some((h, sz)) => {
                let size = sz.parse::<u64>().map_err(|_| StoreError::InvalidDigest {
                    input: s.to_string(),
                    reason: "the size after '/' must be a non-negative integer".to_string(),
                })?;
                (h, size)
            }
            None => (s, 0),
        };
        Digest::from_hex(DigestFunction::Blake3, hash, size).map_err(|e| match e {
            StoreError::InvalidDigest { reason, .. } => StoreError::InvalidDigest {
                input: s.to_string(),
                reason,
            },
            other => other,
        })
    }
}

enum Inner {
    Blake3(Box<blake3::Hasher>),
    Sha256(sha2::Sha256),
}

/// Streaming hasher producing a [`Digest`] (also an [`std::io::Write`]).
pub struct Hasher {
    inner: Inner,
    size: u64,
}

impl Hasher {
    pub fn new(f: DigestFunction) -> Hasher {
        let inner = match f {
            DigestFunction::Blake3 => Inner::Blake3(Box::new(blake3::Hasher::new())),
            DigestFunction::Sha256 => Inner::Sha256(<sha2::Sha256 as sha2::Digest>::new()),
        };
        Hasher { inner, size: 0 }
    }

    pub fn function(&self) -> DigestFunction {
        match self.inner {
            Inner::Blake3(_) => DigestFunction::Blake3,
            Inner::Sha256(_) => DigestFunction::Sha256,
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.size += bytes.len() as u64;
        match &mut self.inner {
            Inner::Blake3(h) => {
                h.update(bytes);
            }
            Inner::Sha256(h) => sha2::Digest::update(h, bytes),
        }
    }

    /// Bytes hashed so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn finish(self) -> Digest {
        let (function, hash) = match self.inner {
            Inner::Blake3(h) => (DigestFunction::Blake3, *h.finalize().as_bytes()),
            Inner::Sha256(h) => (DigestFunction::Sha256, sha2::Digest::finalize(h).into()),
        };
        Digest {
            function,
            hash,
            size: self.size,
        }
    }
}

impl std::io::Write for Hasher {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Canonical encoding of a message (prost `encode_to_vec`) and its digest.
pub fn digest_message<M: prost::Message>(f: DigestFunction, m: &M) -> (Digest, Vec<u8>) {
    let bytes = m.encode_to_vec();
    (Digest::of(f, &bytes), bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        // BLAKE3("") and SHA-256("")
        assert_eq!(
            Digest::of(DigestFunction::Blake3, b"").hex(),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
        assert_eq!(
            Digest::of(DigestFunction::Sha256, b"").hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            Digest::of(DigestFunction::Sha256, b"abc").hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(Digest::empty(DigestFunction::Sha256).is_empty_blob());
        assert!(!Digest::of(DigestFunction::Sha256, b"x").is_empty_blob());
    }

    #[test]
    fn streaming_equals_one_shot() {
        for f in DigestFunction::ALL {
            let mut h = Hasher::new(f);
            h.update(b"hello ");
            h.update(b"world");
            assert_eq!(h.finish(), Digest::of(f, b"hello world"));
        }
    }

    #[test]
    fn display_parse_proto_round_trip() {
        let d = Digest::of(DigestFunction::Blake3, b"hello");
        let s = d.to_string();
        assert_eq!(s, format!("{}/5", d.hex()));
        assert_eq!(s.parse::<Digest>().unwrap(), d);
        let bare: Digest = d.hex().parse().unwrap();
        assert_eq!((bare.hash, bare.size), (d.hash, 0));
        assert_eq!(
            Digest::from_proto(DigestFunction::Blake3, &d.to_proto()).unwrap(),
            d
        );
        assert!("xyz/1".parse::<Digest>().is_err());
        assert!(format!("{}/-1", d.hex()).parse::<Digest>().is_err());
        let neg = reapi::Digest {
            hash: d.hex(),
            size_bytes: -1,
        };
        assert!(Digest::from_proto(DigestFunction::Blake3, &neg).is_err());
        assert_eq!(Digest::decode_full(&d.encode_full()), Some(d));
    }

    #[test]
    fn hex_digits_of_either_case_decode_and_nothing_else_does() {
        let d = Digest::of(DigestFunction::Blake3, b"hello");
        let f = DigestFunction::Blake3;
        assert_eq!(Digest::from_hex(f, &d.hex(), 5).unwrap(), d);
        assert_eq!(Digest::from_hex(f, &d.hex().to_uppercase(), 5).unwrap(), d);
        let all: String = (0..32u8).map(|i| format!("{:02x}", i * 8)).collect();
        let want: Vec<u8> = (0..32u8).map(|i| i * 8).collect();
        assert_eq!(Digest::from_hex(f, &all, 0).unwrap().hash.to_vec(), want);
        for bad in ['g', 'G', ' ', '/', ':', '@', '`', 'é'] {
            let mut h = d.hex();
            h.replace_range(10..10 + bad.len_utf8(), &bad.to_string());
            assert!(Digest::from_hex(f, &h, 5).is_err(), "{bad:?} decoded");
        }
        assert!(Digest::from_hex(f, &d.hex()[..62], 5).is_err());
    }

    #[test]
    fn reapi_numbers() {
        assert_eq!(DigestFunction::Blake3.to_reapi(), 9);
        assert_eq!(DigestFunction::Sha256.to_reapi(), 1);
        assert_eq!(DigestFunction::from_reapi(9), Some(DigestFunction::Blake3));
        assert_eq!(DigestFunction::from_reapi(2), None);
    }

    #[test]
    fn message_digest_is_of_encoding() {
        let m = reapi::Digest {
            hash: "ab".into(),
            size_bytes: 3,
        };
        let (d, bytes) = digest_message(DigestFunction::Blake3, &m);
        assert_eq!(d, Digest::of(DigestFunction::Blake3, &bytes));
        assert_eq!(bytes, prost::Message::encode_to_vec(&m));
    }
}
