//! `wbuild log critical-path|slowest|what-ran [BUILD_ID]`: what a recorded build spent its
//! time on, from the build history the store keeps (`wbuild history` lists the builds).
//!
//! The history records, per action, its name (label, then detail), mnemonic, status and
//! duration, in the order the actions finished, and (since the timeline fields were added)
//! its start, slot, failure message and the names of the actions it depends on.
//! `critical-path` is the longest chain of dependent actions by recorded duration, which
//! bounds the build's wall time however many cores it had. Its edges are the recorded ones;
//! for a build recorded without them it takes them from the workspace's action graph for the
//! build's patterns (analysed now, from the analysis cache when unchanged).

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use anyhow::{Context, Result, bail};
use wbuild_store::{ActionRecord, BuildRecord, Store};

use super::Cli;

#[derive(clap::Subcommand)]
pub enum LogCmd {
    /// The chain of dependent actions that bounded the build's wall time, with each action's
    /// duration (dependency edges as recorded; for builds recorded without them, from the
    /// workspace's build files: then run it in the workspace).
    CriticalPath {
        /// Build id (`wbuild history` lists them); default: the last build.
        build: Option<u64>,
    },
    /// The slowest actions of the build.
    Slowest {
        /// Build id (`wbuild history` lists them); default: the last build.
        build: Option<u64>,
        /// How many actions to show.
        #[arg(short = 'n', long = "count", default_value_t = 10)]
        n: usize,
    },
    /// The actions that ran (not cache hits), with their mnemonic and label.
    WhatRan {
        /// Build id (`wbuild history` lists them); default: the last build.
        build: Option<u64>,
    },
}

/// Statuses of actions that ran a command (here, on a remote worker, or failing).
fn ran(status: &str) -> bool {
    matches!(status, "executed" | "remote_executed" | "failed")
}

/// The build `id`, or the last one.
pub(crate) fn find_build(store: &Store, id: Option<u64>) -> Result<BuildRecord> {
    let builds = store.builds(usize::MAX)?;
    match id {
        None => builds.into_iter().next().with_context(|| {
            format!(
                "no build is recorded in cache {} yet: run `wbuild build` first",
                store.dir().display()
            )
        }),
        Some(id) => match builds.into_iter().find(|b| b.id == id) {
            Some(b) => Ok(b),
            None => bail!(
                "no build {id} in the history of cache {}: `wbuild history` lists the recorded builds and their ids",
                store.dir().display()
            ),
        },
    }
}

pub(crate) fn describe(b: &BuildRecord) -> String {
    let ms = b.end_unix_ms.map_or("unfinished".to_owned(), |e| {
        format!("{} ms", e.saturating_sub(b.start_unix_ms))
    });
    format!(
        "build {} (wbuild {} {}; {}, {})",
        b.id,
        b.command,
        b.targets.join(" "),
        b.outcome.as_deref().unwrap_or("unfinished"),
        ms
    )
}

/// What a build with no recorded action was.
fn no_actions(b: &BuildRecord) -> String {
    if b.cached > 0 {
        format!(
            "{}: a no-op build, all {} actions were up to date and none was recorded; `wbuild history` lists earlier builds",
            describe(b),
            b.cached
        )
    } else {
        format!("{}: no action was recorded", describe(b))
    }
}

pub fn run(cli: &Cli, cmd: &LogCmd) -> Result<i32> {
    let store = super::open_store(&cli.cache_dir)?;
    match cmd {
        LogCmd::WhatRan { build } => {
            let b = find_build(&store, *build)?;
            let actions = store.build_actions(b.id)?;
            if actions.is_empty() {
                println!("{}", no_actions(&b));
                return Ok(0);
            }
            let ran: Vec<&ActionRecord> = actions.iter().filter(|a| ran(&a.status)).collect();
            // Actions the up-to-date snapshot answered are counted, not recorded one by one.
            let counted = (b.executed + b.cached + b.failed) as usize;
            let unrecorded = counted.saturating_sub(actions.len());
            println!(
                "{}: {} of {} actions ran{}",
                describe(&b),
                ran.len(),
                actions.len() + unrecorded,
                if unrecorded > 0 {
                    format!(" ({unrecorded} known up to date from the snapshot, not listed)")
                } else {
                    String::new()
                }
            );
            for a in ran {
                println!(
                    "{:<12} {:>7} ms  {:<15} {}",
                    a.mnemonic, a.duration_ms, a.status, a.label
                );
            }
        }
        LogCmd::Slowest { build, n } => {
            let b = find_build(&store, *build)?;
            let mut actions = store.build_actions(b.id)?;
            if actions.is_empty() {
                println!("{}", no_actions(&b));
                return Ok(0);
            }
            // Stable: equal durations keep the order they finished in.
            actions.sort_by_key(|a| std::cmp::Reverse(a.duration_ms));
            println!(
                "{}: the {} slowest of {} actions",
                describe(&b),
                (*n).min(actions.len()),
                actions.len()
            );
            for a in actions.iter().take(*n) {
                println!(
                    "{:>7} ms  {:<12} {:<15} {}",
                    a.duration_ms, a.mnemonic, a.status, a.label
                );
            }
        }
        LogCmd::CriticalPath { build } => {
            let b = find_build(&store, *build)?;
            let actions = store.build_actions(b.id)?;
            if actions.is_empty() {
                println!("{}", no_actions(&b));
                return Ok(0);
            }
            critical_path(cli, &store, &b, &actions)?;
        }
    }
    Ok(0)
}

/// One action of a graph for [`longest_chain`]: its duration and its dependencies (indices
/// of earlier actions).
pub struct Node {
    pub duration_ms: u64,
    pub deps: Vec<usize>,
}

/// The chain of dependent actions with the greatest total duration (ties: the one with more
/// actions), from its first action to its last, and that total. `nodes` is in topological
/// order (every dependency index is smaller than its dependant's).
pub fn longest_chain(nodes: &[Node]) -> (Vec<usize>, u64) {
    // (total ms, actions) of the best chain ending at each node, and its previous node.
    let mut best: Vec<(u64, usize)> = Vec::with_capacity(nodes.len());
    let mut prev: Vec<Option<usize>> = Vec::with_capacity(nodes.len());
    for n in nodes {
        let before = n
            .deps
            .iter()
            .copied()
            .filter(|&d| d < best.len())
            .max_by_key(|&d| best[d]);
        let (ms, len) = before.map_or((0, 0), |d| best[d]);
        best.push((ms + n.duration_ms, len + 1));
        prev.push(before);
    }
    let Some(end) = (0..nodes.len()).max_by_key(|&i| best[i]) else {
        return (Vec::new(), 0);
    };
    let mut chain = vec![end];
    while let Some(p) = prev[*chain.last().expect("not empty")] {
        chain.push(p);
    }
    chain.reverse();
    (chain, best[end].0)
}

/// The critical path over the dependency edges the history recorded: indices into `actions`
/// from first to last, and its total duration; `None` if some action was recorded without
/// its edges (by an older wbuild). An action recorded several times (one run per platform)
/// counts once, with its slowest run.
pub fn recorded_critical_path(actions: &[ActionRecord]) -> Option<(Vec<usize>, u64)> {
    if actions.iter().any(|a| a.deps.is_none()) {
        return None;
    }
    // Nodes in the order their names first finished: an action finishes before any action
    // that depends on it starts, so this order is topological.
    let mut node_of: HashMap<&str, usize> = HashMap::new();
    let mut pick: Vec<usize> = Vec::new();
    for (i, a) in actions.iter().enumerate() {
        match node_of.entry(a.label.as_str()) {
            Entry::Vacant(e) => {
                e.insert(pick.len());
                pick.push(i);
            }
            Entry::Occupied(e) => {
                let n = *e.get();
                if a.duration_ms > actions[pick[n]].duration_ms {
                    pick[n] = i;
                }
            }
        }
    }
    let nodes: Vec<Node> = pick
        .iter()
        .map(|&i| Node {
            duration_ms: actions[i].duration_ms,
            deps: actions[i]
                .deps
                .iter()
                .flatten()
                .filter_map(|d| node_of.get(d.as_str()).copied())
                .collect(),
        })
        .collect();
    let (chain, total) = longest_chain(&nodes);
    Some((chain.into_iter().map(|n| pick[n]).collect(), total))
}

/// The first line of `log critical-path`: the build, the path's length and the wall time.
fn print_path_header(b: &BuildRecord, total: u64, actions: usize) {
    let wall = b.end_unix_ms.map(|e| e.saturating_sub(b.start_unix_ms));
    println!(
        "{}: critical path {total} ms over {actions} actions{}",
        describe(b),
        wall.map_or(String::new(), |w| format!(" (the build took {w} ms)"))
    );
}

fn critical_path(
    cli: &Cli,
    store: &Store,
    b: &BuildRecord,
    actions: &[ActionRecord],
) -> Result<()> {
    if let Some((chain, total)) = recorded_critical_path(actions) {
        print_path_header(b, total, chain.len());
        for i in chain {
            let r = &actions[i];
            println!(
                "{:>7} ms  {:<12} {:<15} {}",
                r.duration_ms, r.mnemonic, r.status, r.label
            );
        }
        return Ok(());
    }
    let (ws, _pkg) = super::workspace_resolved(cli).with_context(|| {
        format!(
            "build {} was recorded without dependency edges (by an older wbuild); critical-path takes them from the workspace's build files: run it inside the workspace that build built",
            b.id
        )
    })?;
    // History records the patterns as absolute patterns (`//pkg:name`).
    let patterns = wbuild_driver::session::parse_patterns(&b.targets, "")?;
    let signature = wbuild_graph::workspace_signature(&ws)?;
    let wbuild_graph::Analysed { graph, .. } =
        wbuild_driver::session::analyse(&ws, store, &patterns, b.command == "test", &signature)
            .with_context(|| {
                format!(
                    "cannot analyse {} in {} for the dependency edges of build {}",
                    b.targets.join(" "),
                    ws.root.display(),
                    b.id
                )
            })?;
    // An action built for several platforms has one name: its slowest run counts.
    let mut recorded: HashMap<&str, &ActionRecord> = HashMap::new();
    for a in actions {
        let e = recorded.entry(a.label.as_str()).or_insert(a);
        if a.duration_ms > e.duration_ms {
            *e = a;
        }
    }
    let names: Vec<String> = graph.actions.iter().map(|a| a.name()).collect();
    let nodes: Vec<Node> = graph
        .actions
        .iter()
        .zip(&names)
        .map(|(a, name)| Node {
            duration_ms: recorded.get(name.as_str()).map_or(0, |r| r.duration_ms),
            deps: a.deps.clone(),
        })
        .collect();
    let (chain, total) = longest_chain(&nodes);
    print_path_header(b, total, chain.len());
    for i in &chain {
        let a = &graph.actions[*i];
        match recorded.get(names[*i].as_str()) {
            Some(r) => println!(
                "{:>7} ms  {:<12} {:<15} {}",
                r.duration_ms, a.mnemonic, r.status, names[*i]
            ),
            None => println!(
                "{:>7}     {:<12} {:<15} {}",
                "-", a.mnemonic, "not recorded", names[*i]
            ),
        }
    }
    let known: std::collections::HashSet<&str> = names.iter().map(String::as_str).collect();
    let missing = recorded.keys().filter(|n| !known.contains(**n)).count();
    if missing > 0 {
        println!(
            "note: {missing} actions of build {} are not in the workspace's current action graph (its build files changed since): this path may miss some",
            b.id
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(duration_ms: u64, deps: &[usize]) -> Node {
        Node {
            duration_ms,
            deps: deps.to_vec(),
        }
    }

    #[test]
    fn the_longest_chain_by_duration_wins_over_the_longest_by_count() {
        // 0 -> 1 -> 2 (1 ms each), and 3 (10 ms) -> 4 (1 ms).
        let nodes = [n(1, &[]), n(1, &[0]), n(1, &[1]), n(10, &[]), n(1, &[3])];
        assert_eq!(longest_chain(&nodes), (vec![3, 4], 11));
    }

    #[test]
    fn ties_prefer_the_chain_with_more_actions() {
        let nodes = [n(0, &[]), n(0, &[0]), n(0, &[1]), n(0, &[])];
        assert_eq!(longest_chain(&nodes), (vec![0, 1, 2], 0));
        assert_eq!(longest_chain(&[]), (vec![], 0));
    }

    #[test]
    fn a_diamond_follows_the_slower_side() {
        // 0 -> {1 (5 ms), 2 (7 ms)} -> 3
        let nodes = [n(1, &[]), n(5, &[0]), n(7, &[0]), n(1, &[1, 2])];
        assert_eq!(longest_chain(&nodes), (vec![0, 2, 3], 9));
    }

    fn rec(label: &str, ms: u64, deps: Option<&[&str]>) -> ActionRecord {
        ActionRecord {
            label: label.into(),
            mnemonic: "WasiRun".into(),
            status: "executed".into(),
            duration_ms: ms,
            deps: deps.map(|d| d.iter().map(|s| s.to_string()).collect()),
            ..ActionRecord::default()
        }
    }

    #[test]
    fn recorded_edges_give_the_critical_path_without_a_workspace() {
        // Finished in this order: a, c (independent, 9 ms), b (needs a), d (needs b and c).
        let actions = [
            rec("//p:a", 5, Some(&[])),
            rec("//p:c", 9, Some(&[])),
            rec("//p:b", 6, Some(&["//p:a"])),
            rec("//p:d", 1, Some(&["//p:b", "//p:c"])),
        ];
        assert_eq!(recorded_critical_path(&actions), Some((vec![0, 2, 3], 12)));
    }

    #[test]
    fn a_build_recorded_without_edges_has_no_recorded_path() {
        let actions = [rec("//p:a", 5, Some(&[])), rec("//p:b", 6, None)];
        assert_eq!(recorded_critical_path(&actions), None);
        assert_eq!(recorded_critical_path(&[]), Some((vec![], 0)));
    }

    #[test]
    fn an_action_run_for_two_platforms_counts_once_with_its_slowest_run() {
        // Two passes; unknown dependency names (not recorded: skipped) are ignored.
        let actions = [
            rec("//p:a", 5, Some(&[])),
            rec("//p:b", 1, Some(&["//p:a", "//p:gone"])),
            rec("//p:a", 8, Some(&[])),
            rec("//p:b", 2, Some(&["//p:a"])),
        ];
        assert_eq!(recorded_critical_path(&actions), Some((vec![2, 3], 10)));
    }
}
