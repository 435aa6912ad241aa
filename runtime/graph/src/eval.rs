//! Starlark evaluation of `WBUILD` and `.bzl` files with the wbuild built-ins.
//!
//! Rule calls only record [`RawTarget`]s (attribute values as written, checked for syntax);
//! references are resolved later by `load.rs`, once every package involved is known.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use starlark::any::ProvidesStaticType;
use starlark::codemap::FileSpan;
use starlark::environment::{FrozenModule, Globals, GlobalsBuilder, LibraryExtension, Module};
use starlark::eval::{Evaluator, FileLoader};
use starlark::starlark_module;
use starlark::syntax::{AstModule, Dialect, DialectTypes};
use starlark::values::list_or_tuple::UnpackListOrTuple;
use starlark::values::none::NoneType;

use crate::label::{Label, check_rel_path, join};
use crate::workspace::BUILD_FILE;
use crate::{DEFAULT_DATA_DIR, GraphError, Location};

/// A rule call as recorded during evaluation.
#[derive(Clone, Debug)]
pub(crate) struct RawTarget {
    pub name: String,
    pub location: Location,
    pub rule: RawRule,
    /// See [`crate::Target::platform`].
    pub platform: Option<String>,
}

/// Platform names the `platform` attribute accepts (the scheduler knows what they mean).
pub const PLATFORM_NAMES: &[&str] = &["linux-x86_64", "linux-arm64"];

/// Attribute values as written; label strings are syntactically valid.
#[derive(Clone, Debug)]
pub(crate) enum RawRule {
    Filegroup {
        srcs: Vec<String>,
    },
    WasiTool {
        src: String,
        data: Vec<String>,
        data_dir: Option<String>,
    },
    WasiRun {
        tool: String,
        srcs: Vec<String>,
        outs: Vec<String>,
        args: Vec<String>,
        env: BTreeMap<String, String>,
    },
    WasiTest {
        tool: String,
        srcs: Vec<String>,
        args: Vec<String>,
        env: BTreeMap<String, String>,
    },
    Genrule {
        srcs: Vec<String>,
        outs: Vec<String>,
        cmd: String,
        tools: Vec<String>,
    },
    Cc {
        kind: crate::CcKind,
        srcs: Vec<String>,
        hdrs: Vec<String>,
        deps: Vec<String>,
        copts: Vec<String>,
        defines: Vec<String>,
        includes: Vec<String>,
        linkopts: Vec<String>,
    },
}

impl RawRule {
    /// The package-relative outputs of a target named `name` with this rule.
    pub(crate) fn outputs(&self, name: &str) -> Vec<String> {
        match self {
            RawRule::WasiRun { outs, .. } | RawRule::Genrule { outs, .. } => outs.clone(),
            RawRule::Cc { kind, .. } => crate::cc::outputs(*kind, name),
            _ => Vec::new(),
        }
    }
}

/// State of one file's evaluation, reachable from built-ins through `Evaluator::extra`.
#[derive(ProvidesStaticType)]
struct EvalContext {
    root: PathBuf,
    /// Workspace path of the `WBUILD` file being evaluated (macros in `.bzl` files called from
    /// it still record targets here).
    file: String,
    /// `Some` while evaluating a `WBUILD` file; `None` for the top level of a `.bzl` file.
    package: Option<String>,
    targets: RefCell<Vec<RawTarget>>,
    /// A typed error raised by a built-in; returned instead of the Starlark rendering.
    error: RefCell<Option<GraphError>>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct BuiltinError(String);

impl EvalContext {
    /// Records `err` and returns a Starlark error that aborts evaluation.
    fn fail(&self, err: GraphError) -> starlark::Error {
        let msg = err.to_string();
        let mut slot = self.error.borrow_mut();
        if slot.is_none() {
            *slot = Some(err);
        }
        starlark::Error::new_other(BuiltinError(msg))
    }
}

fn context<'a>(
    eval: &Evaluator<'_, 'a, '_>,
    function: &str,
) -> starlark::Result<(&'a EvalContext, String)> {
    let ctx = eval
        .extra
        .and_then(|e| e.downcast_ref::<EvalContext>())
        .ok_or_else(|| {
            starlark::Error::new_other(BuiltinError(format!(
                "{function}() is only available in wbuild build files"
            )))
        })?;
    match &ctx.package {
        Some(p) => Ok((ctx, p.clone())),
        None => {
            let location = call_location(eval, ctx);
            Err(ctx.fail(GraphError::Attribute {
                location,
                target: format!("{function}()"),
                message: format!(
                    "{function}() can only be called while a {BUILD_FILE} file is evaluated \
                     (directly, or from a macro defined in a .bzl file), not at the top level of a .bzl file"
                ),
            }))
        }
    }
}

fn location_of(span: &FileSpan) -> Location {
    let pos = span.resolve_span().begin;
    Location {
        file: span.filename().to_owned(),
        line: pos.line as u32 + 1,
        column: pos.column as u32 + 1,
    }
}

/// The location of the outermost call in the `WBUILD` file being evaluated (so a rule called
/// by a macro is attributed to the macro call, as in Bazel).
fn call_location(eval: &Evaluator<'_, '_, '_>, ctx: &EvalContext) -> Location {
    let stack = eval.call_stack();
    stack
        .frames
        .iter()
        .filter_map(|f| f.location.as_ref())
        .find(|l| l.filename() == ctx.file)
        .map(location_of)
        .or_else(|| eval.call_stack_top_location().map(|l| location_of(&l)))
        .unwrap_or(Location {
            file: ctx.file.clone(),
            line: 1,
            column: 1,
        })
}

/// Records a target after checking the attributes that can be checked without other packages.
fn add_target(
    eval: &Evaluator<'_, '_, '_>,
    function: &str,
    name: String,
    rule: RawRule,
) -> starlark::Result<NoneType> {
    add_native_target(eval, function, name, rule, None)
}

/// [`add_target`] for the native rules, which also take `platform`.
fn add_native_target(
    eval: &Evaluator<'_, '_, '_>,
    function: &str,
    name: String,
    rule: RawRule,
    platform: Option<String>,
) -> starlark::Result<NoneType> {
    let (ctx, package) = context(eval, function)?;
    let location = call_location(eval, ctx);
    let attr_err = |attribute: &str, message: String| {
        ctx.fail(GraphError::Attribute {
            location: location.clone(),
            target: format!("{function}(name = {name:?})"),
            message: format!("attribute '{attribute}': {message}"),
        })
    };
    if let Err(e) = check_rel_path(&name) {
        return Err(attr_err("name", format!("invalid target name: {e}")));
    }
    if name.contains(':') {
        return Err(attr_err(
            "name",
            "a target name must not contain ':'".into(),
        ));
    }
    if let Some(p) = &platform
        && !PLATFORM_NAMES.contains(&p.as_str())
    {
        return Err(attr_err(
            "platform",
            format!(
                "unknown platform {p:?}: use one of {}",
                PLATFORM_NAMES.join(", ")
            ),
        ));
    }
    let check_labels = |attribute: &str, values: &[String]| {
        for v in values {
            // `@toolchain//path`: a file of a pinned toolchain, resolved when loading.
            if v.starts_with('@') && v.contains("//") {
                continue;
            }
            if let Err(e) = Label::parse(v, &package) {
                return Err(attr_err(attribute, e.to_string()));
            }
        }
        Ok(())
    };
    let check_env = |env: &BTreeMap<String, String>| {
        for k in env.keys() {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(attr_err(
                    "env",
                    format!("invalid variable name {k:?}: it must be non-empty without '='"),
                ));
            }
        }
        Ok(())
    };
    match &rule {
        RawRule::Filegroup { srcs } => check_labels("srcs", srcs)?,
        RawRule::WasiTool {
            src,
            data,
            data_dir,
        } => {
            check_labels("src", std::slice::from_ref(src))?;
            check_labels("data", data)?;
            if let Some(d) = data_dir {
                check_data_dir(d).map_err(|m| attr_err("data_dir", m))?;
            }
        }
        RawRule::WasiRun {
            tool,
            srcs,
            outs,
            env,
            ..
        } => {
            check_labels("tool", std::slice::from_ref(tool))?;
            check_labels("srcs", srcs)?;
            if outs.is_empty() {
                return Err(attr_err(
                    "outs",
                    "wasi_run needs at least one output; use wasi_test for a check without outputs"
                        .into(),
                ));
            }
            check_outs(outs).map_err(|m| attr_err("outs", m))?;
            check_env(env)?;
        }
        RawRule::Genrule {
            srcs,
            outs,
            cmd,
            tools,
        } => {
            check_labels("srcs", srcs)?;
            check_labels("tools", tools)?;
            if outs.is_empty() {
                return Err(attr_err("outs", "genrule needs at least one output".into()));
            }
            check_outs(outs).map_err(|m| attr_err("outs", m))?;
            if cmd.trim().is_empty() {
                return Err(attr_err("cmd", "genrule needs a command".into()));
            }
        }
        RawRule::Cc {
            srcs,
            hdrs,
            deps,
            includes,
            ..
        } => {
            check_labels("srcs", srcs)?;
            check_labels("hdrs", hdrs)?;
            check_labels("deps", deps)?;
            for i in includes {
                if i != "." {
                    check_rel_path(i)
                        .map_err(|e| attr_err("includes", format!("invalid include {i:?}: {e}")))?;
                }
            }
        }
        RawRule::WasiTest {
            tool, srcs, env, ..
        } => {
            check_labels("tool", std::slice::from_ref(tool))?;
            check_labels("srcs", srcs)?;
            check_env(env)?;
        }
    }
    let mut targets = ctx.targets.borrow_mut();
    if let Some(prev) = targets.iter().find(|t| t.name == name) {
        let err = GraphError::DuplicateTarget {
            label: Label {
                package,
                name: name.clone(),
            },
            location: location.clone(),
            previous: prev.location.clone(),
        };
        drop(targets);
        return Err(ctx.fail(err));
    }
    targets.push(RawTarget {
        name,
        location,
        rule,
        platform,
    });
    Ok(NoneType)
}

/// `data_dir` must be an absolute, normalised guest directory other than `/` and `/tmp`.
fn check_data_dir(d: &str) -> Result<(), String> {
    let Some(rel) = d.strip_prefix('/') else {
        return Err(format!(
            "{d:?} must be an absolute guest directory such as \"{DEFAULT_DATA_DIR}\""
        ));
    };
    check_rel_path(rel).map_err(|e| format!("{d:?}: {e}"))?;
    if rel == "tmp" || rel.starts_with("tmp/") {
        return Err(format!(
            "{d:?}: /tmp is the action's private scratch directory"
        ));
    }
    Ok(())
}

type Strings = UnpackListOrTuple<String>;

#[starlark_module]
fn wbuild_builtins(builder: &mut GlobalsBuilder) {
    /// Package-relative paths of the files matching `include` and not `exclude`, sorted.
    /// `*` and `?` match within one path component, `**` matches any number of directories.
    /// Never descends into sub-packages, hidden directories, `target/` or `wbuild-out/`.
    fn glob<'v>(
        include: Strings,
        #[starlark(default = UnpackListOrTuple::default())] exclude: Strings,
        #[starlark(require = named, default = true)] allow_empty: bool,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> starlark::Result<Vec<String>> {
        let (ctx, package) = context(eval, "glob")?;
        let dir = if package.is_empty() {
            ctx.root.clone()
        } else {
            ctx.root.join(&package)
        };
        let fail = |message: String| {
            ctx.fail(GraphError::Attribute {
                location: call_location(eval, ctx),
                target: "glob()".into(),
                message,
            })
        };
        let files = crate::glob::glob(&dir, &include.items, &exclude.items).map_err(fail)?;
        if files.is_empty() && !allow_empty {
            return Err(fail(format!(
                "no files in package '{package}' match {:?} (pass allow_empty = True to allow this)",
                include.items
            )));
        }
        Ok(files)
    }

    /// The name of the package being evaluated (`""` for the root package).
    fn package_name<'v>(eval: &mut Evaluator<'v, '_, '_>) -> starlark::Result<String> {
        Ok(context(eval, "package_name")?.1)
    }

    /// A named set of files: `filegroup(name, srcs = [])`.
    fn filegroup<'v>(
        #[starlark(require = named)] name: String,
        #[starlark(require = named, default = UnpackListOrTuple::default())] srcs: Strings,
        #[starlark(require = named, default = UnpackListOrTuple::default())] visibility: Strings,
        #[starlark(require = named, default = UnpackListOrTuple::default())] tags: Strings,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> starlark::Result<NoneType> {
        let _ = (visibility, tags);
        add_target(
            eval,
            "filegroup",
            name,
            RawRule::Filegroup { srcs: srcs.items },
        )
    }

    /// A WASI command module and the data files it reads:
    /// `wasi_tool(name, src, data = [], data_dir = "/share")`.
    #[allow(clippy::too_many_arguments)] // One parameter per attribute.
    fn wasi_tool<'v>(
        #[starlark(require = named)] name: String,
        #[starlark(require = named)] src: String,
        #[starlark(require = named, default = UnpackListOrTuple::default())] data: Strings,
        #[starlark(require = named)] data_dir: Option<String>,
        #[starlark(require = named, default = UnpackListOrTuple::default())] visibility: Strings,
        #[starlark(require = named, default = UnpackListOrTuple::default())] tags: Strings,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> starlark::Result<NoneType> {
        let _ = (visibility, tags);
        add_target(
            eval,
            "wasi_tool",
            name,
            RawRule::WasiTool {
                src,
                data: data.items,
                data_dir,
            },
        )
    }

    /// Runs a `wasi_tool` to produce files:
    /// `wasi_run(name, tool, srcs = [], outs, args = [], env = {})`.
    #[allow(clippy::too_many_arguments)] // One parameter per attribute.
    fn wasi_run<'v>(
        #[starlark(require = named)] name: String,
        #[starlark(require = named)] tool: String,
        #[starlark(require = named, default = UnpackListOrTuple::default())] srcs: Strings,
        #[starlark(require = named)] outs: Strings,
        #[starlark(require = named, default = UnpackListOrTuple::default())] args: Strings,
        #[starlark(require = named, default = BTreeMap::new())] env: BTreeMap<String, String>,
        #[starlark(require = named, default = UnpackListOrTuple::default())] visibility: Strings,
        #[starlark(require = named, default = UnpackListOrTuple::default())] tags: Strings,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> starlark::Result<NoneType> {
        let _ = (visibility, tags);
        add_target(
            eval,
            "wasi_run",
            name,
            RawRule::WasiRun {
                tool,
                srcs: srcs.items,
                outs: outs.items,
                args: args.items,
                env,
            },
        )
    }

    /// Runs a `wasi_tool` as a test (passes on exit code 0):
    /// `wasi_test(name, tool, srcs = [], args = [], env = {})`.
    #[allow(clippy::too_many_arguments)] // One parameter per attribute.
    fn wasi_test<'v>(
        #[starlark(require = named)] name: String,
        #[starlark(require = named)] tool: String,
        #[starlark(require = named, default = UnpackListOrTuple::default())] srcs: Strings,
        #[starlark(require = named, default = UnpackListOrTuple::default())] args: Strings,
        #[starlark(require = named, default = BTreeMap::new())] env: BTreeMap<String, String>,
        #[starlark(require = named, default = UnpackListOrTuple::default())] visibility: Strings,
        #[starlark(require = named, default = UnpackListOrTuple::default())] tags: Strings,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> starlark::Result<NoneType> {
        let _ = (visibility, tags);
        add_target(
            eval,
            "wasi_test",
            name,
            RawRule::WasiTest {
                tool,
                srcs: srcs.items,
                args: args.items,
                env,
            },
        )
    }

    /// A C/C++ library: `cc_library(name, srcs = [], hdrs = [], deps = [], copts = [],
    /// defines = [], includes = [], linkopts = [])`.
    #[allow(clippy::too_many_arguments)] // One parameter per attribute.
    fn cc_library<'v>(
        #[starlark(require = named)] name: String,
        #[starlark(require = named, default = UnpackListOrTuple::default())] srcs: Strings,
        #[starlark(require = named, default = UnpackListOrTuple::default())] hdrs: Strings,
        #[starlark(require = named, default = UnpackListOrTuple::default())] deps: Strings,
        #[starlark(require = named, default = UnpackListOrTuple::default())] copts: Strings,
        #[starlark(require = named, default = UnpackListOrTuple::default())] defines: Strings,
        #[starlark(require = named, default = UnpackListOrTuple::default())] includes: Strings,
        #[starlark(require = named, default = UnpackListOrTuple::default())] linkopts: Strings,
        #[starlark(require = named, default = UnpackListOrTuple::default())] visibility: Strings,
        #[starlark(require = named, default = UnpackListOrTuple::default())] tags: Strings,
        #[starlark(require = named)] platform: Option<String>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> starlark::Result<NoneType> {
        let _ = (visibility, tags);
        let rule = cc_rule(
            crate::CcKind::Library,
            srcs,
            hdrs,
            deps,
            copts,
            defines,
            includes,
            linkopts,
        );
        add_native_target(eval, "cc_library", name, rule, platform)
    }

    /// A C/C++ program: `cc_binary(name, srcs = [], deps = [], copts = [], defines = [],
    /// includes = [], linkopts = [])`.
    #[allow(clippy::too_many_arguments)] // One parameter per attribute.
    fn cc_binary<'v>(
        #[starlark(require = named)] name: String,
        #[starlark(require = named, default = UnpackListOrTuple::default())] srcs: Strings,
        #[starlark(require = named, default = UnpackListOrTuple::default())] deps: Strings,
        #[starlark(require = named, default = UnpackListOrTuple::default())] copts: Strings,
        #[starlark(require = named, default = UnpackListOrTuple::default())] defines: Strings,
        #[starlark(require = named, default = UnpackListOrTuple::default())] includes: Strings,
        #[starlark(require = named, default = UnpackListOrTuple::default())] linkopts: Strings,
        #[starlark(require = named, default = UnpackListOrTuple::default())] visibility: Strings,
        #[starlark(require = named, default = UnpackListOrTuple::default())] tags: Strings,
        #[starlark(require = named)] platform: Option<String>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> starlark::Result<NoneType> {
        let _ = (visibility, tags);
        let rule = cc_rule(
            crate::CcKind::Binary,
            srcs,
            Strings::default(),
            deps,
            copts,
            defines,
            includes,
            linkopts,
        );
        add_native_target(eval, "cc_binary", name, rule, platform)
    }

    /// A C/C++ test program, run by `wbuild test`: `cc_test(name, srcs = [], deps = [], ...)`.
    #[allow(clippy::too_many_arguments)] // One parameter per attribute.
    fn cc_test<'v>(
        #[starlark(require = named)] name: String,
        #[starlark(require = named, default = UnpackListOrTuple::default())] srcs: Strings,
        #[starlark(require = named, default = UnpackListOrTuple::default())] deps: Strings,
        #[starlark(require = named, default = UnpackListOrTuple::default())] copts: Strings,
        #[starlark(require = named, default = UnpackListOrTuple::default())] defines: Strings,
        #[starlark(require = named, default = UnpackListOrTuple::default())] includes: Strings,
        #[starlark(require = named, default = UnpackListOrTuple::default())] linkopts: Strings,
        #[starlark(require = named, default = UnpackListOrTuple::default())] visibility: Strings,
        #[starlark(require = named, default = UnpackListOrTuple::default())] tags: Strings,
        #[starlark(require = named)] platform: Option<String>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> starlark::Result<NoneType> {
        let _ = (visibility, tags);
        let rule = cc_rule(
            crate::CcKind::Test,
            srcs,
            Strings::default(),
            deps,
            copts,
            defines,
            includes,
            linkopts,
        );
        add_native_target(eval, "cc_test", name, rule, platform)
    }

    /// Runs a shell command in the native sandbox, as Bazel's genrule:
    /// `genrule(name, srcs = [], outs, cmd, tools = [])`.
    #[allow(clippy::too_many_arguments)] // One parameter per attribute.
    fn genrule<'v>(
        #[starlark(require = named)] name: String,
        #[starlark(require = named, default = UnpackListOrTuple::default())] srcs: Strings,
        #[starlark(require = named)] outs: Strings,
        #[starlark(require = named)] cmd: String,
        #[starlark(require = named, default = UnpackListOrTuple::default())] tools: Strings,
        #[starlark(require = named, default = UnpackListOrTuple::default())] visibility: Strings,
        #[starlark(require = named, default = UnpackListOrTuple::default())] tags: Strings,
        #[starlark(require = named)] platform: Option<String>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> starlark::Result<NoneType> {
        let _ = (visibility, tags);
        add_native_target(
            eval,
            "genrule",
            name,
            RawRule::Genrule {
                srcs: srcs.items,
                outs: outs.items,
                cmd,
                tools: tools.items,
            },
            platform,
        )
    }
}

#[allow(clippy::too_many_arguments)] // One parameter per attribute.
fn cc_rule(
    kind: crate::CcKind,
    srcs: Strings,
    hdrs: Strings,
    deps: Strings,
    copts: Strings,
    defines: Strings,
    includes: Strings,
    linkopts: Strings,
) -> RawRule {
    RawRule::Cc {
        kind,
        srcs: srcs.items,
        hdrs: hdrs.items,
        deps: deps.items,
        copts: copts.items,
        defines: defines.items,
        includes: includes.items,
        linkopts: linkopts.items,
    }
}

/// Outputs are package-relative paths, without ':' and without repeats.
fn check_outs(outs: &[String]) -> Result<(), String> {
    let mut seen = std::collections::BTreeSet::new();
    for o in outs {
        if let Err(e) = check_rel_path(o) {
            return Err(format!("invalid output {o:?}: {e}"));
        }
        if o.contains(':') {
            return Err(format!("output {o:?} must not contain ':'"));
        }
        if !seen.insert(o) {
            return Err(format!("output {o:?} is listed twice"));
        }
    }
    Ok(())
}

/// The dialect: standard Starlark plus type annotations, keyword-only arguments and top-level
/// `if`/`for` (as Bazel users expect from `.bzl` files).
fn dialect() -> Dialect {
    Dialect {
        enable_types: DialectTypes::Enable,
        enable_keyword_only_arguments: true,
        enable_top_level_stmt: true,
        ..Dialect::Standard
    }
}

/// Gives each `load()` of one file the module it names (loaded beforehand).
struct MapLoader(HashMap<String, FrozenModule>);

impl FileLoader for MapLoader {
    fn load(&self, path: &str) -> starlark::Result<FrozenModule> {
        self.0.get(path).cloned().ok_or_else(|| {
            starlark::Error::new_other(BuiltinError(format!("module '{path}' was not loaded")))
        })
    }
}

/// Evaluates build files. One per [`crate::load`] call; caches `.bzl` modules.
pub(crate) struct Interpreter {
    root: PathBuf,
    globals: Globals,
    modules: RefCell<HashMap<String, FrozenModule>>,
}

impl Interpreter {
    pub fn new(root: PathBuf) -> Interpreter {
        let globals = GlobalsBuilder::extended_by(&[
            LibraryExtension::StructType,
            LibraryExtension::Print,
            LibraryExtension::Json,
            LibraryExtension::Map,
            LibraryExtension::Filter,
            LibraryExtension::Partial,
            LibraryExtension::Typing,
            LibraryExtension::SetType,
        ])
        .with(wbuild_builtins)
        .with_namespace("native", wbuild_builtins)
        .build();
        Interpreter {
            root,
            globals,
            modules: RefCell::new(HashMap::new()),
        }
    }

    /// Evaluates `<package>/WBUILD` and returns its targets in definition order.
    pub fn eval_package(&self, package: &str) -> Result<Vec<RawTarget>, GraphError> {
        let file = join(package, BUILD_FILE);
        let ctx = EvalContext {
            root: self.root.clone(),
            file: file.clone(),
            package: Some(package.to_owned()),
            targets: RefCell::new(Vec::new()),
            error: RefCell::new(None),
        };
        let mut stack = Vec::new();
        self.eval_file(&file, package, &ctx, &mut stack, false)?;
        Ok(ctx.targets.into_inner())
    }

    /// Parses and evaluates `file` (a workspace path) after loading what it `load()`s.
    fn eval_file(
        &self,
        file: &str,
        package: &str,
        ctx: &EvalContext,
        stack: &mut Vec<String>,
        freeze: bool,
    ) -> Result<Option<FrozenModule>, GraphError> {
        let host = self.root.join(file);
        let text = std::fs::read_to_string(&host).map_err(|source| GraphError::Io {
            path: host.clone(),
            source,
        })?;
        let starlark_err = |e: starlark::Error| GraphError::Starlark {
            file: file.to_owned(),
            location: e.span().map(location_of),
            message: e.to_string().trim_end().to_owned(),
        };
        let ast = AstModule::parse(file, text, &dialect()).map_err(starlark_err)?;
        let mut modules = HashMap::new();
        for load in ast.loads() {
            let location = location_of(&load.span);
            let module = self.load_bzl(load.module_id, package, &location, stack)?;
            modules.insert(load.module_id.to_owned(), module);
        }
        let loader = MapLoader(modules);
        Module::with_temp_heap(|module| {
            let result = {
                let mut eval = Evaluator::new(&module);
                eval.set_loader(&loader);
                eval.extra = Some(ctx);
                eval.eval_module(ast, &self.globals).map(|_| ())
            };
            if let Err(e) = result {
                return Err(ctx.error.take().unwrap_or_else(|| starlark_err(e)));
            }
            if freeze {
                let frozen = module.freeze().map_err(|e| GraphError::Starlark {
                    file: file.to_owned(),
                    location: None,
                    message: format!("{file}: cannot freeze module: {e:?}"),
                })?;
                Ok(Some(frozen))
            } else {
                Ok(None)
            }
        })
    }

    /// Loads (once) the `.bzl` file named by `module_id`, relative to `package`.
    fn load_bzl(
        &self,
        module_id: &str,
        package: &str,
        location: &Location,
        stack: &mut Vec<String>,
    ) -> Result<FrozenModule, GraphError> {
        let err = |message: String| GraphError::Load {
            location: location.clone(),
            module: module_id.to_owned(),
            message,
        };
        let label = Label::parse(module_id, package).map_err(|e| err(e.to_string()))?;
        if !label.name.ends_with(".bzl") {
            return Err(err(
                "only .bzl files can be loaded; name one as '//pkg:file.bzl'".into(),
            ));
        }
        let path = label.path();
        if let Some(m) = self.modules.borrow().get(&path) {
            return Ok(m.clone());
        }
        if let Some(pos) = stack.iter().position(|p| *p == path) {
            let mut cycle = stack[pos..].to_vec();
            cycle.push(path);
            return Err(GraphError::LoadCycle {
                location: location.clone(),
                cycle: cycle.join(" -> "),
            });
        }
        if let Some(sub) = crate::load::crossed_subpackage(&self.root, &label) {
            return Err(err(format!(
                "'{}' is inside package '{sub}'; write '//{sub}:{}'",
                label.name,
                &path[sub.len() + 1..]
            )));
        }
        if !self.root.join(&path).is_file() {
            return Err(err(format!(
                "no such file '{}' in package '{}'",
                label.name, label.package
            )));
        }
        let ctx = EvalContext {
            root: self.root.clone(),
            file: path.clone(),
            package: None,
            targets: RefCell::new(Vec::new()),
            error: RefCell::new(None),
        };
        stack.push(path.clone());
        let result = self.eval_file(&path, &label.package, &ctx, stack, true);
        stack.pop();
        let module = result?.expect("frozen module");
        self.modules.borrow_mut().insert(path, module.clone());
        Ok(module)
    }
}
