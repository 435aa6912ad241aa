//! `wbuild toolchain ...`: keys, packing, signing, publishing, fetching and verifying
//! toolchain bundles; and resolving a workspace's pinned toolchains before a build.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use wbuild_bundle::file::read_bundle;
use wbuild_bundle::{Toolchains, Trust, pack, registry, sign};
use wbuild_graph::{External, Workspace};
use wbuild_store::Store;

/// Name of the lock file at the workspace root.
pub const LOCK_FILE: &str = "wbuild.lock";

#[derive(Subcommand)]
pub enum ToolchainCmd {
    /// Generate a minisign-format key pair: the secret key at OUT, the public key at
    /// OUT with the extension `.pub`.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Pack the toolchain defined by DIR/toolchain.toml into a bundle file.
    Pack {
        dir: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Do not run the definition's `prepare` command.
        #[arg(long)]
        no_prepare: bool,
    },
    /// Sign a bundle file's manifest (adds or replaces this key's signature).
    Sign {
        bundle: PathBuf,
        #[arg(long)]
        key: PathBuf,
    },
    /// Publish a signed bundle file to an OCI registry (oci://host/repo:tag).
    Publish { bundle: PathBuf, reference: String },
    /// Fetch (oci://...) or read (a bundle file), verify and install a bundle into the cache.
    Fetch {
        source: String,
        /// Trusted public key (repeatable); the workspace's [trust] keys are added.
        #[arg(long)]
        key: Vec<String>,
        /// Refuse anything but this bundle digest (sha256:...).
        #[arg(long)]
        digest: Option<String>,
    },
    /// List the installed toolchains.
    List,
    /// Verify a bundle file, or the installed toolchains of a name (or digest): every file
    /// against the manifest, and the signatures against the trusted keys.
    Verify {
        what: String,
        /// Trusted public key (repeatable); the workspace's [trust] keys are added.
        #[arg(long)]
        key: Vec<String>,
    },
}

fn cache_dir(cli_dir: &Option<PathBuf>) -> PathBuf {
    cli_dir.clone().unwrap_or_else(Store::default_dir)
}

/// Trusted keys: `--key` flags (relative to the current directory), plus the current
/// workspace's `[trust] keys` (relative to its root).
fn trust_from(flags: &[String]) -> Result<Trust> {
    let mut trust = Trust::default();
    let cwd = std::env::current_dir()?;
    for k in flags {
        trust.keys.push(sign::load_public_key(k, &cwd)?);
    }
    if let Ok(ws) = Workspace::discover(&cwd) {
        trust.keys.extend(workspace_trust(&ws)?.keys);
    }
    Ok(trust)
}

fn workspace_trust(ws: &Workspace) -> Result<Trust> {
    let mut trust = Trust::default();
    for k in &ws.config.trust.keys {
        trust
            .keys
            .push(sign::load_public_key(k, &ws.root).with_context(|| {
                format!(
                    "[trust] keys in {}",
                    ws.root.join(wbuild_graph::WORKSPACE_FILE).display()
                )
            })?);
    }
    Ok(trust)
}

pub fn run(cli_cache: &Option<PathBuf>, cmd: &ToolchainCmd) -> Result<i32> {
    match cmd {
        ToolchainCmd::Keygen { out } => {
            let (pub_path, id) = sign::keygen(out)?;
            println!("secret key: {} (keep it private)", out.display());
            println!("public key: {} (key id {id})", pub_path.display());
            println!(
                "trust it in wbuild.toml:  [trust] keys = [\"{}\"]",
                pub_path.display()
            );
        }
        ToolchainCmd::Pack {
            dir,
            out,
            no_prepare,
        } => {
            let head = pack::pack_to_file(dir, out, !no_prepare)?;
            let m = &head.manifest;
            println!(
                "packed {} {} ({}): {} files, {} bytes of distinct content",
                m.name,
                m.version,
                m.platform,
                m.files.len(),
                m.blob_bytes()
            );
            println!("{}  {}", head.digest, out.display());
        }
        ToolchainCmd::Sign { bundle, key } => {
            let mut id = String::new();
            let head = wbuild_bundle::file::rewrite_signatures(bundle, &mut |head| {
                id = sign::sign(head, key)?;
                Ok(())
            })?;
            println!("signed {} with key {id}", head.digest);
        }
        ToolchainCmd::Publish { bundle, reference } => {
            let p = registry::publish(bundle, reference)?;
            println!(
                "published {} {} ({}): {} of {} blobs uploaded",
                p.head.manifest.name, p.head.manifest.version, p.head.digest, p.uploaded, p.blobs
            );
            println!("{}", p.pinned);
        }
        ToolchainCmd::Fetch {
            source,
            key,
            digest,
        } => {
            let trust = trust_from(key)?;
            let tc = Toolchains::new(&cache_dir(cli_cache));
            let inst = install(&tc, source, Path::new("."), &trust, digest.as_deref())?;
            let m = &inst.head.manifest;
            println!(
                "installed {} {} ({}) {}",
                m.name, m.version, m.platform, inst.head.digest
            );
            println!("{}", inst.root().display());
        }
        ToolchainCmd::List => {
            let tc = Toolchains::new(&cache_dir(cli_cache));
            for inst in tc.list()? {
                let m = &inst.head.manifest;
                let signers: Vec<&str> = inst.head.signatures.keys().map(String::as_str).collect();
                println!(
                    "{:<20} {:<12} {:<14} {}  signed by {}",
                    m.name,
                    m.version,
                    m.platform,
                    inst.head.digest,
                    if signers.is_empty() {
                        "nobody".to_owned()
                    } else {
                        signers.join(", ")
                    }
                );
            }
        }
        ToolchainCmd::Verify { what, key } => {
            let trust = trust_from(key)?;
            let path = Path::new(what);
            if path.is_file() {
                let head = read_bundle(path, None, &mut |head| {
                    sign::verify(head, &trust, what).map(|_| ())
                })?;
                println!(
                    "ok: {} {} {}: {} files, signatures by {}",
                    head.manifest.name,
                    head.manifest.version,
                    head.digest,
                    head.manifest.files.len(),
                    head.signatures
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                return Ok(0);
            }
            let tc = Toolchains::new(&cache_dir(cli_cache));
            let found: Vec<_> = tc
                .list()?
                .into_iter()
                .filter(|i| i.head.manifest.name == *what || i.head.digest == *what)
                .collect();
            if found.is_empty() {
                bail!(
                    "no installed toolchain is named '{what}' (and no such bundle file); see \
                     `wbuild toolchain list`"
                );
            }
            for inst in found {
                let r = tc.verify(&inst, Some(&trust))?;
                println!(
                    "ok: {} {} {}: {} files, {} bytes, signed by {}",
                    inst.head.manifest.name,
                    inst.head.manifest.version,
                    inst.head.digest,
                    r.files,
                    r.bytes,
                    r.signed_by.join(", ")
                );
            }
        }
    }
    Ok(0)
}

/// The pinned native toolchain bundle for `platform` (one whose manifest names that
/// platform and has a `cc` entry point), if any.
pub fn native_for(
    ws: &Workspace,
    platform: &str,
) -> Result<Option<std::sync::Arc<wbuild_sched::NativeToolchain>>> {
    let found: Vec<(&String, &External)> = ws
        .externals
        .iter()
        .filter(|(_, e)| e.platform == platform && e.entry_points.contains_key("cc"))
        .collect();
    match found.as_slice() {
        [] => Ok(None),
        [(name, e)] => Ok(Some(native_toolchain(name, &e.digest, &e.root, &e.env))),
        many => bail!(
            "{}: toolchains {} are all native toolchains for {platform}; pin one",
            ws.root.join(wbuild_graph::WORKSPACE_FILE).display(),
            many.iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Installs from `oci://...` or a bundle file path (relative to `base`).
fn install(
    tc: &Toolchains,
    source: &str,
    base: &Path,
    trust: &Trust,
    digest: Option<&str>,
) -> Result<wbuild_bundle::Installed> {
    if source.starts_with("oci://") {
        Ok(registry::fetch(tc, source, Some(trust), digest)?)
    } else {
        Ok(tc.install_file(&base.join(source), Some(trust), digest)?)
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
/// `ws.externals` for `@name//...` references.
pub fn resolve_workspace(ws: &mut Workspace, cli_cache: &Option<PathBuf>) -> Result<()> {
    if ws.config.toolchains.is_empty() {
        return Ok(());
    }
    let toml_path = ws.root.join(wbuild_graph::WORKSPACE_FILE);
    let trust = workspace_trust(ws)?;
    if trust.keys.is_empty() {
        bail!(
            "{}: toolchains are pinned but no key is trusted to sign them; add\n  [trust]\n  keys = [\"team.pub\"]\n(the public key from `wbuild toolchain keygen`)",
            toml_path.display()
        );
    }
    let lock_path = ws.root.join(LOCK_FILE);
    let old_lock: Lock = match std::fs::read_to_string(&lock_path) {
        Ok(t) => toml::from_str(&t).with_context(|| {
            format!(
                "{}: unreadable; delete it to resolve the toolchains again",
                lock_path.display()
            )
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Lock::default(),
        Err(e) => return Err(e).context(format!("cannot read {}", lock_path.display())),
    };
    let tc = Toolchains::new(&cache_dir(cli_cache));
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
        let installed = match &digest {
            Some(d) => tc.get(d).with_context(|| what.clone())?,
            None => None,
        };
        let inst = match installed {
            Some(inst) => {
                // Installed earlier: its signature must still satisfy today's trust.
                sign::verify(&inst.head, &trust, &what)?;
                inst
            }
            None => {
                eprintln!("fetching toolchain {name} from {}", pin.source);
                install(&tc, &pin.source, &ws.root, &trust, digest.as_deref())
                    .with_context(|| what.clone())?
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
        let tmp = lock_path.with_extension("lock.tmp");
        std::fs::write(&tmp, text)
            .and_then(|_| std::fs::rename(&tmp, &lock_path))
            .with_context(|| format!("cannot write {}", lock_path.display()))?;
    }
    ws.externals = externals;
    Ok(())
}

/// Installs toolchain bundles (files or `oci://` references) into the cache at `cache`,
/// checking their signatures against `keys` (and the current workspace's trusted keys).
pub fn install_sources(cache: &Path, sources: &[String], keys: &[String]) -> Result<()> {
    if sources.is_empty() {
        return Ok(());
    }
    let trust = trust_from(keys)?;
    if trust.keys.is_empty() {
        bail!(
            "--toolchain needs a trusted key to check the bundle's signature: add --key FILE.pub"
        );
    }
    let tc = Toolchains::new(cache);
    let cwd = std::env::current_dir()?;
    for source in sources {
        let inst = install(&tc, source, &cwd, &trust, None)
            .with_context(|| format!("cannot install toolchain {source}"))?;
        eprintln!(
            "toolchain {} {} ({}) installed",
            inst.head.manifest.name, inst.head.digest, inst.head.manifest.platform
        );
    }
    Ok(())
}

/// The installed native toolchain bundle `name` with `digest` in the cache at `cache`.
pub fn installed_native(
    cache: &Path,
    name: &str,
    digest: &str,
) -> Result<Option<std::sync::Arc<wbuild_sched::NativeToolchain>>, String> {
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
fn native_toolchain(
    name: &str,
    digest: &str,
    root: &Path,
    env: &BTreeMap<String, String>,
) -> std::sync::Arc<wbuild_sched::NativeToolchain> {
    std::sync::Arc::new(wbuild_sched::NativeToolchain {
        name: name.to_owned(),
        digest: digest.to_owned(),
        root: root.to_owned(),
        env: ["CC", "CXX", "AR", "TEST_RUNNER"]
            .iter()
            .map(|k| ((*k).to_owned(), env.get(*k).cloned().unwrap_or_default()))
            .collect(),
    })
}
