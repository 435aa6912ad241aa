//! `wbuild exec-wasi-tool`: runs a WASI tool for a native command (a genrule whose `tools`
//! include a `wasi_tool`). The scheduler stages a launcher script that calls this inside the
//! native sandbox, with the wbuild binary mounted read-only; the tool then runs in the same
//! WASI executor as a `wasi_run` action: the action's tree at `/` (read-only except the
//! action's outputs), a private `/tmp`, its data at their guest paths, `SOURCE_DATE_EPOCH` as
//! its clock, random bytes seeded from its module and arguments, the same limits.
//!
//! Not meant to be run by hand (hidden from `--help`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use wbuild_exec_wasi::{ExecConfig, Request, WasiExecutor};

#[derive(clap::Args)]
pub struct ExecWasiTool {
    /// The tool's label, for messages.
    #[arg(long)]
    name: String,
    /// The guest's `argv[0]` (default: the label's name).
    #[arg(long)]
    argv0: Option<String>,
    /// The module, relative to the root.
    #[arg(long)]
    module: String,
    /// The module's key in the compiled-module cache (its digest).
    #[arg(long)]
    module_key: Option<String>,
    /// A read-only directory where the scheduler put the module compiled (the sandbox's
    /// `/.wbuild/modules`); without the file there, the module is compiled here.
    #[arg(long)]
    modules_dir: Option<PathBuf>,
    /// The action's tree, presented at `/`.
    #[arg(long)]
    root: PathBuf,
    /// A data file: GUEST_PATH=PATH (path relative to the root).
    #[arg(long)]
    data: Vec<String>,
    /// A path (relative to the root) the tool may write: the action's outputs.
    #[arg(long)]
    out: Vec<String>,
    #[arg(long)]
    memory_limit: u64,
    #[arg(long)]
    timeout_secs: u64,
    /// The tool's arguments.
    #[arg(last = true)]
    args: Vec<String>,
}

/// Every regular file under `dir`, as `/`-separated paths relative to `root`.
fn files_under(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let e = e?;
        let p = e.path();
        let t = e.file_type()?;
        if t.is_dir() {
            files_under(root, &p, out)?;
        } else if t.is_file()
            && let Ok(rel) = p.strip_prefix(root)
            && let Some(s) = rel.to_str()
        {
            out.push(s.to_owned());
        }
    }
    Ok(())
}

pub fn run(a: &ExecWasiTool) -> Result<i32> {
    let root = std::fs::canonicalize(&a.root)
        .with_context(|| format!("the action root {} does not exist", a.root.display()))?;
    let tmp_base = std::env::var_os("TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    let scratch = tempfile::Builder::new()
        .prefix("wbuild-wasi-")
        .tempdir_in(&tmp_base)
        .context("cannot create the tool's scratch directory")?;
    let tmp = scratch.path().join("tmp");
    std::fs::create_dir_all(&tmp)?;
    // Data files appear at their guest paths, which lie outside the workspace tree.
    for d in &a.data {
        let Some((guest, path)) = d.split_once('=') else {
            bail!("--data {d:?}: expected GUEST_PATH=PATH");
        };
        let dest = root.join(guest.trim_start_matches('/'));
        if dest.exists() {
            bail!(
                "data file {guest} of {} collides with a file of the action",
                a.name
            );
        }
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(root.join(path), &dest)
            .with_context(|| format!("cannot stage data file {path} at {guest}"))?;
    }
    let mut inputs = Vec::new();
    files_under(&root, &root, &mut inputs)?;
    inputs.retain(|p| !a.out.contains(p));
    for out in &a.out {
        if let Some(parent) = root.join(out).parent() {
            std::fs::create_dir_all(parent)?;
        }
    }
    let module_path = root.join(&a.module);
    let module = std::fs::read(&module_path)
        .with_context(|| format!("cannot read the module {}", module_path.display()))?;
    let module_key = blake3::hash(&module).to_hex().to_string();
    let name = a
        .argv0
        .clone()
        .unwrap_or_else(|| a.name.rsplit(':').next().unwrap_or(&a.name).to_owned());
    let mut seed = blake3::Hasher::new();
    seed.update(module_key.as_bytes());
    for arg in &a.args {
        seed.update(arg.as_bytes());
        seed.update(b"\0");
    }
    let epoch = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let cache_key = a.module_key.clone().unwrap_or_else(|| module_key.clone());
    let executor = |modules_dir: PathBuf| {
        WasiExecutor::new(&ExecConfig {
            modules_dir,
            max_concurrent: 1,
        })
    };
    // The scheduler's compiled module when it is there (read-only: nothing is written
    // beside it); else compiled in the scratch directory, which costs as long as cranelift
    // takes for the module, on every run.
    let precompiled = match &a.modules_dir {
        Some(dir) => {
            Some(executor(dir.clone())?).filter(|e| e.compiled_module_path(&cache_key).is_file())
        }
        None => None,
    };
    let exec = match precompiled {
        Some(e) => e,
        None => {
            if a.modules_dir.is_some() {
                eprintln!(
                    "note: {}: compiling the module (no precompiled copy)",
                    a.name
                );
            }
            executor(scratch.path().join("modules"))?
        }
    };
    let req = Request {
        module_key: cache_key,
        module_path,
        module_name: a.name.clone(),
        argv: std::iter::once(name)
            .chain(a.args.iter().cloned())
            .collect(),
        env: Vec::new(),
        root,
        tmp,
        inputs,
        outputs: a.out.clone(),
        epoch_secs: epoch,
        random_seed: *seed.finalize().as_bytes(),
        memory_limit_bytes: a.memory_limit,
        timeout: Duration::from_secs(a.timeout_secs),
    };
    let outcome = exec.run(&req)?;
    use std::io::Write;
    std::io::stdout().write_all(&outcome.stdout)?;
    std::io::stderr().write_all(&outcome.stderr)?;
    if let Some(f) = &outcome.failure {
        eprintln!("{}: {f}", a.name);
        return Ok(1);
    }
    Ok(outcome.exit_code)
}
