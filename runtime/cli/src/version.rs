//! `wbuild version` (and `--version`): what this binary is and what its results are keyed
//! by (the WASI executor and native sandbox versions are in every action key), and
//! `wbuild completions SHELL`: the shell completion script of the command line.

use std::io::Write;
use std::sync::OnceLock;

use anyhow::{Context, Result};
use clap::CommandFactory;

/// How `wbuild version` prints.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// The versions this binary reports.
#[derive(Debug, serde::Serialize)]
pub struct Versions {
    pub wbuild: &'static str,
    /// `wbuild_exec_wasi::EXECUTOR_VERSION`, in every WASI action key.
    pub wasi_executor: &'static str,
    /// `wbuild_exec_native::SANDBOX_VERSION`, in every native action key.
    pub native_sandbox: &'static str,
    /// The wasmtime crate's version, as locked in Cargo.lock when this binary was built.
    pub wasmtime: &'static str,
    /// The git commit this binary was built from; absent outside a git checkout.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub git_commit: Option<&'static str>,
}

pub fn versions() -> Versions {
    let commit = env!("WBUILD_GIT_COMMIT");
    Versions {
        wbuild: env!("CARGO_PKG_VERSION"),
        wasi_executor: wbuild_exec_wasi::EXECUTOR_VERSION,
        native_sandbox: wbuild_exec_native::SANDBOX_VERSION,
        wasmtime: env!("WBUILD_WASMTIME_VERSION"),
        git_commit: (!commit.is_empty()).then_some(commit),
    }
}

fn text(v: &Versions) -> String {
    let mut s = format!(
        "wbuild {}\nwasi executor:  {}\nnative sandbox: {}\nwasmtime:       {}\n",
        v.wbuild, v.wasi_executor, v.native_sandbox, v.wasmtime
    );
    if let Some(c) = v.git_commit {
        s.push_str(&format!("git commit:     {c}\n"));
    }
    s
}

/// The text of `wbuild --version` (clap prints its own `wbuild ` before it).
pub fn long_version() -> &'static str {
    static LONG: OnceLock<String> = OnceLock::new();
    LONG.get_or_init(|| {
        let t = text(&versions());
        t.strip_prefix("wbuild ")
            .unwrap_or(&t)
            .trim_end()
            .to_owned()
    })
}

pub fn run(format: Format) -> Result<i32> {
    let v = versions();
    let out = match format {
        Format::Text => text(&v),
        Format::Json => serde_json::to_string_pretty(&v)? + "\n",
    };
    write_stdout(out.as_bytes(), "the version")
}

/// Writes `bytes` to stdout; a reader that went away (`| head`) is not an error.
fn write_stdout(bytes: &[u8], what: &str) -> Result<i32> {
    match std::io::stdout().write_all(bytes) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).with_context(|| format!("cannot write {what} to stdout"))
        }
        _ => Ok(0),
    }
}

/// Prints the completion script for `shell` on stdout.
pub fn completions(shell: clap_complete::Shell) -> Result<i32> {
    let mut cmd = super::Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "wbuild", &mut script);
    write_stdout(&script, "the completion script")
}
