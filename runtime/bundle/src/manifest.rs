//! The bundle manifest: what a toolchain is (name, version, platform, entry points,
//! environment) and every file in it (path, mode, size, SHA-256 digest, or a symlink's
//! target). The bundle's digest is the SHA-256 of the manifest's bytes.

use std::collections::{BTreeMap, BTreeSet};

use sha2::{Digest as _, Sha256};

use crate::BundleError;

/// Value of `schema` in every manifest this version writes and reads.
pub const SCHEMA: &str = "wbuild-toolchain-v1";

/// Platforms a bundle may be for: portable WASI tools, or native toolchains by target.
pub const PLATFORMS: &[&str] = &["wasi", "linux-x86_64", "linux-arm64"];

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub schema: String,
    pub name: String,
    pub version: String,
    pub platform: String,
    /// Entry-point name (`cc`, `ar`, `wb-template`, ...) -> path of a file in the bundle.
    #[serde(default)]
    pub entry_points: BTreeMap<String, String>,
    /// Environment the tools need (values may use `${TOOLCHAIN}` for the bundle's root).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Every file, sorted by path.
    pub files: Vec<FileEntry>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Relative path with `/` separators, no `.`/`..` components.
    pub path: String,
    /// Regular files: `"0644"` or `"0755"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Regular files: `sha256:<hex>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Symbolic links: the link's target, as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symlink: Option<String>,
}

impl FileEntry {
    pub fn is_executable(&self) -> bool {
        self.mode.as_deref() == Some("0755")
    }
}

/// `sha256:<hex>` of some bytes.
pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Checks that `d` is `sha256:` and 64 lowercase hex digits; returns the hex part.
pub fn digest_hex(d: &str) -> Option<&str> {
    let hex = d.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))).then_some(hex)
}

impl Manifest {
    /// The canonical bytes: pretty JSON in field order, files sorted, trailing newline. The
    /// same manifest always gives the same bytes, so the same tree gives the same digest.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("manifest serialises");
        v.push(b'\n');
        v
    }

    /// The bundle digest: `sha256:` of the canonical bytes.
    pub fn digest(&self) -> String {
        sha256(&self.to_bytes())
    }

    /// Parses and validates manifest bytes. `what` names the source in errors. The bytes
    /// must be canonical: re-serialising gives them back (so a digest names one manifest).
    pub fn parse(bytes: &[u8], what: &str) -> Result<Manifest, BundleError> {
        let bad = |message: String| BundleError::BadManifest {
            what: what.to_owned(),
            message,
        };
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        m.validate().map_err(|error| BundleError::InvalidManifest {
            what: what.to_owned(),
            error,
        })?;
        if m.to_bytes() != bytes {
            return Err(bad(
                "not in canonical form (edited by hand?); repack the toolchain".into(),
            ));
        }
        Ok(m)
    }

    /// Checks names, paths, digests, modes and entry points.
    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.schema != SCHEMA {
            return Err(ManifestError::Schema(self.schema.clone()));
        }
        check_name(&self.name).map_err(ManifestError::Name)?;
        if self.version.is_empty() || self.version.chars().any(|c| c.is_whitespace()) {
            return Err(ManifestError::Version(self.version.clone()));
        }
        if !PLATFORMS.contains(&self.platform.as_str()) {
            return Err(ManifestError::Platform(self.platform.clone()));
        }
        let mut seen = BTreeSet::new();
        let mut prev: Option<&str> = None;
        for f in &self.files {
            let path = || f.path.clone();
            check_path(&f.path).map_err(|error| ManifestError::Path {
                path: path(),
                error,
            })?;
            if let Some(p) = prev
                && p >= f.path.as_str()
            {
                return Err(ManifestError::Unsorted(path()));
            }
            prev = Some(&f.path);
            seen.insert(f.path.as_str());
            match (&f.digest, &f.symlink) {
                (Some(d), None) => {
                    if digest_hex(d).is_none() {
                        return Err(ManifestError::BadDigest {
                            path: path(),
                            digest: d.clone(),
                        });
                    }
                    if !matches!(f.mode.as_deref(), Some("0644" | "0755")) {
                        return Err(ManifestError::Mode(path()));
                    }
                    if f.size.is_none() {
                        return Err(ManifestError::NoSize(path()));
                    }
                }
                (None, Some(t)) => {
                    if t.is_empty() || t.contains('\0') {
                        return Err(ManifestError::SymlinkTarget(path()));
                    }
                    if f.mode.is_some() || f.size.is_some() {
                        return Err(ManifestError::SymlinkModeOrSize(path()));
                    }
                }
                _ => return Err(ManifestError::NeitherFileNorSymlink(path())),
            }
        }
        // A path must not be both a file and a directory of other files.
        for f in &self.files {
            let mut p = f.path.as_str();
            while let Some((parent, _)) = p.rsplit_once('/') {
                if seen.contains(parent) {
                    return Err(ManifestError::FileIsDirectory {
                        file: parent.to_owned(),
                        holding: f.path.clone(),
                    });
                }
                p = parent;
            }
        }
        for (name, path) in &self.entry_points {
            check_name(name).map_err(|error| ManifestError::EntryPointName {
                name: name.clone(),
                error,
            })?;
            if self.file(path).is_none() {
                return Err(ManifestError::EntryPointMissing {
                    name: name.clone(),
                    path: path.clone(),
                });
            }
        }
        Ok(())
    }

    /// The entry for `path`, if the bundle has one.
    pub fn file(&self, path: &str) -> Option<&FileEntry> {
        self.files
            .binary_search_by(|f| f.path.as_str().cmp(path))
            .ok()
            .map(|i| &self.files[i])
    }

    /// Distinct blob digests with their sizes, sorted by digest.
    pub fn blobs(&self) -> BTreeMap<&str, u64> {
        self.files
            .iter()
            .filter_map(|f| Some((f.digest.as_deref()?, f.size?)))
            .collect()
    }

    /// Total size of the distinct blobs.
    pub fn blob_bytes(&self) -> u64 {
        self.blobs().values().sum()
    }
}

/// Why a manifest is not valid.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("schema is '{0}', this wbuild reads '{SCHEMA}'")]
    Schema(String),
    #[error("name: {0}")]
    Name(NameError),
    #[error("version '{0}' must be non-empty, without spaces")]
    Version(String),
    #[error("platform '{0}' is not one of {platforms}", platforms = PLATFORMS.join(", "))]
    Platform(String),
    #[error("file '{path}': {error}")]
    Path { path: String, error: PathError },
    #[error("files are not sorted or not unique at '{0}'")]
    Unsorted(String),
    #[error("file '{path}': bad digest '{digest}'")]
    BadDigest { path: String, digest: String },
    #[error("file '{0}': mode must be 0644 or 0755")]
    Mode(String),
    #[error("file '{0}': no size")]
    NoSize(String),
    #[error("symlink '{0}': empty target")]
    SymlinkTarget(String),
    #[error("symlink '{0}' has a mode or size")]
    SymlinkModeOrSize(String),
    #[error("file '{0}' must have either a digest or a symlink target")]
    NeitherFileNorSymlink(String),
    #[error("'{file}' is a file but also a directory holding '{holding}'")]
    FileIsDirectory { file: String, holding: String },
    #[error("entry point '{name}': {error}")]
    EntryPointName { name: String, error: NameError },
    #[error("entry point '{name}' names '{path}', which is not a file of the bundle")]
    EntryPointMissing { name: String, path: String },
}

/// A toolchain or entry-point name that is not `[a-z0-9][a-z0-9._-]*` (1-64 characters).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "'{0}' must be 1-64 characters of a-z, 0-9, '.', '_', '-', starting with a letter or digit"
)]
pub struct NameError(pub String);

/// Why a path is not a relative, normalised, `/`-separated path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("must be a non-empty relative path")]
    NotRelative,
    #[error("contains a NUL or backslash")]
    BadCharacter,
    #[error("has an empty, '.' or '..' component")]
    BadComponent,
}

/// Toolchain and entry-point names: `[a-z0-9][a-z0-9._-]*`, at most 64 characters.
pub fn check_name(name: &str) -> Result<(), NameError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-'))
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(NameError(name.to_owned()))
    }
}

/// Relative, normalised, `/`-separated path.
pub fn check_path(path: &str) -> Result<(), PathError> {
    if path.is_empty() || path.starts_with('/') || path.ends_with('/') {
        return Err(PathError::NotRelative);
    }
    if path.contains('\0') || path.contains('\\') {
        return Err(PathError::BadCharacter);
    }
    if path
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(PathError::BadComponent);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, data: &[u8]) -> FileEntry {
        FileEntry {
            path: path.into(),
            mode: Some("0644".into()),
            size: Some(data.len() as u64),
            digest: Some(sha256(data)),
            symlink: None,
        }
    }

    fn manifest() -> Manifest {
        Manifest {
            schema: SCHEMA.into(),
            name: "tools".into(),
            version: "1.0".into(),
            platform: "wasi".into(),
            entry_points: [("t".to_string(), "bin/t.wasm".to_string())].into(),
            env: BTreeMap::new(),
            files: vec![file("bin/t.wasm", b"x"), file("share/a", b"y")],
        }
    }

    #[test]
    fn round_trip_and_digest() {
        let m = manifest();
        m.validate().unwrap();
        let bytes = m.to_bytes();
        assert_eq!(Manifest::parse(&bytes, "m").unwrap(), m);
        assert_eq!(m.digest(), sha256(&bytes));
        // Non-canonical bytes (same JSON, other layout) are refused.
        let compact = serde_json::to_vec(&m).unwrap();
        let err = Manifest::parse(&compact, "m.json").unwrap_err().to_string();
        assert!(err.contains("m.json") && err.contains("canonical"), "{err}");
    }

    #[test]
    fn invalid_manifests() {
        type Edit = Box<dyn Fn(&mut Manifest)>;
        let cases: Vec<(Edit, &str)> = vec![
            (Box::new(|m| m.files[0].path = "../x".into()), "'..'"),
            (Box::new(|m| m.files[0].path = "/abs".into()), "relative"),
            (Box::new(|m| m.files.swap(0, 1)), "sorted"),
            (
                Box::new(|m| m.files[0].digest = Some("sha256:zz".into())),
                "bad digest",
            ),
            (Box::new(|m| m.files[0].mode = Some("4755".into())), "mode"),
            (Box::new(|m| m.platform = "vax".into()), "platform"),
            (Box::new(|m| m.name = "Tools".into()), "name"),
            (
                Box::new(|m| {
                    m.entry_points.insert("u".into(), "missing".into());
                }),
                "entry point 'u'",
            ),
            (
                Box::new(|m| m.files.insert(0, file("bin", b"z"))),
                "also a directory",
            ),
        ];
        for (edit, want) in cases {
            let mut m = manifest();
            edit(&mut m);
            let err = m.validate().unwrap_err().to_string();
            assert!(err.contains(want), "{want}: {err}");
        }
    }
}
