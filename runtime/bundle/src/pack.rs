//! Packing a toolchain definition (`<dir>/toolchain.toml`) into a bundle file.
//!
//! ```toml
//! name = "wasi-tools"
//! version = "0.1.0"
//! platform = "wasi"
//! # Optional: a shell command run in <dir> first (builds what `root` holds).
//! prepare = "sh build.sh"
//! # The directory (relative to <dir>) whose whole tree is the bundle. Default: <dir>.
//! root = "dist"
//! [entry_points]
//! wb-template = "bin/wb-template.wasm"
//! [env]
//! ```
//!
//! A native toolchain is captured from the host's Debian packages instead of a `root`:
//!
//! ```toml
//! name = "gcc-aarch64-linux"
//! version = "12"
//! platform = "linux-arm64"
//! [capture]
//! target = "aarch64-linux-gnu"
//! programs = ["qemu-aarch64-static"]
//! ```

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::file::{BundleHead, hash_file, write_bundle};
use crate::manifest::{FileEntry, Manifest, SCHEMA};
use crate::{BundleError, io_err};

pub const DEFINITION_FILE: &str = "toolchain.toml";

#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Definition {
    pub name: String,
    pub version: String,
    pub platform: String,
    #[serde(default)]
    pub prepare: Option<String>,
    #[serde(default)]
    pub root: Option<String>,
    #[serde(default)]
    pub entry_points: BTreeMap<String, String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Capture a native toolchain from the host instead of packing `root`.
    #[serde(default)]
    pub capture: Option<crate::capture::CaptureSpec>,
}

impl Definition {
    pub fn load(dir: &Path) -> Result<Definition, BundleError> {
        let path = dir.join(DEFINITION_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| io_err(&path, e))?;
        toml::from_str(&text).map_err(|e| BundleError::Definition {
            path,
            message: e.to_string(),
        })
    }
}

/// Result of packing: the head (manifest; no signatures yet) and where each blob came from.
pub struct Packed {
    pub head: BundleHead,
    pub sources: HashMap<String, PathBuf>,
    /// A captured tree the sources point into (removed when this is dropped).
    pub captured: Option<tempfile::TempDir>,
}

/// Walks `root` and describes every file and symlink in it (sorted by path). Directories
/// are implied by the paths; empty ones are dropped. `skip` (a path relative to root) is
/// left out.
pub fn scan_tree(
    root: &Path,
    skip: Option<&str>,
) -> Result<(Vec<FileEntry>, HashMap<String, PathBuf>), BundleError> {
    let mut files = Vec::new();
    let mut sources = HashMap::new();
    let mut stack = vec![(root.to_owned(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        let rd = std::fs::read_dir(&dir).map_err(|e| io_err(&dir, e))?;
        for entry in rd {
            let entry = entry.map_err(|e| io_err(&dir, e))?;
            let name = entry.file_name();
            let name = name.to_str().ok_or_else(|| BundleError::Definition {
                path: entry.path(),
                message: "file name is not UTF-8".into(),
            })?;
            let path = if rel.is_empty() {
                name.to_owned()
            } else {
                format!("{rel}/{name}")
            };
            if skip == Some(path.as_str()) {
                continue;
            }
            let host = entry.path();
            let meta = std::fs::symlink_metadata(&host).map_err(|e| io_err(&host, e))?;
            let ft = meta.file_type();
            if ft.is_dir() {
                stack.push((host, path));
            } else if ft.is_symlink() {
                let target = std::fs::read_link(&host).map_err(|e| io_err(&host, e))?;
                let target = target.to_str().ok_or_else(|| BundleError::Definition {
                    path: host.clone(),
                    message: "symlink target is not UTF-8".into(),
                })?;
                files.push(FileEntry {
                    path,
                    mode: None,
                    size: None,
                    digest: None,
                    symlink: Some(target.to_owned()),
                });
            } else if ft.is_file() {
                let (digest, size) = hash_file(&host)?;
                let exec = meta.permissions().mode() & 0o111 != 0;
                files.push(FileEntry {
                    path: path.clone(),
                    mode: Some(if exec { "0755" } else { "0644" }.to_owned()),
                    size: Some(size),
                    digest: Some(digest.clone()),
                    symlink: None,
                });
                sources.entry(digest).or_insert(host);
            } else {
                return Err(BundleError::Definition {
                    path: host,
                    message: "not a regular file, directory or symlink; a bundle holds only \
                              those"
                        .into(),
                });
            }
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok((files, sources))
}

/// Packs the definition in `dir` (running its `prepare` command first, unless
/// `run_prepare` is false) into a manifest.
pub fn pack_dir(dir: &Path, run_prepare: bool) -> Result<Packed, BundleError> {
    let def = Definition::load(dir)?;
    let def_path = dir.join(DEFINITION_FILE);
    if let (Some(cmd), true) = (&def.prepare, run_prepare) {
        let status = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(cmd)
            .current_dir(dir)
            .status()
            .map_err(|e| io_err(dir, e))?;
        if !status.success() {
            return Err(BundleError::Definition {
                path: def_path,
                message: format!("prepare command `{cmd}` failed ({status})"),
            });
        }
    }
    let mut entry_points = def.entry_points.clone();
    let mut env = def.env.clone();
    let mut captured_dir = None;
    let (root, skip) = match (&def.capture, &def.root) {
        (Some(_), Some(_)) => {
            return Err(BundleError::Definition {
                path: def_path,
                message: "give either root or [capture], not both".into(),
            });
        }
        (Some(spec), None) => {
            let tmp = tempfile::Builder::new()
                .prefix("wbuild-capture-")
                .tempdir()
                .map_err(|e| io_err(Path::new("/tmp"), e))?;
            let tree = tmp.path().join("root");
            let captured = crate::capture::capture(spec, &tree)?;
            // The definition's own entries win over what the capture found.
            for (k, v) in captured.entry_points {
                entry_points.entry(k).or_insert(v);
            }
            for (k, v) in captured.env {
                env.entry(k).or_insert(v);
            }
            captured_dir = Some(tmp);
            (tree, None)
        }
        (None, Some(r)) => (dir.join(r), None),
        (None, None) => (dir.to_owned(), Some(DEFINITION_FILE)),
    };
    if !root.is_dir() {
        return Err(BundleError::Definition {
            path: def_path,
            message: format!(
                "root '{}' is not a directory{}",
                root.display(),
                if def.prepare.is_some() {
                    " (did the prepare command create it?)"
                } else {
                    ""
                }
            ),
        });
    }
    let (files, sources) = scan_tree(&root, skip)?;
    let manifest = Manifest {
        schema: SCHEMA.to_owned(),
        name: def.name,
        version: def.version,
        platform: def.platform,
        entry_points,
        env,
        files,
    };
    manifest
        .validate()
        .map_err(|error| BundleError::Definition {
            path: def_path,
            message: error.to_string(),
        })?;
    Ok(Packed {
        head: BundleHead::new(manifest),
        sources,
        captured: captured_dir,
    })
}

/// Packs and writes the bundle file `out`.
pub fn pack_to_file(dir: &Path, out: &Path, run_prepare: bool) -> Result<BundleHead, BundleError> {
    let packed = pack_dir(dir, run_prepare)?;
    write_bundle(out, &packed.head, &|d| packed.sources[d].clone())?;
    Ok(packed.head)
}
