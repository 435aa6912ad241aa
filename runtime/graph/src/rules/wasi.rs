//! The WASI rules: `wasi_tool` (a command module and its data files), `wasi_run` (runs a tool
//! to produce files) and `wasi_test` (runs a tool as a test), executed by the WASI executor.

use std::collections::{BTreeMap, BTreeSet};

use starlark::environment::GlobalsBuilder;
use starlark::eval::Evaluator;
use starlark::starlark_module;
use starlark::values::list_or_tuple::UnpackListOrTuple;
use starlark::values::none::NoneType;

use super::{Analyse, Attrs, Check, MapRefs, RawRule, Rule, Want};
use crate::analysis::{ActionNode, Analyser, Exec, Expander, ToolRef};
use crate::eval::{Checker, Strings, add_target};
use crate::label::{Label, check_rel_path, join, strip_package};
use crate::{DEFAULT_DATA_DIR, Dep, GraphError, Target};

/// `wasi_tool(name, src, data = [], data_dir = "/share", argv0 = name)`: a WASI command
/// module (`src`, a `.wasm` file or a target with exactly one `.wasm` file) plus data files it
/// reads at run time. `data_dir` is `None` when not given (then [`DEFAULT_DATA_DIR`]).
/// `argv0` is the program name the module is run under (a multicall module such as an
/// LLVM build picks its tool by it); `None`: the target's name.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct WasiToolAttrs<D> {
    pub src: D,
    pub data: Vec<D>,
    pub data_dir: Option<String>,
    pub argv0: Option<String>,
}

/// `wasi_run(name, tool, srcs = [], outs, args = [], env = {})`: runs `tool` to produce `outs`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct WasiRunAttrs<D, L> {
    pub tool: L,
    pub srcs: Vec<D>,
    pub outs: Vec<String>,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
}

/// `wasi_test(name, tool, srcs = [], args = [], env = {})`: passes if `tool` exits with 0.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct WasiTestAttrs<D, L> {
    pub tool: L,
    pub srcs: Vec<D>,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
}

/// A `tool` attribute names a `wasi_tool`.
pub(crate) const TOOL: Want = Want {
    accepts: is_wasi_tool,
    refuse: not_a_tool,
};

fn is_wasi_tool(rule: &RawRule) -> bool {
    matches!(rule, RawRule::WasiTool(_))
}

fn not_a_tool(reference: &str, what: &str) -> String {
    format!(
        "'{reference}' is {what}, not a wasi_tool; \
         define wasi_tool(name = ..., src = \"tool.wasm\") and name it here"
    )
}

impl<D, L> Attrs<D, L> for WasiToolAttrs<D> {
    type With<D2, L2> = WasiToolAttrs<D2>;

    fn kind(&self) -> &'static str {
        "wasi_tool"
    }

    fn described(&self) -> &'static str {
        "a wasi_tool target"
    }

    fn map<M: MapRefs<D, L>>(&self, m: &mut M) -> Result<Self::With<M::Dep, M::Label>, M::Error> {
        Ok(WasiToolAttrs {
            src: m.file("src", &self.src)?,
            data: m.files("data", &self.data)?,
            data_dir: m.keep(&self.data_dir),
            argv0: m.keep(&self.argv0),
        })
    }
}

impl<D, L> Attrs<D, L> for WasiRunAttrs<D, L> {
    type With<D2, L2> = WasiRunAttrs<D2, L2>;

    fn kind(&self) -> &'static str {
        "wasi_run"
    }

    fn described(&self) -> &'static str {
        "a wasi_run target"
    }

    fn outputs(&self, _name: &str) -> Vec<String> {
        self.outs.clone()
    }

    fn map<M: MapRefs<D, L>>(&self, m: &mut M) -> Result<Self::With<M::Dep, M::Label>, M::Error> {
        Ok(WasiRunAttrs {
            tool: m.target("tool", &self.tool, &TOOL)?,
            srcs: m.files("srcs", &self.srcs)?,
            outs: m.keep(&self.outs),
            args: m.keep(&self.args),
            env: m.keep(&self.env),
        })
    }
}

impl<D, L> Attrs<D, L> for WasiTestAttrs<D, L> {
    type With<D2, L2> = WasiTestAttrs<D2, L2>;

    fn kind(&self) -> &'static str {
        "wasi_test"
    }

    fn described(&self) -> &'static str {
        "a wasi_test target"
    }

    fn map<M: MapRefs<D, L>>(&self, m: &mut M) -> Result<Self::With<M::Dep, M::Label>, M::Error> {
        Ok(WasiTestAttrs {
            tool: m.target("tool", &self.tool, &TOOL)?,
            srcs: m.files("srcs", &self.srcs)?,
            args: m.keep(&self.args),
            env: m.keep(&self.env),
        })
    }
}

impl Check for WasiToolAttrs<String> {
    fn check(&self, c: &Checker<'_>) -> starlark::Result<()> {
        c.labels("src", std::slice::from_ref(&self.src))?;
        c.labels("data", &self.data)?;
        if let Some(d) = &self.data_dir {
            check_data_dir(d).map_err(|m| c.err("data_dir", m))?;
        }
        if let Some(a) = &self.argv0
            && (a.is_empty() || a.contains('\0'))
        {
            return Err(c.err(
                "argv0",
                format!("{a:?} must be a non-empty program name without NUL bytes"),
            ));
        }
        Ok(())
    }
}

impl Check for WasiRunAttrs<String, String> {
    fn check(&self, c: &Checker<'_>) -> starlark::Result<()> {
        c.labels("tool", std::slice::from_ref(&self.tool))?;
        c.labels("srcs", &self.srcs)?;
        if self.outs.is_empty() {
            return Err(c.err(
                "outs",
                "wasi_run needs at least one output; use wasi_test for a check without outputs"
                    .into(),
            ));
        }
        c.outs(&self.outs)?;
        c.env(&self.env)
    }
}

impl Check for WasiTestAttrs<String, String> {
    fn check(&self, c: &Checker<'_>) -> starlark::Result<()> {
        c.labels("tool", std::slice::from_ref(&self.tool))?;
        c.labels("srcs", &self.srcs)?;
        c.env(&self.env)
    }
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

impl Analyse for WasiToolAttrs<Dep> {
    /// A tool provides its module.
    fn provides(&self, a: &mut Analyser<'_>, t: &Target) -> Result<Vec<String>, GraphError> {
        Ok(vec![tool_ref(a, &t.label, None)?.module.clone()])
    }
}

impl Analyse for WasiRunAttrs<Dep, Label> {
    fn actions<'a>(
        &'a self,
        a: &mut Analyser<'a>,
        t: &'a Target,
        _run_test: bool,
    ) -> Result<Vec<ActionNode>, GraphError> {
        let action = Run {
            tool: &self.tool,
            srcs: &self.srcs,
            outs: &self.outs,
            args: &self.args,
            env: &self.env,
            is_test: false,
        };
        Ok(vec![action.analyse(a, t)?])
    }
}

impl Analyse for WasiTestAttrs<Dep, Label> {
    /// Tests only run when asked for; as a dependency a wasi_test provides no files.
    fn needed(&self, run_test: bool) -> bool {
        run_test
    }

    fn actions<'a>(
        &'a self,
        a: &mut Analyser<'a>,
        t: &'a Target,
        _run_test: bool,
    ) -> Result<Vec<ActionNode>, GraphError> {
        let action = Run {
            tool: &self.tool,
            srcs: &self.srcs,
            outs: &[],
            args: &self.args,
            env: &self.env,
            is_test: true,
        };
        Ok(vec![action.analyse(a, t)?])
    }
}

/// The module and data of the `wasi_tool` `label` (computed once per tool); `from` is the
/// target naming it as a tool.
pub(crate) fn tool_ref(
    a: &mut Analyser<'_>,
    label: &Label,
    from: Option<&Target>,
) -> Result<std::sync::Arc<ToolRef>, GraphError> {
    if let Some(t) = a.tool(label) {
        return Ok(t.clone());
    }
    let t = a.target(label, from)?;
    let attr_err = |message: String| GraphError::Attribute {
        location: t.location.clone(),
        target: t.label.to_string(),
        message,
    };
    let Rule::WasiTool(WasiToolAttrs {
        src,
        data,
        data_dir,
        argv0,
    }) = &t.rule
    else {
        let (location, user) = match from {
            Some(f) => (f.location.clone(), f.label.to_string()),
            None => (t.location.clone(), t.label.to_string()),
        };
        return Err(GraphError::Attribute {
            location,
            target: user,
            message: format!(
                "attribute 'tool': {label} is a {}, not a wasi_tool",
                t.rule.kind()
            ),
        });
    };
    let module = match src {
        Dep::File(p) => {
            if !p.ends_with(".wasm") {
                return Err(attr_err(format!(
                    "attribute 'src': '{p}' is not a .wasm file"
                )));
            }
            p.clone()
        }
        Dep::Target(l) => {
            let files = a.dep_files(src, t)?;
            let wasm: Vec<&String> = files.iter().filter(|f| f.ends_with(".wasm")).collect();
            if wasm.len() != 1 {
                return Err(attr_err(format!(
                    "attribute 'src': {l} must provide exactly one .wasm file, it provides {}",
                    if wasm.is_empty() {
                        "none".to_owned()
                    } else {
                        wasm.iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                )));
            }
            wasm[0].clone()
        }
    };
    let dir = data_dir
        .as_deref()
        .unwrap_or(DEFAULT_DATA_DIR)
        .trim_end_matches('/');
    let mut by_guest: BTreeMap<String, String> = BTreeMap::new();
    for d in data {
        for f in a.dep_files(d, t)? {
            let owner = a.owner_package(&f);
            let rel = strip_package(&f, &owner).unwrap_or(&f);
            let guest = format!("{dir}/{rel}");
            if let Some(prev) = by_guest.get(&guest)
                && *prev != f
            {
                return Err(attr_err(format!(
                    "attribute 'data': '{prev}' and '{f}' would both appear at '{guest}'"
                )));
            }
            by_guest.insert(guest, f);
        }
    }
    let tool = std::sync::Arc::new(ToolRef {
        label: label.clone(),
        argv0: argv0.clone().unwrap_or_else(|| label.name.clone()),
        module,
        data: by_guest.into_iter().collect(),
    });
    a.remember_tool(label, &tool);
    Ok(tool)
}

/// The action of a `wasi_run` or `wasi_test`.
struct Run<'r> {
    tool: &'r Label,
    srcs: &'r [Dep],
    outs: &'r [String],
    args: &'r [String],
    env: &'r BTreeMap<String, String>,
    is_test: bool,
}

impl Run<'_> {
    fn analyse(&self, a: &mut Analyser<'_>, t: &Target) -> Result<ActionNode, GraphError> {
        let tool = tool_ref(a, self.tool, Some(t))?;
        let srcs = a.src_files(t, self.srcs)?;
        let once = crate::analysis::without_repeats(&srcs.all);
        let out_paths: Vec<String> = self
            .outs
            .iter()
            .map(|o| join(&t.label.package, o))
            .collect();
        let mut argv = Vec::with_capacity(self.args.len() + 1);
        argv.push(tool.argv0.clone());
        let mut expanded_env = BTreeMap::new();
        {
            let located = srcs.located();
            let expander = Expander {
                target: t,
                srcs: &located,
                src_files: once.as_deref().unwrap_or(&srcs.all),
                outs: &out_paths,
            };
            for arg in self.args {
                // An argument that is exactly one multi-file expansion ($(SRCS), $(OUTS),
                // $(locations X)) becomes one argument per file; anywhere else the files are
                // joined with spaces.
                match expander.expand_list(arg, "args")? {
                    Some(files) => argv.extend(files),
                    None => argv.push(expander.expand(arg, "args")?),
                }
            }
            for (k, v) in self.env {
                expanded_env.insert(k.clone(), expander.expand(v, &format!("env[{k:?}]"))?);
            }
        }
        // The expansions done, the files are the action's own (sorted).
        let mut inputs = once.unwrap_or(srcs.all);
        inputs.sort();
        let mut outputs = out_paths;
        outputs.sort();
        check_data_paths(t, &tool, &inputs, &outputs)?;
        let deps = a.producing_actions(
            t,
            inputs
                .iter()
                .chain(std::iter::once(&tool.module))
                .chain(tool.data.iter().map(|(_, p)| p)),
        )?;
        Ok(ActionNode {
            label: t.label.clone(),
            mnemonic: if self.is_test { "WasiTest" } else { "WasiRun" }.to_owned(),
            detail: None,
            exec: Exec::Wasi(tool),
            wasi_tools: Vec::new(),
            argv,
            env: expanded_env,
            inputs: inputs.into(),
            outputs,
            deps,
            is_test: self.is_test,
        })
    }
}

/// The guest sees inputs and outputs at `/<workspace path>` and tool data at `<data_dir>/...`;
/// the two must not overlap.
fn check_data_paths(
    t: &Target,
    tool: &ToolRef,
    inputs: &[String],
    outputs: &[String],
) -> Result<(), GraphError> {
    if tool.data.is_empty() {
        return Ok(());
    }
    let tree: BTreeSet<&str> = inputs.iter().chain(outputs).map(|s| s.as_str()).collect();
    for (guest, _) in &tool.data {
        let g = guest.trim_start_matches('/');
        let mut clash = tree.contains(g).then(|| g.to_owned());
        // A tree file where the data path needs a directory.
        let mut prefix = g;
        while clash.is_none() {
            let Some((parent, _)) = prefix.rsplit_once('/') else {
                break;
            };
            prefix = parent;
            clash = tree.contains(parent).then(|| parent.to_owned());
        }
        // A tree file below the data file's path.
        if clash.is_none() {
            let below = format!("{g}/");
            clash = tree
                .range(below.as_str()..)
                .next()
                .filter(|p| p.starts_with(&below))
                .map(|p| p.to_string());
        }
        if let Some(p) = clash {
            return Err(GraphError::Attribute {
                location: t.location.clone(),
                target: t.label.to_string(),
                message: format!(
                    "data file '{guest}' of tool {} overlaps '/{p}', an input or output of this \
                     action; give the wasi_tool another data_dir",
                    tool.label
                ),
            });
        }
    }
    Ok(())
}

#[starlark_module]
pub(super) fn builtins(builder: &mut GlobalsBuilder) {
    /// A WASI command module and the data files it reads:
    /// `wasi_tool(name, src, data = [], data_dir = "/share")`.
    #[allow(clippy::too_many_arguments)] // One parameter per attribute.
    fn wasi_tool<'v>(
        #[starlark(require = named)] name: String,
        #[starlark(require = named)] src: String,
        #[starlark(require = named, default = UnpackListOrTuple::default())] data: Strings,
        #[starlark(require = named)] data_dir: Option<String>,
        #[starlark(require = named)] argv0: Option<String>,
        #[starlark(require = named, default = UnpackListOrTuple::default())] visibility: Strings,
        #[starlark(require = named, default = UnpackListOrTuple::default())] tags: Strings,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> starlark::Result<NoneType> {
        let _ = (visibility, tags);
        let attrs = WasiToolAttrs {
            src,
            data: data.items,
            data_dir,
            argv0,
        };
        add_target(eval, "wasi_tool", name, RawRule::WasiTool(attrs), None)
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
        let attrs = WasiRunAttrs {
            tool,
            srcs: srcs.items,
            outs: outs.items,
            args: args.items,
            env,
        };
        add_target(eval, "wasi_run", name, RawRule::WasiRun(attrs), None)
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
        let attrs = WasiTestAttrs {
            tool,
            srcs: srcs.items,
            args: args.items,
            env,
        };
        add_target(eval, "wasi_test", name, RawRule::WasiTest(attrs), None)
    }
}
