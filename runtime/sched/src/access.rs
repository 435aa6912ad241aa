//! Checks of what a WASI guest touched (its access log): undeclared reads and refused
//! accesses fail the action, declared inputs it never used are warnings.

use wbuild_exec_wasi::{AccessKind, AccessLog, summarise};
use wbuild_graph::{ActionGraph, ActionNode};

use crate::Scheduler;
use crate::keys::Prepared;

/// What a guest may write, for messages.
const WRITABLE: &str = "only declared outputs, temporary files beside them and /tmp may be written";

impl Scheduler<'_> {
    /// Undeclared reads and refused accesses become errors naming the path and what to do.
    pub(crate) fn check_accesses(
        &self,
        graph: &ActionGraph,
        action: &ActionNode,
        prep: &Prepared,
        log: &AccessLog,
    ) -> Vec<String> {
        let mut errors = Vec::new();
        for path in log.paths(AccessKind::Missing) {
            // /tmp is the guest's own; a path above the root names nothing in the workspace
            // (whatever the host has there).
            if path.starts_with("/tmp")
                || !crate::is_normalised(path)
                || prep.spec.files.contains_key(path)
            {
                continue;
            }
            if let Some((producer, label)) = graph.producers.get(path) {
                // A path of an action ordered after this one: it can never be here, in any
                // order the build runs in (the pair is ordered, so the probe is valid).
                if *label != action.label && !ordered_after(graph, action, *producer) {
                    errors.push(format!(
                        "read undeclared input {path}, which is produced by {label}: add {label} to srcs of {}",
                        action.label
                    ));
                }
            } else if self.ws.path(path).is_file() {
                errors.push(format!(
                    "read undeclared input {path}: add it to srcs of {}",
                    action.label
                ));
            }
        }
        // Refusals by kind, each said once with the paths summarised: a tool that probes or
        // writes many paths gets one readable line per kind, not one per path.
        let (mut outside, mut inputs, mut undeclared) = (Vec::new(), Vec::new(), Vec::new());
        for path in log.paths(AccessKind::Denied) {
            if path.starts_with('/') || path.starts_with("..") || path.contains("/..") {
                outside.push(path.to_owned());
            } else if prep.spec.files.contains_key(path) {
                inputs.push(path.to_owned());
            } else {
                undeclared.push(path.to_owned());
            }
        }
        let label = &action.label;
        errors.extend(refusal(
            &outside,
            |one| format!("tried to reach {one} outside its sandbox ({WRITABLE})"),
            |n, list| format!("tried to reach {n} paths outside its sandbox ({WRITABLE}): {list}"),
        ));
        errors.extend(refusal(
            &inputs,
            |one| format!("tried to modify its input {one}; inputs are read-only"),
            |n, list| format!("tried to modify {n} of its inputs ({list}); inputs are read-only"),
        ));
        errors.extend(refusal(
            &undeclared,
            |one| {
                format!(
                    "tried to write undeclared path {one}: declare it in outs of {label} or write scratch files to /tmp"
                )
            },
            |n, list| {
                format!(
                    "tried to write {n} undeclared paths ({list}): declare them in outs of {label} or write scratch files to /tmp"
                )
            },
        ));
        errors
    }
}

/// Whether action `later` depends (through any chain of `deps`) on `action`.
fn ordered_after(graph: &ActionGraph, action: &ActionNode, later: usize) -> bool {
    let Some(me) = action
        .outputs
        .first()
        .and_then(|o| graph.producers.get(o))
        .map(|(i, _)| *i)
    else {
        return false;
    };
    if later >= graph.actions.len() || later <= me {
        // Topological order: a dependent comes after its dependencies.
        return false;
    }
    let mut seen = vec![false; later + 1];
    let mut stack = vec![later];
    while let Some(i) = stack.pop() {
        if i == me {
            return true;
        }
        for &d in &graph.actions[i].deps {
            if d >= me && !seen[d] {
                seen[d] = true;
                stack.push(d);
            }
        }
    }
    false
}

/// One message for refused `paths`: `one` names a single path, `many` gets the count and the
/// first five (and how many more); none without paths.
fn refusal(
    paths: &[String],
    one: impl Fn(&str) -> String,
    many: impl Fn(usize, String) -> String,
) -> Option<String> {
    match paths {
        [] => None,
        [p] => Some(one(p)),
        _ => Some(many(paths.len(), summarise(paths, 5))),
    }
}

/// Declared inputs the tool never opened, stat'ed or listed, and whose name it never saw in
/// a listing of their directory.
pub(crate) fn unused_inputs(action: &ActionNode, log: &AccessLog) -> Vec<String> {
    let listed: std::collections::HashSet<&str> = log.paths(AccessKind::List).collect();
    let touched: std::collections::HashSet<&str> = log
        .accesses
        .iter()
        .filter(|a| {
            matches!(
                a.kind,
                AccessKind::Read | AccessKind::Stat | AccessKind::List
            )
        })
        .map(|a| a.path.as_str())
        .collect();
    action
        .inputs
        .iter()
        .filter(|p| !touched.contains(p.as_str()))
        .filter(|p| !listed.contains(p.rsplit_once('/').map_or("", |(dir, _)| dir)))
        .map(|p| format!("declared input {p} was never read by {}", action.label))
        .collect()
}
