//! Finishing an action: what it produced ([`Finished`]), turning a run (here or on a worker)
//! into the action-cache entry ([`action_result`]), the upload and the materialised outputs.

use std::collections::HashSet;

use wbuild_graph::{ActionGraph, ActionNode, Exec};
use wbuild_store::{Digest, reapi};

use crate::access::unused_inputs;
use crate::events::Status;
use crate::keys::Prepared;
use crate::spec::RunOutput;
use crate::{Options, SchedError, Scheduler, is_normalised};

/// What finishing an action produced.
pub(crate) struct Finished {
    pub(crate) status: Status,
    pub(crate) outputs: Vec<(String, Digest)>,
    /// Outputs with an executable bit.
    pub(crate) executables: HashSet<String>,
    pub(crate) error: Option<String>,
    pub(crate) output: Option<String>,
    pub(crate) warnings: Vec<String>,
    pub(crate) accesses: Option<serde_json::Value>,
    pub(crate) action_digest: Option<Digest>,
    /// The remote worker that ran it.
    pub(crate) worker: Option<String>,
    /// A straggler's second submission delivered the result.
    pub(crate) resubmitted: bool,
}

/// What a run reported besides its outputs: the tool output shown to the user, warnings, the
/// access log (as JSON) and the remote worker that ran it.
#[derive(Default)]
pub(crate) struct RunReport {
    pub(crate) output: Option<String>,
    pub(crate) warnings: Vec<String>,
    pub(crate) accesses: Option<serde_json::Value>,
    pub(crate) worker: Option<String>,
}

impl Finished {
    fn new(
        status: Status,
        action_digest: Option<Digest>,
        outputs: Vec<(String, Digest)>,
        executables: HashSet<String>,
        error: Option<String>,
        report: RunReport,
    ) -> Finished {
        let RunReport {
            output,
            warnings,
            accesses,
            worker,
        } = report;
        Finished {
            status,
            outputs,
            executables,
            error,
            output,
            warnings,
            accesses,
            action_digest,
            worker,
            resubmitted: false,
        }
    }

    /// The action failed before it had a key or ran (the error names the path at fault).
    pub(crate) fn failed(error: String) -> Finished {
        Finished::new(
            Status::Failed,
            None,
            Vec::new(),
            HashSet::new(),
            Some(error),
            RunReport::default(),
        )
    }

    /// The action ran (here or on a worker) and failed: no outputs are used.
    pub(crate) fn run_failed(error: String, action_digest: Digest, report: RunReport) -> Finished {
        Finished::new(
            Status::Failed,
            Some(action_digest),
            Vec::new(),
            HashSet::new(),
            Some(error),
            report,
        )
    }

    /// The action's outputs are in the store and materialised: `status` says where they came
    /// from (run here, on a worker, or a local or remote cache entry).
    pub(crate) fn succeeded(
        status: Status,
        action_digest: Digest,
        outputs: Vec<(String, Digest)>,
        executables: HashSet<String>,
        report: RunReport,
    ) -> Finished {
        Finished::new(
            status,
            Some(action_digest),
            outputs,
            executables,
            None,
            report,
        )
    }
}

/// The REAPI `ActionResult` of a run: `outputs` (in this order; those in `executables` with
/// the executable bit), the exit code and the digests of stdout and stderr (`None`: empty).
/// The scheduler writes it to the action cache; `wbuild worker` reports it to the engine.
pub fn action_result(
    outputs: &[(String, Digest)],
    executables: &HashSet<String>,
    exit_code: i32,
    stdout: Option<Digest>,
    stderr: Option<Digest>,
) -> reapi::ActionResult {
    reapi::ActionResult {
        output_files: outputs
            .iter()
            .map(|(path, d)| reapi::OutputFile {
                path: path.clone(),
                digest: Some(d.to_proto()),
                is_executable: executables.contains(path),
                contents: Vec::new(),
                node_properties: None,
            })
            .collect(),
        exit_code,
        stdout_digest: stdout.map(|d| d.to_proto()),
        stderr_digest: stderr.map(|d| d.to_proto()),
        ..Default::default()
    }
}

/// Validated outputs as `(path, digest)` and the set of executable ones.
pub(crate) fn split_outputs(
    files: Vec<(String, Digest, bool)>,
) -> (Vec<(String, Digest)>, HashSet<String>) {
    let executables = files
        .iter()
        .filter(|(_, _, x)| *x)
        .map(|(p, _, _)| p.clone())
        .collect();
    let outputs = files.into_iter().map(|(p, d, _)| (p, d)).collect();
    (outputs, executables)
}

impl Scheduler<'_> {
    /// Turns what a run produced (here or on a worker) into the action's outcome: access
    /// checks, the action-cache entry, the upload and the materialised outputs.
    pub(crate) fn finish_run(
        &self,
        graph: &ActionGraph,
        action: &ActionNode,
        opts: &Options,
        prep: &Prepared,
        ran: RunOutput,
        worker: Option<String>,
    ) -> Result<Finished, SchedError> {
        let RunOutput {
            outputs,
            executables,
            mut errors,
            stdout,
            stderr,
            accesses,
            ..
        } = ran;
        let mut warnings = Vec::new();
        if let Some(log) = &accesses {
            errors.extend(self.check_accesses(graph, action, prep, log));
            // Unused inputs are worth a warning only when the tool did its job. (A cc_*
            // action's inputs are its rule's whole header set: the rule's own checks say
            // what is unused.)
            if errors.is_empty()
                && (matches!(action.exec, Exec::Wasi(_)) || action.mnemonic == "Genrule")
            {
                warnings = unused_inputs(action, log);
            }
        }
        let log = accesses;
        let accesses = log
            .as_ref()
            .and_then(|log| serde_json::to_value(&log.accesses).ok());
        let status = if worker.is_some() {
            Status::RemoteExecuted
        } else {
            Status::Executed
        };
        let mut text = String::from_utf8_lossy(&stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&stderr));
        if !errors.is_empty() {
            let report = RunReport {
                output: (!text.is_empty()).then_some(text),
                warnings,
                accesses,
                worker,
            };
            return Ok(Finished::run_failed(
                errors.join("; "),
                prep.action_digest,
                report,
            ));
        }
        let stdout_digest = (!stdout.is_empty())
            .then(|| self.store.put_bytes(&stdout))
            .transpose()?;
        let stderr_digest = (!stderr.is_empty())
            .then(|| self.store.put_bytes(&stderr))
            .transpose()?;
        let result = action_result(&outputs, &executables, 0, stdout_digest, stderr_digest);
        // A worker's outputs a build without the bytes left on the remote: no local entry
        // (the local cache holds only entries whose bytes are here).
        if self.all_here(&outputs) {
            self.store
                .ac_put(&prep.action_digest, &result, &action.label.to_string())?;
        }
        self.record_key(action, opts, prep, log.as_ref(), &outputs, &mut warnings)?;
        // Unsandboxed native results are never shared; a worker's are shared already.
        let unsandboxed = opts.unsandboxed && action.exec == Exec::Native;
        if opts.remote_upload && !unsandboxed && worker.is_none() {
            let _upload = crate::phases::phase("upload");
            self.remote_upload(&prep.action_digest, &result);
        }
        {
            let _materialize = crate::phases::phase("materialize outputs");
            match self.deliver(opts, &outputs, &executables) {
                Ok(()) => {}
                Err(crate::download::FetchError::Lost(blobs)) => {
                    return Err(SchedError::LostInputs { blobs });
                }
                Err(crate::download::FetchError::Sched(e)) => return Err(e),
            }
        }
        let show = opts.show_output || text.to_ascii_lowercase().contains("warning");
        let report = RunReport {
            output: (show && !text.is_empty()).then_some(text),
            warnings,
            accesses,
            worker,
        };
        Ok(Finished::succeeded(
            status,
            prep.action_digest,
            outputs,
            executables,
            report,
        ))
    }

    /// The stdout and stderr of a cached result, as text (`None`: both empty).
    pub(crate) fn cached_output(&self, result: &reapi::ActionResult) -> Option<String> {
        let mut text = String::new();
        for d in [&result.stdout_digest, &result.stderr_digest]
            .into_iter()
            .flatten()
        {
            if let Ok(d) = Digest::from_proto(self.store.function(), d)
                && let Ok(bytes) = self.store.get_bytes(&d)
            {
                text.push_str(&String::from_utf8_lossy(&bytes));
            }
        }
        (!text.is_empty()).then_some(text)
    }

    /// Copy outputs into `wbuild-out/`, skipping files that already hold the right bytes.
    pub(crate) fn materialize(
        &self,
        outputs: &[(String, Digest)],
        executables: &HashSet<String>,
        out_dir: &str,
    ) -> Result<(), wbuild_store::StoreError> {
        for (path, d) in outputs {
            // Every path here was validated (or declared by the build files); never write
            // outside the output directory whatever happens upstream.
            if !is_normalised(path) {
                return Err(wbuild_store::StoreError::Io {
                    op: "materialize",
                    path: self.ws.root.join(out_dir),
                    error: std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!("output path {path:?} is not a normalised relative path"),
                    ),
                });
            }
            let dest = self.ws.root.join(out_dir).join(path);
            if let Ok(have) = self.store.file_digest(&dest)
                && have == *d
            {
                continue;
            }
            self.store
                .materialize(d, &dest, executables.contains(path))?;
        }
        Ok(())
    }
}
