//! `genrule(name, srcs = [], outs, cmd, tools = [], after = [])`: runs `cmd` with
//! `/bin/sh -c` in the native sandbox, as Bazel's genrule. `after` orders it after other
//! targets without making their files its inputs (ninja's order-only dependencies; what
//! `wbuild infer` writes for a step that probed a path a later step creates).

use std::collections::BTreeMap;

use starlark::environment::GlobalsBuilder;
use starlark::eval::Evaluator;
use starlark::starlark_module;
use starlark::values::list_or_tuple::UnpackListOrTuple;
use starlark::values::none::NoneType;

use super::{Analyse, Attrs, Check, MapRefs, RawRule, Rule, tool_ref};
use crate::analysis::{ActionNode, Analyser, Exec, Expander};
use crate::eval::{Checker, Strings, add_target};
use crate::label::{Label, join};
use crate::{Dep, GraphError, Target};

/// Where genrule launchers of WASI tools live in the action's tree
/// (`.wbuild/tools/<package>/<name>`).
const WASI_LAUNCHER_DIR: &str = ".wbuild/tools";

/// `genrule(name, srcs = [], outs, cmd, tools = [], after = [])`: runs `cmd` with
/// `/bin/sh -c` in the native sandbox, as Bazel's genrule. `tools` are inputs too (programs
/// the command runs); `after` only orders (their files are not inputs).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct GenruleAttrs<D> {
    pub srcs: Vec<D>,
    pub outs: Vec<String>,
    pub cmd: String,
    pub tools: Vec<D>,
    #[serde(default)]
    pub after: Vec<D>,
}

impl<D, L> Attrs<D, L> for GenruleAttrs<D> {
    type With<D2, L2> = GenruleAttrs<D2>;

    fn kind(&self) -> &'static str {
        "genrule"
    }

    fn described(&self) -> &'static str {
        "a genrule target"
    }

    fn outputs(&self, _name: &str) -> Vec<String> {
        self.outs.clone()
    }

    fn map<M: MapRefs<D, L>>(&self, m: &mut M) -> Result<Self::With<M::Dep, M::Label>, M::Error> {
        Ok(GenruleAttrs {
            srcs: m.files("srcs", &self.srcs)?,
            outs: m.keep(&self.outs),
            cmd: m.keep(&self.cmd),
            tools: m.files("tools", &self.tools)?,
            after: m.files("after", &self.after)?,
        })
    }
}

impl Check for GenruleAttrs<String> {
    fn check(&self, c: &Checker<'_>) -> starlark::Result<()> {
        c.labels("srcs", &self.srcs)?;
        c.labels("tools", &self.tools)?;
        c.labels("after", &self.after)?;
        if self.outs.is_empty() {
            return Err(c.err("outs", "genrule needs at least one output".into()));
        }
        c.outs(&self.outs)?;
        if self.cmd.trim().is_empty() {
            return Err(c.err("cmd", "genrule needs a command".into()));
        }
        Ok(())
    }
}

impl Analyse for GenruleAttrs<Dep> {
    /// `/bin/sh -c cmd`, with `cmd` expanded like `args` (srcs and tools may be named in
    /// `$(location)`); srcs and tools are the inputs.
    fn actions<'a>(
        &'a self,
        a: &mut Analyser<'a>,
        t: &'a Target,
        _run_test: bool,
    ) -> Result<Vec<ActionNode>, GraphError> {
        let srcs = a.src_files(t, &self.srcs)?;
        let once = crate::analysis::without_repeats(&srcs.all);
        let mut inputs = srcs.all.clone();
        let mut wasi_tools = Vec::new();
        // Each `tools` entry with its files (a WASI tool's: its launcher).
        let mut tool_files: Vec<(&Dep, Vec<String>)> = Vec::new();
        for d in &self.tools {
            if let Dep::Target(l) = d
                && let Rule::WasiTool(_) = a.target(l, Some(t))?.rule
            {
                // A WASI tool runs through a launcher that starts it in wbuild's WASI
                // executor inside the sandbox; `$(location)` names the launcher.
                let tool = tool_ref(a, l, Some(t))?;
                let launcher = launcher_path(l);
                inputs.push(tool.module.clone());
                inputs.extend(tool.data.iter().map(|(_, p)| p.clone()));
                tool_files.push((d, vec![launcher.clone()]));
                wasi_tools.push((launcher, crate::ToolRef::clone(&tool)));
                continue;
            }
            let files = a.dep_files(d, t)?;
            inputs.extend(files.iter().cloned());
            tool_files.push((d, files));
        }
        inputs.sort();
        inputs.dedup();
        let out_paths: Vec<String> = self
            .outs
            .iter()
            .map(|o| join(&t.label.package, o))
            .collect();
        let mut located = srcs.located();
        located.extend(tool_files.iter().map(|(d, f)| (*d, f.as_slice())));
        let expander = Expander {
            target: t,
            srcs: &located,
            src_files: once.as_deref().unwrap_or(&srcs.all),
            outs: &out_paths,
        };
        let cmd = expander.expand(&self.cmd, "cmd")?;
        let mut outputs = out_paths.clone();
        outputs.sort();
        let mut deps = a.producing_actions(t, inputs.iter())?;
        for d in &self.after {
            let files = a.dep_files(d, t)?;
            deps.extend(a.producing_actions(t, files.iter())?);
        }
        deps.sort_unstable();
        deps.dedup();
        Ok(vec![ActionNode {
            label: t.label.clone(),
            mnemonic: "Genrule".to_owned(),
            detail: None,
            exec: Exec::Native,
            wasi_tools,
            argv: vec!["/bin/sh".to_owned(), "-c".to_owned(), cmd],
            env: BTreeMap::new(),
            inputs: inputs.into(),
            outputs,
            deps,
            is_test: false,
        }])
    }
}

/// The workspace path of the launcher of the WASI tool `l` in a genrule's tree.
fn launcher_path(l: &Label) -> String {
    format!(
        "{WASI_LAUNCHER_DIR}/{}",
        l.to_string().trim_start_matches("//").replace(':', "/")
    )
}

#[starlark_module]
pub(super) fn builtins(builder: &mut GlobalsBuilder) {
    /// Runs a shell command in the native sandbox, as Bazel's genrule:
    /// `genrule(name, srcs = [], outs, cmd, tools = [], after = [])`.
    #[allow(clippy::too_many_arguments)] // One parameter per attribute.
    fn genrule<'v>(
        #[starlark(require = named)] name: String,
        #[starlark(require = named, default = UnpackListOrTuple::default())] srcs: Strings,
        #[starlark(require = named)] outs: Strings,
        #[starlark(require = named)] cmd: String,
        #[starlark(require = named, default = UnpackListOrTuple::default())] tools: Strings,
        #[starlark(require = named, default = UnpackListOrTuple::default())] after: Strings,
        #[starlark(require = named, default = UnpackListOrTuple::default())] visibility: Strings,
        #[starlark(require = named, default = UnpackListOrTuple::default())] tags: Strings,
        #[starlark(require = named)] platform: Option<String>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> starlark::Result<NoneType> {
        let _ = (visibility, tags);
        let attrs = GenruleAttrs {
            srcs: srcs.items,
            outs: outs.items,
            cmd,
            tools: tools.items,
            after: after.items,
        };
        add_target(eval, "genrule", name, RawRule::Genrule(attrs), platform)
    }
}
