//! `cc_library`, `cc_binary` and `cc_test` with Bazel's attributes, compiled in the native
//! sandbox, or with a `wasi_cc_toolchain` by WASI tools ([`WasiCc`]): one [`CcAttrs`] and
//! one built-in definition for the three, told apart by [`CcKind`]. The shell scripts of
//! their native actions are in [`script`].

pub(super) mod script;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use starlark::environment::GlobalsBuilder;
use starlark::eval::Evaluator;
use starlark::starlark_module;
use starlark::values::list_or_tuple::UnpackListOrTuple;
use starlark::values::none::NoneType;

use super::{Analyse, Attrs, Check, MapRefs, RawRule, Rule, Want, wasi};
use crate::analysis::{ActionNode, Analyser, Exec, ToolRef};
use crate::eval::{Checker, Strings, add_target};
use crate::label::{Label, check_rel_path, join};
use crate::{Dep, GraphError, Target};

/// Which of the `cc_*` rules.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum CcKind {
    Library,
    Binary,
    Test,
}

impl CcKind {
    /// The rule function's name as written in `WBUILD` files.
    pub fn function(self) -> &'static str {
        match self {
            CcKind::Library => "cc_library",
            CcKind::Binary => "cc_binary",
            CcKind::Test => "cc_test",
        }
    }
}

/// `cc_library`, `cc_binary`, `cc_test` with Bazel's attributes (`srcs`, `hdrs`, `deps`,
/// `copts`, `defines`, `includes`, `linkopts`; only a library has `hdrs`), compiled by the
/// host gcc in the native sandbox, or with `toolchain` (a `wasi_cc_toolchain`) by WASI tools
/// in the WASI executor. A library provides `lib<name>.a`, a binary or test the program
/// `<name>` (`<name>.wasm` with a WASI toolchain). `deps` name `cc_library` targets, built
/// with the same toolchain.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CcAttrs<D, L> {
    pub kind: CcKind,
    pub srcs: Vec<D>,
    pub hdrs: Vec<D>,
    pub deps: Vec<L>,
    pub copts: Vec<String>,
    pub defines: Vec<String>,
    pub includes: Vec<String>,
    pub linkopts: Vec<String>,
    pub toolchain: Option<L>,
}

/// `deps` name `cc_library` targets.
const LIBRARY: Want = Want {
    accepts: is_cc_library,
    refuse: not_a_library,
};

fn is_cc_library(rule: &RawRule) -> bool {
    matches!(
        rule,
        RawRule::Cc(CcAttrs {
            kind: CcKind::Library,
            ..
        })
    )
}

fn not_a_library(reference: &str, _what: &str) -> String {
    format!(
        "'{reference}' is not a cc_library; deps of cc_* rules name \
         cc_library targets (put files in srcs or hdrs)"
    )
}

impl<D, L> Attrs<D, L> for CcAttrs<D, L> {
    type With<D2, L2> = CcAttrs<D2, L2>;

    fn kind(&self) -> &'static str {
        self.kind.function()
    }

    fn described(&self) -> &'static str {
        "a cc_* target"
    }

    fn outputs(&self, name: &str) -> Vec<String> {
        script::outputs(self.kind, name, self.toolchain.is_some())
    }

    fn map<M: MapRefs<D, L>>(&self, m: &mut M) -> Result<Self::With<M::Dep, M::Label>, M::Error> {
        let mut deps = Vec::with_capacity(self.deps.len());
        for d in &self.deps {
            deps.push(m.target("deps", d, &LIBRARY)?);
        }
        Ok(CcAttrs {
            kind: self.kind,
            srcs: m.files("srcs", &self.srcs)?,
            hdrs: m.files("hdrs", &self.hdrs)?,
            deps,
            copts: m.keep(&self.copts),
            defines: m.keep(&self.defines),
            includes: m.keep(&self.includes),
            linkopts: m.keep(&self.linkopts),
            toolchain: match &self.toolchain {
                Some(t) => Some(m.target("toolchain", t, &super::wasi_cc::TOOLCHAIN)?),
                None => None,
            },
        })
    }
}

impl Check for CcAttrs<String, String> {
    fn check(&self, c: &Checker<'_>) -> starlark::Result<()> {
        c.labels("srcs", &self.srcs)?;
        c.labels("hdrs", &self.hdrs)?;
        c.labels("deps", &self.deps)?;
        if let Some(t) = &self.toolchain {
            c.labels("toolchain", std::slice::from_ref(t))?;
        }
        for i in &self.includes {
            if i != "." {
                check_rel_path(i)
                    .map_err(|e| c.err("includes", format!("invalid include {i:?}: {e}")))?;
            }
        }
        Ok(())
    }
}

impl Analyse for CcAttrs<Dep, Label> {
    /// One `CcCompile` action per source (inputs: the source, the target's headers and those
    /// of its transitive deps), then a `CcArchive` or `CcLink` action over the objects (and,
    /// to link, the transitive archives), and for a test whose run is requested a `CcTest`
    /// action running the program. (As Bazel's `build` does, a `cc_test` that is not run is
    /// still linked.)
    fn actions<'a>(
        &'a self,
        a: &mut Analyser<'a>,
        t: &'a Target,
        run_test: bool,
    ) -> Result<Vec<ActionNode>, GraphError> {
        let CcAttrs {
            kind,
            srcs,
            hdrs,
            deps,
            copts,
            defines,
            includes,
            linkopts,
            toolchain,
        } = self;
        let pkg = &t.label.package;
        let label = t.label.to_string();
        let mut headers: Vec<String> = Vec::new();
        let mut sources = Vec::new();
        let mut private_headers = Vec::new();
        for d in srcs {
            for f in a.dep_files(d, t)? {
                if script::is_source(&f) {
                    sources.push(f);
                } else {
                    private_headers.push(f.clone());
                    headers.push(f);
                }
            }
        }
        let mut dep_headers = Vec::new();
        for l in deps {
            let dep = a.target(l, Some(t))?;
            if let Rule::Cc(CcAttrs { hdrs, .. }) = &dep.rule {
                let mut files = Vec::new();
                for h in hdrs {
                    files.extend(a.dep_files(h, dep)?);
                }
                dep_headers.push((l.to_string(), files));
            }
        }
        for d in hdrs {
            headers.extend(a.dep_files(d, t)?);
        }
        let mut all_defines = defines.clone();
        let mut include_dirs: Vec<String> = includes
            .iter()
            .map(|i| if i == "." { pkg.clone() } else { join(pkg, i) })
            .collect();
        // Transitive cc_library deps in post-order (dependencies first).
        let mut order: Vec<Label> = Vec::new();
        let mut seen: HashSet<Label> = HashSet::new();
        let mut stack: Vec<(Label, bool)> = deps.iter().rev().map(|l| (l.clone(), false)).collect();
        while let Some((l, expanded)) = stack.pop() {
            if expanded {
                order.push(l);
                continue;
            }
            if !seen.insert(l.clone()) {
                continue;
            }
            stack.push((l.clone(), true));
            if let Rule::Cc(CcAttrs { deps, .. }) = &a.target(&l, Some(t))?.rule {
                for d in deps.iter().rev() {
                    stack.push((d.clone(), false));
                }
            }
        }
        let mut archives = Vec::new();
        for l in order.iter().rev() {
            let dep = a.target(l, Some(t))?;
            let Rule::Cc(CcAttrs {
                hdrs,
                defines,
                includes,
                toolchain: dep_toolchain,
                ..
            }) = &dep.rule
            else {
                continue;
            };
            if dep_toolchain != toolchain {
                let named = |tc: &Option<Label>| match tc {
                    Some(l) => format!("toolchain {l}"),
                    None => "the host toolchain".to_owned(),
                };
                return Err(GraphError::Attribute {
                    location: t.location.clone(),
                    target: label,
                    message: format!(
                        "attribute 'deps': {l} is built with {}, this target with {}; a program links only objects of its own toolchain: give {l} the same toolchain attribute (or define a second library for this toolchain)",
                        named(dep_toolchain),
                        named(toolchain)
                    ),
                });
            }
            for h in hdrs {
                headers.extend(a.dep_files(h, dep)?);
            }
            all_defines.extend(defines.iter().cloned());
            include_dirs.extend(includes.iter().map(|i| {
                if i == "." {
                    l.package.clone()
                } else {
                    join(&l.package, i)
                }
            }));
            archives.push(join(&l.package, &script::archive_name(&l.name)));
        }
        headers.sort();
        headers.dedup();
        let mut seen_dirs = HashSet::new();
        include_dirs.retain(|d| seen_dirs.insert(d.clone()));
        if let Some(tc) = toolchain {
            return WasiCc {
                kind: *kind,
                toolchain: tc,
                sources: &sources,
                headers: &headers,
                copts,
                defines: &all_defines,
                include_dirs: &include_dirs,
                archives: &archives,
                linkopts,
            }
            .actions(a, t, run_test);
        }

        let mut actions = Vec::new();
        let mut objects = Vec::new();
        let mut depfiles = Vec::new();
        let mut stems: HashMap<String, &String> = HashMap::new();
        let compile_deps = a.producing_actions(t, headers.iter())?;
        // Every compile of the target declares the same headers: one set, shared.
        let shared_headers = crate::Inputs::shared_set(headers.clone());
        for src in &sources {
            let stem = script::object_stem(pkg, &t.label.name, src);
            if let Some(other) = stems.insert(stem.clone(), src) {
                return Err(GraphError::Attribute {
                    location: t.location.clone(),
                    target: label,
                    message: format!(
                        "attribute 'srcs': '{other}' and '{src}' would both compile to {stem}.o; rename one of them"
                    ),
                });
            }
            let (object, depfile) = (format!("{stem}.o"), format!("{stem}.d"));
            let script = script::Compile {
                source: src,
                object: &object,
                depfile: &depfile,
                copts,
                defines: &all_defines,
                include_dirs: &include_dirs,
            }
            .script();
            let inputs = crate::Inputs::new(shared_headers.clone(), vec![src.clone()]);
            let mut deps: BTreeSet<usize> = compile_deps.iter().copied().collect();
            deps.extend(a.producing_actions(t, std::iter::once(src))?);
            let mut outputs = vec![object.clone(), depfile.clone()];
            outputs.sort();
            actions.push(ActionNode {
                label: t.label.clone(),
                mnemonic: "CcCompile".to_owned(),
                detail: Some(src.clone()),
                exec: Exec::Native,
                wasi_tools: Vec::new(),
                argv: vec!["/bin/sh".to_owned(), "-c".to_owned(), script],
                env: BTreeMap::new(),
                inputs,
                outputs,
                deps: deps.into_iter().collect(),
                is_test: false,
            });
            objects.push(object);
            depfiles.push(depfile);
        }

        let output = join(pkg, &script::outputs(*kind, &t.label.name, false)[0]);
        let finish = script::Finish {
            kind: *kind,
            output: &output,
            objects: &objects,
            depfiles: &depfiles,
            archives: if *kind == CcKind::Library {
                &[]
            } else {
                &archives
            },
            linkopts,
            cxx: sources.iter().any(|s| script::is_cxx(s)),
            label: &label,
            private_headers: &private_headers,
            dep_headers: &dep_headers,
        };
        // A library is archived by wbuild itself (in-process, as `ar rcsD` would write it;
        // its header checks made from the depfiles once the archive is written), unless its
        // objects are compiled for link-time optimisation: then their symbols are in LTO
        // sections only `ar`'s plugin can index.
        let builtin = *kind == CcKind::Library && !copts.iter().any(|o| o.starts_with("-flto"));
        let argv = if builtin {
            let mut argv = vec![crate::ARCHIVER.to_owned()];
            argv.extend(finish.header_checks_arg());
            argv.extend(["rcsD".to_owned(), output.clone()]);
            argv.extend(objects.iter().cloned());
            argv
        } else {
            vec!["/bin/sh".to_owned(), "-c".to_owned(), finish.script()]
        };
        // The depfiles are inputs only where the script reads them (for its header checks).
        let mut inputs: Vec<String> = objects.clone();
        if finish.reads_depfiles() {
            inputs.extend(depfiles.iter().cloned());
        }
        if *kind != CcKind::Library {
            inputs.extend(archives.iter().cloned());
        }
        inputs.sort();
        inputs.dedup();
        // The objects' producers are the compile actions just made (indices follow the
        // actions already pushed).
        let base = a.action_count();
        let mut deps: BTreeSet<usize> = (base..base + actions.len()).collect();
        deps.extend(a.producing_actions(t, archives.iter())?);
        let finish_index = base + actions.len();
        actions.push(ActionNode {
            label: t.label.clone(),
            mnemonic: if *kind == CcKind::Library {
                "CcArchive"
            } else {
                "CcLink"
            }
            .to_owned(),
            // A test's main action is the one running it.
            detail: (*kind == CcKind::Test).then(|| "link".to_owned()),
            exec: if builtin { Exec::Archive } else { Exec::Native },
            wasi_tools: Vec::new(),
            argv,
            env: BTreeMap::new(),
            inputs: inputs.into(),
            outputs: vec![output.clone()],
            deps: deps.into_iter().collect(),
            is_test: false,
        });
        if *kind == CcKind::Test && run_test {
            actions.push(ActionNode {
                label: t.label.clone(),
                mnemonic: "CcTest".to_owned(),
                detail: None,
                exec: Exec::Native,
                wasi_tools: Vec::new(),
                argv: vec![
                    "/bin/sh".to_owned(),
                    "-c".to_owned(),
                    script::test_script(&output),
                ],
                env: BTreeMap::new(),
                inputs: vec![output].into(),
                outputs: Vec::new(),
                deps: vec![finish_index],
                is_test: true,
            });
        }
        Ok(actions)
    }
}

/// What the actions of a `cc_*` target with a WASI toolchain are made from (the same
/// sources, headers, flags and transitive archives as a native build of it).
struct WasiCc<'r> {
    kind: CcKind,
    toolchain: &'r Label,
    sources: &'r [String],
    headers: &'r [String],
    copts: &'r [String],
    /// Own and transitive `defines`.
    defines: &'r [String],
    /// Include directories (workspace paths; "" is the workspace root).
    include_dirs: &'r [String],
    /// Transitive archives, dependencies last.
    archives: &'r [String],
    linkopts: &'r [String],
}

impl WasiCc<'_> {
    /// As the native actions, run by the toolchain's WASI tools: one `CcCompile` per source
    /// (`clang -c`: its header reads are observed, so no depfile), then `CcArchive`
    /// (`llvm-ar rcsD`) or `CcLink` (`wasm-ld`), and for a test whose run is requested a
    /// `CcTest` running the linked module in the WASI executor.
    fn actions(
        &self,
        a: &mut Analyser<'_>,
        t: &Target,
        run_test: bool,
    ) -> Result<Vec<ActionNode>, GraphError> {
        let tc_target = a.target(self.toolchain, Some(t))?;
        let Rule::WasiCcToolchain(tc) = &tc_target.rule else {
            return Err(GraphError::Attribute {
                location: t.location.clone(),
                target: t.label.to_string(),
                message: format!(
                    "attribute 'toolchain': {} is a {}, not a wasi_cc_toolchain",
                    self.toolchain,
                    tc_target.rule.kind()
                ),
            });
        };
        let clang = wasi::tool_ref(a, &tc.clang, Some(tc_target))?;
        let ld = wasi::tool_ref(a, &tc.ld, Some(tc_target))?;
        let ar = wasi::tool_ref(a, &tc.ar, Some(tc_target))?;
        let tool_files = |tool: &ToolRef| -> Vec<String> {
            std::iter::once(tool.module.clone())
                .chain(tool.data.iter().map(|(_, p)| p.clone()))
                .collect()
        };
        let pkg = &t.label.package;
        let mut actions = Vec::new();
        let mut objects = Vec::new();
        let mut stems: HashMap<String, &String> = HashMap::new();
        let compile_deps =
            a.producing_actions(t, self.headers.iter().chain(&tool_files(&clang)))?;
        let shared_headers = crate::Inputs::shared_set(self.headers.to_vec());
        for src in self.sources {
            let stem = script::object_stem(pkg, &t.label.name, src);
            if let Some(other) = stems.insert(stem.clone(), src) {
                return Err(GraphError::Attribute {
                    location: t.location.clone(),
                    target: t.label.to_string(),
                    message: format!(
                        "attribute 'srcs': '{other}' and '{src}' would both compile to {stem}.o; rename one of them"
                    ),
                });
            }
            let object = format!("{stem}.o");
            let mut argv = vec![clang.argv0.clone()];
            argv.extend(tc.copts.iter().cloned());
            argv.extend(self.copts.iter().cloned());
            argv.extend(self.defines.iter().map(|d| format!("-D{d}")));
            argv.extend(["-iquote".to_owned(), ".".to_owned()]);
            for dir in self.include_dirs {
                argv.push("-I".to_owned());
                argv.push(if dir.is_empty() {
                    ".".into()
                } else {
                    dir.clone()
                });
            }
            argv.extend([
                "-c".to_owned(),
                src.clone(),
                "-o".to_owned(),
                object.clone(),
            ]);
            let inputs = crate::Inputs::new(shared_headers.clone(), vec![src.clone()]);
            let mut deps: BTreeSet<usize> = compile_deps.iter().copied().collect();
            deps.extend(a.producing_actions(t, std::iter::once(src))?);
            actions.push(ActionNode {
                label: t.label.clone(),
                mnemonic: "CcCompile".to_owned(),
                detail: Some(src.clone()),
                exec: Exec::Wasi(clang.clone()),
                wasi_tools: Vec::new(),
                argv,
                env: BTreeMap::new(),
                inputs,
                outputs: vec![object.clone()],
                deps: deps.into_iter().collect(),
                is_test: false,
            });
            objects.push(object);
        }

        let output = join(pkg, &script::outputs(self.kind, &t.label.name, true)[0]);
        let (tool, argv, mut inputs) = if self.kind == CcKind::Library {
            let mut argv = vec![ar.argv0.clone(), "rcsD".to_owned(), output.clone()];
            argv.extend(objects.iter().cloned());
            (&ar, argv, objects.clone())
        } else {
            let mut argv = vec![ld.argv0.clone()];
            argv.extend(tc.link_head.iter().cloned());
            argv.extend(objects.iter().cloned());
            argv.extend(self.archives.iter().cloned());
            argv.extend(self.linkopts.iter().cloned());
            argv.extend(tc.link_tail.iter().cloned());
            argv.extend(["-o".to_owned(), output.clone()]);
            let inputs = objects.iter().chain(self.archives).cloned().collect();
            (&ld, argv, inputs)
        };
        inputs.sort();
        inputs.dedup();
        let base = a.action_count();
        let mut deps: BTreeSet<usize> = (base..base + actions.len()).collect();
        deps.extend(a.producing_actions(t, self.archives.iter().chain(&tool_files(tool)))?);
        let finish_index = base + actions.len();
        actions.push(ActionNode {
            label: t.label.clone(),
            mnemonic: if self.kind == CcKind::Library {
                "CcArchive"
            } else {
                "CcLink"
            }
            .to_owned(),
            detail: (self.kind == CcKind::Test).then(|| "link".to_owned()),
            exec: Exec::Wasi(tool.clone()),
            wasi_tools: Vec::new(),
            argv,
            env: BTreeMap::new(),
            inputs: inputs.into(),
            outputs: vec![output.clone()],
            deps: deps.into_iter().collect(),
            is_test: false,
        });
        if self.kind == CcKind::Test && run_test {
            let program = ToolRef {
                label: t.label.clone(),
                argv0: t.label.name.clone(),
                module: output,
                data: Vec::new(),
            };
            actions.push(ActionNode {
                label: t.label.clone(),
                mnemonic: "CcTest".to_owned(),
                detail: None,
                argv: vec![program.argv0.clone()],
                exec: Exec::Wasi(std::sync::Arc::new(program)),
                wasi_tools: Vec::new(),
                env: BTreeMap::new(),
                inputs: Vec::new().into(),
                outputs: Vec::new(),
                deps: vec![finish_index],
                is_test: true,
            });
        }
        Ok(actions)
    }
}

/// Declares the three `cc_*` built-ins from one definition: each is `$function` for `$kind`,
/// and only those given `hdrs` take that attribute.
macro_rules! cc_builtins {
    ($($(#[doc = $doc:literal])* $function:ident: $kind:ident $(, $hdrs:ident)?;)+) => {
        #[starlark_module]
        pub(super) fn builtins(builder: &mut GlobalsBuilder) {
            $(
                $(#[doc = $doc])*
                #[allow(clippy::too_many_arguments)] // One parameter per attribute.
                fn $function<'v>(
                    #[starlark(require = named)] name: String,
                    #[starlark(require = named, default = UnpackListOrTuple::default())]
                    srcs: Strings,
                    $(
                        #[starlark(require = named, default = UnpackListOrTuple::default())]
                        $hdrs: Strings,
                    )?
                    #[starlark(require = named, default = UnpackListOrTuple::default())]
                    deps: Strings,
                    #[starlark(require = named, default = UnpackListOrTuple::default())]
                    copts: Strings,
                    #[starlark(require = named, default = UnpackListOrTuple::default())]
                    defines: Strings,
                    #[starlark(require = named, default = UnpackListOrTuple::default())]
                    includes: Strings,
                    #[starlark(require = named, default = UnpackListOrTuple::default())]
                    linkopts: Strings,
                    #[starlark(require = named, default = UnpackListOrTuple::default())]
                    visibility: Strings,
                    #[starlark(require = named, default = UnpackListOrTuple::default())]
                    tags: Strings,
                    #[starlark(require = named)] platform: Option<String>,
                    #[starlark(require = named)] toolchain: Option<String>,
                    eval: &mut Evaluator<'v, '_, '_>,
                ) -> starlark::Result<NoneType> {
                    let _ = (visibility, tags);
                    // `hdrs` when this rule takes it, else none.
                    let hdrs: Strings = [$($hdrs)?].into_iter().next().unwrap_or_default();
                    let attrs = CcAttrs {
                        kind: CcKind::$kind,
                        srcs: srcs.items,
                        hdrs: hdrs.items,
                        deps: deps.items,
                        copts: copts.items,
                        defines: defines.items,
                        includes: includes.items,
                        linkopts: linkopts.items,
                        toolchain,
                    };
                    add_target(eval, CcKind::$kind.function(), name, RawRule::Cc(attrs), platform)
                }
            )+
        }
    };
}

cc_builtins! {
    /// A C/C++ library: `cc_library(name, srcs = [], hdrs = [], deps = [], copts = [],
    /// defines = [], includes = [], linkopts = [])`.
    cc_library: Library, hdrs;
    /// A C/C++ program: `cc_binary(name, srcs = [], deps = [], copts = [], defines = [],
    /// includes = [], linkopts = [])`.
    cc_binary: Binary;
    /// A C/C++ test program, run by `wbuild test`: `cc_test(name, srcs = [], deps = [], ...)`.
    cc_test: Test;
}
