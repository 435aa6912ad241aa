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

use anyhow::{Context, Result};
use prost::Message;
use wbuild_exec_wasi::{AccessKind, ExecConfig, WasiExecutor};
use wbuild_remote::RemoteCache;
use wbuild_remote::bots::{
    self, BotSession, BotStatus, BotsClient, CreateBotSessionRequest, Device, KeyValue, Lease,
    LeaseState, UpdateBotSessionRequest,
};
use wbuild_remote::grpc::rpc::Status as RpcStatus;
use wbuild_sched::spec::{self, Spec};
use wbuild_sched::{ACCESS_LOG_TYPE_URL, Platform, tree_files};
use wbuild_store::{Digest, Store, reapi};

#[derive(clap::Args)]
pub struct WorkerArgs {
    /// The REAPI engine handing out work: grpc://host:port or grpcs://host:port (it must
    /// serve the Bots API and hold the actions' inputs in its CAS).
    #[arg(long, value_name = "URL")]
    engine: String,
    /// The engine's instance name.
    #[arg(long, default_value = "")]
    instance: String,
    /// Native platforms this worker runs actions for (comma separated or repeated; default:
    /// the host's). WASI actions run on every worker.
    #[arg(long, value_delimiter = ',')]
    platform: Vec<String>,
    /// Actions to run at once (default: number of cores).
    #[arg(short, long)]
    jobs: Option<usize>,
    /// The name reported with every result (default: host name and process id).
    #[arg(long)]
    name: Option<String>,
    /// Toolchain bundles native actions may pin (a bundle file or oci://...), installed into
    /// this worker's cache before it takes work. Repeatable.
    #[arg(long, value_name = "SOURCE")]
    toolchain: Vec<String>,
    /// Public keys trusted to sign those bundles (minisign .pub files). Repeatable.
    #[arg(long, value_name = "FILE")]
    key: Vec<String>,
    /// TLS trust and identity for a grpcs:// engine, and the credentials sent with every
    /// call (as for `wbuild build`).
    #[command(flatten)]
    remote_auth: crate::RemoteAuthArgs,
}

/// The longest an `UpdateBotSession` may wait for work: engines keep a session alive while
/// the worker calls at least this often.
const POLL: Duration = Duration::from_secs(5);

/// What every lease runner shares.
struct Ctx {
    remote: Arc<RemoteCache>,
    store: Arc<Store>,
    exec: Arc<WasiExecutor>,
    cache_dir: PathBuf,
    name: String,
    /// Free staging slots.
    slots: Mutex<Vec<usize>>,
    /// Leases taken at once.
    capacity: usize,
}

pub fn run(cache: &Option<PathBuf>, args: &WorkerArgs) -> Result<i32> {
    let platforms: Vec<Platform> = if args.platform.is_empty() {
        vec![Platform::host()]
    } else {
        args.platform
            .iter()
            .map(|p| Platform::parse(p).map_err(anyhow::Error::msg))
            .collect::<Result<_>>()?
    };
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
        .max(1);
    let name = args.name.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "worker".to_owned());
        format!("{host}-{}", std::process::id())
    });
    let cache_dir = cache.clone().unwrap_or_else(Store::default_dir);
    crate::toolchain::install_sources(&cache_dir, &args.toolchain, &args.key)?;
    wbuild_exec_native::probe().map_err(|e| {
        anyhow::anyhow!("{e}\n(a worker runs native actions in the namespace sandbox only)")
    })?;
    let remote = Arc::new(
        crate::connect_remote_with(
            &args.engine,
            &args.instance,
            &args.remote_auth.options(None)?,
        )
        .with_context(|| format!("cannot reach the engine {}", args.engine))?,
    );
    let store = Arc::new(
        Store::open_with(&cache_dir, remote.function())
            .with_context(|| format!("cannot open cache {}", cache_dir.display()))?,
    );
    let exec = Arc::new(WasiExecutor::new(&ExecConfig {
        modules_dir: store.modules_dir(),
        max_concurrent: jobs as u32,
    })?);
    let ctx = Arc::new(Ctx {
        remote: remote.clone(),
        store,
        exec,
        cache_dir,
        name: name.clone(),
        slots: Mutex::new((0..jobs).rev().collect()),
        capacity: jobs,
    });
    let mut properties = vec![KeyValue::new("OSFamily", "wasi")];
    if !platforms.is_empty() {
        properties.push(KeyValue::new("OSFamily", "linux"));
    }
    for p in &platforms {
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
    eprintln!(
        "worker {name}: {} at once, WASI and native {} actions, engine {}",
        jobs,
        platforms
            .iter()
            .map(|p| p.name())
            .collect::<Vec<_>>()
            .join(", "),
        args.engine
    );
    remote
        .runtime()
        .block_on(session_loop(ctx, args.instance.clone(), session))
}

/// Keeps the bot session: creates it, then calls `UpdateBotSession` at least every [`POLL`]
/// and at once whenever a lease completes; starts a runner for every new lease.
async fn session_loop(ctx: Arc<Ctx>, instance: String, template: BotSession) -> Result<i32> {
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
                    eprintln!("worker {}: session {}", ctx.name, s.name);
                    failures = 0;
                    for l in &s.leases {
                        start_lease(&ctx, l, &mut running, &done_tx);
                    }
                    session = Some(s);
                }
                Err(e) => {
                    failures += 1;
                    if failures == 1 || failures.is_multiple_of(12) {
                        eprintln!(
                            "worker {}: cannot open a bot session: {}: {}",
                            ctx.name,
                            e.code(),
                            e.message()
                        );
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
                    eprintln!(
                        "worker {}: UpdateBotSession: {}: {}",
                        ctx.name,
                        e.code(),
                        e.message()
                    );
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
    ctx: &Arc<Ctx>,
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
        eprintln!("worker {}: lease {} started", ctx.name, lease.id);
        let slot = ctx.slots.lock().expect("slots").pop().unwrap_or(usize::MAX);
        let t0 = Instant::now();
        let outcome = run_lease(&ctx, slot, &lease);
        if slot != usize::MAX {
            ctx.slots.lock().expect("slots").push(slot);
        }
        let mut report = lease.clone();
        report.state = LeaseState::Completed as i32;
        match outcome {
            Ok(result) => {
                eprintln!(
                    "worker {}: lease {} done in {} ms (exit {})",
                    ctx.name,
                    lease.id,
                    t0.elapsed().as_millis(),
                    result.exit_code
                );
                report.status = Some(RpcStatus::default());
                report.result = Some(bots::pack_reapi("ActionResult", &result));
            }
            Err((code, message)) => {
                eprintln!("worker {}: lease {}: {message}", ctx.name, lease.id);
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

type LeaseError = (tonic::Code, String);

fn unavailable(e: impl std::fmt::Display) -> LeaseError {
    (tonic::Code::Unavailable, e.to_string())
}

/// Runs one lease: fetch the action, its command and inputs, run it, upload the outputs.
fn run_lease(ctx: &Ctx, slot: usize, lease: &Lease) -> Result<reapi::ActionResult, LeaseError> {
    let f = ctx.remote.function();
    let payload = lease.payload.as_ref().ok_or_else(|| {
        (
            tonic::Code::InvalidArgument,
            "the lease has no payload".to_owned(),
        )
    })?;
    let bad = |what: &str| (tonic::Code::InvalidArgument, what.to_owned());
    let action: reapi::Action = if payload.type_url.ends_with(".Action") {
        reapi::Action::decode(&payload.value[..]).map_err(|_| bad("undecodable Action"))?
    } else if payload.type_url.ends_with(".Digest") {
        let d = reapi::Digest::decode(&payload.value[..]).map_err(|_| bad("undecodable Digest"))?;
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
    let command_bytes = fetch(ctx, &[command_digest])?
        .remove(&command_digest)
        .expect("fetched");
    let command =
        reapi::Command::decode(&command_bytes[..]).map_err(|_| bad("undecodable Command"))?;
    // The input tree, one level at a time.
    let mut dirs: HashMap<Digest, reapi::Directory> = HashMap::new();
    let mut level = vec![root];
    while !level.is_empty() {
        let got = fetch(ctx, &level)?;
        let mut next = Vec::new();
        for (d, bytes) in got {
            let dir =
                reapi::Directory::decode(&bytes[..]).map_err(|_| bad("undecodable Directory"))?;
            for sub in &dir.directories {
                if let Some(Ok(sd)) = sub.digest.as_ref().map(|p| Digest::from_proto(f, p))
                    && !dirs.contains_key(&sd)
                {
                    next.push(sd);
                }
            }
            dirs.insert(d, dir);
        }
        next.sort_by_key(|d| d.hash);
        next.dedup();
        level = next;
    }
    let files = tree_files(f, &root, &dirs).map_err(|e| bad(&e))?;
    // What the command names decides where files are written: checked before anything is
    // downloaded or staged.
    {
        let inputs: std::collections::BTreeSet<&str> = files.keys().map(String::as_str).collect();
        wbuild_sched::validate_command(&command, &inputs).map_err(|e| bad(&e))?;
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
    let cache_dir = ctx.cache_dir.clone();
    let resolve = move |name: &str, digest: &str| {
        crate::toolchain::installed_native(&cache_dir, name, digest)
    };
    let spec = Spec::from_reapi(&key, &action, &command, files, &resolve)
        .map_err(|e| (tonic::Code::FailedPrecondition, e))?;
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
    ctx.remote
        .upload_missing(&upload, |d| ctx.store.get_bytes(d).ok())
        .map_err(unavailable)?;
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
            execution_start_timestamp: Some(timestamp(started)),
            execution_completed_timestamp: Some(timestamp(completed)),
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

/// Blobs by digest: from the worker's store, else from the engine's CAS (verified, then kept).
fn fetch(ctx: &Ctx, digests: &[Digest]) -> Result<HashMap<Digest, Vec<u8>>, LeaseError> {
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
