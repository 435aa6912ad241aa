//! # wbuild-sdk — a minimum-information library for WASI build tools
//!
//! Build tools that run under wbuild are ordinary `wasm32-wasip1` command modules. wbuild
//! watches every file-system access a tool makes and checks it against the action's declared
//! inputs, so a tool's dependencies are exactly what it touches. This crate gives tool authors
//! small, fine-grained operations that each touch **exactly one resource**:
//!
//! | call                  | resource touched                                  |
//! |-----------------------|---------------------------------------------------|
//! | [`exists`]            | the metadata of one path (a stat, nothing is read) |
//! | [`read`], [`read_to_string`] | the contents of one file                   |
//! | [`list`]              | the entry names of one directory (sorted)         |
//! | [`env()`]             | one environment variable                          |
//! | [`write()`]           | one output file (its parent dirs are created only if missing) |
//! | [`args`]              | the command line                                  |
//!
//! Prefer `exists(p)` over reading a file to learn whether it is there, and `list(dir)` over
//! walking a tree: the less a tool looks at, the less needlessly its action is re-run.
//!
//! Paths are used as given. Inside wbuild the guest sees one tree at `/` with cwd `/`, so a
//! relative path such as `gen/config.h` is the workspace path of that file; a tool's own data
//! files are found at an absolute path such as `/share/<tool>/...`. The same tool runs outside
//! wbuild (natively or under any WASI runtime) with paths relative to the current directory.
//!
//! Errors returned by this crate name the operation and the path (`cannot read gen/x.h: ...`),
//! so a tool can pass them to [`fail`] unchanged; [`OrFail::or_fail`] does exactly that.
//!
//! This crate must never do more than one observable access per call, never read anything
//! behind the caller's back (no config files, no implicit environment), and never depend on
//! anything beyond `std`.
//!
//! ## Example tool
//!
//! A tool that concatenates files: `cat-tool -o OUT FILE...`.
//!
//! ```no_run
//! use wbuild_sdk::{self as sdk, OrFail};
//!
//! fn main() {
//!     let mut out = None;
//!     let mut inputs = Vec::new();
//!     let mut args = sdk::args().into_iter();
//!     while let Some(arg) = args.next() {
//!         match arg.as_str() {
//!             "-o" => out = Some(args.next().unwrap_or_else(|| sdk::fail("-o needs a path"))),
//!             _ => inputs.push(arg),
//!         }
//!     }
//!     let out = out.unwrap_or_else(|| sdk::fail("usage: cat-tool -o OUT FILE..."));
//!     let mut bytes = Vec::new();
//!     for input in &inputs {
//!         bytes.extend(sdk::read(input).or_fail());
//!     }
//!     sdk::write(&out, &bytes).or_fail();
//! }
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip1` and declare it in a `WBUILD`
//! file with `wasi_tool(name = "cat", src = "bin/cat-tool.wasm")`.

#![forbid(unsafe_code)]

use std::fmt::Display;
use std::fs;
use std::io;
use std::path::Path;

/// Wraps an I/O error so its message names the operation and the path; the kind is kept.
fn annotate(op: &str, path: &Path, err: io::Error) -> io::Error {
    io::Error::new(err.kind(), format!("cannot {op} {}: {err}", path.display()))
}

/// Returns whether `path` exists (following symlinks). Touches only the path's metadata.
///
/// Any error other than "not found" (e.g. permission denied) also yields `false`.
pub fn exists(path: impl AsRef<Path>) -> bool {
    fs::metadata(path.as_ref()).is_ok()
}

/// Reads the whole file at `path`.
pub fn read(path: impl AsRef<Path>) -> io::Result<Vec<u8>> {
    let path = path.as_ref();
    fs::read(path).map_err(|e| annotate("read", path, e))
}

/// Reads the whole file at `path` as UTF-8 text.
pub fn read_to_string(path: impl AsRef<Path>) -> io::Result<String> {
    let path = path.as_ref();
    fs::read_to_string(path).map_err(|e| annotate("read", path, e))
}

/// Lists the entry names (not paths) of the directory `dir`, sorted bytewise.
///
/// `.` and `..` are not included. A name that is not valid UTF-8 is an error.
pub fn list(dir: impl AsRef<Path>) -> io::Result<Vec<String>> {
    let dir = dir.as_ref();
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| annotate("list", dir, e))? {
        let entry = entry.map_err(|e| annotate("list", dir, e))?;
        let name = entry.file_name().into_string().map_err(|name| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "cannot list {}: entry name {name:?} is not valid UTF-8",
                    dir.display()
                ),
            )
        })?;
        names.push(name);
    }
    names.sort();
    Ok(names)
}

/// Returns the environment variable `name`, or `None` if it is unset or not valid UTF-8.
///
/// Under wbuild the environment is exactly the action's declared `env` (plus
/// `SOURCE_DATE_EPOCH`), so reading a variable is a precise dependency.
pub fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Writes `bytes` to the file at `path`, replacing it.
///
/// Parent directories are created only when the first attempt fails because they are
/// missing, so writing into an existing directory touches nothing but the output file.
pub fn write(path: impl AsRef<Path>, bytes: &[u8]) -> io::Result<()> {
    let path = path.as_ref();
    match fs::write(path, bytes) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            match path.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => {
                    fs::create_dir_all(parent)
                        .map_err(|e| annotate("create directory", parent, e))?;
                }
                _ => return Err(annotate("write", path, e)),
            }
            fs::write(path, bytes).map_err(|e| annotate("write", path, e))
        }
        Err(e) => Err(annotate("write", path, e)),
    }
}

/// Returns the command-line arguments **after** the program name.
///
/// An argument that is not valid UTF-8 ends the tool with [`fail`].
pub fn args() -> Vec<String> {
    std::env::args_os()
        .skip(1)
        .map(|a| {
            a.into_string()
                .unwrap_or_else(|a| fail(format!("argument {a:?} is not valid UTF-8")))
        })
        .collect()
}

/// The tool's name as used in messages: the file name of `argv[0]` without a `.wasm` suffix
/// (under wbuild, `argv[0]` is the `wasi_tool`'s name). `"tool"` if there is no `argv[0]`.
pub fn program_name() -> String {
    tool_name_from(
        std::env::args_os()
            .next()
            .as_deref()
            .map(|a| a.to_string_lossy())
            .as_deref(),
    )
}

fn tool_name_from(argv0: Option<&str>) -> String {
    let base = argv0
        .map(|a| a.rsplit(['/', '\\']).next().unwrap_or(a))
        .unwrap_or("");
    let base = base.strip_suffix(".wasm").unwrap_or(base);
    if base.is_empty() {
        "tool".to_string()
    } else {
        base.to_string()
    }
}

fn fail_message(tool: &str, msg: &dyn Display) -> String {
    format!("{tool}: {msg}")
}

/// Prints `<tool>: <msg>` to stderr and exits with status 1.
pub fn fail(msg: impl Display) -> ! {
    eprintln!("{}", fail_message(&program_name(), &msg));
    std::process::exit(1)
}

/// Ends the tool with [`fail`] on error: `sdk::read(path).or_fail()`.
pub trait OrFail<T> {
    /// Returns the success value, or prints the error via [`fail`] and exits with status 1.
    fn or_fail(self) -> T;
}

impl<T, E: Display> OrFail<T> for Result<T, E> {
    fn or_fail(self) -> T {
        match self {
            Ok(v) => v,
            Err(e) => fail(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A fresh, empty scratch directory for one test (std only: no tempfile crate).
    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("wbuild-sdk-test-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn write_creates_parents_and_read_returns_bytes() {
        let dir = scratch("write");
        let file = dir.join("a/b/c.txt");
        write(&file, b"hello").unwrap();
        assert_eq!(read(&file).unwrap(), b"hello");
        assert_eq!(read_to_string(&file).unwrap(), "hello");
        // Overwrite in an existing directory.
        write(&file, b"bye").unwrap();
        assert_eq!(read(&file).unwrap(), b"bye");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn exists_reports_files_and_dirs() {
        let dir = scratch("exists");
        assert!(exists(&dir));
        assert!(!exists(dir.join("missing")));
        write(dir.join("f"), b"").unwrap();
        assert!(exists(dir.join("f")));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn list_is_sorted_names() {
        let dir = scratch("list");
        for name in ["zeta", "Alpha", "beta", "a.b"] {
            write(dir.join(name), b"x").unwrap();
        }
        fs::create_dir(dir.join("sub")).unwrap();
        assert_eq!(
            list(&dir).unwrap(),
            vec!["Alpha", "a.b", "beta", "sub", "zeta"]
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn errors_name_operation_and_path() {
        let dir = scratch("errors");
        let missing = dir.join("nope.txt");
        let err = read(&missing).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        let msg = err.to_string();
        assert!(msg.starts_with("cannot read "), "{msg}");
        assert!(msg.contains("nope.txt"), "{msg}");
        let err = list(dir.join("nodir")).unwrap_err();
        assert!(err.to_string().starts_with("cannot list "), "{err}");
        // Writing below a regular file cannot create the parent.
        write(dir.join("file"), b"x").unwrap();
        let err = write(dir.join("file/child"), b"x").unwrap_err();
        assert!(err.to_string().contains("file"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn write_to_bare_name_without_parent_reports_error() {
        // A relative name with no parent component cannot have missing parents; errors from
        // the write itself are reported, not swallowed.
        let err = write(Path::new(""), b"x").unwrap_err();
        assert!(err.to_string().starts_with("cannot write"), "{err}");
    }

    #[test]
    fn env_reads_one_variable() {
        // PATH is set in any reasonable test environment; a made-up name is not.
        assert!(env("WBUILD_SDK_SURELY_UNSET_VARIABLE").is_none());
        assert_eq!(env("PATH"), std::env::var("PATH").ok());
    }

    #[test]
    fn tool_name_strips_dirs_and_wasm_suffix() {
        assert_eq!(tool_name_from(Some("template")), "template");
        assert_eq!(tool_name_from(Some("tools/bin/wb-tar.wasm")), "wb-tar");
        assert_eq!(tool_name_from(Some("/usr/bin/wb-check")), "wb-check");
        assert_eq!(tool_name_from(Some("")), "tool");
        assert_eq!(tool_name_from(None), "tool");
    }

    #[test]
    fn fail_message_format() {
        assert_eq!(fail_message("wb-tar", &"no inputs"), "wb-tar: no inputs");
    }

    #[test]
    fn or_fail_passes_success_through() {
        let ok: Result<u32, String> = Ok(7);
        assert_eq!(ok.or_fail(), 7);
    }
}
