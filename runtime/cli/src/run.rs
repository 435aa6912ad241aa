//! `wbuild run //pkg:target [-- args...]`: builds one target, then runs its output as the
//! user would run it by hand (not as a build action: nothing is hermetic or cached here).
//!
//! The target must provide exactly one runnable file: a native executable (a `cc_binary`'s
//! program, or any executable file the target provides) is executed in place of wbuild; a
//! WASI command module (a `wasi_tool`, or any `.wasm` file the target provides) runs in
//! wasmtime with the workspace root preopened read-write as the guest's current directory
//! (`.`). Either way: the working directory is the workspace root, the environment is the
//! user's, stdin/stdout/stderr are wbuild's, and the program's exit code is wbuild's.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, Result, bail};

use super::{BuildArgs, Cli};

#[derive(clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    build: BuildArgs,
    /// Arguments passed to the program (after `--`).
    #[arg(last = true, value_name = "ARGS")]
    args: Vec<String>,
}

/// How a file runs.
#[derive(Debug, PartialEq, Eq)]
enum Runnable {
    Native,
    Wasi,
}

/// Whether the file at `path` can be run, and how: a WebAssembly module (by its magic), or
/// a regular file with an execute bit.
fn runnable(path: &Path) -> Option<Runnable> {
    let m = std::fs::metadata(path).ok()?;
    if !m.is_file() {
        return None;
    }
    let mut magic = [0u8; 4];
    let is_wasm = std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == *b"\0asm";
    if is_wasm {
        Some(Runnable::Wasi)
    } else if m.permissions().mode() & 0o111 != 0 {
        Some(Runnable::Native)
    } else {
        None
    }
}

pub fn run(cli: &Cli, args: &RunArgs) -> Result<i32> {
    let [target] = args.build.patterns.as_slice() else {
        bail!(
            "wbuild run takes exactly one target (//pkg:name), got {}: {}",
            args.build.patterns.len(),
            args.build.patterns.join(" ")
        );
    };
    let (_ws, pkg) = super::workspace()?;
    let label = wbuild_graph::Label::parse(target, &pkg).with_context(|| {
        format!("wbuild run needs one target label such as //pkg:name, not {target:?}")
    })?;
    // What runs must be here: the target's own outputs come back whatever else stays remote.
    let mut build = args.build.clone();
    if build.remote.remote_download != Some(super::RemoteDownloadArg::All) {
        build.remote.remote_download = Some(super::RemoteDownloadArg::Toplevel);
    }
    let code = super::build(cli, &build, false)?;
    if code != 0 {
        return Ok(code);
    }
    // The files the target provides, as `wbuild outputs` lists them.
    let (ws, _) = super::workspace_resolved(cli)?;
    let patterns = wbuild_driver::session::parse_patterns(&[label.to_string()], "")?;
    let files = {
        let store = super::open_store(&cli.cache_dir)?;
        wbuild_driver::session::output_paths(&ws, &store, &patterns, &args.build.platform)?
    };
    let found: Vec<(String, Runnable)> = files
        .iter()
        .filter_map(|f| runnable(&ws.root.join(f)).map(|r| (f.clone(), r)))
        .collect();
    let (file, how) = match found.as_slice() {
        [one] => one,
        [] => bail!(
            "{label} has nothing to run: {}; wbuild run runs a target that provides one executable or WASI module (a cc_binary, a wasi_tool)",
            if files.is_empty() {
                "it provides no files".to_owned()
            } else {
                format!("its files are {}", files.join(", "))
            }
        ),
        several => bail!(
            "{label} provides several runnable files ({}); wbuild run needs a target with exactly one: name a target that provides just the one to run",
            several
                .iter()
                .map(|(f, _)| f.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let path = ws.root.join(file);
    // The build's Ctrl-C handler only asks the scheduler to stop; from here on Ctrl-C and
    // SIGTERM must stop the program (and so wbuild), as they would if run by hand. Rust
    // ignores SIGPIPE (std restores it for a program it `exec`s, not for a WASI guest run
    // here): restored too, so `wbuild run //x | head` ends the program as `x | head` would.
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGPIPE] {
        // SAFETY: restoring a signal's default disposition; no handler of ours runs after it.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
    match how {
        Runnable::Native => run_native(&label.to_string(), &path, &ws.root, &args.args),
        Runnable::Wasi => {
            // A `wasi_tool` runs as in its actions: under its `argv0`, with its data files at
            // their guest paths.
            let tool = {
                let store = super::open_store(&cli.cache_dir)?;
                wbuild_driver::session::root_tool(&ws, &store, &label)?
            };
            let (argv0, data) = match tool {
                Some((t, data)) => (t.argv0, data),
                None => (label.name.clone(), Vec::new()),
            };
            run_wasi(&label, &path, &ws.root, &argv0, &data, &args.args)
        }
    }
}

/// A private directory holding each data file at its guest path (absolute, as `/data/x`),
/// and the top-level directories to preopen (`/data`) with their host paths.
fn data_tree(
    label: &wbuild_graph::Label,
    data: &[(String, std::path::PathBuf)],
) -> Result<(tempfile::TempDir, Vec<(String, std::path::PathBuf)>)> {
    let dir = tempfile::Builder::new()
        .prefix("wbuild-run-data-")
        .tempdir()
        .context("cannot make a directory for the tool's data files")?;
    let mut tops = std::collections::BTreeSet::new();
    for (guest, host) in data {
        let rel = guest.trim_start_matches('/');
        let Some(top) = rel
            .split('/')
            .next()
            .filter(|t| !t.is_empty() && *t != "..")
        else {
            bail!("{label}: data file {guest} has no directory to be placed in");
        };
        if rel.split('/').any(|c| c == ".." || c == ".") {
            bail!("{label}: data file {guest} is not a normalised path");
        }
        let to = dir.path().join(rel);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::copy(host, &to).with_context(|| {
            format!(
                "cannot copy {label}'s data file {} to {}: build it first",
                host.display(),
                to.display()
            )
        })?;
        tops.insert(top.to_owned());
    }
    let preopens = tops
        .into_iter()
        .map(|t| (format!("/{t}"), dir.path().join(&t)))
        .collect();
    Ok((dir, preopens))
}

/// Replaces wbuild with the program (as `bazel run` does): signals, the terminal and the
/// exit status are the program's own.
fn run_native(label: &str, path: &Path, root: &Path, args: &[String]) -> Result<i32> {
    use std::os::unix::process::CommandExt;
    // The build before it may have pooled sandbox roots; `exec` runs no destructor.
    wbuild_exec_native::release_sandbox_roots();
    wbuild_sched::release_input_trees();
    let err = std::process::Command::new(path)
        .args(args)
        .current_dir(root)
        .exec();
    bail!("cannot run {} ({label}): {err}", path.display())
}

/// Store data of the guest.
struct Guest {
    wasi: wasmtime_wasi::p1::WasiP1Ctx,
}

fn run_wasi(
    label: &wbuild_graph::Label,
    module: &Path,
    root: &Path,
    argv0: &str,
    data: &[(String, std::path::PathBuf)],
    args: &[String],
) -> Result<i32> {
    // A tool without data files needs no directory for them.
    let (_data_dir, data_preopens) = if data.is_empty() {
        (None, Vec::new())
    } else {
        let (dir, preopens) = data_tree(label, data)?;
        (Some(dir), preopens)
    };
    let fail = |what: &str, e: wasmtime::Error| {
        anyhow::anyhow!("cannot run {label} ({}): {what}: {e:#}", module.display())
    };
    let engine = wasmtime::Engine::default();
    let compiled =
        wasmtime::Module::from_file(&engine, module).map_err(|e| fail("not a valid module", e))?;
    let mut linker: wasmtime::Linker<Guest> = wasmtime::Linker::new(&engine);
    wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |g: &mut Guest| &mut g.wasi)
        .map_err(|e| fail("WASI", e))?;
    let mut wasi = wasmtime_wasi::WasiCtxBuilder::new();
    let argv0 = argv0.to_owned();
    wasi.inherit_stdio()
        .inherit_env()
        .args(&std::iter::once(&argv0).chain(args).collect::<Vec<_>>())
        .preopened_dir(root, ".", wasmtime_wasi::FsPerms::ReadWrite)
        .map_err(|e| fail("cannot open the workspace root", e))?;
    for (guest, host) in &data_preopens {
        wasi.preopened_dir(host, guest, wasmtime_wasi::FsPerms::ReadOnly)
            .map_err(|e| fail("cannot open the tool's data directory", e))?;
    }
    let mut store = wasmtime::Store::new(
        &engine,
        Guest {
            wasi: wasi.build_p1(),
        },
    );
    let instance = linker
        .instantiate(&mut store, &compiled)
        .map_err(|e| fail("cannot instantiate", e))?;
    let start = instance
        .get_typed_func::<(), ()>(&mut store, "_start")
        .map_err(|e| fail("not a WASI command (no _start)", e))?;
    match start.call(&mut store, ()) {
        Ok(()) => Ok(0),
        Err(e) => match e.downcast_ref::<wasmtime_wasi::I32Exit>() {
            Some(exit) => Ok(exit.0),
            None => {
                eprintln!("error: {label} trapped: {e:#}");
                // As wasmtime's own command line does for a trap.
                Ok(128 + libc::SIGABRT)
            }
        },
    }
}
