//! wbuild-graph: from a workspace of `WBUILD` files to an action DAG.
//!
//! Two steps, both deterministic (every collection is sorted):
//!
//! 1. [`load`] evaluates the Starlark `WBUILD` files (and the `.bzl` files they `load()`) of the
//!    packages needed for some target patterns, with the built-ins `glob`, `package_name` and
//!    the rules `filegroup`, `wasi_tool`, `wasi_run`, `wasi_test`, `genrule`, `cc_library`,
//!    `cc_binary` and `cc_test` (also under `native.`, for macros), and resolves every
//!    reference to a target or a file. The result is a [`TargetGraph`]; every [`Target`]
//!    records the `file:line:col` of the rule call that defined it.
//! 2. [`analyse`] turns the targets into [`ActionNode`]s: argv with `$(location)` & co.
//!    expanded, explicit env, the tool module and its data, the exact input and output
//!    workspace paths, and the actions each one depends on, in topological order.
//!
//! Each rule family lives in its own module under `src/rules/` (attributes, built-in, checks,
//! resolution, analysis); see [`Rule`].
//!
//! Errors ([`GraphError`]) name the file and `line:col`, the label, and what to do.
//!
//! What this crate must never do:
//! - read the contents of source files (it lists directories for `glob` and checks that files
//!   exist; digests are computed later by the scheduler),
//! - touch the store or run anything,
//! - put a host absolute path into anything that becomes part of an action key: actions only
//!   hold workspace paths (relative, `/`-separated) and absolute *guest* paths such as `/share`.

mod analysis;
mod cache;
mod eval;
mod glob;
mod inputs;
mod label;
mod literal;
mod load;
mod platform;
pub mod query;
mod rules;
mod work_list;
mod workspace;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

pub use analysis::{
    ARCHIVER, ActionGraph, ActionNode, Exec, HEADER_CHECKS_ARG, NOT_SCHEDULED, ToolRef, analyse,
    unused_dependency, unused_private_header,
};
pub use cache::{
    Analysed, Signature, analysis_entry_signed, binary_identity, load_and_analyse_cached,
    load_and_analyse_cached_then, workspace_signature, workspace_signature_memo,
};
pub use inputs::Inputs;
pub use label::{Label, TargetPattern};
pub use load::load;
pub use platform::{Platform, UnknownPlatform};
pub use rules::{
    CcAttrs, CcKind, FilegroupAttrs, GenruleAttrs, Rule, RuleOf, WasiCcToolchainAttrs,
    WasiRunAttrs, WasiTestAttrs, WasiToolAttrs, sh_quote,
};
pub use work_list::work_list;
pub use workspace::{
    BUILD_FILE, BuildConfig, Config, EXTERNAL_PREFIX, External, OUT_DIR, RemoteConfig,
    RemoteDownload, ToolchainPin, TrustConfig, WORKSPACE_FILE, WasiConfig, Workspace,
};

/// Guest directory where a `wasi_tool`'s `data` files appear when `data_dir` is not given.
pub const DEFAULT_DATA_DIR: &str = "/share";

/// Where a target was defined: the rule call in a `WBUILD` file.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct Location {
    /// Workspace path of the `WBUILD` file (shared by every target the file defines).
    pub file: std::sync::Arc<str>,
    /// 1-based.
    pub line: u32,
    /// 1-based, in characters.
    pub column: u32,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// A target defined by a rule call in a `WBUILD` file.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Target {
    pub label: Label,
    pub location: Location,
    pub rule: Rule,
    /// The `platform` attribute of a native rule: the platform the target is built for when
    /// it is requested without `--platform` (as Buck2's `default_target_platform`; its
    /// dependencies follow it).
    pub platform: Option<String>,
    /// The targets it depends on (sorted), as the loader found them resolving its references;
    /// `None` for a target no requested target needs (resolved leniently, nothing checked).
    /// Analysis plans its visit by them instead of mapping every attribute again.
    #[serde(skip)]
    pub deps: Option<Box<[Label]>>,
}

/// Two targets are the same target whether or not the loader kept their dependencies (a
/// target resolved leniently is the one resolved strictly).
impl PartialEq for Target {
    fn eq(&self, other: &Target) -> bool {
        self.label == other.label
            && self.location == other.location
            && self.rule == other.rule
            && self.platform == other.platform
    }
}

impl Eq for Target {}

/// A resolved reference from one target to a file or another target.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum Dep {
    /// A file, by workspace path. Usually a source file; a reference to a single output of
    /// another target (`//pkg:out.h`, or `out.h` in the same package) is also a `File` — the
    /// path is then a key of [`ActionGraph::producers`].
    File(String),
    /// A target: the files it provides are used (see [`ActionGraph::target_files`]).
    Target(Label),
}

/// Targets by label: every target of every package that was loaded. Targets needed by the
/// requested patterns have all their references checked; other targets of the same packages
/// are present (so every generated file's producer is known) but their references into
/// packages that were not loaded are not checked.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TargetGraph {
    pub targets: BTreeMap<Label, Target>,
}

/// Everything that can go wrong while loading or analysing build files.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error(
        "no {WORKSPACE_FILE} found in {} or any parent directory; create one (it may be empty) at the root of your workspace",
        start.display()
    )]
    NoWorkspace { start: PathBuf },

    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },

    #[error("{}: {message}", path.display())]
    Config { path: PathBuf, message: String },

    #[error("invalid label '{label}': {reason}")]
    InvalidLabel { label: String, reason: String },

    #[error("invalid target pattern '{pattern}': {reason}")]
    InvalidPattern { pattern: String, reason: String },

    /// A Starlark syntax or evaluation error, as rendered by the starlark crate (it shows
    /// `file:line:col`, the offending source line and the Starlark call stack).
    #[error("{message}")]
    Starlark {
        /// The file being evaluated (`WBUILD` or `.bzl`).
        file: String,
        /// Where the error is, when known (may be in a `.bzl` file `file` loads).
        location: Option<Location>,
        message: String,
    },

    #[error("{location}: cannot load '{module}': {message}")]
    Load {
        location: Location,
        module: String,
        message: String,
    },

    #[error("{location}: cycle in load() statements: {cycle}")]
    LoadCycle { location: Location, cycle: String },

    #[error(
        "{location}: duplicate target '{label}': the name is already used by the target defined at {previous}"
    )]
    DuplicateTarget {
        label: Label,
        location: Location,
        previous: Location,
    },

    /// A bad attribute value, or a rule used in the wrong place.
    #[error("{location}: {target}: {message}")]
    Attribute {
        location: Location,
        target: String,
        message: String,
    },

    #[error("no such package '{package}': there is no {BUILD_FILE} file in '{}'{context}", if package.is_empty() { "." } else { package.as_str() })]
    NoSuchPackage { package: String, context: String },

    #[error("no such target '{label}'{context}: package '{}' has no target, output or file named '{}'", label.package, label.name)]
    NoSuchTarget { label: Label, context: String },

    #[error("no such file '{file}' in package '{package}' (referenced at {location})")]
    NoSuchFile {
        file: String,
        package: String,
        location: Location,
    },

    #[error("'{label}' is a source file, not a target{context}")]
    NotATarget { label: Label, context: String },

    #[error("target pattern '{pattern}' matched no packages: no {BUILD_FILE} file under '{dir}'")]
    NoMatch { pattern: String, dir: String },

    #[error("{location}: output '{output}' of {label} collides with {other}; rename the output")]
    OutputCollision {
        location: Location,
        label: Label,
        output: String,
        other: Box<str>,
    },

    #[error("{location}: dependency cycle: {}", render_cycle(cycle))]
    Cycle {
        location: Location,
        /// The targets on the cycle, starting and ending with the same label.
        cycle: Vec<Label>,
    },

    /// A bad `$(...)` in `args` or `env`.
    #[error("{location}: {label}: {message}")]
    Expansion {
        location: Location,
        label: Label,
        message: String,
    },
}

fn render_cycle(cycle: &[Label]) -> String {
    cycle
        .iter()
        .map(|l| l.to_string())
        .collect::<Vec<_>>()
        .join(" -> ")
}

/// Frees `value` on a new thread (here, if none can be started): large graphs whose freeing,
/// entry by entry, would only delay what comes next. A process about to exit does not wait
/// for it.
pub fn drop_elsewhere<T: Send + 'static>(value: T) {
    // A thread that cannot be started drops its closure, `value` with it, here.
    let _ = std::thread::Builder::new()
        .name("drop".into())
        .spawn(move || drop(value));
}

#[cfg(test)]
mod testutil;

#[cfg(test)]
mod tests {
    /// Callers wrap `GraphError` in their own errors; keep it under clippy's
    /// `result_large_err` threshold (128 bytes).
    #[test]
    fn error_stays_small() {
        assert!(std::mem::size_of::<crate::GraphError>() < 128);
    }
}
