//! The remote side of a build: the remote cache (lookup, verified download, upload) and the
//! remote executor (upload, execution, straggler resubmission), each behind a trait
//! ([`RemoteCacheApi`], [`RemoteExecApi`]) implemented by [`wbuild_remote::RemoteCache`].
//! After an endpoint's first failure the rest of the build goes on without it, with one
//! warning ([`Endpoint`]).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wbuild_exec_wasi::AccessLog;
use wbuild_graph::{ActionGraph, ActionNode};
use wbuild_remote::{ClientError, Executed, RemoteCache, Resubmission};
use wbuild_store::{Digest, DigestFunction, digest_message, reapi};

use crate::download::FetchError;
use crate::events::{Event, EventSink, Status};
use crate::finish::{Finished, RunReport, split_outputs};
use crate::keys::Prepared;
use crate::local::StageError;
use crate::spec::{Kind, RunOutput};
use crate::{InvalidResult, Options, SchedError, Scheduler, validate_result};

/// Shortest wait before a straggler is resubmitted (below this, queueing noise dominates).
pub(crate) const MIN_STRAGGLER_WAIT: Duration = Duration::from_millis(500);
/// Earlier remote runs of a mnemonic needed before its stragglers are resubmitted.
pub(crate) const STRAGGLER_SAMPLES: usize = 3;
/// `type_url` of the `auxiliary_metadata` entry a worker adds to a WASI action's result: the
/// `Digest` of the guest's access log (JSON) in the CAS.
pub const ACCESS_LOG_TYPE_URL: &str = "type.googleapis.com/wbuild.AccessLogDigest";

/// The REAPI cache calls a build makes (action cache and CAS).
pub trait RemoteCacheApi: Send + Sync {
    /// Where it is (for messages).
    fn url(&self) -> &str;
    /// Its digest function (the store's must be the same).
    fn function(&self) -> DigestFunction;
    /// RPCs made so far.
    fn rpc_count(&self) -> u64;
    /// The cached result of `action`, if any (servers may inline the blobs of
    /// `inline_paths`, stdout and stderr).
    fn get_action_result(
        &self,
        action: &Digest,
        inline_paths: &[String],
    ) -> Result<Option<reapi::ActionResult>, ClientError>;
    /// Records `result` for `action` (its blobs must be uploaded first).
    fn update_action_result(
        &self,
        action: &Digest,
        result: &reapi::ActionResult,
    ) -> Result<(), ClientError>;
    /// Which of `blobs` the remote does not have.
    fn find_missing(&self, blobs: &[Digest]) -> Result<Vec<Digest>, ClientError>;
    fn upload(&self, blobs: &[(Digest, Vec<u8>)]) -> Result<(), ClientError>;
    /// The blobs, as the remote sent them (the caller verifies them).
    fn download(&self, blobs: &[Digest]) -> Result<Vec<(Digest, Vec<u8>)>, ClientError>;
    /// Bytes received so far (blobs and inlined contents).
    fn bytes_downloaded(&self) -> u64 {
        0
    }
    /// Uploads the blobs the remote lacks, reading them with `read`.
    fn upload_missing(
        &self,
        blobs: &[Digest],
        read: &dyn Fn(&Digest) -> Option<Vec<u8>>,
    ) -> Result<(), ClientError> {
        let mut data = Vec::new();
        for d in self.find_missing(blobs)? {
            match read(&d) {
                Some(b) => data.push((d, b)),
                None => return Err(ClientError::MissingBlob(d)),
            }
        }
        self.upload(&data)
    }
}

/// A REAPI engine that runs actions on its workers (its CAS holds their inputs).
pub trait RemoteExecApi: RemoteCacheApi {
    /// Executes `action` (its `Action`, `Command` and inputs in the CAS) and waits for the
    /// result, submitting `resubmit`'s copy when the first run straggles.
    fn execute(
        &self,
        action: &Digest,
        resubmit: Option<Resubmission>,
    ) -> Result<Executed, ClientError>;
}

impl RemoteCacheApi for RemoteCache {
    fn url(&self) -> &str {
        RemoteCache::url(self)
    }

    fn function(&self) -> DigestFunction {
        RemoteCache::function(self)
    }

    fn rpc_count(&self) -> u64 {
        RemoteCache::rpc_count(self)
    }

    fn get_action_result(
        &self,
        action: &Digest,
        inline_paths: &[String],
    ) -> Result<Option<reapi::ActionResult>, ClientError> {
        RemoteCache::get_action_result(self, action, inline_paths)
    }

    fn update_action_result(
        &self,
        action: &Digest,
        result: &reapi::ActionResult,
    ) -> Result<(), ClientError> {
        RemoteCache::update_action_result(self, action, result)
    }

    fn find_missing(&self, blobs: &[Digest]) -> Result<Vec<Digest>, ClientError> {
        RemoteCache::find_missing(self, blobs)
    }

    fn upload(&self, blobs: &[(Digest, Vec<u8>)]) -> Result<(), ClientError> {
        RemoteCache::upload(self, blobs)
    }

    fn download(&self, blobs: &[Digest]) -> Result<Vec<(Digest, Vec<u8>)>, ClientError> {
        RemoteCache::download(self, blobs)
    }

    fn bytes_downloaded(&self) -> u64 {
        RemoteCache::bytes_downloaded(self)
    }

    /// Small sets are sent without asking which blobs the remote lacks (one round trip).
    fn upload_missing(
        &self,
        blobs: &[Digest],
        read: &dyn Fn(&Digest) -> Option<Vec<u8>>,
    ) -> Result<(), ClientError> {
        RemoteCache::upload_missing(self, blobs, read)
    }
}

impl RemoteExecApi for RemoteCache {
    fn execute(
        &self,
        action: &Digest,
        resubmit: Option<Resubmission>,
    ) -> Result<Executed, ClientError> {
        RemoteCache::execute(self, action, resubmit)
    }
}

/// How long a remote run of `mnemonic` may take before a copy is submitted: twice the median
/// of this build's earlier remote runs of it (at least [`STRAGGLER_SAMPLES`] of them), and
/// at least [`MIN_STRAGGLER_WAIT`].
pub(crate) fn straggler_wait(
    durations: &Mutex<HashMap<String, Vec<u64>>>,
    mnemonic: &str,
) -> Option<Duration> {
    let mut v = durations.lock().expect("durations").get(mnemonic)?.clone();
    if v.len() < STRAGGLER_SAMPLES {
        return None;
    }
    v.sort_unstable();
    let median = v[v.len() / 2];
    Some(Duration::from_millis(2 * median).max(MIN_STRAGGLER_WAIT))
}

/// A REAPI endpoint a build uses while it works: after its first failure the rest of the
/// build goes on without it, with one warning.
pub(crate) struct Endpoint<T: ?Sized> {
    pub(crate) conn: Option<Arc<T>>,
    ok: AtomicBool,
    /// "remote cache", "remote executor".
    what: &'static str,
    /// What the build does without it ("runs locally").
    without: &'static str,
}

impl<T: RemoteCacheApi + ?Sized> Endpoint<T> {
    pub(crate) fn new(
        conn: Option<Arc<T>>,
        what: &'static str,
        without: &'static str,
    ) -> Endpoint<T> {
        Endpoint {
            conn,
            ok: AtomicBool::new(true),
            what,
            without,
        }
    }

    fn get(&self) -> Option<&T> {
        self.conn
            .as_deref()
            .filter(|_| self.ok.load(Ordering::Relaxed))
    }

    fn failed(&self, e: ClientError, events: &dyn EventSink) {
        if self.ok.swap(false, Ordering::SeqCst) {
            let url = self.conn.as_ref().map_or("", |r| r.url());
            events.event(&Event::Warning {
                message: format!(
                    "{} {url}: {e}; the rest of this build {}",
                    self.what, self.without
                ),
            });
        }
    }
}

impl Scheduler<'_> {
    /// The remote cache while it works (`None` after its first failure).
    pub(crate) fn remote(&self) -> Option<&dyn RemoteCacheApi> {
        self.remote.get()
    }

    /// The remote failed: say so once and go on without it.
    pub(crate) fn remote_failed(&self, e: ClientError) {
        self.remote.failed(e, self.events);
    }

    /// Looks the action up in the remote cache; on a hit, fetches the wanted outputs it lacks
    /// (verified; see [`crate::Download`]), records the entry locally and materialises them.
    pub(crate) fn remote_lookup(
        &self,
        graph: &ActionGraph,
        action: &ActionNode,
        opts: &Options,
        prep: &Prepared,
    ) -> Result<Option<Finished>, SchedError> {
        let Some(remote) = self.remote() else {
            return Ok(None);
        };
        let inline: Vec<String> = action
            .outputs
            .iter()
            .filter(|p| opts.download.wants(p))
            .cloned()
            .collect();
        let mut result = match remote.get_action_result(&prep.action_digest, &inline) {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(None),
            Err(e) => {
                self.remote_failed(e);
                return Ok(None);
            }
        };
        if result.exit_code != 0 {
            return Ok(None);
        }
        // Only what this action could have produced: exactly its declared outputs, as files.
        let files = match validate_result(self.store.function(), &action.outputs, &result) {
            Ok(v) => v,
            Err(e) => {
                self.invalid_result(&format!("remote cache {}", remote.url()), action, &e);
                return Ok(None);
            }
        };
        let (outputs, executables) = split_outputs(files);
        if self.names_lost(&outputs) {
            return Ok(None);
        }
        let wanted = self.wanted_missing(opts, &outputs);
        let (_, _, accesses) = match self.fetch_result(remote, &mut result, &wanted) {
            Ok(Some(x)) => x,
            Ok(None) => return Ok(None),
            Err(e) => {
                self.remote_failed(e);
                return Ok(None);
            }
        };
        // A WASI result whose guest read undeclared inputs or left its sandbox is not used
        // (running the action again reports why).
        if let Some(log) = &accesses {
            if !self.check_accesses(graph, action, prep, log).is_empty() {
                return Ok(None);
            }
            self.store
                .put_access_log(&prep.action_digest, &log.to_json())?;
        }
        match self.deliver(opts, &outputs, &executables) {
            Ok(()) => {}
            Err(FetchError::Lost(_)) => return Ok(None),
            Err(FetchError::Sched(e)) => return Err(e),
        }
        // The local cache holds only entries whose bytes are here (outputs left on the remote
        // are looked up there again).
        if self.all_here(&outputs) {
            self.store
                .ac_put(&prep.action_digest, &result, &action.label.to_string())?;
        }
        Ok(Some(Finished::succeeded(
            Status::RemoteCached,
            prep.action_digest,
            outputs,
            executables,
            RunReport::default(),
        )))
    }

    /// The executor while it is reachable.
    pub(crate) fn executor(&self) -> Option<&dyn RemoteExecApi> {
        self.executor.get()
    }

    /// The executor cannot be reached: say so once and run the rest here.
    pub(crate) fn executor_failed(&self, e: ClientError) {
        self.executor.failed(e, self.events);
    }

    /// Runs the action on a worker of the remote executor: uploads what the engine lacks
    /// (inputs, the `Command`, the input tree, the `Action`), executes it, fetches and
    /// verifies the outputs. `None`: run it here (no executor, one that cannot run this
    /// action, or an executor failure, reported as a warning).
    pub(crate) fn remote_execute(
        &self,
        graph: &ActionGraph,
        action: &ActionNode,
        opts: &Options,
        prep: &Prepared,
    ) -> Result<Option<Finished>, SchedError> {
        let Some(ex) = self.executor() else {
            return Ok(None);
        };
        if let Kind::Native {
            toolchain,
            unsandboxed,
            ..
        } = &prep.spec.kind
        {
            if *unsandboxed {
                return Ok(None);
            }
            if toolchain.is_none() {
                // Keyed on this machine's toolchain: no worker can run it as keyed.
                let platform = opts.platform.name().to_owned();
                if self
                    .warned_local
                    .lock()
                    .expect("warned")
                    .insert(platform.clone())
                {
                    self.events.event(&Event::Warning {
                        message: format!(
                            "native actions for {platform} run here: they use the host's toolchain; pin a toolchain bundle for {platform} in wbuild.toml to run them remotely"
                        ),
                    });
                }
                return Ok(None);
            }
        }
        match self.stage_sources(prep) {
            Ok(()) => {}
            Err(StageError::Action(e)) => return Ok(Some(Finished::failed(e.to_string()))),
            Err(StageError::Sched(e)) => return Err(e),
        }
        let f = self.store.function();
        let mut messages: HashMap<Digest, Vec<u8>> = HashMap::new();
        let (command_digest, command_bytes) = digest_message(f, &prep.command);
        messages.insert(command_digest, command_bytes);
        messages.insert(
            prep.action_digest,
            prost::Message::encode_to_vec(&prep.action),
        );
        for (d, bytes) in &prep.dirs {
            messages.insert(*d, bytes.clone());
        }
        // A copy to submit if this one straggles (the threshold is asked again while it
        // runs: earlier runs of the mnemonic may finish meanwhile).
        let copy = wbuild_remote::speculative_copy(&prep.action);
        let copy_digest = Digest::of(f, &copy);
        messages.insert(copy_digest, copy);
        let durations = self.remote_durations.clone();
        let mnemonic = action.mnemonic.clone();
        let resubmission = Some(Resubmission {
            action: copy_digest,
            wait: Box::new(move || straggler_wait(&durations, &mnemonic)),
        });
        let mut blobs: Vec<Digest> = messages.keys().copied().collect();
        blobs.extend(prep.spec.files.values().copied());
        if let Kind::Wasi { module, .. } = &prep.spec.kind {
            blobs.push(*module);
        }
        blobs.sort_by_key(|d| d.hash);
        blobs.dedup();
        let uploaded = ex.upload_missing(&blobs, &|d| {
            messages
                .get(d)
                .cloned()
                .or_else(|| self.store.get_bytes(d).ok())
        });
        match uploaded {
            Ok(()) => {}
            // An input only the remote held (a build without the bytes) and it lost it.
            Err(ClientError::MissingBlob(d)) if !self.store.has(&d) => {
                self.lost.lock().expect("lost blobs").insert(d);
                return Err(SchedError::LostInputs { blobs: vec![d] });
            }
            Err(e) => {
                self.executor_failed(e);
                return Ok(None);
            }
        }
        let t0 = Instant::now();
        let executed = match ex.execute(&prep.action_digest, resubmission) {
            Ok(x) => x,
            Err(e) => {
                self.executor_failed(e);
                return Ok(None);
            }
        };
        let worker = Some(executed.worker())
            .filter(|w| !w.is_empty())
            .unwrap_or("an unnamed worker")
            .to_owned();
        let resubmitted = executed.resubmitted;
        let response = executed.response;
        // The engine answered from its cache (another client ran it since our lookup).
        let cached = response.cached_result;
        let refused = |why: String| {
            self.events.event(&Event::Warning {
                message: format!(
                    "{}: the remote executor did not run it ({why}); running it here",
                    action.name()
                ),
            });
            Ok(None)
        };
        if let Some(status) = response.status.as_ref().filter(|s| s.code != 0) {
            return refused(format!("status {}: {}", status.code, status.message));
        }
        let Some(mut result) = response.result else {
            return refused("no result".to_owned());
        };
        if let Some(m) = &result.execution_metadata {
            remote_phases(m);
        }
        // A successful result must hold exactly the declared outputs; a failed one's outputs
        // are never used (nor fetched).
        let (outputs, executables) = if result.exit_code == 0 {
            match validate_result(self.store.function(), &action.outputs, &result) {
                Ok(v) => split_outputs(v),
                Err(e) => {
                    self.invalid_result(&format!("remote executor ({worker})"), action, &e);
                    return Ok(None);
                }
            }
        } else {
            result.output_files.clear();
            (Vec::new(), HashSet::new())
        };
        // Outputs the remote lost before: a fresh run made them again (fetch them now, they
        // are needed here); an answer from the engine's cache names bytes that are gone.
        let lost_here: Vec<Digest> = {
            let lost = self.lost.lock().expect("lost blobs");
            outputs
                .iter()
                .map(|(_, d)| *d)
                .filter(|d| lost.contains(d) && !self.store.has(d))
                .collect()
        };
        if cached && !lost_here.is_empty() {
            return refused("its cached result names outputs the remote no longer has".to_owned());
        }
        let mut wanted = self.wanted_missing(opts, &outputs);
        wanted.extend(lost_here);
        let fetched = match self.fetch_result(ex, &mut result, &wanted) {
            Ok(Some(x)) => x,
            Ok(None) => return refused(format!("{worker} sent a malformed result")),
            Err(e) => {
                self.executor_failed(e);
                return Ok(None);
            }
        };
        let elapsed = t0.elapsed().as_millis() as u64;
        if !resubmitted {
            self.remote_durations
                .lock()
                .expect("durations")
                .entry(action.mnemonic.clone())
                .or_default()
                .push(elapsed);
        }
        let (stdout, stderr, accesses) = fetched;
        let mut errors = Vec::new();
        if result.exit_code != 0 {
            errors.push(format!(
                "the command exited with code {} on {worker}",
                result.exit_code
            ));
        }
        if let Some(log) = &accesses {
            self.store
                .put_access_log(&prep.action_digest, &log.to_json())?;
        }
        let ran = RunOutput {
            outputs,
            executables,
            errors,
            exit_code: result.exit_code,
            stdout,
            stderr,
            accesses,
            timed_out: false,
        };
        let mut fin = self.finish_run(graph, action, opts, prep, ran, Some(worker))?;
        fin.resubmitted = resubmitted;
        if cached && fin.status == Status::RemoteExecuted {
            fin.status = Status::RemoteCached;
        }
        Ok(Some(fin))
    }

    /// Downloads (verified) what a remote result references into the store: the output
    /// blobs `outputs` (of the validated outputs, those to be materialised), stdout, stderr
    /// and a WASI guest's access log. `None`: the result is malformed.
    #[allow(clippy::type_complexity)]
    fn fetch_result<R: RemoteCacheApi + ?Sized>(
        &self,
        remote: &R,
        result: &mut reapi::ActionResult,
        outputs: &[Digest],
    ) -> Result<Option<(Vec<u8>, Vec<u8>, Option<AccessLog>)>, ClientError> {
        let f = self.store.function();
        let put = |d: Digest, bytes: &[u8]| self.store.put_bytes(bytes).ok() == Some(d);
        for (d, bytes) in wbuild_remote::take_inlined(result, f)? {
            if !self.store.has(&d) && !put(d, &bytes) {
                return Ok(None);
            }
        }
        let digest = |p: Option<&reapi::Digest>| p.and_then(|d| Digest::from_proto(f, d).ok());
        let access_log = result
            .execution_metadata
            .as_ref()
            .into_iter()
            .flat_map(|m| m.auxiliary_metadata.iter())
            .find(|a| a.type_url == ACCESS_LOG_TYPE_URL)
            .and_then(|a| <reapi::Digest as prost::Message>::decode(&a.value[..]).ok())
            .and_then(|d| Digest::from_proto(f, &d).ok());
        let stdout = digest(result.stdout_digest.as_ref());
        let stderr = digest(result.stderr_digest.as_ref());
        let mut wanted: Vec<Digest> = outputs
            .iter()
            .copied()
            .chain(stdout)
            .chain(stderr)
            .chain(access_log)
            .collect();
        wanted.sort_by_key(|d| d.hash);
        wanted.dedup();
        wanted.retain(|d| !self.store.has(d));
        for (d, bytes) in remote.download(&wanted)? {
            if !put(d, &bytes) {
                return Ok(None);
            }
        }
        let read = |d: Option<Digest>| {
            d.map(|d| self.store.get_bytes(&d).unwrap_or_default())
                .unwrap_or_default()
        };
        let accesses = match access_log {
            Some(d) => {
                let text = String::from_utf8(read(Some(d))).unwrap_or_default();
                match AccessLog::from_json(&text) {
                    Ok(log) => Some(log),
                    Err(_) => return Ok(None),
                }
            }
            None => None,
        };
        Ok(Some((read(stdout), read(stderr), accesses)))
    }

    /// A result from `source` cannot be used: say so (it is a miss; the action runs again).
    pub(crate) fn invalid_result(&self, source: &str, action: &ActionNode, e: &InvalidResult) {
        self.events.event(&Event::Warning {
            message: format!(
                "{source}: the result for {} is not valid ({e}); ignoring it and running the action",
                action.name()
            ),
        });
    }

    /// Uploads an executed action's blobs the remote lacks, then its result.
    pub(crate) fn remote_upload(&self, action_digest: &Digest, result: &reapi::ActionResult) {
        let Some(remote) = self.remote() else {
            return;
        };
        let f = self.store.function();
        let mut blobs: Vec<Digest> = result
            .output_files
            .iter()
            .filter_map(|o| o.digest.as_ref())
            .chain(result.stdout_digest.as_ref())
            .chain(result.stderr_digest.as_ref())
            .filter_map(|d| Digest::from_proto(f, d).ok())
            .collect();
        blobs.sort_by_key(|d| d.hash);
        blobs.dedup();
        let outcome = remote
            .upload_missing(&blobs, &|d| self.store.get_bytes(d).ok())
            .and_then(|()| remote.update_action_result(action_digest, result));
        if let Err(e) = outcome {
            self.remote_failed(e);
        }
    }
}

/// The worker's own timeline of a remote run (REAPI `ExecutedActionMetadata`), as phases:
/// queued, input fetch, execution, output upload (those it reports).
fn remote_phases(m: &reapi::ExecutedActionMetadata) {
    let us = |t: &Option<bazel_remote_apis::google::protobuf::Timestamp>| {
        t.as_ref()
            .filter(|t| t.seconds > 0 && t.nanos >= 0)
            .map(|t| t.seconds as u64 * 1_000_000 + t.nanos as u64 / 1000)
    };
    let spans = [
        (
            "remote queued",
            &m.queued_timestamp,
            &m.worker_start_timestamp,
        ),
        (
            "remote input fetch",
            &m.input_fetch_start_timestamp,
            &m.input_fetch_completed_timestamp,
        ),
        (
            "remote execution on the worker",
            &m.execution_start_timestamp,
            &m.execution_completed_timestamp,
        ),
        (
            "remote output upload",
            &m.output_upload_start_timestamp,
            &m.output_upload_completed_timestamp,
        ),
    ];
    for (name, start, end) in spans {
        if let (Some(a), Some(b)) = (us(start), us(end))
            && b >= a
        {
            crate::phases::record(name, a, b - a);
        }
    }
}
