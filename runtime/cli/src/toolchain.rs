//! `wbuild toolchain ...`: keys, packing, signing, publishing, fetching and verifying
//! toolchain bundles (resolving a workspace's pinned toolchains before a build is
//! `wbuild_driver::toolchain`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use wbuild_bundle::file::read_bundle;
use wbuild_bundle::{Toolchains, Trust, pack, registry, sign};
use wbuild_driver::toolchain::{install, workspace_trust};
use wbuild_graph::Workspace;
use wbuild_store::Store;

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
