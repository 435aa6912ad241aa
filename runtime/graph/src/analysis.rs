//! Analysis: targets -> actions (argv, env, tool, exact inputs and outputs, dependencies).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use rustc_hash::{FxHashMap, FxHashSet};

use crate::label::{Label, is_join, join};
use crate::load::find_cycle;
use crate::rules::Edges;
use crate::workspace::Workspace;
use crate::{Dep, GraphError, Target, TargetGraph};

/// The action index recorded in [`ActionGraph::producers`] for an output whose producing
/// target is loaded but not needed by the analysed roots (so it has no action).
pub const NOT_SCHEDULED: usize = usize::MAX;

/// A map in the analysis cache: its entries in order, read back by building the tree from
/// the sorted entries at once (inserting 10,000 string keys one by one, each a search, was a
/// tenth of reading the cache after an edit).
mod sorted_map {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<K: Serialize, V: Serialize, S: Serializer>(
        map: &BTreeMap<K, V>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(map.iter())
    }

    pub fn deserialize<'de, K, V, D>(d: D) -> Result<BTreeMap<K, V>, D::Error>
    where
        K: Deserialize<'de> + Ord,
        V: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        // `from_iter` sorts (a pass over sorted entries) and builds the tree in bulk.
        Ok(Vec::<(K, V)>::deserialize(d)?.into_iter().collect())
    }
}

/// The actions needed for some root targets.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ActionGraph {
    /// Topologically ordered: every index in `deps` is smaller than the action's own index.
    /// Holds exactly the actions the roots need (test actions only for test roots, and only
    /// when tests are included).
    pub actions: Vec<ActionNode>,
    /// For each root target: the workspace paths it provides (outputs of a `wasi_run`, files
    /// of a `filegroup`, the module of a `wasi_tool`, nothing for a `wasi_test`), sorted.
    #[serde(with = "sorted_map")]
    pub target_files: BTreeMap<Label, Vec<String>>,
    /// Every generated workspace path of every loaded target -> (index of the action that
    /// produces it, producing label). The index is [`NOT_SCHEDULED`] when that target is not
    /// needed by the roots (the label still names who could produce the file).
    #[serde(with = "sorted_map")]
    pub producers: BTreeMap<String, (usize, Label)>,
    /// Root targets with a `platform` attribute, and that platform's name.
    #[serde(default)]
    pub root_platforms: BTreeMap<Label, String>,
    /// Root targets that are `wasi_tool`s: how the tool runs (`argv0`, module, data), for
    /// `wbuild run`.
    #[serde(default)]
    pub root_tools: BTreeMap<Label, ToolRef>,
}

impl ActionGraph {
    /// The actions `roots` need (those of the roots and, transitively, their dependencies),
    /// in the same order, with `deps` renumbered; `target_files` of those roots only and
    /// `producers` with indices into the new list ([`NOT_SCHEDULED`] for actions left out).
    pub fn subgraph(&self, roots: &[Label]) -> ActionGraph {
        let wanted: HashSet<&Label> = roots.iter().collect();
        let mut keep = vec![false; self.actions.len()];
        for i in (0..self.actions.len()).rev() {
            if wanted.contains(&self.actions[i].label) {
                keep[i] = true;
            }
            if keep[i] {
                for &d in &self.actions[i].deps {
                    keep[d] = true;
                }
            }
        }
        let mut new_index = vec![NOT_SCHEDULED; self.actions.len()];
        let mut actions = Vec::new();
        for (i, a) in self.actions.iter().enumerate() {
            if keep[i] {
                new_index[i] = actions.len();
                let mut a = a.clone();
                a.deps = a.deps.iter().map(|&d| new_index[d]).collect();
                actions.push(a);
            }
        }
        ActionGraph {
            actions,
            target_files: self
                .target_files
                .iter()
                .filter(|(l, _)| wanted.contains(l))
                .map(|(l, f)| (l.clone(), f.clone()))
                .collect(),
            producers: self
                .producers
                .iter()
                .map(|(p, (i, l))| {
                    let i = if *i == NOT_SCHEDULED {
                        NOT_SCHEDULED
                    } else {
                        new_index[*i]
                    };
                    (p.clone(), (i, l.clone()))
                })
                .collect(),
            root_platforms: self
                .root_platforms
                .iter()
                .filter(|(l, _)| wanted.contains(l))
                .map(|(l, p)| (l.clone(), p.clone()))
                .collect(),
            root_tools: self
                .root_tools
                .iter()
                .filter(|(l, _)| wanted.contains(l))
                .map(|(l, t)| (l.clone(), t.clone()))
                .collect(),
        }
    }
}

/// One tool invocation.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ActionNode {
    pub label: Label,
    /// `WasiRun`, `WasiTest`, `Genrule`, `CcCompile`, `CcArchive`, `CcLink` or `CcTest`.
    pub mnemonic: String,
    /// For a target with several actions, what this one works on beyond the label (the
    /// source a `CcCompile` compiles); `None` for the target's main action.
    #[serde(default)]
    pub detail: Option<String>,
    /// What runs: a WASI tool, or a shell command in the native sandbox.
    pub exec: Exec,
    /// WASI: `argv[0]` is the `wasi_tool`'s name, then the expanded `args`. Native:
    /// `["/bin/sh", "-c", cmd]` with `cmd` expanded.
    pub argv: Vec<String>,
    /// Exactly the variables given in `env` (values expanded); nothing is inherited.
    pub env: BTreeMap<String, String>,
    /// Sorted, deduplicated workspace paths of the `srcs` (source files and generated files);
    /// the tool's module and data are in `tool`, not here. The headers every compile of a
    /// `cc_*` target declares are one set, shared by those compiles (see [`crate::Inputs`]).
    pub inputs: crate::Inputs,
    /// Sorted workspace paths of the outputs (empty for tests).
    pub outputs: Vec<String>,
    /// Sorted indices of the actions producing an input, the tool module or a tool data file.
    pub deps: Vec<usize>,
    pub is_test: bool,
    /// Native actions: WASI tools the command runs (genrule `tools` that are `wasi_tool`s),
    /// each with the workspace path of the launcher that starts it. Their modules and data
    /// are among `inputs`.
    #[serde(default)]
    pub wasi_tools: Vec<(String, ToolRef)>,
}

/// `argv[0]` of an [`Exec::Archive`] action.
pub const ARCHIVER: &str = "wbuild-archive";

/// The prefix of the builtin archiver's optional first argument: a library's header checks
/// as JSON (`label`, `depfiles`, `private` headers, `deps` as `[label, [hdrs]]`), made once
/// the archive is written (see `rules::cc::script::Finish::header_checks_arg`).
pub const HEADER_CHECKS_ARG: &str = "--header-checks=";

/// The warning for a private header (in `srcs` of `label`) that no source includes.
pub fn unused_private_header(label: &str, header: &str) -> String {
    format!(
        "warning: {label}: private header {header} is not included by any source; remove it from srcs"
    )
}

/// The warning for a direct dependency `dep` of `label` none of whose headers is included.
pub fn unused_dependency(label: &str, dep: &str) -> String {
    format!(
        "warning: {label}: no source includes a header of its dependency {dep}; remove it from deps if it is not needed"
    )
}

/// How an action runs.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Exec {
    /// A `wasi_tool` in the WASI executor (one `ToolRef` shared by every action of an
    /// analysis that runs it: 100,000 actions of one tool held one copy each).
    Wasi(#[serde(with = "crate::inputs::tool")] std::sync::Arc<ToolRef>),
    /// `argv` in the native namespace sandbox, with the host toolchain (`genrule`).
    Native,
    /// `argv` = `wbuild-archive rcsD OUTPUT OBJECT...`: the objects written as a GNU `ar`
    /// archive with a symbol index (as `ar rcsD` writes it) by wbuild itself, in-process (a
    /// `cc_library`'s archive step).
    Archive,
}

impl ActionNode {
    /// The action's name in history, events and messages: the label, then the detail.
    pub fn name(&self) -> String {
        match &self.detail {
            Some(d) => format!("{} {d}", self.label),
            None => self.label.to_string(),
        }
    }

    /// The WASI tool, for WASI actions.
    pub fn wasi_tool(&self) -> Option<&ToolRef> {
        match &self.exec {
            Exec::Wasi(t) => Some(t),
            Exec::Native | Exec::Archive => None,
        }
    }
}

/// The `wasi_tool` an action runs.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ToolRef {
    pub label: Label,
    /// The program name the module runs under (argv[0]): `argv0`, or the tool's name.
    pub argv0: String,
    /// Workspace path of the `.wasm` module.
    pub module: String,
    /// (absolute guest path, workspace path) of each data file, sorted by guest path.
    pub data: Vec<(String, String)>,
}

/// Turns the targets `roots` (and everything they need) into actions. With `include_tests`,
/// `wasi_test` roots get a test action; without, they are skipped.
///
/// A large graph is analysed in parts on every core ([`analyse_in_parts`]); the result is the
/// same graph, action for action, as the analysis in one pass gives.
pub fn analyse(
    ws: &Workspace,
    graph: &TargetGraph,
    roots: &[Label],
    include_tests: bool,
) -> Result<ActionGraph, GraphError> {
    analyse_during(ws, graph, roots, include_tests, |_| ()).map(|(graph, ())| graph)
}

/// As [`analyse`], with `during` given the graph's actions, once they are made, on a thread of
/// its own while the rest of the graph (the roots' files, the producers of every output) is
/// made from them: the analysis cache writes the actions meanwhile (for 100,000 targets, the
/// rest took some 80 ms, which the writer then waited for).
pub(crate) fn analyse_during<R: Send>(
    ws: &Workspace,
    graph: &TargetGraph,
    roots: &[Label],
    include_tests: bool,
    during: impl FnOnce(&[ActionNode]) -> R + Send,
) -> Result<(ActionGraph, R), GraphError> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    let parts = (threads > 1 && graph.targets.len() >= PARTS_MIN_TARGETS).then_some(Parts {
        threads,
        min_targets: PART_MIN_TARGETS,
    });
    analyse_with_during(ws, graph, roots, include_tests, parts, during)
}

/// Graphs with fewer targets are analysed in one pass, on one thread.
const PARTS_MIN_TARGETS: usize = 2_000;
/// The least number of targets in a part.
const PART_MIN_TARGETS: usize = 256;

/// How [`analyse_in_parts`] cuts the analysis.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Parts {
    /// At most this many parts, each on a thread.
    pub threads: usize,
    /// The least number of targets in a part.
    pub min_targets: usize,
}

#[cfg(test)]
pub(crate) fn analyse_with(
    ws: &Workspace,
    graph: &TargetGraph,
    roots: &[Label],
    include_tests: bool,
    parts: Option<Parts>,
) -> Result<ActionGraph, GraphError> {
    analyse_with_during(ws, graph, roots, include_tests, parts, |_| ()).map(|(graph, ())| graph)
}

fn analyse_with_during<R: Send>(
    ws: &Workspace,
    graph: &TargetGraph,
    roots: &[Label],
    include_tests: bool,
    parts: Option<Parts>,
    during: impl FnOnce(&[ActionNode]) -> R + Send,
) -> Result<(ActionGraph, R), GraphError> {
    // The loader gives them sorted, each once.
    let roots: std::borrow::Cow<'_, [Label]> = if roots.is_sorted_by(|a, b| a < b) {
        roots.into()
    } else {
        let mut roots = roots.to_vec();
        roots.sort();
        roots.dedup();
        roots.into()
    };
    let roots: &[Label] = &roots;
    // A graph analysed in parts is indexed and planned by the dependencies the loader found
    // while the producer of every output is mapped on another thread.
    let (shared, planned) = if parts.is_some() {
        std::thread::scope(|s| {
            let mapping = s.spawn(|| outputs_of(graph));
            let index: FxHashMap<&Label, &Target> = graph.targets.iter().collect();
            let planned = plan(&index, None, roots, include_tests);
            let outputs = mapping
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            outputs.map(|outputs| (Shared { index, outputs }, planned))
        })?
    } else {
        let outputs = outputs_of(graph)?;
        let index = graph.targets.iter().collect();
        (Shared { index, outputs }, None)
    };
    for r in roots {
        if !shared.index.contains_key(r) {
            return Err(GraphError::NoSuchTarget {
                label: r.clone(),
                context: " (named on the command line)".into(),
            });
        }
    }
    // Any error found in parts is looked for again in one pass, which names the first one as
    // it always has.
    let in_parts = parts.and_then(|p| {
        let planned =
            planned.or_else(|| plan(&shared.index, Some(&shared.outputs), roots, include_tests))?;
        analyse_in_parts(ws, &shared, &planned, include_tests, p)
    });
    let mut settled = match in_parts {
        Some(settled) => settled,
        None => analyse_in_one_pass(ws, &shared, graph, roots, include_tests)?,
    };
    let actions = std::mem::take(&mut settled.actions);
    let (rest, during) = std::thread::scope(|s| {
        let during = s.spawn(|| during(&actions));
        let rest = finish(ws, shared, settled, roots, &actions);
        (rest, during.join())
    });
    let mut graph = rest?;
    graph.actions = actions;
    match during {
        Ok(during) => Ok((graph, during)),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// The one-pass analysis: a post-order visit of the roots, each target's actions made once
/// its dependencies' are.
fn analyse_in_one_pass(
    ws: &Workspace,
    shared: &Shared<'_>,
    graph: &TargetGraph,
    roots: &[Label],
    include_tests: bool,
) -> Result<Settled, GraphError> {
    let empty = Settled::default();
    let mut a = Analyser::over(ws, shared, &empty, include_tests, 0);
    // A cycle is found by the visit (a target reached again while its dependencies are being
    // visited); the loader has already refused cycles among the targets it resolved.
    for r in roots {
        match a.visit(r, true, None) {
            Err(GraphError::Cycle { cycle, .. }) if cycle.is_empty() => {
                // Named as the loader names one: the first found from the roots.
                let edges: FxHashMap<&Label, Vec<Label>> = graph
                    .targets
                    .iter()
                    .map(|(l, t)| (l, edges(&shared.outputs, t)))
                    .collect();
                find_cycle(
                    roots,
                    |l| edges.get(l).map(|e| e.as_slice()),
                    |l| graph.targets.get(l).map(|t| t.location.clone()),
                )?;
                return Err(GraphError::Cycle {
                    location: graph.targets[r].location.clone(),
                    cycle: vec![r.clone(), r.clone()],
                });
            }
            result => result?,
        }
    }
    Ok(a.into_settled())
}

/// Analysis in parts: the targets the roots need, in the order the one-pass visit makes their
/// actions ([`plan`]), are cut into contiguous parts, one per thread, each analysed on its own
/// thread from nothing settled. A target needs of the targets it depends on their files and
/// tools, which its part works out again from those targets, and the numbers of the actions
/// writing the files it reads: one written in an earlier part is recorded as pending
/// ([`PENDING`]) and numbered when the parts are joined, in order. The actions come out in the
/// one-pass order. (Analysis level by level, the targets of a level on several threads, ran on
/// one thread for a graph whose levels are narrow: the 100,000-target graph has 1,000 levels
/// of 100.) `None`: something failed (the one-pass analysis finds and names it).
fn analyse_in_parts(
    ws: &Workspace,
    shared: &Shared<'_>,
    plan: &[Planned<'_>],
    include_tests: bool,
    parts: Parts,
) -> Option<Settled> {
    let n = (plan.len() / parts.min_targets.max(1)).clamp(1, parts.threads.max(1));
    let size = plan.len().div_ceil(n).max(1);
    let nothing = Settled::default();
    let run = |part: &[Planned<'_>]| -> Option<Local> {
        let mut a = Analyser::over(ws, shared, &nothing, include_tests, LOCAL);
        for p in part {
            for action in p.target.rule.actions(&mut a, p.target, p.run_test).ok()? {
                a.push(p.target, action).ok()?;
            }
        }
        Some(a.into_local())
    };
    // The first part on this thread, the others on threads of their own.
    let locals: Vec<Option<Local>> = std::thread::scope(|scope| {
        let mut chunks = plan.chunks(size);
        let first = chunks.next().unwrap_or_default();
        let others: Vec<_> = chunks.map(|part| scope.spawn(move || run(part))).collect();
        let mut locals = vec![run(first)];
        locals.extend(others.into_iter().map(|h| h.join().ok().flatten()));
        locals
    });
    let mut locals: Vec<Local> = locals.into_iter().collect::<Option<_>>()?;
    // The files each target provides are merged on another thread meanwhile: nothing below
    // reads them.
    let files: Vec<_> = locals
        .iter_mut()
        .map(|l| std::mem::take(&mut l.files))
        .collect();
    std::thread::scope(|s| {
        let files = s.spawn(move || {
            let mut files = files.into_iter();
            let mut merged = files.next().unwrap_or_default();
            for more in files {
                for (label, files) in more {
                    merged.entry(label).or_insert(files);
                }
            }
            merged
        });
        let mut settled = join_actions(locals, shared, plan.len());
        if let Some(settled) = settled.as_mut() {
            settled.files = files
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        }
        settled
    })
}

/// The actions of the parts' `locals`, in order, numbered (see [`analyse_in_parts`]), with the
/// tools they run and the action writing each path; `None` if they do not join.
fn join_actions(locals: Vec<Local>, shared: &Shared<'_>, actions: usize) -> Option<Settled> {
    let mut settled = Settled::default();
    for (n, mut local) in locals.into_iter().enumerate() {
        let base = settled.actions.len();
        if n == 0 {
            // The first part's maps are taken whole, numbered in place, and the others merged
            // into them (inserting every entry again was half of the join).
            settled.tools = std::mem::take(&mut local.tools);
            settled.out_action = std::mem::take(&mut local.out_action);
            for i in settled.out_action.values_mut() {
                *i -= LOCAL;
            }
            let more = shared
                .outputs
                .len()
                .saturating_sub(settled.out_action.len());
            settled.out_action.reserve(more);
            settled.actions.reserve(actions);
        }
        for (label, tool) in local.tools {
            settled.tools.entry(label).or_insert(tool);
        }
        for mut action in local.actions {
            // One tool shared by every action running it, as in one pass (the analysis cache
            // writes a shared tool once: the same graph must give the same bytes whatever the
            // number of parts).
            if let Exec::Wasi(tool) = &mut action.exec
                && let Some(first) = settled.tools.get(&tool.label)
                && !std::sync::Arc::ptr_eq(first, tool)
            {
                *tool = first.clone();
            }
            let mut pending = false;
            for d in &mut action.deps {
                *d = if *d >= LOCAL {
                    base + (*d - LOCAL)
                } else {
                    // Written in an earlier part (a later one cannot write what this part
                    // reads: the plan puts every target after those it depends on).
                    if n == 0 {
                        return None;
                    }
                    pending = true;
                    let path = local.pending.get(d.checked_sub(PENDING)?)?;
                    *settled.out_action.get(path)?
                };
            }
            if pending {
                action.deps.sort_unstable();
                action.deps.dedup();
            }
            settled.actions.push(action);
        }
        for (path, i) in local.out_action {
            if settled
                .out_action
                .insert(path, base + (i - LOCAL))
                .is_some()
            {
                return None;
            }
        }
    }
    Some(settled)
}

/// A target the roots need, as the one-pass visit reaches it.
struct Planned<'g> {
    target: &'g Target,
    run_test: bool,
}

/// The targets the roots need in the order [`Analyser::visit`] makes their actions, visiting
/// each target's dependencies as the loader found them ([`Target::deps`]; with `outputs`, those
/// of a target without them are found from its attributes, as the visit finds them). `None`
/// on a missing target, a cycle, or a target without dependencies found and no `outputs`.
fn plan<'g>(
    index: &FxHashMap<&'g Label, &'g Target>,
    outputs: Option<&FxHashMap<String, Label>>,
    roots: &[Label],
    include_tests: bool,
) -> Option<Vec<Planned<'g>>> {
    struct Plan<'p, 'g> {
        index: &'p FxHashMap<&'g Label, &'g Target>,
        outputs: Option<&'p FxHashMap<String, Label>>,
        include_tests: bool,
        /// Per label: `false` while its dependencies are being visited, then `true`.
        state: FxHashMap<&'g Label, bool>,
        out: Vec<Planned<'g>>,
    }
    impl<'g> Plan<'_, 'g> {
        fn visit(&mut self, label: &Label, is_root: bool) -> Option<()> {
            let (&key, &t) = self.index.get_key_value(label)?;
            match self.state.get(key) {
                Some(true) => return Some(()),
                Some(false) => return None, // a cycle
                None => {}
            }
            let run_test = is_root && self.include_tests;
            if !t.rule.needed(run_test) {
                return Some(());
            }
            self.state.insert(key, false);
            match (&t.deps, self.outputs) {
                (Some(deps), _) => {
                    for dep in deps {
                        self.visit(dep, false)?;
                    }
                }
                (None, Some(outputs)) => {
                    for dep in edges(outputs, t) {
                        self.visit(&dep, false)?;
                    }
                }
                (None, None) => return None,
            }
            self.state.insert(key, true);
            self.out.push(Planned {
                target: t,
                run_test,
            });
            Some(())
        }
    }
    let mut p = Plan {
        index,
        outputs,
        include_tests,
        state: FxHashMap::default(),
        out: Vec::new(),
    };
    p.state.reserve(index.len());
    p.out.reserve(index.len());
    for r in roots {
        p.visit(r, true)?;
    }
    Some(p.out)
}

/// The graph from what analysis settled, but for its `actions` (left empty).
fn finish(
    ws: &Workspace,
    shared: Shared<'_>,
    mut settled: Settled,
    roots: &[Label],
    actions: &[ActionNode],
) -> Result<ActionGraph, GraphError> {
    let out_action = std::mem::take(&mut settled.out_action);
    // A root's files are taken from what analysis settled (not copied; analysis is done with
    // them); those of a root analysis did not reach are worked out (from the targets alone, as
    // `provides` does, so a root taken meanwhile is worked out again the same).
    let mut target_files = Vec::with_capacity(roots.len());
    let mut reached = true;
    for r in roots {
        let files = settled.files.remove(r);
        reached &= files.is_some();
        target_files.push((r.clone(), files.unwrap_or_default()));
    }
    let root_tools = {
        let mut a = Analyser::over(ws, &shared, &settled, false, 0);
        for (r, files) in &mut target_files {
            if !reached && files.is_empty() {
                *files = a.files_of(r)?;
            }
            files.sort();
        }
        let root_tools: BTreeMap<Label, ToolRef> = roots
            .iter()
            .filter_map(|r| Some((r.clone(), ToolRef::clone(a.tool(r)?))))
            .collect();
        root_tools
    };
    // Sorted already: the map is built at once.
    let target_files: BTreeMap<Label, Vec<String>> = target_files.into_iter().collect();
    let root_platforms = roots
        .iter()
        .filter_map(|r| Some((r.clone(), shared.index.get(r)?.platform.clone()?)))
        .collect();
    // Intermediate files (objects) are produced by actions of targets that were analysed.
    let mut producers: Vec<(String, (usize, Label))> = out_action
        .iter()
        .filter(|(path, _)| !shared.outputs.contains_key(*path))
        .map(|(path, &i)| (path.clone(), (i, actions[i].label.clone())))
        .collect();
    producers.extend(shared.outputs.into_iter().map(|(path, label)| {
        let index = out_action.get(&path).copied().unwrap_or(NOT_SCHEDULED);
        (path, (index, label))
    }));
    producers.sort_unstable_by(|x, y| x.0.cmp(&y.0));
    let producers: BTreeMap<String, (usize, Label)> = producers.into_iter().collect();
    crate::drop_elsewhere((settled, out_action));
    Ok(ActionGraph {
        actions: Vec::new(),
        target_files,
        producers,
        root_platforms,
        root_tools,
    })
}

/// Where a part of [`analyse_in_parts`] numbers its own actions from (renumbered when the
/// parts are joined).
const LOCAL: usize = 1 << (usize::BITS - 2);

/// A dependency of an action of a part of [`analyse_in_parts`] on the action of an earlier part
/// that writes a file: `PENDING + i` for the part's `pending[i]`, numbered when the parts are
/// joined.
const PENDING: usize = 1 << (usize::BITS - 3);

/// What every analyser of one analysis reads: the targets, hashed (looking up a label in the
/// B-tree compared strings at every level, several times per target), and each generated
/// workspace path's producing target (every target of the graph).
struct Shared<'g> {
    index: FxHashMap<&'g Label, &'g Target>,
    outputs: FxHashMap<String, Label>,
}

/// Each generated workspace path's producing target (every target of `graph`); an error
/// names the first path two targets declare.
fn outputs_of(graph: &TargetGraph) -> Result<FxHashMap<String, Label>, GraphError> {
    let mut outputs: FxHashMap<String, Label> = FxHashMap::default();
    outputs.reserve(graph.targets.len());
    for (label, t) in &graph.targets {
        for o in &t.rule.outputs(&label.name) {
            let path = join(&label.package, o);
            if let Some(other) = outputs.get(&path) {
                return Err(GraphError::OutputCollision {
                    location: t.location.clone(),
                    label: label.clone(),
                    output: path,
                    other: format!("an output of {other}").into(),
                });
            }
            outputs.insert(path, label.clone());
        }
    }
    Ok(outputs)
}

/// What analysis has settled: the files targets provide, the `wasi_tool`s (see
/// [`crate::rules::tool_ref`]), the actions and the action writing each generated path.
#[derive(Default)]
struct Settled {
    files: FxHashMap<Label, Vec<String>>,
    tools: HashMap<Label, std::sync::Arc<ToolRef>>,
    actions: Vec<ActionNode>,
    out_action: FxHashMap<String, usize>,
}

/// What one analyser made itself (on top of what it was given as settled).
struct Local {
    /// The files written by another part's actions that this part's actions read (see
    /// [`PENDING`]).
    pending: Vec<String>,
    files: FxHashMap<Label, Vec<String>>,
    tools: HashMap<Label, std::sync::Arc<ToolRef>>,
    actions: Vec<ActionNode>,
    out_action: FxHashMap<String, usize>,
}

/// Targets `t` depends on, sorted.
fn edges(outputs: &FxHashMap<String, Label>, t: &Target) -> Vec<Label> {
    let mut edges = Edges {
        outputs,
        found: Vec::new(),
    };
    let Ok(_) = t.rule.map(&mut edges);
    let mut out = edges.found;
    out.sort();
    out.dedup();
    out
}

/// The state of one analysis, or of one part on a thread; the rules (`crate::rules`) make
/// their actions with it.
pub(crate) struct Analyser<'a> {
    pub ws: &'a Workspace,
    index: &'a FxHashMap<&'a Label, &'a Target>,
    outputs: &'a FxHashMap<String, Label>,
    /// What was settled before: nothing while actions are made (in one pass and in parts), all
    /// of it when `finish` gathers the roots' files. Looked up after this analyser's own.
    settled: &'a Settled,
    include_tests: bool,
    /// The targets visited: `false` while their dependencies are being visited.
    visited: FxHashMap<Label, bool>,
    files: FxHashMap<Label, Vec<String>>,
    tools: HashMap<Label, std::sync::Arc<ToolRef>>,
    actions: Vec<ActionNode>,
    /// Generated workspace path -> index of the action that writes it.
    out_action: FxHashMap<String, usize>,
    /// The index of this analyser's first action ([`LOCAL`] in a part of [`analyse_in_parts`]).
    base: usize,
    /// In a part: the files read that an action of another part writes (see [`PENDING`]).
    pending: Vec<String>,
}

impl<'a> Analyser<'a> {
    fn over(
        ws: &'a Workspace,
        shared: &'a Shared<'_>,
        settled: &'a Settled,
        include_tests: bool,
        base: usize,
    ) -> Analyser<'a> {
        Analyser {
            ws,
            index: &shared.index,
            outputs: &shared.outputs,
            settled,
            include_tests,
            visited: FxHashMap::default(),
            files: FxHashMap::default(),
            tools: HashMap::new(),
            actions: Vec::new(),
            out_action: FxHashMap::default(),
            base,
            pending: Vec::new(),
        }
    }

    fn into_local(self) -> Local {
        Local {
            pending: self.pending,
            files: self.files,
            tools: self.tools,
            actions: self.actions,
            out_action: self.out_action,
        }
    }

    /// In one pass, what it settled is all of it.
    fn into_settled(self) -> Settled {
        Settled {
            files: self.files,
            tools: self.tools,
            actions: self.actions,
            out_action: self.out_action,
        }
    }

    /// The target `label`; `from` is the target referring to it (for the error).
    pub(crate) fn target(
        &self,
        label: &Label,
        from: Option<&Target>,
    ) -> Result<&'a Target, GraphError> {
        self.index
            .get(label)
            .copied()
            .ok_or_else(|| GraphError::NoSuchTarget {
                label: label.clone(),
                context: match from {
                    Some(t) => format!(" (referenced by {} at {})", t.label, t.location),
                    None => String::new(),
                },
            })
    }

    /// Post-order visit: creates the actions of `label` after those of its dependencies.
    fn visit(
        &mut self,
        label: &Label,
        is_root: bool,
        from: Option<&Target>,
    ) -> Result<(), GraphError> {
        match self.visited.get(label) {
            Some(true) => return Ok(()),
            Some(false) => {
                // A cycle: [`analyse`] names it from the roots.
                let t = self.target(label, from)?;
                return Err(GraphError::Cycle {
                    location: t.location.clone(),
                    cycle: Vec::new(),
                });
            }
            None => {}
        }
        let t = self.target(label, from)?;
        // Tests only run when asked for.
        let run_test = is_root && self.include_tests;
        if !t.rule.needed(run_test) {
            return Ok(());
        }
        self.visited.insert(label.clone(), false);
        for dep in edges(self.outputs, t) {
            self.visit(&dep, false, Some(t))?;
        }
        self.visited.insert(label.clone(), true);
        for action in t.rule.actions(self, t, run_test)? {
            self.push(t, action)?;
        }
        Ok(())
    }

    /// The index of the action writing `path`, if one was made.
    fn writer(&self, path: &str) -> Option<usize> {
        self.out_action
            .get(path)
            .or_else(|| self.settled.out_action.get(path))
            .copied()
    }

    /// Adds an action (after those it depends on), recording what it writes.
    fn push(&mut self, t: &Target, action: ActionNode) -> Result<(), GraphError> {
        let index = self.action_count();
        for out in &action.outputs {
            if let Some(other) = self.writer(out) {
                let other = match other.checked_sub(self.base) {
                    Some(i) if i < self.actions.len() => self.actions[i].name(),
                    _ => "another action".to_owned(),
                };
                return Err(GraphError::OutputCollision {
                    location: t.location.clone(),
                    label: t.label.clone(),
                    output: out.clone(),
                    other: format!("an output of {other}").into(),
                });
            }
            self.out_action.insert(out.clone(), index);
        }
        self.actions.push(action);
        Ok(())
    }

    /// How many actions there are so far (the index the next one will get).
    pub(crate) fn action_count(&self) -> usize {
        self.base + self.actions.len()
    }

    /// The `wasi_tool` `label` as analysed so far (see [`crate::rules::tool_ref`]).
    pub(crate) fn tool(&self, label: &Label) -> Option<&std::sync::Arc<ToolRef>> {
        self.tools
            .get(label)
            .or_else(|| self.settled.tools.get(label))
    }

    /// Records how the `wasi_tool` `label` runs.
    pub(crate) fn remember_tool(&mut self, label: &Label, tool: &std::sync::Arc<ToolRef>) {
        self.tools.insert(label.clone(), tool.clone());
    }

    /// The files of one reference of `from`.
    pub(crate) fn dep_files(
        &mut self,
        dep: &Dep,
        from: &Target,
    ) -> Result<Vec<String>, GraphError> {
        match dep {
            Dep::File(p) => Ok(vec![p.clone()]),
            Dep::Target(l) => {
                self.target(l, Some(from))?;
                self.files_of(l)
            }
        }
    }

    /// The files a target provides, in the order of its attributes, without duplicates.
    fn files_of(&mut self, label: &Label) -> Result<Vec<String>, GraphError> {
        if let Some(f) = self
            .files
            .get(label)
            .or_else(|| self.settled.files.get(label))
        {
            return Ok(f.clone());
        }
        let t = self.target(label, None)?;
        let mut files = t.rule.provides(self, t)?;
        dedup_in_order(&mut files);
        self.files.insert(label.clone(), files.clone());
        Ok(files)
    }

    /// The package a file belongs to: its producer's package for a generated file, else the
    /// nearest enclosing directory with a `WBUILD` file.
    pub(crate) fn owner_package(&self, path: &str) -> String {
        if let Some(l) = self.outputs.get(path) {
            return l.package.clone();
        }
        // A toolchain file belongs to the toolchain's root.
        if let Some(name) = self.ws.external_name(path) {
            return format!("{}{name}", crate::workspace::EXTERNAL_PREFIX);
        }
        let parts: Vec<&str> = path.split('/').collect();
        for i in (1..parts.len()).rev() {
            let dir = parts[..i].join("/");
            if self.ws.is_package(&dir) {
                return dir;
            }
        }
        String::new()
    }

    /// The files of every `srcs` entry, one after the other in `srcs` order (repeats kept),
    /// and each entry with the range of them it provides (for `$(location)`). See
    /// [`without_repeats`] for `$(SRCS)`.
    pub(crate) fn src_files<'d>(
        &mut self,
        t: &Target,
        srcs: &'d [Dep],
    ) -> Result<SrcFiles<'d>, GraphError> {
        let mut all: Vec<String> = Vec::new();
        let mut entries = Vec::with_capacity(srcs.len());
        for d in srcs {
            let start = all.len();
            match d {
                Dep::File(p) => all.push(p.clone()),
                Dep::Target(l) => {
                    self.target(l, Some(t))?;
                    self.extend_with_files_of(l, &mut all)?;
                }
            }
            entries.push((d, start..all.len()));
        }
        Ok(SrcFiles { all, entries })
    }

    /// Appends the files `label` provides to `out` (see [`Analyser::files_of`]).
    fn extend_with_files_of(
        &mut self,
        label: &Label,
        out: &mut Vec<String>,
    ) -> Result<(), GraphError> {
        if let Some(f) = self
            .files
            .get(label)
            .or_else(|| self.settled.files.get(label))
        {
            out.extend_from_slice(f);
            return Ok(());
        }
        out.extend(self.files_of(label)?);
        Ok(())
    }

    /// Sorted indices of the actions that produce any of `paths`.
    pub(crate) fn producing_actions<'p>(
        &mut self,
        t: &Target,
        paths: impl Iterator<Item = &'p String>,
    ) -> Result<Vec<usize>, GraphError> {
        let mut deps = BTreeSet::new();
        for p in paths {
            if let Some(i) = self.writer(p) {
                deps.insert(i);
            } else if self.base == LOCAL && self.outputs.contains_key(p) {
                // In a part: written by an earlier part's action, numbered when they are joined.
                deps.insert(PENDING + self.pending.len());
                self.pending.push(p.clone());
            } else if let Some(producer) = self.outputs.get(p) {
                return Err(GraphError::Attribute {
                    location: t.location.clone(),
                    target: t.label.to_string(),
                    message: format!(
                        "internal error: '{p}' is produced by {producer}, which was not analysed first"
                    ),
                });
            }
        }
        Ok(deps.into_iter().collect())
    }
}

/// The files of a rule's `srcs`: every entry's files one after the other, repeats kept, and
/// each entry with the range of `all` it provides.
pub(crate) struct SrcFiles<'d> {
    pub all: Vec<String>,
    pub entries: Vec<(&'d Dep, std::ops::Range<usize>)>,
}

impl<'d> SrcFiles<'d> {
    /// Each entry with its files, as [`Expander::srcs`] takes them.
    pub(crate) fn located(&self) -> Vec<(&'d Dep, &[String])> {
        self.entries
            .iter()
            .map(|(d, r)| (*d, &self.all[r.clone()]))
            .collect()
    }
}

/// `files` without repeats, each first one kept in place, if it has any repeat (`None`: it
/// has none, and is its own answer; most `srcs` have none, and no file name is copied then).
pub(crate) fn without_repeats(files: &[String]) -> Option<Vec<String>> {
    if files.len() < 2 {
        return None;
    }
    let mut seen: FxHashSet<&str> = FxHashSet::default();
    if files.iter().all(|f| seen.insert(f.as_str())) {
        return None;
    }
    let mut once = files.to_vec();
    dedup_in_order(&mut once);
    Some(once)
}

/// Drops the repeats of `files`, keeping each first one in place (no copy of any file's name
/// is made: the 100,000-target graph asks this of every target).
fn dedup_in_order(files: &mut Vec<String>) {
    if files.len() < 2 {
        return;
    }
    let keep: Vec<bool> = {
        let mut seen: FxHashSet<&str> = FxHashSet::default();
        files.iter().map(|f| seen.insert(f.as_str())).collect()
    };
    let mut keep = keep.into_iter();
    files.retain(|_| keep.next().unwrap_or(true));
}

/// Expands `$(location X)`, `$(locations X)`, `$(SRCS)`, `$(OUTS)`, `$@`, `$<`, `$(RULEDIR)`
/// and `$$` in one `args` or `env` value.
pub(crate) struct Expander<'x> {
    pub target: &'x Target,
    /// Each `srcs` entry (and genrule `tools` entry) with its files, for `$(location X)`.
    pub srcs: &'x [(&'x Dep, &'x [String])],
    /// The files of `srcs` in order, without repeats (`$(SRCS)`, `$<`).
    pub src_files: &'x [String],
    /// Output workspace paths (`$(OUTS)`, `$@`).
    pub outs: &'x [String],
}

impl<'x> Expander<'x> {
    fn err(&self, attribute: &str, message: String) -> GraphError {
        GraphError::Expansion {
            location: self.target.location.clone(),
            label: self.target.label.clone(),
            message: format!("in {attribute}: {message}"),
        }
    }

    pub(crate) fn expand(&self, s: &str, attribute: &str) -> Result<String, GraphError> {
        let mut out = String::with_capacity(s.len());
        let mut rest = s;
        while let Some(i) = rest.find('$') {
            out.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            let mut chars = after.chars();
            match chars.next() {
                Some('$') => {
                    out.push('$');
                    rest = &after[1..];
                }
                Some('@') => {
                    out.push_str(&self.single(self.outs, "$@", "outs", attribute)?);
                    rest = &after[1..];
                }
                Some('<') => {
                    out.push_str(&self.single(self.src_files, "$<", "srcs", attribute)?);
                    rest = &after[1..];
                }
                Some('(') => {
                    let Some(end) = after.find(')') else {
                        return Err(self.err(
                            attribute,
                            format!("unterminated '$(' in {s:?}; write '$$' for a literal '$'"),
                        ));
                    };
                    out.push_str(&self.variable(&after[1..end], attribute)?);
                    rest = &after[end + 1..];
                }
                _ => {
                    return Err(self.err(
                        attribute,
                        format!(
                            "'$' in {s:?} must start $(location X), $(locations X), $(SRCS), \
                             $(OUTS), $@, $< or $(RULEDIR); write '$$' for a literal '$'"
                        ),
                    ));
                }
            }
        }
        out.push_str(rest);
        Ok(out)
    }

    /// The files of `s` if it is exactly `$(SRCS)`, `$(OUTS)` or `$(locations X)`.
    pub(crate) fn expand_list(
        &self,
        s: &str,
        attribute: &str,
    ) -> Result<Option<Vec<String>>, GraphError> {
        let Some(var) = s
            .strip_prefix("$(")
            .and_then(|r| r.strip_suffix(')'))
            .filter(|v| !v.contains(['(', ')', '$']))
        else {
            return Ok(None);
        };
        let var = var.trim();
        let (func, arg) = match var.split_once(char::is_whitespace) {
            Some((f, a)) => (f, a.trim()),
            None => (var, ""),
        };
        Ok(match (func, arg.is_empty()) {
            ("SRCS", true) => Some(self.src_files.to_vec()),
            ("OUTS", true) => Some(self.outs.to_vec()),
            ("locations" | "execpaths" | "rootpaths", false) => {
                Some(self.locate(arg, func, attribute)?.into_owned())
            }
            _ => None,
        })
    }

    fn single(
        &self,
        files: &[String],
        what: &str,
        attr: &str,
        attribute: &str,
    ) -> Result<String, GraphError> {
        match files {
            [one] => Ok(one.clone()),
            _ => Err(self.err(
                attribute,
                format!(
                    "{what} needs exactly one file in '{attr}', but there are {}",
                    files.len()
                ),
            )),
        }
    }

    fn variable(&self, var: &str, attribute: &str) -> Result<String, GraphError> {
        let var = var.trim();
        let (func, arg) = match var.split_once(char::is_whitespace) {
            Some((f, a)) => (f, a.trim()),
            None => (var, ""),
        };
        match (func, arg.is_empty()) {
            ("SRCS", true) => Ok(self.src_files.join(" ")),
            ("OUTS", true) => Ok(self.outs.join(" ")),
            ("RULEDIR", true) => Ok(if self.target.label.package.is_empty() {
                ".".to_owned()
            } else {
                self.target.label.package.clone()
            }),
            ("location" | "execpath" | "rootpath", false) => {
                let files = self.locate(arg, func, attribute)?;
                match &*files {
                    [one] => Ok(one.clone()),
                    _ => Err(self.err(
                        attribute,
                        format!(
                            "$({func} {arg}) expands to {} files; use $({func}s {arg})",
                            files.len()
                        ),
                    )),
                }
            }
            ("locations" | "execpaths" | "rootpaths", false) => {
                Ok(self.locate(arg, func, attribute)?.join(" "))
            }
            _ => Err(self.err(
                attribute,
                format!(
                    "unknown variable $({var}); supported: $(location X), $(locations X), \
                     $(SRCS), $(OUTS), $(RULEDIR), $@, $<, $$"
                ),
            )),
        }
    }

    /// The files of `arg`, which must be in `srcs` or `outs`.
    fn locate(
        &self,
        arg: &str,
        func: &str,
        attribute: &str,
    ) -> Result<std::borrow::Cow<'x, [String]>, GraphError> {
        // Compared as parts: no label or path is made for each argument.
        let (package, name) = Label::parse_parts(arg, &self.target.label.package)
            .map_err(|e| self.err(attribute, format!("$({func} {arg}): {e}")))?;
        for (dep, files) in self.srcs {
            match dep {
                Dep::Target(l) if l.package == package && l.name == name => {
                    return Ok((*files).into());
                }
                Dep::File(p) if is_join(p, package, name) => return Ok((*files).into()),
                _ => {}
            }
        }
        if let Some(path) = self.outs.iter().find(|o| is_join(o, package, name)) {
            return Ok(vec![path.clone()].into());
        }
        Err(self.err(
            attribute,
            format!(
                "$({func} {arg}): '{arg}' is not in the srcs or outs of {}; add it to srcs",
                self.target.label
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load;
    use crate::testutil::*;
    use crate::{FilegroupAttrs, Rule};

    const TOOLS: &str = "\
wasi_tool(name = 'gen', src = 'gen.wasm')
wasi_tool(
    name = 'tmpl',
    src = 'tmpl.wasm',
    data = glob(['share/**']) + ['//data:fg', '//data:made'],
    data_dir = '/usr/share',
)
";

    fn ws_with(extra: &[(&str, &str)]) -> TestWs {
        let mut files = vec![
            ("tools/WBUILD", TOOLS),
            ("tools/gen.wasm", ""),
            ("tools/tmpl.wasm", ""),
            ("tools/share/a/one.txt", ""),
            ("tools/share/two.txt", ""),
            (
                "data/WBUILD",
                "filegroup(name = 'fg', srcs = ['d/three.txt'])\n\
                 wasi_run(name = 'mk', tool = '//tools:gen', outs = ['made', 'gen/four.txt'])\n",
            ),
            ("data/d/three.txt", ""),
        ];
        files.extend_from_slice(extra);
        workspace(&files)
    }

    /// The analysis in one pass, checked against the analysis in two, three and seven parts
    /// (down to one target each): the same graph, or the same error.
    fn analyse_patterns(t: &TestWs, pats: &[&str], tests: bool) -> Result<ActionGraph, GraphError> {
        let (g, roots) = load(&t.ws, &patterns(pats))?;
        let one_pass = analyse_with(&t.ws, &g, &roots, tests, None);
        for threads in [2, 3, 7] {
            let parts = Parts {
                threads,
                min_targets: 1,
            };
            let in_parts = analyse_with(&t.ws, &g, &roots, tests, Some(parts));
            match (&one_pass, &in_parts) {
                (Ok(a), Ok(b)) => {
                    assert_eq!(a, b, "analysed in {threads} parts");
                    // And written the same (a tool shared by its actions is written once).
                    let bytes = |g: &ActionGraph| {
                        crate::inputs::sharing(|| postcard::to_stdvec(&g.actions)).unwrap()
                    };
                    assert!(bytes(a) == bytes(b), "analysed in {threads} parts: bytes");
                }
                (Err(a), Err(b)) => {
                    assert_eq!(a.to_string(), b.to_string(), "analysed in {threads} parts")
                }
                _ => panic!("in one pass: {one_pass:?}\nin {threads} parts: {in_parts:?}"),
            }
            // Made in parts, not by the one-pass analysis it falls back to.
            if one_pass.is_ok() {
                let shared = Shared {
                    index: g.targets.iter().collect(),
                    outputs: outputs_of(&g).unwrap(),
                };
                let mut roots = roots.clone();
                roots.sort();
                roots.dedup();
                // Planned by the dependencies the loader found alone.
                let planned = plan(&shared.index, None, &roots, tests).expect("planned");
                assert!(
                    analyse_in_parts(&t.ws, &shared, &planned, tests, parts).is_some(),
                    "the analysis in {threads} parts failed"
                );
            }
        }
        // The loader found each target's dependencies as analysis finds them from its
        // attributes (the plan of a graph analysed in parts follows the loader's).
        if let Ok(outputs) = outputs_of(&g) {
            for t in g.targets.values() {
                if let Some(deps) = &t.deps {
                    assert_eq!(**deps, *edges(&outputs, t), "{}", t.label);
                }
            }
        }
        one_pass
    }

    /// Parts on threads, with generated files and tools crossing parts (a chain of libraries,
    /// a fan-in, generated inputs and tool data): the actions come out in the one-pass order
    /// with the same dependencies.
    #[test]
    fn files_without_repeats_keep_each_first_in_place() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        for (files, want) in [
            (v(&[]), None),
            (v(&["a"]), None),
            (v(&["a", "b", "c"]), None),
            (v(&["a", "a"]), Some(v(&["a"]))),
            (v(&["b", "a", "b", "c", "a"]), Some(v(&["b", "a", "c"]))),
        ] {
            assert_eq!(without_repeats(&files), want, "{files:?}");
        }
    }

    #[test]
    fn parts_on_threads_give_the_one_pass_graph() {
        let mut files: Vec<(String, String)> = Vec::new();
        let mut libs = String::new();
        for i in 0..12 {
            // Each library needs the one before (a chain) and the first (a fan-in).
            let mut deps = Vec::new();
            if i > 0 {
                deps.push(format!("'//libs:l{}'", i - 1));
            }
            if i > 1 {
                deps.push("'//libs:l0'".to_owned());
            }
            libs.push_str(&format!(
                "cc_library(name = 'l{i}', srcs = ['l{i}.c', 'm{i}.c'], hdrs = ['l{i}.h'], deps = [{}])\n",
                deps.join(", ")
            ));
            files.push((format!("libs/l{i}.c"), String::new()));
            files.push((format!("libs/m{i}.c"), String::new()));
            files.push((format!("libs/l{i}.h"), String::new()));
        }
        files.push(("libs/WBUILD".to_owned(), libs));
        let mut runs = String::new();
        for i in 0..20 {
            // Generated inputs from the target before, and the tool with its generated data.
            let srcs = if i % 3 == 0 {
                "['//data:made']".to_owned()
            } else {
                format!("['r{}.out', '//data:fg']", i - 1)
            };
            runs.push_str(&format!(
                "wasi_run(name = 'r{i}', tool = '//tools:tmpl', srcs = {srcs}, outs = ['r{i}.out'], args = ['$(SRCS)', '-o', '$@'])\n"
            ));
        }
        for i in 0..20 {
            runs.push_str(&format!(
                "wasi_run(name = 'w{i}', tool = '//tools:gen', srcs = ['r{i}.out'], outs = ['w{i}.out'])\n\
                 wasi_test(name = 't{i}', tool = '//tools:gen', srcs = ['w{i}.out'])\n"
            ));
        }
        files.push(("runs/WBUILD".to_owned(), runs));
        files.push((
            "app/WBUILD".to_owned(),
            "cc_binary(name = 'app', srcs = ['main.c'], deps = ['//libs:l11', '//libs:l5'])\n\
             genrule(name = 'g', srcs = ['//runs:w19', '//app'], outs = ['g.txt'], cmd = 'cat $(SRCS) > $@')\n"
                .to_owned(),
        ));
        files.push(("app/main.c".to_owned(), String::new()));
        let refs = as_strs(&files);
        let t = ws_with(&refs);
        for tests in [false, true] {
            let g = analyse_patterns(&t, &["//..."], tests).unwrap();
            assert!(g.actions.len() > 60, "{} actions", g.actions.len());
            for (i, a) in g.actions.iter().enumerate() {
                assert!(
                    a.deps.iter().all(|&d| d < i),
                    "{} depends on a later action",
                    a.name()
                );
            }
        }
        // An error in a part is the one the one-pass analysis names.
        let broken = [(
            "bad/WBUILD",
            "wasi_run(name = 'x', tool = '//tools:gen', srcs = ['//runs:r3'], outs = ['x'], args = ['$(location nowhere)'])\n",
        )];
        let mut refs = refs.clone();
        refs.extend_from_slice(&broken);
        let t = ws_with(&refs);
        let e = analyse_patterns(&t, &["//..."], false).unwrap_err();
        assert!(e.to_string().contains("nowhere"), "{e}");
    }

    #[test]
    fn cc_rules_take_transitive_headers_defines_includes_and_archives() {
        let t = ws_with(&[
            (
                "base/WBUILD",
                "cc_library(name = 'base', srcs = ['b.c', 'priv.h'], hdrs = ['inc/base.h'], includes = ['inc'], defines = ['BASE=1'])\n",
            ),
            ("base/b.c", ""),
            ("base/priv.h", ""),
            ("base/inc/base.h", ""),
            (
                "mid/WBUILD",
                "cc_library(name = 'mid', srcs = ['m.cc'], hdrs = ['mid.h'], deps = ['//base'])\n",
            ),
            ("mid/m.cc", ""),
            ("mid/mid.h", ""),
            (
                "app/WBUILD",
                "cc_binary(name = 'app', srcs = ['main.c'], deps = ['//mid'], linkopts = ['-lm'])\n\
                 cc_test(name = 't', srcs = ['main.c'], deps = ['//mid'])\n\
                 cc_binary(name = 'bad', srcs = ['main.c'], deps = ['main.c'])\n",
            ),
            ("app/main.c", ""),
        ]);
        let g = analyse_patterns(&t, &["//app:app"], false).unwrap();
        let names: Vec<(String, &str)> = g
            .actions
            .iter()
            .map(|a| (a.name(), a.mnemonic.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("//base:base base/b.c".to_owned(), "CcCompile"),
                ("//base:base".to_owned(), "CcArchive"),
                ("//mid:mid mid/m.cc".to_owned(), "CcCompile"),
                ("//mid:mid".to_owned(), "CcArchive"),
                ("//app:app app/main.c".to_owned(), "CcCompile"),
                ("//app:app".to_owned(), "CcLink"),
            ]
        );
        let compile = &g.actions[0];
        assert_eq!(
            compile.inputs,
            ["base/b.c", "base/inc/base.h", "base/priv.h"]
        );
        assert_eq!(
            compile.outputs,
            ["base/_objs/base/b.d", "base/_objs/base/b.o"]
        );
        let archive = &g.actions[1];
        assert_eq!(archive.outputs, ["base/libbase.a"]);
        assert_eq!(
            archive.inputs,
            ["base/_objs/base/b.d", "base/_objs/base/b.o"]
        );
        assert_eq!(archive.deps, [0]);
        // A compile sees the headers of every transitive dep, not their private headers.
        let app_compile = &g.actions[4];
        assert_eq!(
            app_compile.inputs,
            ["app/main.c", "base/inc/base.h", "mid/mid.h"]
        );
        assert!(app_compile.deps.is_empty(), "{:?}", app_compile.deps);
        let script = &app_compile.argv[2];
        assert!(script.contains("-DBASE=1"), "{script}");
        assert!(script.contains("-I base/inc"), "{script}");
        let app = &g.actions[5];
        assert_eq!(app.outputs, ["app/app"]);
        assert_eq!(
            app.inputs,
            [
                "app/_objs/app/main.d",
                "app/_objs/app/main.o",
                "base/libbase.a",
                "mid/libmid.a",
            ]
        );
        assert_eq!(app.deps, [1, 3, 4]);
        // Dependents before their dependencies on the link line.
        assert!(
            app.argv[2].contains(
                "\n\"$CC\" -o app/app app/_objs/app/main.o -Wl,mid/libmid.a -Wl,base/libbase.a -lm &\n"
            ),
            "{}",
            app.argv[2]
        );
        assert_eq!(g.producers["app/_objs/app/main.o"].0, 4);
        // A test's program is built by `build`; it runs only when tests are included.
        let g = analyse_patterns(&t, &["//app:t"], false).unwrap();
        assert!(g.actions.iter().all(|a| !a.is_test));
        assert_eq!(g.actions.last().unwrap().outputs, ["app/t"]);
        let g = analyse_patterns(&t, &["//app:t"], true).unwrap();
        let test = g.actions.last().unwrap();
        assert!(test.is_test && test.outputs.is_empty() && test.mnemonic == "CcTest");
        assert_eq!(test.inputs, ["app/t"]);
        assert_eq!(test.deps, [g.actions.len() - 2]);
        // deps must be cc_library targets.
        let e = analyse_patterns(&t, &["//app:bad"], false).unwrap_err();
        assert!(e.to_string().contains("is not a cc_library"), "{e}");
    }

    #[test]
    fn genrule_runs_a_shell_command_over_srcs_and_tools() {
        let t = ws_with(&[
            (
                "g/WBUILD",
                r#"
wasi_run(name = 'w', tool = '//tools:gen', srcs = ['a.txt'], outs = ['w.txt'], args = ['$@'])
genrule(
    name = 'cat',
    srcs = ['a.txt', ':w'],
    tools = ['tool.sh'],
    outs = ['out/cat.txt'],
    cmd = 'sh $(location tool.sh) $(SRCS) > $@',
)
"#,
            ),
            ("g/a.txt", ""),
            ("g/tool.sh", ""),
        ]);
        let g = analyse_patterns(&t, &["//g:cat"], false).unwrap();
        let labels: Vec<String> = g.actions.iter().map(|a| a.label.to_string()).collect();
        assert_eq!(labels, ["//g:w", "//g:cat"]);
        let a = &g.actions[1];
        assert_eq!(a.mnemonic, "Genrule");
        assert_eq!(a.exec, Exec::Native);
        assert_eq!(
            a.argv,
            [
                "/bin/sh",
                "-c",
                "sh g/tool.sh g/a.txt g/w.txt > g/out/cat.txt"
            ]
        );
        assert_eq!(a.inputs, ["g/a.txt", "g/tool.sh", "g/w.txt"]);
        assert_eq!(a.outputs, ["g/out/cat.txt"]);
        assert_eq!(a.deps, [0]);
        assert_eq!(g.producers["g/out/cat.txt"].1.to_string(), "//g:cat");

        // A genrule needs outputs and a command.
        let t = ws_with(&[("h/WBUILD", "genrule(name = 'x', outs = [], cmd = 'true')\n")]);
        let e = analyse_patterns(&t, &["//h:x"], false).unwrap_err();
        assert!(
            e.to_string().contains("genrule needs at least one output"),
            "{e}"
        );
        let t = ws_with(&[("h/WBUILD", "genrule(name = 'x', outs = ['o'], cmd = ' ')\n")]);
        let e = analyse_patterns(&t, &["//h:x"], false).unwrap_err();
        assert!(e.to_string().contains("genrule needs a command"), "{e}");
    }

    #[test]
    fn expansion_and_dependencies() {
        let t = ws_with(&[
            (
                "app/WBUILD",
                r#"
filegroup(name = 'hdrs', srcs = ['b.h', 'a.h'])
wasi_run(
    name = 'step1',
    tool = '//tools:gen',
    srcs = ['in.txt', ':hdrs'],
    outs = ['gen/one.h', 'gen/two.h'],
    args = ['$(location in.txt)', '$(locations :hdrs)', '--srcs=$(SRCS)', '--outs=$(OUTS)', '$$HOME', '$(RULEDIR)'],
    env = {'IN': '$(location :in.txt)', 'PLAIN': 'x'},
)
wasi_run(
    name = 'step2',
    tool = '//tools:tmpl',
    srcs = ['gen/two.h', ':step1', 'in.txt'],
    outs = ['final.txt'],
    args = ['-o', '$@', '$(location gen/two.h)', '$(locations :step1)', '$(execpath //app:in.txt)'],
)
wasi_run(name = 'unused', tool = '//tools:gen', outs = ['unused.txt'])
"#,
            ),
            ("app/in.txt", ""),
            ("app/a.h", ""),
            ("app/b.h", ""),
        ]);
        let g = analyse_patterns(&t, &["//app:step2"], false).unwrap();
        let labels: Vec<String> = g.actions.iter().map(|a| a.label.to_string()).collect();
        assert_eq!(labels, ["//app:step1", "//data:mk", "//app:step2"]);
        let s1 = &g.actions[0];
        assert_eq!(s1.mnemonic, "WasiRun");
        assert!(!s1.is_test);
        assert_eq!(
            s1.argv,
            [
                "gen",
                "app/in.txt",
                "app/b.h",
                "app/a.h",
                "--srcs=app/in.txt app/b.h app/a.h",
                "--outs=app/gen/one.h app/gen/two.h",
                "$HOME",
                "app",
            ]
        );
        assert_eq!(s1.env["IN"], "app/in.txt");
        assert_eq!(s1.env["PLAIN"], "x");
        assert_eq!(s1.inputs, ["app/a.h", "app/b.h", "app/in.txt"]);
        assert_eq!(s1.outputs, ["app/gen/one.h", "app/gen/two.h"]);
        assert_eq!(s1.wasi_tool().unwrap().module, "tools/gen.wasm");
        assert!(s1.wasi_tool().unwrap().data.is_empty());
        assert!(s1.deps.is_empty());

        let s2 = &g.actions[2];
        assert_eq!(
            s2.argv,
            [
                "tmpl",
                "-o",
                "app/final.txt",
                "app/gen/two.h",
                "app/gen/one.h",
                "app/gen/two.h",
                "app/in.txt",
            ]
        );
        assert_eq!(s2.inputs, ["app/gen/one.h", "app/gen/two.h", "app/in.txt"]);
        assert_eq!(s2.outputs, ["app/final.txt"]);
        // step1 for its inputs, data:mk for the tool's data.
        assert_eq!(s2.deps, [0, 1]);
        assert_eq!(
            s2.wasi_tool().unwrap().data,
            [
                (
                    "/usr/share/d/three.txt".to_string(),
                    "data/d/three.txt".to_string()
                ),
                ("/usr/share/made".to_string(), "data/made".to_string()),
                (
                    "/usr/share/share/a/one.txt".to_string(),
                    "tools/share/a/one.txt".to_string()
                ),
                (
                    "/usr/share/share/two.txt".to_string(),
                    "tools/share/two.txt".to_string()
                ),
            ]
        );
        for (i, a) in g.actions.iter().enumerate() {
            assert!(a.deps.iter().all(|d| *d < i));
        }
        assert_eq!(
            g.target_files,
            [(label("//app:step2"), vec!["app/final.txt".to_string()])].into()
        );
        assert_eq!(g.producers["app/gen/one.h"], (0, label("//app:step1")));
        assert_eq!(g.producers["app/final.txt"], (2, label("//app:step2")));
        assert_eq!(g.producers["data/made"], (1, label("//data:mk")));
        // Loaded but not needed: known producer, no action.
        assert_eq!(
            g.producers["app/unused.txt"],
            (NOT_SCHEDULED, label("//app:unused"))
        );
        assert!(
            !g.producers.contains_key("data/gen/four.txt")
                || g.producers["data/gen/four.txt"].0 == 1
        );

        // Deterministic, and no host path anywhere.
        let again = analyse_patterns(&t, &["//app:step2"], false).unwrap();
        assert_eq!(g, again);
        let json = serde_json::to_string(&g).unwrap();
        let root = t.dir.path().to_string_lossy().into_owned();
        assert!(!json.contains(&root), "{json}");
        assert!(!json.contains(&*t.ws.root.to_string_lossy()), "{json}");
    }

    #[test]
    fn target_files_of_each_kind() {
        let t = ws_with(&[
            (
                "p/WBUILD",
                "filegroup(name = 'fg', srcs = ['b.txt', 'a.txt', '//data:mk'])\n\
             wasi_test(name = 'check', tool = '//tools:gen', srcs = [':fg'], args = ['$(SRCS)'])\n",
            ),
            ("p/a.txt", ""),
            ("p/b.txt", ""),
        ]);
        let g = analyse_patterns(
            &t,
            &["//p:fg", "//tools:gen", "//p:check", "//data:mk"],
            false,
        )
        .unwrap();
        assert_eq!(
            g.target_files[&label("//p:fg")],
            ["data/gen/four.txt", "data/made", "p/a.txt", "p/b.txt"]
        );
        assert_eq!(g.target_files[&label("//tools:gen")], ["tools/gen.wasm"]);
        assert_eq!(
            g.target_files[&label("//data:mk")],
            ["data/gen/four.txt", "data/made"]
        );
        assert_eq!(g.target_files[&label("//p:check")], Vec::<String>::new());
        // `build` skips tests.
        assert_eq!(g.actions.len(), 1);
        assert!(g.actions.iter().all(|a| !a.is_test));

        // `test` runs them.
        let g = analyse_patterns(&t, &["//p:check"], true).unwrap();
        assert_eq!(g.actions.len(), 2);
        let test = &g.actions[1];
        assert!(test.is_test);
        assert_eq!(test.mnemonic, "WasiTest");
        assert!(test.outputs.is_empty());
        // $(SRCS) keeps the order of srcs, through filegroups too; as a whole argument it
        // becomes one argument per file.
        assert_eq!(
            test.argv,
            [
                "gen",
                "p/b.txt",
                "p/a.txt",
                "data/made",
                "data/gen/four.txt"
            ]
        );
        assert_eq!(test.deps, [0]);
    }

    #[test]
    fn tool_module_built_by_another_action() {
        let t = ws_with(&[
            (
                "p/WBUILD",
                "wasi_run(name = 'compile', tool = '//tools:gen', outs = ['built.wasm', 'notes.txt'])\n\
             wasi_tool(name = 'built', src = ':compile', data = ['cfg/x.cfg'], data_dir = '/etc')\n\
             wasi_run(name = 'use', tool = ':built', outs = ['o'])\n",
            ),
            ("p/cfg/x.cfg", ""),
        ]);
        let g = analyse_patterns(&t, &["//p:use"], false).unwrap();
        assert_eq!(g.actions.len(), 2);
        let u = &g.actions[1];
        assert_eq!(u.wasi_tool().unwrap().module, "p/built.wasm");
        assert_eq!(
            u.wasi_tool().unwrap().data,
            [("/etc/cfg/x.cfg".to_string(), "p/cfg/x.cfg".to_string())]
        );
        assert_eq!(u.argv, ["built"]);
        assert_eq!(u.deps, [0]);
        assert!(u.inputs.is_empty());
    }

    fn expansion_error(args: &str) -> String {
        let t = ws_with(&[
            (
                "p/WBUILD",
                &format!(
                    "filegroup(name = 'two', srcs = ['a', 'b'])\n\
                 wasi_run(name = 'x', tool = '//tools:gen', srcs = ['a', ':two'], outs = ['o1', 'o2'], args = [{args}])\n"
                ),
            ),
            ("p/a", ""),
            ("p/b", ""),
            ("p/c", ""),
        ]);
        let err = analyse_patterns(&t, &["//p:x"], false).unwrap_err();
        assert!(matches!(err, GraphError::Expansion { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.starts_with("p/WBUILD:2:1: //p:x: "), "{msg}");
        msg
    }

    #[test]
    fn expansion_errors() {
        assert!(expansion_error("'$(location c)'").contains("not in the srcs or outs"));
        assert!(expansion_error("'$(location :two)'").contains("use $(locations :two)"));
        assert!(expansion_error("'$@'").contains("exactly one file"));
        assert!(expansion_error("'$(FOO)'").contains("unknown variable $(FOO)"));
        assert!(expansion_error("'cost: 5$'").contains("'$$'"));
        assert!(expansion_error("'$(location a'").contains("unterminated"));
        // Outputs may be located too.
        let t = ws_with(&[(
            "p/WBUILD",
            "wasi_run(name = 'x', tool = '//tools:gen', outs = ['o1'], args = ['$(location o1)', '$(locations :o1)'])\n",
        )]);
        let g = analyse_patterns(&t, &["//p:x"], false).unwrap();
        assert_eq!(g.actions[0].argv, ["gen", "p/o1", "p/o1"]);
    }

    #[test]
    fn tool_errors() {
        let t = ws_with(&[
            (
                "p/WBUILD",
                "wasi_tool(name = 'bad', src = 'x.txt')\nwasi_run(name = 'x', tool = ':bad', outs = ['o'])\n",
            ),
            ("p/x.txt", ""),
        ]);
        let err = analyse_patterns(&t, &["//p:x"], false).unwrap_err();
        assert!(err.to_string().contains("not a .wasm file"), "{err}");
        let t = ws_with(&[(
            "p/WBUILD",
            "wasi_tool(name = 'bad', src = '//data:fg')\nwasi_run(name = 'x', tool = ':bad', outs = ['o'])\n",
        )]);
        let err = analyse_patterns(&t, &["//p:x"], false).unwrap_err();
        assert!(err.to_string().contains("exactly one .wasm file"), "{err}");
        // Data that would shadow an input in the guest's tree.
        let t = ws_with(&[
            (
                "p/WBUILD",
                "wasi_tool(name = 'tl', src = 't.wasm', data = ['x.txt'], data_dir = '/p')\n\
             wasi_run(name = 'x', tool = ':tl', srcs = ['x.txt'], outs = ['o'])\n",
            ),
            ("p/t.wasm", ""),
            ("p/x.txt", ""),
        ]);
        let err = analyse_patterns(&t, &["//p:x"], false).unwrap_err();
        assert!(err.to_string().contains("overlaps '/p/x.txt'"), "{err}");
    }

    #[test]
    fn hand_made_graph_cycle_and_unknown_label() {
        let t = workspace(&[]);
        let loc = |line| crate::Location {
            file: "WBUILD".into(),
            line,
            column: 1,
        };
        let fg = |name: &str, dep: &str, line| {
            (
                label(name),
                Target {
                    label: label(name),
                    location: loc(line),
                    rule: Rule::Filegroup(FilegroupAttrs {
                        srcs: vec![Dep::Target(label(dep))],
                    }),
                    platform: None,
                    deps: None,
                },
            )
        };
        let g = TargetGraph {
            targets: [
                fg("//:a", "//:b", 1),
                fg("//:b", "//:c", 2),
                fg("//:c", "//:a", 3),
            ]
            .into(),
        };
        let err = analyse(&t.ws, &g, &[label("//:b")], false).unwrap_err();
        assert_eq!(
            err.to_string(),
            "WBUILD:2:1: dependency cycle: //:b -> //:c -> //:a -> //:b"
        );
        let g = TargetGraph {
            targets: [fg("//:a", "//:zz", 1)].into(),
        };
        let err = analyse(&t.ws, &g, &[label("//:a")], false).unwrap_err();
        assert!(matches!(err, GraphError::NoSuchTarget { .. }), "{err:?}");
        assert!(
            err.to_string().contains("referenced by //:a at WBUILD:1:1"),
            "{err}"
        );
    }
}
