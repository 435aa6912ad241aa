//! ByteStream resource names of the REAPI spec:
//! `{instance}/blobs/{digest_function/}{hash}/{size}` to read and
//! `{instance}/uploads/{uuid}/blobs/{digest_function/}{hash}/{size}{/metadata}` to write. The
//! digest-function segment is the lowercase name of a `DigestFunction.Value`; without it the
//! function is SHA-256 (the spec's rule for 64-hex-digit hashes).

use wbuild_store::{Digest, DigestFunction};

/// A parsed blob resource name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceName {
    pub instance: String,
    pub digest: Digest,
}

fn function_named(name: &str) -> Option<DigestFunction> {
    DigestFunction::ALL.into_iter().find(|f| f.name() == name)
}

/// Parses `{function/}{hash}/{size}` (and ignores what follows, the write metadata).
fn blob_part(instance: &str, parts: &[&str]) -> Result<ResourceName, String> {
    let (function, rest) = match parts.first().and_then(|p| function_named(p)) {
        Some(f) => (f, &parts[1..]),
        None => (DigestFunction::Sha256, parts),
    };
    let [hash, size, ..] = rest else {
        return Err("expected .../blobs/[digest_function/]HASH/SIZE".into());
    };
    let size: u64 = size
        .parse()
        .map_err(|_| format!("size {size:?} is not a number"))?;
    let digest = Digest::from_hex(function, hash, size).map_err(|e| e.to_string())?;
    Ok(ResourceName {
        instance: instance.to_owned(),
        digest,
    })
}

/// Splits at the first segment equal to `marker`: (instance name, segments after it).
fn split_at<'a>(name: &'a str, marker: &str) -> Option<(String, Vec<&'a str>)> {
    let parts: Vec<&str> = name.split('/').collect();
    let i = parts.iter().position(|p| *p == marker)?;
    Some((parts[..i].join("/"), parts[i + 1..].to_vec()))
}

/// A read resource name.
pub fn parse_read_resource(name: &str) -> Result<ResourceName, String> {
    if split_at(name, "compressed-blobs").is_some() {
        return Err("compressed blobs are not supported".into());
    }
    let (instance, rest) =
        split_at(name, "blobs").ok_or("expected {instance}/blobs/[digest_function/]HASH/SIZE")?;
    blob_part(&instance, &rest)
}

/// A write resource name.
pub fn parse_write_resource(name: &str) -> Result<ResourceName, String> {
    let (instance, rest) = split_at(name, "uploads")
        .ok_or("expected {instance}/uploads/UUID/blobs/[digest_function/]HASH/SIZE")?;
    match rest.get(1) {
        Some(&"blobs") => blob_part(&instance, &rest[2..]),
        Some(&"compressed-blobs") => Err("compressed blobs are not supported".into()),
        _ => Err("expected {instance}/uploads/UUID/blobs/[digest_function/]HASH/SIZE".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_and_write_names() {
        let sha = Digest::of(DigestFunction::Sha256, b"x");
        let b3 = Digest::of(DigestFunction::Blake3, b"x");
        let r = parse_read_resource(&format!("blobs/{}/1", sha.hex())).unwrap();
        assert_eq!((r.instance.as_str(), r.digest), ("", sha));
        let r = parse_read_resource(&format!("main/ci/blobs/blake3/{}/1", b3.hex())).unwrap();
        assert_eq!((r.instance.as_str(), r.digest), ("main/ci", b3));
        let w = parse_write_resource(&format!(
            "inst/uploads/5b6c-uuid/blobs/sha256/{}/1/meta/data",
            sha.hex()
        ))
        .unwrap();
        assert_eq!((w.instance.as_str(), w.digest), ("inst", sha));
        assert!(parse_read_resource("inst/compressed-blobs/zstd/ab/1").is_err());
        assert!(parse_read_resource(&format!("blobs/{}/x", sha.hex())).is_err());
        assert!(parse_read_resource("blobs/abc/1").is_err());
        assert!(parse_write_resource(&format!("blobs/{}/1", sha.hex())).is_err());
    }
}
