//! Starlark evaluation of `WBUILD` and `.bzl` files with the wbuild built-ins.
//!
//! Rule calls only record [`RawTarget`]s (attribute values as written, checked for syntax);
//! references are resolved later by `load.rs`, once every package involved is known. The
//! rules' built-ins are defined with the rules (`crate::rules`).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use starlark::any::ProvidesStaticType;
use starlark::codemap::FileSpan;
use starlark::environment::{FrozenModule, Globals, GlobalsBuilder, LibraryExtension, Module};
use starlark::eval::{Evaluator, FileLoader};
use starlark::starlark_module;
use starlark::syntax::{AstModule, Dialect, DialectTypes};
use starlark::values::dict::AllocDict;
use starlark::values::list::AllocList;
use starlark::values::list_or_tuple::UnpackListOrTuple;
use starlark::values::none::NoneType;
use starlark::values::{FrozenValue, Heap, Value};

use crate::label::{Label, check_rel_path, join};
use crate::rules::RawRule;
use crate::workspace::BUILD_FILE;
use crate::{GraphError, Location};

/// A rule call as recorded during evaluation.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct RawTarget {
    /// `//package:name`, shared by every reference to the target (see [`Label`]); the
    /// target's name is `label.name`.
    pub label: Label,
    pub location: Location,
    pub rule: RawRule,
    /// See [`crate::Target::platform`].
    pub platform: Option<String>,
}

/// One `glob()` call of a package and the package-relative files it found: replayed to tell
/// whether the package would evaluate the same (see `load::Reads`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct GlobRead {
    pub package: String,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub files: Vec<String>,
}

/// State of one file's evaluation, reachable from built-ins through `Evaluator::extra`.
#[derive(ProvidesStaticType)]
struct EvalContext {
    root: PathBuf,
    /// Workspace path of the `WBUILD` file being evaluated (macros in `.bzl` files called from
    /// it still record targets here).
    file: std::sync::Arc<str>,
    /// `Some` while evaluating a `WBUILD` file; `None` for the top level of a `.bzl` file.
    package: Option<String>,
    targets: RefCell<Vec<RawTarget>>,
    /// Name -> index in `targets` (a search of `targets` per call was quadratic in the size
    /// of the package).
    names: RefCell<HashMap<String, usize>>,
    /// Every `glob()` call and what it found (see [`GlobRead`]).
    globs: RefCell<Vec<GlobRead>>,
    /// A typed error raised by a built-in; returned instead of the Starlark rendering.
    error: RefCell<Option<GraphError>>,
    /// Where the call being made from Rust stands in the file (see [`crate::literal`]): there
    /// is no Starlark frame to say so.
    call_at: RefCell<Option<Location>>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct BuiltinError(String);

impl EvalContext {
    /// The state of evaluating `file`, a `WBUILD` file of `package` or (`None`) a `.bzl` file.
    fn new(root: &std::path::Path, file: &str, package: Option<&str>) -> EvalContext {
        EvalContext {
            root: root.to_path_buf(),
            file: file.into(),
            package: package.map(str::to_owned),
            targets: RefCell::new(Vec::new()),
            names: RefCell::new(HashMap::new()),
            globs: RefCell::new(Vec::new()),
            error: RefCell::new(None),
            call_at: RefCell::new(None),
        }
    }

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
    location_sharing(span, None)
}

/// The location of `span`, whose file name is `file`'s text when it is in that file.
fn location_sharing(span: &FileSpan, file: Option<&std::sync::Arc<str>>) -> Location {
    let pos = span.resolve_span().begin;
    Location {
        file: match file {
            Some(f) if **f == *span.filename() => f.clone(),
            _ => span.filename().into(),
        },
        line: pos.line as u32 + 1,
        column: pos.column as u32 + 1,
    }
}

/// The location of the outermost call in the `WBUILD` file being evaluated (so a rule called
/// by a macro is attributed to the macro call, as in Bazel).
fn call_location(eval: &Evaluator<'_, '_, '_>, ctx: &EvalContext) -> Location {
    if let Some(at) = &*ctx.call_at.borrow() {
        return at.clone();
    }
    let stack = eval.call_stack();
    stack
        .frames
        .iter()
        .filter_map(|f| f.location.as_ref())
        .find(|l| l.filename() == &*ctx.file)
        .map(|l| location_sharing(l, Some(&ctx.file)))
        .or_else(|| eval.call_stack_top_location().map(|l| location_of(&l)))
        .unwrap_or(Location {
            file: ctx.file.clone(),
            line: 1,
            column: 1,
        })
}

/// Records a target after checking the attributes that can be checked without other packages:
/// the name, the `platform` of a native rule (`None` for the others) and the rule's own
/// checks ([`crate::rules::Check`]).
pub(crate) fn add_target(
    eval: &Evaluator<'_, '_, '_>,
    function: &str,
    name: String,
    rule: RawRule,
    platform: Option<String>,
) -> starlark::Result<NoneType> {
    let (ctx, package) = context(eval, function)?;
    let location = call_location(eval, ctx);
    add_target_at(ctx, &package, location, function, name, rule, platform)
}

/// [`add_target`] for a call at `location` in `package`'s build file.
fn add_target_at(
    ctx: &EvalContext,
    package: &str,
    location: Location,
    function: &str,
    name: String,
    rule: RawRule,
    platform: Option<String>,
) -> starlark::Result<NoneType> {
    let c = Checker {
        ctx,
        location: &location,
        function,
        name: &name,
        package,
    };
    if let Err(e) = check_rel_path(&name) {
        return Err(c.err("name", format!("invalid target name: {e}")));
    }
    if name.contains(':') {
        return Err(c.err("name", "a target name must not contain ':'".into()));
    }
    // Any name `--platform` takes, recorded by its canonical name.
    let platform = match platform {
        Some(p) => match crate::Platform::parse(&p) {
            Ok(known) => Some(known.name().to_owned()),
            Err(_) => {
                let names: Vec<&str> = crate::Platform::ALL.iter().map(|p| p.name()).collect();
                return Err(c.err(
                    "platform",
                    format!("unknown platform {p:?}: use one of {}", names.join(", ")),
                ));
            }
        },
        None => None,
    };
    rule.check(&c)?;
    let mut targets = ctx.targets.borrow_mut();
    let mut names = ctx.names.borrow_mut();
    if let Some(&prev) = names.get(&name) {
        let err = GraphError::DuplicateTarget {
            label: Label::new(package.to_owned(), name.clone()),
            location: location.clone(),
            previous: targets[prev].location.clone(),
        };
        drop((targets, names));
        return Err(ctx.fail(err));
    }
    names.insert(name.clone(), targets.len());
    targets.push(RawTarget {
        label: Label::new(package.to_owned(), name),
        location,
        rule,
        platform,
    });
    Ok(NoneType)
}

/// The attribute checks of one rule call: each error names the call's location, the rule
/// call (`function(name = ...)`) and the attribute, and aborts evaluation.
pub(crate) struct Checker<'c> {
    ctx: &'c EvalContext,
    location: &'c Location,
    function: &'c str,
    name: &'c str,
    package: &'c str,
}

impl Checker<'_> {
    /// The error for a bad value of `attribute`.
    pub(crate) fn err(&self, attribute: &str, message: String) -> starlark::Error {
        self.ctx.fail(GraphError::Attribute {
            location: self.location.clone(),
            target: format!("{}(name = {:?})", self.function, self.name),
            message: format!("attribute '{attribute}': {message}"),
        })
    }

    /// Every value is a syntactically valid label (or names a file of a pinned toolchain).
    pub(crate) fn labels(&self, attribute: &str, values: &[String]) -> starlark::Result<()> {
        for v in values {
            // `@toolchain//path`: a file of a pinned toolchain, resolved when loading.
            if v.starts_with('@') && v.contains("//") {
                continue;
            }
            if let Err(e) = Label::parse_parts(v, self.package) {
                return Err(self.err(attribute, e.to_string()));
            }
        }
        Ok(())
    }

    /// Environment variable names are non-empty, without '=' or NUL.
    pub(crate) fn env(&self, env: &BTreeMap<String, String>) -> starlark::Result<()> {
        for k in env.keys() {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(self.err(
                    "env",
                    format!("invalid variable name {k:?}: it must be non-empty without '='"),
                ));
            }
        }
        Ok(())
    }

    /// Outputs are package-relative paths, without ':' and without repeats.
    pub(crate) fn outs(&self, outs: &[String]) -> starlark::Result<()> {
        let mut seen = std::collections::BTreeSet::new();
        for o in outs {
            let problem = if let Err(e) = check_rel_path(o) {
                format!("invalid output {o:?}: {e}")
            } else if o.contains(':') {
                format!("output {o:?} must not contain ':'")
            } else if !seen.insert(o) {
                format!("output {o:?} is listed twice")
            } else {
                continue;
            };
            return Err(self.err("outs", problem));
        }
        Ok(())
    }
}

pub(crate) type Strings = UnpackListOrTuple<String>;

/// Every built-in: `glob`, `package_name` and the rules'.
fn builtins(builder: &mut GlobalsBuilder) {
    wbuild_builtins(builder);
    crate::rules::builtins(builder);
}

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
        ctx.globs.borrow_mut().push(GlobRead {
            package: package.clone(),
            include: include.items.clone(),
            exclude: exclude.items.clone(),
            files: files.clone(),
        });
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
    /// The globals by name, for the calls of a file read as literals.
    named: HashMap<String, FrozenValue>,
    modules: RefCell<HashMap<String, FrozenModule>>,
}

/// The rule the literal call `call` makes and its name, made as its built-in makes them from
/// the same values, for the rules most build files are made of (`wasi_run`, `filegroup`);
/// `None` for any other call, or any argument the built-in would take otherwise or refuse (a
/// value of another type, an unknown or a missing argument): the built-in is
/// called then. `eval::tests` compares both ways on every literal file they evaluate.
fn literal_rule(call: &crate::literal::Call<'_>) -> Option<(String, RawRule)> {
    use crate::literal::Lit;
    /// The call's arguments, each taken once.
    struct Args<'c, 'a> {
        kwargs: &'c [(&'a str, Lit<'a>)],
        taken: Vec<bool>,
    }
    impl<'c> Args<'c, '_> {
        fn get(&mut self, key: &str) -> Option<&'c Lit<'c>> {
            let i = self.kwargs.iter().position(|(k, _)| *k == key)?;
            self.taken[i] = true;
            Some(&self.kwargs[i].1)
        }
        fn string(&mut self, key: &str) -> Option<String> {
            match self.get(key)? {
                Lit::Str(s) => Some((*s).to_owned()),
                _ => None,
            }
        }
        /// A list of strings; absent, empty.
        fn strings(&mut self, key: &str, required: bool) -> Option<Vec<String>> {
            match self.get(key) {
                None if required => None,
                None => Some(Vec::new()),
                Some(Lit::List(items)) => {
                    // Exactly as long as the built-in's (collecting through `Option` grows
                    // the vector by doubling: 12 MB more for 100,000 targets).
                    let mut out = Vec::with_capacity(items.len());
                    for i in items {
                        let Lit::Str(s) = i else { return None };
                        out.push((*s).to_owned());
                    }
                    Some(out)
                }
                Some(_) => None,
            }
        }
        /// A dictionary of strings; absent, empty.
        fn env(&mut self, key: &str) -> Option<BTreeMap<String, String>> {
            match self.get(key) {
                None => Some(BTreeMap::new()),
                Some(Lit::Dict(entries)) => entries
                    .iter()
                    .map(|(k, v)| match v {
                        Lit::Str(v) => Some(((*k).to_owned(), (*v).to_owned())),
                        _ => None,
                    })
                    .collect(),
                Some(_) => None,
            }
        }
        /// Every argument was taken (none unknown).
        fn done(&self) -> Option<()> {
            self.taken.iter().all(|t| *t).then_some(())
        }
    }
    // No argument repeats: `literal::calls` leaves such a call to Starlark.
    let kwargs = &call.kwargs;
    let mut a = Args {
        kwargs,
        taken: vec![false; kwargs.len()],
    };
    let made = match call.function {
        "wasi_run" => {
            let name = a.string("name")?;
            let attrs = crate::WasiRunAttrs {
                tool: a.string("tool")?,
                srcs: a.strings("srcs", false)?,
                outs: a.strings("outs", true)?,
                args: a.strings("args", false)?,
                env: a.env("env")?,
            };
            (name, RawRule::WasiRun(attrs))
        }
        "filegroup" => {
            let name = a.string("name")?;
            let srcs = a.strings("srcs", false)?;
            (name, RawRule::Filegroup(crate::FilegroupAttrs { srcs }))
        }
        _ => return None,
    };
    // Taken by every rule and ignored.
    a.strings("visibility", false)?;
    a.strings("tags", false)?;
    a.done()?;
    Some(made)
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
        .with(builtins)
        .with_namespace("native", builtins)
        .build();
        let named = globals.iter().map(|(n, v)| (n.to_owned(), v)).collect();
        Interpreter {
            root,
            globals,
            named,
            modules: RefCell::new(HashMap::new()),
        }
    }

    /// Evaluates `<package>/WBUILD` and returns its targets in definition order, and the
    /// globs it called.
    pub fn eval_package(
        &self,
        package: &str,
    ) -> Result<(Vec<RawTarget>, Vec<GlobRead>), GraphError> {
        self.eval_package_as(package, true)
    }

    /// As [`Interpreter::eval_package`]; `literals`: whether a file of literal rule calls is
    /// read as such (tests compare both ways).
    fn eval_package_as(
        &self,
        package: &str,
        literals: bool,
    ) -> Result<(Vec<RawTarget>, Vec<GlobRead>), GraphError> {
        let file = join(package, BUILD_FILE);
        let new_context = || EvalContext::new(&self.root, &file, Some(package));
        let text = self.read(&file)?;
        // A file of rule calls with literal arguments is called without Starlark's parser;
        // any other, or one whose calls fail, is evaluated by Starlark (which names the error).
        if literals && let Some(calls) = crate::literal::calls(&text) {
            let ctx = new_context();
            if self.call_literals(&calls, &ctx) {
                return Ok((ctx.targets.into_inner(), ctx.globs.into_inner()));
            }
        }
        let ctx = new_context();
        let mut stack = Vec::new();
        self.eval_file(&file, text, package, &ctx, &mut stack, false)?;
        Ok((ctx.targets.into_inner(), ctx.globs.into_inner()))
    }

    /// Makes `calls` as Starlark would make them at the top level of the file `ctx` evaluates:
    /// the same built-ins with the same values. `false` if one is not a global or fails.
    fn call_literals(&self, calls: &[crate::literal::Call<'_>], ctx: &EvalContext) -> bool {
        fn value<'v>(heap: Heap<'v>, lit: &crate::literal::Lit<'_>) -> Value<'v> {
            use crate::literal::Lit;
            match lit {
                Lit::Str(s) => heap.alloc(*s),
                Lit::Int(i) => heap.alloc(*i),
                Lit::Bool(b) => Value::new_bool(*b),
                Lit::None => Value::new_none(),
                Lit::List(items) => heap.alloc(AllocList(items.iter().map(|i| value(heap, i)))),
                Lit::Dict(entries) => heap.alloc(AllocDict(
                    entries
                        .iter()
                        .map(|(k, v)| (heap.alloc(*k), value(heap, v))),
                )),
            }
        }
        Module::with_temp_heap(|module| {
            let mut eval = Evaluator::new(&module);
            eval.extra = Some(ctx);
            let heap = module.heap();
            for call in calls {
                let Some(function) = self.named.get(call.function) else {
                    return false;
                };
                let location = Location {
                    file: ctx.file.clone(),
                    line: call.line,
                    column: 1,
                };
                // The rule made at once where it can be (the built-in would make the same).
                if let Some(package) = &ctx.package
                    && let Some((name, rule)) = literal_rule(call)
                {
                    let made =
                        add_target_at(ctx, package, location, call.function, name, rule, None);
                    if made.is_err() {
                        return false;
                    }
                    continue;
                }
                let named: Vec<(&str, Value)> = call
                    .kwargs
                    .iter()
                    .map(|(k, v)| (*k, value(heap, v)))
                    .collect();
                *ctx.call_at.borrow_mut() = Some(location);
                if eval
                    .eval_function(function.to_value(), &[], &named)
                    .is_err()
                {
                    return false;
                }
            }
            true
        })
    }

    /// The text of `file` (a workspace path).
    fn read(&self, file: &str) -> Result<String, GraphError> {
        let host = self.root.join(file);
        std::fs::read_to_string(&host).map_err(|source| GraphError::Io {
            path: host,
            error: source,
        })
    }

    /// Parses and evaluates `file` (a workspace path) holding `text`, after loading what it
    /// `load()`s.
    fn eval_file(
        &self,
        file: &str,
        text: String,
        package: &str,
        ctx: &EvalContext,
        stack: &mut Vec<String>,
        freeze: bool,
    ) -> Result<Option<FrozenModule>, GraphError> {
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
        if let Some(sub) = crate::load::crossed_subpackage(&self.root, &label.package, &label.name)
        {
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
        let ctx = EvalContext::new(&self.root, &path, None);
        stack.push(path.clone());
        let result = self
            .read(&path)
            .and_then(|text| self.eval_file(&path, text, &label.package, &ctx, stack, true));
        stack.pop();
        let module = result?.expect("frozen module");
        self.modules.borrow_mut().insert(path, module.clone());
        Ok(module)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::workspace;

    /// Each file, evaluated as literal calls where it can be and by Starlark, gives the same
    /// targets (locations included) or the same error.
    #[test]
    fn literal_calls_evaluate_as_starlark_does() {
        let cases = [
            // The benchmarks' shapes.
            "wasi_tool(name = \"t\", src = \"t.wasm\")\nwasi_run(name = \"a0\", tool = \":t\", srcs = ['s0.txt'], outs = [\"a0.vars\"], args = ['$(location s0.txt)', '-o', '$@'])\n",
            "cc_library(\n    name = \"lib0\",\n    srcs = ['f0.c', 'f1.c'],\n    hdrs = ['include/lib0/f0.h'],\n    includes = [\"include\"],\n    deps = [],\n    copts = ['-O2'],\n)\ncc_binary(name = \"app\", srcs = [\"main.c\"], deps = ['//lib9:lib9', ':lib0'], copts = ['-O2'], platform = \"linux-arm64\")\n",
            // Comments, blank lines, trailing commas, both quotes, a dict, a test.
            "# head\n\ngenrule(\n  name = 'g',  # the name\n  srcs = [],\n  outs = [\"o.txt\",],\n  cmd = \"echo 'hi' > $@\",\n)\n\n   # indented comment\nwasi_test(name = \"t2\", tool = \"//tools:t\", args = [], env = {\"A\": \"1\", 'B': ''})\nfilegroup(name = \"fg\", srcs = [\"x\", \"y\"])  # trailing\n",
            // Errors the built-ins raise: the literal calls fail, Starlark names them.
            "filegroup(name = \"a\")\nfilegroup(name = \"a\")\n",
            "filegroup(name = \"a/../b\")\n",
            "filegroup(name = \"a\", srcs = \"x\")\n",
            "filegroup(name = \"a\", bogus = [])\n",
            "filegroup(srcs = [])\n",
            "cc_binary(name = \"a\", platform = \"vax\")\n",
            "filegroup(name = \"a\", srcs = [1])\n",
            "filegroup(name = \"a\", srcs = None)\n",
            "filegroup(name = True)\n",
            "no_such_rule(name = \"a\")\n",
            "print(name = \"a\")\n",
            "glob(include = [\"*.c\"])\n",
            "package_name(x = 1)\n",
            // Not literal calls: Starlark both ways.
            "X = [\"a\"]\nfilegroup(name = \"a\", srcs = X)\n",
            "filegroup(name = \"a\", srcs = glob([\"*.txt\"]))\n",
            "",
        ];
        // And every build file of the repository's examples and fixtures.
        let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut found = Vec::new();
        let mut dirs = vec![repo.join("examples"), repo.join("tests/e2e/fixtures")];
        while let Some(dir) = dirs.pop() {
            for e in std::fs::read_dir(&dir).unwrap().flatten() {
                let path = e.path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.file_name().is_some_and(|n| n == BUILD_FILE) {
                    found.push(std::fs::read_to_string(&path).unwrap());
                }
            }
        }
        assert!(found.len() >= 10, "{} build files", found.len());
        let literal_files = found
            .iter()
            .filter(|t| crate::literal::calls(t).is_some())
            .count();
        assert!(literal_files >= 5, "{literal_files} read as literal calls");
        let cases: Vec<&str> = cases
            .into_iter()
            .chain(found.iter().map(String::as_str))
            .collect();
        for (i, text) in cases.iter().enumerate() {
            let t = workspace(&[("p/WBUILD", text), ("p/x.txt", "")]);
            let interp = Interpreter::new(t.ws.root.clone());
            let literal = interp.eval_package_as("p", true);
            let starlark = interp.eval_package_as("p", false);
            match (&literal, &starlark) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "case {i}: {text}"),
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "case {i}: {text}"),
                _ => panic!("case {i}: {text}\nliteral: {literal:?}\nstarlark: {starlark:?}"),
            }
            if i < 3 {
                let targets = &literal.as_ref().unwrap().0;
                assert!(!targets.is_empty(), "case {i}");
                assert!(
                    crate::literal::calls(text).is_some(),
                    "case {i} is read as literals"
                );
            }
        }
    }

    /// Hostile and odd build files: thousands of mutants of literal-call files (a token
    /// inserted, a span deleted, two characters swapped; tokens a literal reader could
    /// misread: other string and number forms, escapes, line continuations, `\r`, form
    /// feeds, a byte order mark, non-breaking spaces, non-ASCII names, operators, keywords)
    /// evaluate to the same targets or the same error both ways. Deterministic (a fixed
    /// generator), so a failure names a mutant that fails again.
    #[test]
    fn mutated_literal_calls_evaluate_as_starlark_does() {
        let seeds = [
            "wasi_tool(name = \"t\", src = \"t.wasm\")\nwasi_run(name = \"a0\", tool = \":t\", srcs = ['x.txt'], outs = [\"a0.vars\"], args = ['$(location x.txt)', '-o', '$@'], env = {\"K\": \"v\"})\n",
            "cc_library(\n    name = \"lib0\",\n    srcs = ['f0.c', 'f1.c'],\n    hdrs = ['include/f0.h'],\n    includes = [\"include\"],\n    deps = [],\n    copts = ['-O2'],\n)\n",
            "# c\n\ngenrule(\n  name = 'g',  # n\n  srcs = [],\n  outs = [\"o.txt\",],\n  cmd = \"echo 'hi' > $@\",\n)\nfilegroup(name = \"fg\", srcs = [\"x.txt\"])  # t\n",
        ];
        const TOKENS: &[&str] = &[
            "\"",
            "'",
            "\\",
            "\n",
            "\t",
            " ",
            "#",
            ",",
            "(",
            ")",
            "[",
            "]",
            "{",
            "}",
            ":",
            "=",
            "==",
            "+",
            "-",
            "*",
            "**",
            ".",
            ";",
            "%",
            "0x1F",
            "1_0",
            "007",
            "0o7",
            "-1",
            "1.5",
            "1e3",
            "r\"x\"",
            "b\"x\"",
            "\"\"\"x\"\"\"",
            "'''",
            "\"\\u00e9\"",
            "\"\\n\"",
            "\"é\"",
            "é",
            "ñame",
            "True",
            "False",
            "None",
            "lambda",
            "if",
            "def",
            "in",
            "not",
            "and",
            "name",
            "name = \"z\"",
            "srcs",
            "\r\n",
            "\r",
            "\x0c",
            "\\\n",
            "\u{feff}",
            "\u{a0}",
            "glob([\"*\"])",
            "[*]",
            "x",
            "\"x\" \"y\"",
            "\"\\x41\"",
            "\"$(SRCS)\"",
            "\"a\\\nb\"",
            "\t\t",
            "    ",
            "//",
            "@",
            "!",
            "`",
            "\u{0}",
            "\u{2028}",
            "\u{7f}",
            "class",
            "yield",
        ];
        // xorshift64*: deterministic, no dependency.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |n: usize| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n.max(1)
        };
        let t = workspace(&[("p/WBUILD", ""), ("p/x.txt", "")]);
        let interp = Interpreter::new(t.ws.root.clone());
        let (mut literal_files, mut both_ok) = (0, 0);
        for round in 0..3000 {
            let mut text: Vec<char> = seeds[round % seeds.len()].chars().collect();
            for _ in 0..1 + next(3) {
                let at = next(text.len() + 1);
                match next(4) {
                    0 | 1 => {
                        let token = TOKENS[next(TOKENS.len())];
                        text.splice(at..at, token.chars());
                    }
                    2 => {
                        let end = (at + 1 + next(6)).min(text.len());
                        text.drain(at.min(end)..end);
                    }
                    _ => {
                        if at + 1 < text.len() {
                            text.swap(at, at + 1);
                        }
                    }
                }
            }
            let text: String = text.into_iter().collect();
            std::fs::write(t.ws.root.join("p/WBUILD"), &text).unwrap();
            if crate::literal::calls(&text).is_some() {
                literal_files += 1;
            }
            let literal = interp.eval_package_as("p", true);
            let starlark = interp.eval_package_as("p", false);
            match (&literal, &starlark) {
                (Ok(a), Ok(b)) => {
                    both_ok += 1;
                    assert_eq!(a, b, "mutant {round}: {text:?}")
                }
                (Err(a), Err(b)) => {
                    assert_eq!(a.to_string(), b.to_string(), "mutant {round}: {text:?}")
                }
                _ => {
                    panic!("mutant {round}: {text:?}\nliteral: {literal:?}\nstarlark: {starlark:?}")
                }
            }
        }
        // The mutants exercised both readers, and both outcomes.
        assert!(
            literal_files > 200,
            "{literal_files} mutants read as literal calls"
        );
        assert!(both_ok > 100, "{both_ok} mutants evaluated");
    }
}
