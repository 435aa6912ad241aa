//! A workspace's pinned toolchain bundles: resolving `[toolchains]` (digest from
//! `wbuild.toml`, else `wbuild.lock`, else the source), installing and verifying what is
//! missing, writing `wbuild.lock`, and registering each bundle as a `wbuild_graph::External`
//! that build files name as `@name//...`; and the native bundles a pass or a lease uses.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use wbuild_bundle::{Installed, Toolchains, Trust, registry, sign};
use wbuild_graph::{External, Workspace};
use wbuild_sched::NativeToolchain;

use crate::{DriverError, Result};

/// Name of the lock file at the workspace root.
pub const LOCK_FILE: &str = "wbuild.lock";

/// The keys the workspace trusts to sign toolchain bundles (`[trust] keys`, relative to its
/// root).
pub fn workspace_trust(ws: &Workspace) -> Result<Trust> {
    let mut trust = Trust::default();
    for k in &ws.config.trust.keys {
        trust
            .keys
            .push(
                sign::load_public_key(k, &ws.root).map_err(|source| DriverError::Bundle {
                    context: format!(
                        "[trust] keys in {}",
                        ws.root.join(wbuild_graph::WORKSPACE_FILE).display()
                    ),
                    source: Box::new(source),
                })?,
            );
    }
    Ok(trust)
}

/// Installs from `oci://...` or a bundle file path (relative to `base`), checking the
/// signatures against `trust` and, when given, the digest.
pub fn install(
    tc: &Toolchains,
    source: &str,
    base: &Path,
    trust: &Trust,
    digest: Option<&str>,
) -> Result<Installed, wbuild_bundle::BundleError> {
    if source.starts_with("oci://") {
        registry::fetch(tc, source, Some(trust), digest)
    } else {
        tc.install_file(&base.join(source), Some(trust), digest)
    }
}

#[derive(Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
struct Lock {
    #[serde(default)]
    toolchains: BTreeMap<String, LockEntry>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LockEntry {
    source: String,
    digest: String,
}

/// Makes every `[toolchains]` pin of the workspace available: the digest comes from
/// `wbuild.toml`, else from `wbuild.lock` (for the same source), else from resolving the
/// source; a bundle not installed yet is fetched, its digest and signature checked. The
/// resolved digests are written to `wbuild.lock`, and the toolchains are registered in
/// `ws.externals` for `@name//...` references. `note` receives progress lines ("fetching
/// toolchain ...").
pub fn resolve_workspace(ws: &mut Workspace, cache_dir: &Path, note: &dyn Fn(&str)) -> Result<()> {
    if ws.config.toolchains.is_empty() {
        return Ok(());
    }
    let toml_path = ws.root.join(wbuild_graph::WORKSPACE_FILE);
    let trust = workspace_trust(ws)?;
    if trust.keys.is_empty() {
        return Err(DriverError::Config(format!(
            "{}: toolchains are pinned but no key is trusted to sign them; add\n  [trust]\n  keys = [\"team.pub\"]\n(the public key from `wbuild toolchain keygen`)",
            toml_path.display()
        )));
    }
    let lock_path = ws.root.join(LOCK_FILE);
    let old_lock: Lock = match std::fs::read_to_string(&lock_path) {
        Ok(t) => toml::from_str(&t).map_err(|source| DriverError::Lock {
            path: lock_path.clone(),
            source: Box::new(source),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Lock::default(),
        Err(source) => {
            return Err(DriverError::Io {
                what: format!("cannot read {}", lock_path.display()),
                source,
            });
        }
    };
    let tc = Toolchains::new(cache_dir);
    let mut lock = Lock::default();
    let mut externals = BTreeMap::new();
    for (name, pin) in &ws.config.toolchains {
        let locked = old_lock
            .toolchains
            .get(name)
            .filter(|e| e.source == pin.source)
            .map(|e| e.digest.clone());
        let from_lock = pin.digest.is_none() && locked.is_some();
        let digest = pin.digest.clone().or(locked);
        let what = if from_lock {
            format!(
                "[toolchains.{name}] (digest pinned by {}: delete its entry to accept a new bundle)",
                lock_path.display()
            )
        } else {
            format!("[toolchains.{name}] in {}", toml_path.display())
        };
        let in_context = |source| DriverError::Bundle {
            context: what.clone(),
            source: Box::new(source),
        };
        let installed = match &digest {
            Some(d) => tc.get(d).map_err(in_context)?,
            None => None,
        };
        let inst = match installed {
            Some(inst) => {
                // Installed earlier: its signature must still satisfy today's trust.
                sign::verify(&inst.head, &trust, &what)?;
                inst
            }
            None => {
                note(&format!("fetching toolchain {name} from {}", pin.source));
                install(&tc, &pin.source, &ws.root, &trust, digest.as_deref())
                    .map_err(in_context)?
            }
        };
        let m = &inst.head.manifest;
        externals.insert(
            name.clone(),
            External {
                digest: inst.head.digest.clone(),
                platform: m.platform.clone(),
                root: inst.root(),
                files: m
                    .files
                    .iter()
                    .filter(|f| f.symlink.is_none())
                    .map(|f| f.path.clone())
                    .collect(),
                entry_points: m.entry_points.clone(),
                env: m.env.clone(),
            },
        );
        lock.toolchains.insert(
            name.clone(),
            LockEntry {
                source: pin.source.clone(),
                digest: inst.head.digest.clone(),
            },
        );
    }
    if lock != old_lock {
        let text = format!(
            "# Toolchain bundles resolved for this workspace, by digest. Written by wbuild; commit it.\n{}",
            toml::to_string(&lock).expect("lock serialises")
        );
        let dir = lock_path.parent().unwrap_or(Path::new("."));
        // A file the user commits: readable like any other (a temp file is 0600).
        tempfile::Builder::new()
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .tempfile_in(dir)
            .and_then(|mut tmp| {
                std::io::Write::write_all(&mut tmp, text.as_bytes())?;
                tmp.persist(&lock_path).map(drop).map_err(|e| e.error)
            })
            .map_err(|source| DriverError::Io {
                what: format!("cannot write {}", lock_path.display()),
                source,
            })?;
    }
    ws.externals = externals;
    Ok(())
}

/// The pinned native toolchain bundle for `platform` (one whose manifest names that
/// platform and has a `cc` entry point), if any.
pub fn native_for(ws: &Workspace, platform: &str) -> Result<Option<Arc<NativeToolchain>>> {
    let found: Vec<(&String, &External)> = ws
        .externals
        .iter()
        .filter(|(_, e)| e.platform == platform && e.entry_points.contains_key("cc"))
        .collect();
    match found.as_slice() {
        [] => Ok(None),
        [(name, e)] => Ok(Some(native_toolchain(name, &e.digest, &e.root, &e.env))),
        many => Err(DriverError::Config(format!(
            "{}: toolchains {} are all native toolchains for {platform}; pin one",
            ws.root.join(wbuild_graph::WORKSPACE_FILE).display(),
            many.iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// The installed native toolchain bundle `name` with `digest` in the cache at `cache`.
pub fn installed_native(
    cache: &Path,
    name: &str,
    digest: &str,
) -> Result<Option<Arc<NativeToolchain>>, String> {
    let Some(inst) = Toolchains::new(cache)
        .get(digest)
        .map_err(|e| e.to_string())?
    else {
        return Ok(None);
    };
    Ok(Some(native_toolchain(
        name,
        digest,
        &inst.root(),
        &inst.head.manifest.env,
    )))
}

/// A native bundle as native actions use it: its tree and its tools' environment.
pub fn native_toolchain(
    name: &str,
    digest: &str,
    root: &Path,
    env: &BTreeMap<String, String>,
) -> Arc<NativeToolchain> {
    Arc::new(NativeToolchain {
        name: name.to_owned(),
        digest: digest.to_owned(),
        root: root.to_owned(),
        env: ["CC", "CXX", "AR", "TEST_RUNNER"]
            .iter()
            .map(|k| ((*k).to_owned(), env.get(*k).cloned().unwrap_or_default()))
            .collect(),
    })
}
