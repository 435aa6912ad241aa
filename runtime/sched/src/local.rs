//! Running an action here: its sources enter the CAS, then a [`LocalRunner`] (the WASI
//! executor, or the native sandbox for native actions) runs its [`Spec`] in a local slot.

use std::sync::{Condvar, Mutex};

use wbuild_exec_wasi::WasiExecutor;
use wbuild_graph::{ActionGraph, ActionNode};
use wbuild_store::Store;

use crate::download::FetchError;
use crate::finish::Finished;
use crate::keys::{ActionError, Prepared};
use crate::spec::{self, RunOutput, Spec};
use crate::{Options, SchedError, Scheduler};

/// Runs an action's [`Spec`] on this machine and moves its outputs into the store.
pub trait LocalRunner: Send + Sync {
    /// Runs `spec` in staging slot `slot` (one per concurrent runner).
    fn run(&self, store: &Store, slot: usize, spec: &Spec) -> Result<RunOutput, SchedError>;

    /// Tool modules compiled in this process (not found in the on-disk module cache).
    fn compiled_count(&self) -> u64;
}

/// WASI actions in wbuild's executor, native ones in the namespace sandbox ([`spec::run_spec`]).
impl LocalRunner for WasiExecutor {
    fn run(&self, store: &Store, slot: usize, spec: &Spec) -> Result<RunOutput, SchedError> {
        spec::run_spec(store, self, slot, spec)
    }

    fn compiled_count(&self) -> u64 {
        WasiExecutor::compiled_count(self)
    }
}

/// Why staging an action's sources stopped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StageError {
    /// The action fails; the build goes on.
    #[error(transparent)]
    Action(#[from] ActionError),
    /// The build stops.
    #[error(transparent)]
    Sched(#[from] SchedError),
}

impl From<wbuild_store::StoreError> for StageError {
    fn from(e: wbuild_store::StoreError) -> StageError {
        StageError::Sched(e.into())
    }
}

/// A counting semaphore (blocking).
pub(crate) struct Semaphore {
    free: Mutex<usize>,
    cv: Condvar,
}

pub(crate) struct SemaphoreGuard<'a>(&'a Semaphore);

impl Semaphore {
    pub(crate) fn new(n: usize) -> Semaphore {
        Semaphore {
            free: Mutex::new(n.max(1)),
            cv: Condvar::new(),
        }
    }

    fn acquire(&self) -> SemaphoreGuard<'_> {
        let mut free = self.free.lock().expect("semaphore");
        while *free == 0 {
            free = self.cv.wait(free).expect("semaphore");
        }
        *free -= 1;
        SemaphoreGuard(self)
    }
}

impl Drop for SemaphoreGuard<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().expect("semaphore") += 1;
        self.0.cv.notify_one();
    }
}

impl Scheduler<'_> {
    /// A slot for running an action here.
    fn local_slot(&self) -> SemaphoreGuard<'_> {
        self.local_slots.acquire()
    }

    /// Puts what staging the action needs into the CAS: its source files (checking they did
    /// not change since they were hashed) and its launcher scripts.
    pub(crate) fn stage_sources(&self, prep: &Prepared) -> Result<(), StageError> {
        for (path, d) in &prep.sources {
            if !self.store.has(d) {
                let got = self.store.put_file(&self.ws.path(path))?;
                if got != *d {
                    return Err(ActionError::InputChanged { path: path.clone() }.into());
                }
            }
        }
        for (_, script) in &prep.launchers {
            self.store.put_bytes(script.as_bytes())?;
        }
        Ok(())
    }

    /// Runs the action here (the cache and the remote executor had nothing for it).
    pub(crate) fn execute(
        &self,
        wid: usize,
        graph: &ActionGraph,
        action: &ActionNode,
        opts: &Options,
        prep: Prepared,
    ) -> Result<Finished, SchedError> {
        // Sources enter the CAS so they can be staged from it (and shared later).
        let sources = crate::phases::phase("sources into the store");
        let staged = self.stage_sources(&prep);
        drop(sources);
        match staged {
            Ok(()) => {}
            Err(StageError::Action(e)) => return Ok(Finished::failed(e.to_string())),
            Err(StageError::Sched(e)) => return Err(e),
        }
        // Generated inputs a build without the bytes left on the remote come here first.
        let mut needed: Vec<wbuild_store::Digest> = prep.spec.files.values().copied().collect();
        match &prep.spec.kind {
            spec::Kind::Wasi { module, .. } => needed.push(*module),
            spec::Kind::Native { wasi_modules, .. } => needed.extend(wasi_modules.iter().copied()),
        }
        match self.fetch_missing(&needed) {
            Ok(()) => {}
            Err(FetchError::Lost(blobs)) => return Err(SchedError::LostInputs { blobs }),
            Err(FetchError::Sched(e)) => return Err(e),
        }
        let ran = {
            let wait = crate::phases::phase("wait for a local slot");
            let _local = self.local_slot();
            drop(wait);
            self.runner.run(&self.store, wid, &prep.spec)?
        };
        let _finish = crate::phases::phase("finish (checks, cache entry, outputs)");
        if let Some(log) = &ran.accesses {
            self.store
                .put_access_log(&prep.action_digest, &log.to_json())?;
        }
        self.finish_run(graph, action, opts, &prep, ran, None)
    }
}
