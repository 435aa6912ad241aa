//! The ready queue and the worker loop: actions whose dependencies are done run on `jobs`
//! threads, longest remaining critical path first (durations remembered from earlier
//! builds). A failure skips everything downstream of it and, without `keep_going`, stops the
//! build; an interruption stops it too.

use std::collections::{BinaryHeap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::Instant;

use wbuild_graph::{ActionGraph, Exec};
use wbuild_store::{ActionRecord, Digest};

use crate::events::{Event, Status};
use crate::finish::Finished;
use crate::{INTERRUPTED, Options, SchedError, Scheduler, Summary, uptodate};

/// What every worker thread shares.
#[derive(Clone, Copy)]
struct WorkerCtx<'a> {
    graph: &'a ActionGraph,
    opts: &'a Options,
    rdeps: &'a [Vec<usize>],
    prio: &'a [u64],
    shared: &'a Mutex<Shared>,
    cv: &'a Condvar,
    generated: &'a RwLock<crate::Generated>,
    first_error: &'a Mutex<Option<SchedError>>,
}

struct Shared {
    ready: BinaryHeap<(u64, std::cmp::Reverse<usize>)>,
    waiting: Vec<usize>,
    done: Vec<Option<Status>>,
    running: usize,
    remaining: usize,
    stop: bool,
    summary: Summary,
    /// Actions answered from [`crate::Options::known`] (their sources were not hashed).
    known: Vec<usize>,
    /// The index of each of `summary.actions`: they are put in graph order at the end, so the
    /// next build's snapshot pairs them with its actions without looking them up.
    order: Vec<usize>,
}

impl Scheduler<'_> {
    /// One pass: every action of `graph` on `opts.jobs` worker threads.
    pub(crate) fn run_one(
        &self,
        graph: &ActionGraph,
        opts: &Options,
    ) -> Result<Summary, SchedError> {
        let start = Instant::now();
        self.remote_only
            .lock()
            .expect("remote-only outputs")
            .clear();
        let n = graph.actions.len();
        let mut rdeps: Vec<Vec<usize>> = vec![Vec::new(); n];
        let mut waiting = vec![0usize; n];
        for (i, a) in graph.actions.iter().enumerate() {
            let mut deps = a.deps.clone();
            deps.sort_unstable();
            deps.dedup();
            waiting[i] = deps.len();
            for d in deps {
                rdeps[d].push(i);
            }
        }
        let mut st = Shared {
            ready: BinaryHeap::new(),
            waiting,
            done: vec![None; n],
            running: 0,
            remaining: n,
            stop: false,
            summary: Summary::default(),
            known: Vec::new(),
            order: Vec::new(),
        };
        // Digest of every generated file known so far.
        let mut generated = crate::Generated::default();
        self.settle_known(graph, opts, &rdeps, &mut st, &mut generated)?;
        // Critical path: own expected duration plus the longest path through dependents
        // (of the actions left to process: what `settle_known` settled never waits).
        let mut prio = vec![0u64; n];
        let open: Vec<usize> = (0..n).filter(|&i| st.done[i].is_none()).collect();
        let names: Vec<String> = open.iter().map(|&i| graph.actions[i].name()).collect();
        let durations = self.store.last_durations_ms(&names)?;
        for (&i, d) in open.iter().zip(durations).rev() {
            let own = d
                .unwrap_or_else(|| self.expected_ms(&graph.actions[i]))
                .max(1);
            let tail = rdeps[i].iter().map(|&r| prio[r]).max().unwrap_or(0);
            prio[i] = own + tail;
        }
        for &i in &open {
            if st.waiting[i] == 0 {
                st.ready.push((prio[i], std::cmp::Reverse(i)));
            }
        }
        // The direct sources of the actions settled from the snapshot (after an edit, nearly
        // every action; the next snapshot lists them) are gathered on a thread while the
        // others run, not after the last one ended: about a millisecond per 1,000 actions.
        let settled = st.known.clone();
        let shared = Mutex::new(st);
        let cv = Condvar::new();
        let generated = RwLock::new(generated);
        let first_error: Mutex<Option<SchedError>> = Mutex::new(None);

        let (produced, mut known_sources) = std::thread::scope(|s| {
            let gathered = s.spawn(|| {
                let produced = crate::Produced::of(graph);
                let mut sources: rustc_hash::FxHashSet<&str> = Default::default();
                for &i in &settled {
                    sources.extend(crate::direct_sources(&produced, &graph.actions[i]));
                }
                (produced, sources)
            });
            for wid in 0..opts.jobs.max(1).min(n.max(1)) {
                let ctx = WorkerCtx {
                    graph,
                    opts,
                    rdeps: &rdeps,
                    prio: &prio,
                    shared: &shared,
                    cv: &cv,
                    generated: &generated,
                    first_error: &first_error,
                };
                s.spawn(move || self.worker(wid, ctx));
            }
            gathered
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))
        });

        if let Some(e) = first_error.into_inner().expect("error slot") {
            return Err(e);
        }
        let mut st = shared.into_inner().expect("scheduler state");
        st.summary.skipped = st
            .done
            .iter()
            .filter(|d| matches!(d, None | Some(Status::Skipped)))
            .count() as u64;
        st.summary.interrupted = INTERRUPTED.load(Ordering::SeqCst);
        st.summary.duration = start.elapsed();
        st.summary.remote_only =
            std::mem::take(&mut *self.remote_only.lock().expect("remote-only outputs"))
                .into_iter()
                .collect();
        let known: HashSet<usize> = st.known.iter().copied().collect();
        st.summary.rewritten = st
            .order
            .iter()
            .filter(|i| !known.contains(i))
            .flat_map(|&i| graph.actions[i].outputs.iter().cloned())
            .collect();
        let mut ordered: Vec<(usize, Arc<uptodate::SnapshotAction>)> =
            std::mem::take(&mut st.order)
                .into_iter()
                .zip(std::mem::take(&mut st.summary.actions))
                .collect();
        ordered.sort_unstable_by_key(|(i, _)| *i);
        st.summary.actions = ordered.into_iter().map(|(_, a)| a).collect();
        st.summary.outputs = generated
            .into_inner()
            .expect("outputs")
            .into_iter()
            .collect();
        // The sources read: those hashed this build, and those of the actions answered from
        // the snapshot (each once; a header is a direct source of hundreds of compiles).
        let hashed = self.sources.read().expect("source digests");
        // Those the workers found known (settled ones were gathered above).
        for &i in &st.known[settled.len()..] {
            known_sources.extend(crate::direct_sources(&produced, &graph.actions[i]));
        }
        st.summary.sources = hashed
            .keys()
            .cloned()
            .chain(
                known_sources
                    .into_iter()
                    .filter(|p| !hashed.contains_key(*p))
                    .map(str::to_owned),
            )
            .collect();
        drop(hashed);
        Ok(st.summary)
    }

    /// The expected duration of an action no run of which is recorded (a fresh cache). One
    /// whose detail names one of its inputs (a compile and its source) grows with that file
    /// (about 10 ms per KiB with gcc -O2 here), so the largest compiles start first and the
    /// build does not end waiting for one started last (Lua 5.4 built from clean: `lvm.c`,
    /// 50 KiB, took 780 ms); anything else counts 1.
    fn expected_ms(&self, action: &wbuild_graph::ActionNode) -> u64 {
        action
            .detail
            .as_ref()
            .filter(|d| action.inputs.contains(d))
            .and_then(|d| std::fs::metadata(self.ws.path(d)).ok())
            .map_or(1, |m| m.len() / 100)
    }

    /// Settles, before any worker starts, every action whose result the up-to-date snapshot
    /// vouches for ([`Scheduler::known_result`]) and all of whose dependencies it settled
    /// too: their generated inputs are then the recorded outputs, so nothing about them waits
    /// for this build. After an edit of a large graph they are nearly every action; handing
    /// each to a worker cost several microseconds (a key lookup, a history row, a slot). Their
    /// events are sent; the history counts them without a row each, as it does a no-op's.
    fn settle_known(
        &self,
        graph: &ActionGraph,
        opts: &Options,
        rdeps: &[Vec<usize>],
        st: &mut Shared,
        generated: &mut crate::Generated,
    ) -> Result<(), SchedError> {
        if opts.known.is_none() {
            return Ok(());
        }
        let no_inputs = crate::Generated::default();
        let mut settled = 0u64;
        let now_us = crate::phases::clock_us();
        for (idx, action) in graph.actions.iter().enumerate() {
            if !action
                .deps
                .iter()
                .all(|&d| st.done[d] == Some(Status::Cached))
            {
                continue;
            }
            // Every generated input comes from a settled action: it has the recorded digest.
            let Some((fin, recorded)) = self.known_result(idx, graph, opts, &no_inputs) else {
                continue;
            };
            let _ = crate::phases::take();
            self.events.event(&Event::Action {
                label: action.label.to_string(),
                mnemonic: action.mnemonic.clone(),
                detail: action.detail.clone(),
                status: Status::Cached,
                duration_ms: 0,
                start_us: now_us,
                duration_us: 0,
                slot: 0,
                action_digest: Some(recorded.action_digest.clone()),
                error: None,
                output: None,
                warnings: Vec::new(),
                accesses: None,
                platform: (action.exec == Exec::Native).then(|| opts.platform.name().to_owned()),
                worker: None,
                resubmitted: false,
                phases: vec![crate::Phase {
                    name: crate::phases::KNOWN_PHASE,
                    start_us: now_us,
                    duration_us: 0,
                }],
            });
            if !fin.executables.is_empty() {
                self.executables
                    .write()
                    .expect("executables")
                    .extend(fin.executables.iter().cloned());
            }
            // What the snapshot recorded, recorded again (its outputs left on the remote are
            // exactly those `known_result` just noted).
            st.summary.actions.push(Arc::clone(recorded));
            st.order.push(idx);
            generated.extend(fin.outputs);
            st.summary.cached += 1;
            st.remaining -= 1;
            st.done[idx] = Some(Status::Cached);
            st.known.push(idx);
            for &r in &rdeps[idx] {
                st.waiting[r] -= 1;
            }
            settled += 1;
        }
        if let Some(build) = self.build_id
            && settled > 0
        {
            self.store.count_known_actions(build, settled)?;
        }
        Ok(())
    }

    /// The recorded result of `action` if the up-to-date snapshot vouches for it
    /// ([`crate::Known`]) and every generated input (`generated`, all producers done) came
    /// out with the digest recorded: cached, with no key computed.
    fn known_result<'o>(
        &self,
        idx: usize,
        graph: &ActionGraph,
        opts: &'o Options,
        generated: &crate::Generated,
    ) -> Option<(Finished, &'o Arc<uptodate::SnapshotAction>)> {
        let known = opts.known.as_ref()?;
        let _phase = crate::phases::phase(crate::phases::KNOWN_PHASE);
        let k = known.actions.get(idx)?.as_ref()?;
        let rec = &k.recorded;
        // Each generated input as its producer's run recorded it.
        let as_recorded = |(p, d): (&String, &Digest)| {
            graph
                .producers
                .get(p)
                .and_then(|(i, _)| known.actions.get(*i)?.as_ref())
                .is_some_and(|r| r.recorded.outputs.iter().any(|(q, e, _)| q == p && e == d))
        };
        if k.touched
            || !generated.iter().all(as_recorded)
            || self.any_lost(rec.outputs.iter().map(|(_, d, _)| d))
            || rec.remote_only.iter().any(|p| opts.download.wants(p))
        {
            return None;
        }
        if !rec.remote_only.is_empty() {
            self.remote_only
                .lock()
                .expect("remote-only outputs")
                .extend(rec.remote_only.iter().cloned());
        }
        let fin = Finished::succeeded(
            Status::Cached,
            k.digest,
            rec.outputs
                .iter()
                .map(|(p, d, _)| (p.clone(), *d))
                .collect(),
            rec.outputs
                .iter()
                .filter(|(_, _, x)| *x)
                .map(|(p, _, _)| p.clone())
                .collect(),
            crate::finish::RunReport::default(),
        );
        Some((fin, rec))
    }

    /// Takes the ready action with the longest remaining path, processes it, records and
    /// reports it, then releases its dependents (or skips them after a failure).
    fn worker(&self, wid: usize, ctx: WorkerCtx<'_>) {
        let WorkerCtx {
            graph,
            opts,
            rdeps,
            prio,
            shared,
            cv,
            generated: all_generated,
            first_error,
        } = ctx;
        // A panic in this worker (a bug, or a damaged cache index making redb panic) must
        // stop the build, not leave the other workers waiting for this one's action.
        struct StopOnPanic<'a>(&'a Mutex<Shared>, &'a Condvar);
        impl Drop for StopOnPanic<'_> {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    let mut st = self.0.lock().unwrap_or_else(|p| p.into_inner());
                    st.stop = true;
                    drop(st);
                    self.1.notify_all();
                }
            }
        }
        let _stop_on_panic = StopOnPanic(shared, cv);
        loop {
            let idx = {
                let mut st = shared.lock().expect("scheduler state");
                loop {
                    if INTERRUPTED.load(Ordering::SeqCst) {
                        st.stop = true;
                    }
                    if st.stop || st.remaining == 0 {
                        cv.notify_all();
                        return;
                    }
                    if let Some((_, std::cmp::Reverse(i))) = st.ready.pop() {
                        st.running += 1;
                        break i;
                    }
                    if st.running == 0 {
                        // Nothing ready, nothing running: the rest is blocked by failures.
                        cv.notify_all();
                        return;
                    }
                    st = cv.wait(st).expect("scheduler state");
                }
            };
            let action = &graph.actions[idx];
            let name = action.name();
            // The digests of this action's generated inputs (all producers are done).
            let generated: crate::Generated = {
                let all = all_generated.read().expect("outputs");
                action
                    .inputs
                    .iter()
                    .chain(action.wasi_tool().into_iter().flat_map(|t| {
                        t.data
                            .iter()
                            .map(|(_, p)| p)
                            .chain(std::iter::once(&t.module))
                    }))
                    .filter_map(|p| all.get(p).map(|d| (p.clone(), *d)))
                    .collect()
            };
            let t0 = Instant::now();
            let start_us = crate::phases::clock_us();
            let _ = crate::phases::take();
            let known = self
                .known_result(idx, graph, opts, &generated)
                .map(|(f, _)| f);
            let was_known = known.is_some();
            let fin = match known.map_or_else(
                || self.process(prio[idx], graph, action, opts, &generated),
                Ok,
            ) {
                Ok(f) => f,
                Err(e) => {
                    let mut st = shared.lock().expect("scheduler state");
                    st.stop = true;
                    st.running -= 1;
                    first_error.lock().expect("error slot").get_or_insert(e);
                    cv.notify_all();
                    return;
                }
            };
            let elapsed = t0.elapsed();
            let phases = crate::phases::take();
            let duration_ms = elapsed.as_millis() as u64;
            let digest_text = fin.action_digest.map(|d| d.to_string());
            if let Some(build) = self.build_id {
                let mut deps: Vec<String> = action
                    .deps
                    .iter()
                    .map(|&d| graph.actions[d].name())
                    .collect();
                deps.sort_unstable();
                deps.dedup();
                let recorded = self.store.build_start_unix_ms(build).and_then(|origin_ms| {
                    let rec = ActionRecord {
                        label: name,
                        mnemonic: action.mnemonic.clone(),
                        action_digest: digest_text.clone().unwrap_or_default(),
                        status: fin.status.as_str().to_owned(),
                        duration_ms,
                        start_us: Some(start_us.saturating_sub(origin_ms.saturating_mul(1000))),
                        duration_us: Some(elapsed.as_micros() as u64),
                        slot: Some(wid as u64),
                        error: (fin.status == Status::Failed)
                            .then(|| {
                                ActionRecord::failure_excerpt(
                                    fin.error.as_deref(),
                                    fin.output.as_deref(),
                                )
                            })
                            .flatten(),
                        deps: Some(deps),
                    };
                    self.store.record_action(build, &rec)
                });
                if let Err(e) = recorded {
                    first_error
                        .lock()
                        .expect("error slot")
                        .get_or_insert(e.into());
                }
            }
            self.events.event(&Event::Action {
                label: action.label.to_string(),
                mnemonic: action.mnemonic.clone(),
                detail: action.detail.clone(),
                status: fin.status,
                duration_ms,
                start_us,
                duration_us: elapsed.as_micros() as u64,
                slot: wid,
                action_digest: digest_text,
                error: fin.error.clone(),
                output: fin.output.clone(),
                warnings: fin.warnings.clone(),
                accesses: fin.accesses.clone(),
                platform: (action.exec == Exec::Native).then(|| opts.platform.name().to_owned()),
                worker: fin.worker.clone(),
                resubmitted: fin.resubmitted,
                phases,
            });
            if fin.status != Status::Failed {
                all_generated
                    .write()
                    .expect("outputs")
                    .extend(fin.outputs.iter().cloned());
                if !fin.executables.is_empty() {
                    self.executables
                        .write()
                        .expect("executables")
                        .extend(fin.executables.iter().cloned());
                }
            }
            let mut st = shared.lock().expect("scheduler state");
            st.running -= 1;
            st.remaining -= 1;
            st.done[idx] = Some(fin.status);
            if was_known {
                st.known.push(idx);
            }
            if let (
                Status::Executed | Status::Cached | Status::RemoteCached | Status::RemoteExecuted,
                Some(d),
            ) = (fin.status, fin.action_digest)
            {
                let remote_only = {
                    let r = self.remote_only.lock().expect("remote-only outputs");
                    fin.outputs
                        .iter()
                        .filter(|(p, _)| r.contains(p))
                        .map(|(p, _)| p.clone())
                        .collect()
                };
                st.order.push(idx);
                st.summary.actions.push(Arc::new(uptodate::SnapshotAction {
                    label: action.label.to_string(),
                    detail: action.detail.clone().unwrap_or_default(),
                    mnemonic: action.mnemonic.clone(),
                    action_digest: d.to_string(),
                    out_dir: opts.platform.out_dir(),
                    outputs: fin
                        .outputs
                        .iter()
                        .map(|(p, d)| (p.clone(), *d, fin.executables.contains(p)))
                        .collect(),
                    remote_only,
                }));
            }
            match fin.status {
                Status::Executed => st.summary.executed += 1,
                Status::Cached => st.summary.cached += 1,
                Status::RemoteCached => st.summary.remote_cached += 1,
                Status::RemoteExecuted => st.summary.remote_executed += 1,
                Status::Failed => st.summary.failed += 1,
                Status::Skipped => {}
            }
            if fin.status == Status::Failed {
                st.summary
                    .failed_actions
                    .push((action.label.clone(), fin.action_digest));
                if !opts.keep_going {
                    st.stop = true;
                }
                // Everything downstream of a failure is skipped.
                let mut stack = rdeps[idx].clone();
                while let Some(r) = stack.pop() {
                    if st.done[r].is_none() {
                        st.done[r] = Some(Status::Skipped);
                        st.remaining -= 1;
                        stack.extend(rdeps[r].iter().copied());
                    }
                }
            } else {
                for &r in &rdeps[idx] {
                    st.waiting[r] -= 1;
                    if st.waiting[r] == 0 && st.done[r].is_none() {
                        st.ready.push((prio[r], std::cmp::Reverse(r)));
                    }
                }
            }
            cv.notify_all();
        }
    }
}
