//! `wbuild worker`: a Remote Workers API (Bots) worker for any REAPI engine. It opens a bot
//! session, takes leases (REAPI `Action`s), pulls their inputs from the engine's CAS into its
//! own cache (they stay there for later actions), runs them with the same WASI executor and
//! namespace sandbox as local builds, uploads the outputs and reports the `ActionResult`.
//! `UpdateBotSession` doubles as the keepalive: the engine reassigns the leases of a worker
//! that stops calling.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message;
use wbuild_exec_wasi::{AccessKind, ExecConfig, LazyExecutor};
use wbuild_remote::RemoteCache;
use wbuild_remote::bots::{
    self, BotSession, BotStatus, BotsClient, CreateBotSessionRequest, Device, KeyValue, Lease,
    LeaseState, UpdateBotSessionRequest,
};
use wbuild_remote::grpc::rpc::Status as RpcStatus;
use wbuild_sched::spec::{self, Spec};
use wbuild_sched::{ACCESS_LOG_TYPE_URL, Platform, tree_files};
use wbuild_store::{Digest, Store, reapi};

use crate::session::RemoteAuth;
use crate::{DriverError, Result};

/// A worker's settings.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// The REAPI engine handing out work (`grpc://` or `grpcs://`).
    pub engine: String,
    /// The engine's instance name.
    pub instance: String,
    /// Native platforms this worker runs actions for (WASI actions run on every worker).
    pub platforms: Vec<Platform>,
    /// Leases run at once (at least 1).
    pub jobs: usize,
    /// The name reported with every result.
    pub name: String,
    /// This worker's cache (its store, and the toolchain bundles leases may pin).
    pub cache_dir: PathBuf,
    /// How to reach the engine.
    pub auth: RemoteAuth,
}

/// Where a worker's log lines go (one line per call).
pub type Log = Arc<dyn Fn(&str) + Send + Sync>;

/// The longest an `UpdateBotSession` may wait for work: engines keep a session alive while
/// the worker calls at least this often.
const POLL: Duration = Duration::from_secs(5);

/// Runs leases: fetches an action's inputs into the worker's store, runs it, uploads the
/// outputs and builds the `ActionResult`. Shared by every lease of a worker.
pub struct LeaseRunner {
    remote: Arc<RemoteCache>,
    store: Arc<Store>,
    exec: Arc<LazyExecutor>,
    cache_dir: PathBuf,
    name: String,
    /// Free staging slots.
    slots: Mutex<Vec<usize>>,
    /// Leases taken at once.
    capacity: usize,
    log: Log,
}

impl LeaseRunner {
    /// A runner of up to `capacity` leases at once over `store` (with its own staging slot
    /// each), fetching from and uploading to `remote`; `cache_dir` holds the toolchain
    /// bundles leases may pin; `name` is reported with every result.
    pub fn new(
        remote: Arc<RemoteCache>,
        store: Arc<Store>,
        exec: Arc<LazyExecutor>,
        cache_dir: PathBuf,
        name: String,
        capacity: usize,
        log: Log,
    ) -> LeaseRunner {
        let capacity = capacity.max(1);
        LeaseRunner {
            remote,
            store,
            exec,
            cache_dir,
            name,
            slots: Mutex::new((0..capacity).rev().collect()),
            capacity,
            log,
        }
    }
}

/// Why a lease could not be run: the status it completes with (`FAILED_PRECONDITION` for an
/// action this worker refuses, `INVALID_ARGUMENT` for a malformed one, `UNAVAILABLE` for an
/// infrastructure failure, which engines retry) and what went wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseError {
    pub code: tonic::Code,
    pub message: String,
}

fn unavailable(e: impl std::fmt::Display) -> LeaseError {
    LeaseError {
        code: tonic::Code::Unavailable,
        message: e.to_string(),
    }
}

/// Runs a worker until the process ends: checks the sandbox, connects to the engine, opens
/// the store and keeps a bot session whose device advertises `OSFamily=wasi`,
/// `OSFamily=linux` and the `ISA` of each platform, with `capacity` = `jobs`.
pub fn run(cfg: &WorkerConfig, log: Log) -> Result<i32> {
    wbuild_exec_native::probe().map_err(|e| {
        DriverError::Config(format!(
            "{e}\n(a worker runs native actions in the namespace sandbox only)"
        ))
    })?;
    let note = |line: &str| log(line);
    let remote = Arc::new(
        crate::session::connect_with(&cfg.engine, &cfg.instance, &cfg.auth.options(None)?, &note)
            .map_err(|source| DriverError::Engine {
            url: cfg.engine.clone(),
            source: Box::new(source),
        })?,
    );
    let store = Arc::new(Store::open_with(&cfg.cache_dir, remote.function()).map_err(
        |source| DriverError::OpenStore {
            path: cfg.cache_dir.clone(),
            source: Box::new(source),
        },
    )?);
    let jobs = cfg.jobs.max(1);
    let exec = Arc::new(LazyExecutor::new(ExecConfig {
        modules_dir: store.modules_dir(),
        max_concurrent: jobs as u32,
    }));
    // Made now: a worker that cannot run WASI actions says so at its start.
    exec.get()?;
    let name = cfg.name.clone();
    let ctx = Arc::new(LeaseRunner::new(
        remote.clone(),
        store,
        exec,
        cfg.cache_dir.clone(),
        name.clone(),
        jobs,
        log.clone(),
    ));
    // Every worker runs WASI actions and the builtin archiver (`OSFamily=wbuild`).
    let mut properties = vec![
        KeyValue::new("OSFamily", "wasi"),
        KeyValue::new("OSFamily", "wbuild"),
    ];
    if !cfg.platforms.is_empty() {
        properties.push(KeyValue::new("OSFamily", "linux"));
    }
    for p in &cfg.platforms {
        properties.push(KeyValue::new("ISA", p.isa()));
    }
    let session = BotSession {
        bot_id: name.clone(),
        status: BotStatus::Ok as i32,
        worker: Some(bots::Worker {
            devices: vec![Device {
                handle: name.clone(),
                properties,
            }],
            properties: Vec::new(),
            configs: vec![KeyValue::new("capacity", &jobs.to_string())],
        }),
        ..Default::default()
    };
    log(&format!(
        "worker {name}: {} at once, WASI and native {} actions, engine {}",
        jobs,
        cfg.platforms
            .iter()
            .map(|p| p.name())
            .collect::<Vec<_>>()
            .join(", "),
        cfg.engine
    ));
    remote
        .runtime()
        .block_on(session_loop(ctx, cfg.instance.clone(), session))
}

/// Keeps the bot session: creates it, then calls `UpdateBotSession` at least every [`POLL`]
/// and at once whenever a lease completes; starts a runner for every new lease.
async fn session_loop(
    ctx: Arc<LeaseRunner>,
    instance: String,
    template: BotSession,
) -> Result<i32> {
    let mut client = BotsClient::new(ctx.remote.channel());
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<Lease>();
    let mut session: Option<BotSession> = None;
    // Leases being run (id -> the lease as the engine sent it).
    let mut running: HashMap<String, Lease> = HashMap::new();
    // Finished leases not yet acknowledged by the engine.
    let mut finished: Vec<Lease> = Vec::new();
    let mut failures = 0u32;
    loop {
        let Some(current) = session.clone() else {
            let mut req = tonic::Request::new(CreateBotSessionRequest {
                parent: instance.clone(),
                bot_session: Some(template.clone()),
            });
            req.set_timeout(POLL);
            match client.create_bot_session(req).await {
                Ok(s) => {
                    let s = s.into_inner();
                    (ctx.log)(&format!("worker {}: session {}", ctx.name, s.name));
                    failures = 0;
                    for l in &s.leases {
                        start_lease(&ctx, l, &mut running, &done_tx);
                    }
                    session = Some(s);
                }
                Err(e) => {
                    failures += 1;
                    if failures == 1 || failures.is_multiple_of(12) {
                        (ctx.log)(&format!(
                            "worker {}: cannot open a bot session: {}: {}",
                            ctx.name,
                            e.code(),
                            e.message()
                        ));
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            continue;
        };
        while let Ok(l) = done_rx.try_recv() {
            running.remove(&l.id);
            finished.push(l);
        }
        let mut body = current.clone();
        body.leases = running.values().cloned().chain(finished.clone()).collect();
        let mut req = tonic::Request::new(UpdateBotSessionRequest {
            name: current.name.clone(),
            bot_session: Some(body),
            update_mask: None,
        });
        req.set_timeout(POLL);
        let reported = finished.len();
        let call = client.update_bot_session(req);
        tokio::select! {
            r = call => match r {
                Ok(s) => {
                    let s = s.into_inner();
                    failures = 0;
                    finished.drain(..reported);
                    let assigned: HashSet<&str> = s.leases.iter().map(|l| l.id.as_str()).collect();
                    // Leases the engine took back (cancelled, or reassigned) are dropped; a
                    // runner still busy with one reports into the void.
                    running.retain(|id, _| assigned.contains(id.as_str()));
                    for l in &s.leases {
                        start_lease(&ctx, l, &mut running, &done_tx);
                    }
                    session = Some(s);
                    // With every slot busy the engine answers at once: heartbeat every
                    // second (well within its keepalive) or when a lease completes.
                    if running.len() >= ctx.capacity {
                        tokio::select! {
                            Some(l) = done_rx.recv() => {
                                running.remove(&l.id);
                                finished.push(l);
                            }
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                    }
                }
                Err(e) if matches!(e.code(), tonic::Code::DeadlineExceeded | tonic::Code::Cancelled) => {}
                Err(e) => {
                    failures += 1;
                    (ctx.log)(&format!(
                        "worker {}: UpdateBotSession: {}: {}",
                        ctx.name,
                        e.code(),
                        e.message()
                    ));
                    if matches!(e.code(), tonic::Code::NotFound | tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition) {
                        // The engine forgot the session (it expired): open a new one. Its
                        // leases were reassigned; what is still running reports nowhere.
                        session = None;
                        running.clear();
                        finished.clear();
                    } else {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            },
            Some(l) = done_rx.recv() => {
                // Report it now: the in-flight long poll is abandoned (the engine resends
                // whatever it assigned meanwhile).
                running.remove(&l.id);
                finished.push(l);
            }
        }
    }
}

/// Starts a runner thread for `lease` if it is new and active.
fn start_lease(
    ctx: &Arc<LeaseRunner>,
    lease: &Lease,
    running: &mut HashMap<String, Lease>,
    done: &tokio::sync::mpsc::UnboundedSender<Lease>,
) {
    if lease.state != LeaseState::Active as i32 || running.contains_key(&lease.id) {
        return;
    }
    running.insert(lease.id.clone(), lease.clone());
    let ctx = ctx.clone();
    let lease = lease.clone();
    let done = done.clone();
    std::thread::spawn(move || {
        (ctx.log)(&format!("worker {}: lease {} started", ctx.name, lease.id));
        let slot = ctx.slots.lock().expect("slots").pop().unwrap_or(usize::MAX);
        let t0 = Instant::now();
        let outcome = ctx.run_lease(slot, &lease);
        if slot != usize::MAX {
            ctx.slots.lock().expect("slots").push(slot);
        }
        let mut report = lease.clone();
        report.state = LeaseState::Completed as i32;
        match outcome {
            Ok(result) => {
                (ctx.log)(&format!(
                    "worker {}: lease {} done in {} ms (exit {})",
                    ctx.name,
                    lease.id,
                    t0.elapsed().as_millis(),
                    result.exit_code
                ));
                report.status = Some(RpcStatus::default());
                report.result = Some(bots::pack_reapi("ActionResult", &result));
            }
            Err(LeaseError { code, message }) => {
                (ctx.log)(&format!(
                    "worker {}: lease {}: {message}",
                    ctx.name, lease.id
                ));
                report.status = Some(RpcStatus {
                    code: code as i32,
                    message: format!("worker {}: {message}", ctx.name),
                    details: Vec::new(),
                });
                report.result = None;
            }
        }
        let _ = done.send(report);
    });
}

impl LeaseRunner {
    /// Runs one lease in staging slot `slot`: fetch the action, its command and inputs, run it,
    /// upload the outputs; the result to complete the lease with.
    pub fn run_lease(&self, slot: usize, lease: &Lease) -> Result<reapi::ActionResult, LeaseError> {
        let ctx = self;
        let worker_start = std::time::SystemTime::now();
        let f = ctx.remote.function();
        let payload = lease.payload.as_ref().ok_or_else(|| LeaseError {
            code: tonic::Code::InvalidArgument,
            message: "the lease has no payload".to_owned(),
        })?;
        let bad = |what: &str| LeaseError {
            code: tonic::Code::InvalidArgument,
            message: what.to_owned(),
        };
        let action: reapi::Action = if payload.type_url.ends_with(".Action") {
            reapi::Action::decode(&payload.value[..]).map_err(|_| bad("undecodable Action"))?
        } else if payload.type_url.ends_with(".Digest") {
            let d =
                reapi::Digest::decode(&payload.value[..]).map_err(|_| bad("undecodable Digest"))?;
            let d = Digest::from_proto(f, &d).map_err(|e| bad(&e.to_string()))?;
            let bytes = fetch(ctx, &[d])?.remove(&d).expect("fetched");
            reapi::Action::decode(&bytes[..]).map_err(|_| bad("undecodable Action"))?
        } else {
            return Err(bad(&format!("unknown lease payload {}", payload.type_url)));
        };
        let key = spec::key_of(f, &action);
        let proto = |d: &Option<reapi::Digest>, what: &str| {
            d.as_ref()
                .ok_or_else(|| bad(&format!("the action has no {what}")))
                .and_then(|d| Digest::from_proto(f, d).map_err(|e| bad(&e.to_string())))
        };
        let command_digest = proto(&action.command_digest, "command")?;
        let root = proto(&action.input_root_digest, "input root")?;
        // The Command and the whole input tree at once (BatchReadBlobs beside GetTree); what
        // the worker's store holds already is not asked for.
        let (command_bytes, dirs) = std::thread::scope(|s| {
            let tree = s.spawn(|| input_tree(ctx, &root));
            let command = fetch(ctx, &[command_digest]);
            (command, tree.join().expect("the input tree fetch panicked"))
        });
        let command_bytes = command_bytes?.remove(&command_digest).expect("fetched");
        let command =
            reapi::Command::decode(&command_bytes[..]).map_err(|_| bad("undecodable Command"))?;
        let dirs = dirs?;
        let files = tree_files(f, &root, &dirs).map_err(|e| bad(&e))?;
        // What the command names decides where files are written: checked before anything is
        // downloaded or staged.
        {
            let inputs: std::collections::BTreeSet<&str> =
                files.keys().map(String::as_str).collect();
            wbuild_sched::validate_command(&command, &inputs).map_err(|e| bad(&e.to_string()))?;
        }
        // Inputs this worker does not hold yet (what it holds stays for later actions).
        let mut missing: Vec<Digest> = files
            .values()
            .map(|(d, _)| *d)
            .filter(|d| !ctx.store.has(d))
            .collect();
        missing.sort_by_key(|d| d.hash);
        missing.dedup();
        for (d, bytes) in ctx.remote.download(&missing).map_err(unavailable)? {
            if ctx.store.put_bytes(&bytes).map_err(unavailable)? != d {
                return Err(unavailable(format!("blob {d} changed on its way")));
            }
        }
        let fetched = std::time::SystemTime::now();
        let cache_dir = ctx.cache_dir.clone();
        let resolve = move |name: &str, digest: &str| {
            crate::toolchain::installed_native(&cache_dir, name, digest)
        };
        let spec =
            Spec::from_reapi(&key, &action, &command, files, &resolve).map_err(|e| LeaseError {
                code: if e.is_invalid() {
                    tonic::Code::InvalidArgument
                } else {
                    tonic::Code::FailedPrecondition
                },
                message: e.to_string(),
            })?;
        let started = std::time::SystemTime::now();
        let mut ran = spec::run_spec(&ctx.store, &ctx.exec, slot, &spec).map_err(unavailable)?;
        let completed = std::time::SystemTime::now();
        // A guest that tried to leave its sandbox failed, whatever it exited with (the client
        // names the paths from the access log).
        if let Some(log) = &ran.accesses
            && log.paths(AccessKind::Denied).next().is_some()
            && ran.errors.is_empty()
        {
            ran.errors
                .push("the tool tried to reach paths outside its sandbox".to_owned());
        }
        let mut stderr = ran.stderr;
        let mut exit_code = ran.exit_code;
        if !ran.errors.is_empty() {
            for e in &ran.errors {
                stderr.extend_from_slice(format!("wbuild worker {}: {e}\n", ctx.name).as_bytes());
            }
            if exit_code == 0 {
                exit_code = 1;
            }
        }
        let put = |bytes: &[u8]| -> Result<Option<Digest>, LeaseError> {
            if bytes.is_empty() {
                return Ok(None);
            }
            ctx.store.put_bytes(bytes).map(Some).map_err(unavailable)
        };
        let stdout_digest = put(&ran.stdout)?;
        let stderr_digest = put(&stderr)?;
        let log_digest = match &ran.accesses {
            Some(log) => put(log.to_json().as_bytes())?,
            None => None,
        };
        let mut upload: Vec<Digest> = ran.outputs.iter().map(|(_, d)| *d).collect();
        upload.extend(stdout_digest);
        upload.extend(stderr_digest);
        upload.extend(log_digest);
        upload.sort_by_key(|d| d.hash);
        upload.dedup();
        let upload_start = std::time::SystemTime::now();
        ctx.remote
            .upload_missing(&upload, |d| ctx.store.get_bytes(d).ok())
            .map_err(unavailable)?;
        let uploaded = std::time::SystemTime::now();
        let timestamp = |t: std::time::SystemTime| {
            let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            bazel_remote_apis::google::protobuf::Timestamp {
                seconds: d.as_secs() as i64,
                nanos: d.subsec_nanos() as i32,
            }
        };
        // Outputs sorted by path.
        let outputs: Vec<(String, Digest)> = ran
            .outputs
            .into_iter()
            .collect::<BTreeMap<String, Digest>>()
            .into_iter()
            .collect();
        Ok(reapi::ActionResult {
            execution_metadata: Some(reapi::ExecutedActionMetadata {
                worker: ctx.name.clone(),
                worker_start_timestamp: Some(timestamp(worker_start)),
                input_fetch_start_timestamp: Some(timestamp(worker_start)),
                input_fetch_completed_timestamp: Some(timestamp(fetched)),
                execution_start_timestamp: Some(timestamp(started)),
                execution_completed_timestamp: Some(timestamp(completed)),
                output_upload_start_timestamp: Some(timestamp(upload_start)),
                output_upload_completed_timestamp: Some(timestamp(uploaded)),
                worker_completed_timestamp: Some(timestamp(uploaded)),
                auxiliary_metadata: log_digest
                    .map(|d| bazel_remote_apis::google::protobuf::Any {
                        type_url: ACCESS_LOG_TYPE_URL.to_owned(),
                        value: d.to_proto().encode_to_vec(),
                    })
                    .into_iter()
                    .collect(),
                ..Default::default()
            }),
            ..wbuild_sched::action_result(
                &outputs,
                &ran.executables,
                exit_code,
                stdout_digest,
                stderr_digest,
            )
        })
    }
}

/// Most directories an input tree may have.
const MAX_TREE_DIRECTORIES: usize = 1 << 20;

/// The `Directory` messages of the input tree under `root`, by digest: from the worker's store
/// if it holds them all, else in one `GetTree` (kept in the store), else (a server without
/// `GetTree`, or one whose messages do not re-encode to their digests) one level at a time.
fn input_tree(
    ctx: &LeaseRunner,
    root: &Digest,
) -> Result<HashMap<Digest, reapi::Directory>, LeaseError> {
    let f = ctx.remote.function();
    let bad = |what: String| LeaseError {
        code: tonic::Code::InvalidArgument,
        message: what,
    };
    // Walks the tree from `root` through `get` (None: a directory it does not have).
    let walk = |get: &dyn Fn(&Digest) -> Option<Result<reapi::Directory, LeaseError>>| {
        let mut dirs: HashMap<Digest, reapi::Directory> = HashMap::new();
        let mut stack = vec![*root];
        while let Some(d) = stack.pop() {
            if dirs.contains_key(&d) {
                continue;
            }
            let Some(dir) = get(&d) else {
                return Ok(None);
            };
            let dir = dir?;
            for sub in &dir.directories {
                if let Some(Ok(sd)) = sub.digest.as_ref().map(|p| Digest::from_proto(f, p)) {
                    stack.push(sd);
                }
            }
            dirs.insert(d, dir);
            if dirs.len() > MAX_TREE_DIRECTORIES {
                return Err(bad(format!(
                    "the input tree has more than {MAX_TREE_DIRECTORIES} directories"
                )));
            }
        }
        Ok(Some(dirs))
    };
    let decode = |d: &Digest, bytes: &[u8]| {
        reapi::Directory::decode(bytes).map_err(|_| bad(format!("undecodable Directory {d}")))
    };
    let local = |d: &Digest| ctx.store.get_bytes(d).ok().map(|b| decode(d, &b));
    if let Some(dirs) = walk(&local)? {
        return Ok(dirs);
    }
    if let Ok(tree) = ctx.remote.get_tree(root, MAX_TREE_DIRECTORIES) {
        let got: HashMap<Digest, reapi::Directory> = tree.into_iter().collect();
        let from_tree = |d: &Digest| got.get(d).cloned().map(Ok).or_else(|| local(d));
        if let Some(dirs) = walk(&from_tree)? {
            for (d, dir) in &dirs {
                if !ctx.store.has(d) {
                    ctx.store
                        .put_bytes(&dir.encode_to_vec())
                        .map_err(unavailable)?;
                }
            }
            return Ok(dirs);
        }
    }
    // One level at a time.
    let mut dirs: HashMap<Digest, reapi::Directory> = HashMap::new();
    let mut level = vec![*root];
    while !level.is_empty() {
        let got = fetch(ctx, &level)?;
        let mut next = Vec::new();
        for (d, bytes) in got {
            let dir = decode(&d, &bytes)?;
            for sub in &dir.directories {
                if let Some(Ok(sd)) = sub.digest.as_ref().map(|p| Digest::from_proto(f, p))
                    && !dirs.contains_key(&sd)
                {
                    next.push(sd);
                }
            }
            dirs.insert(d, dir);
        }
        if dirs.len() > MAX_TREE_DIRECTORIES {
            return Err(bad(format!(
                "the input tree has more than {MAX_TREE_DIRECTORIES} directories"
            )));
        }
        next.sort_by_key(|d| d.hash);
        next.dedup();
        level = next;
    }
    Ok(dirs)
}

/// Blobs by digest: from the worker's store, else from the engine's CAS (verified, then kept).
fn fetch(ctx: &LeaseRunner, digests: &[Digest]) -> Result<HashMap<Digest, Vec<u8>>, LeaseError> {
    let mut out = HashMap::new();
    let mut missing = Vec::new();
    for d in digests {
        match ctx.store.get_bytes(d) {
            Ok(b) => {
                out.insert(*d, b);
            }
            Err(_) => missing.push(*d),
        }
    }
    for (d, bytes) in ctx.remote.download(&missing).map_err(unavailable)? {
        ctx.store.put_bytes(&bytes).map_err(unavailable)?;
        out.insert(d, bytes);
    }
    for d in digests {
        if !out.contains_key(d) {
            return Err(unavailable(format!("the engine's CAS lacks {d}")));
        }
    }
    Ok(out)
}
