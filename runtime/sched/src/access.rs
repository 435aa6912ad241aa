//! Checks of what a WASI guest touched (its access log): undeclared reads and refused
//! accesses fail the action, declared inputs it never used are warnings.

use wbuild_exec_wasi::{AccessKind, AccessLog};
use wbuild_graph::{ActionGraph, ActionNode};

use crate::Scheduler;
use crate::keys::Prepared;

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
            if path.starts_with("/tmp") || prep.spec.files.contains_key(path) {
                continue;
            }
            if let Some((_, label)) = graph.producers.get(path) {
                if *label != action.label {
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
        for path in log.paths(AccessKind::Denied) {
            if path.starts_with('/') || path.starts_with("..") || path.contains("/..") {
                errors.push(format!(
                    "tried to reach {path} outside its sandbox (only declared inputs, outputs and /tmp exist)"
                ));
            } else if prep.spec.files.contains_key(path) {
                errors.push(format!(
                    "tried to modify its input {path}; inputs are read-only"
                ));
            } else {
                errors.push(format!(
                    "tried to write undeclared path {path}: declare it in outs of {} or write scratch files to /tmp",
                    action.label
                ));
            }
        }
        errors
    }
}

/// Declared inputs the tool never opened, stat'ed or listed.
pub(crate) fn unused_inputs(action: &ActionNode, log: &AccessLog) -> Vec<String> {
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
        .map(|p| format!("declared input {p} was never read by {}", action.label))
        .collect()
}
