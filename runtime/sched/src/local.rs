//! Running an action here: its sources enter the CAS, then a [`LocalRunner`] (the WASI
//! executor, or the native sandbox for native actions) runs its [`Spec`] in a local slot.

use std::sync::{Condvar, Mutex};

use wbuild_exec_wasi::LazyExecutor;
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

/// WASI actions in wbuild's executor (made when the first needs it), native ones in the
/// namespace sandbox ([`spec::run_spec`]).
impl LocalRunner for LazyExecutor {
    fn run(&self, store: &Store, slot: usize, spec: &Spec) -> Result<RunOutput, SchedError> {
        spec::run_spec(store, self, slot, spec)
    }

    fn compiled_count(&self) -> u64 {
        LazyExecutor::compiled_count(self)
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
/// The local slots: at most `n` actions run here at once. A free slot goes to the waiting
/// action with the longest remaining critical path (the workers outnumber the slots, so
/// the others key and look up what comes next meanwhile), and each holder gets the index of
/// its slot, under which its staging directories are reused.
pub(crate) struct Semaphore {
    state: Mutex<SlotState>,
    cv: Condvar,
}

struct SlotState {
    free: usize,
    /// Indices given back, and the next one never given.
    returned: Vec<usize>,
    next_index: usize,
    /// (priority, earlier ticket first).
    waiting: std::collections::BinaryHeap<(u64, std::cmp::Reverse<u64>)>,
    next_ticket: u64,
}

pub(crate) struct SemaphoreGuard<'a> {
    sem: &'a Semaphore,
    index: usize,
}

impl SemaphoreGuard<'_> {
    /// Which slot this is (0 up to the number of slots).
    pub(crate) fn index(&self) -> usize {
        self.index
    }
}

impl Semaphore {
    pub(crate) fn new(n: usize) -> Semaphore {
        Semaphore {
            state: Mutex::new(SlotState {
                free: n.max(1),
                returned: Vec::new(),
                next_index: 0,
                waiting: std::collections::BinaryHeap::new(),
                next_ticket: 0,
            }),
            cv: Condvar::new(),
        }
    }

    pub(crate) fn acquire(&self, priority: u64) -> SemaphoreGuard<'_> {
        let mut st = self.state.lock().expect("semaphore");
        let me = (priority, std::cmp::Reverse(st.next_ticket));
        st.next_ticket += 1;
        st.waiting.push(me);
        loop {
            if st.free > 0 && st.waiting.peek() == Some(&me) {
                st.waiting.pop();
                st.free -= 1;
                let index = st.returned.pop().unwrap_or_else(|| {
                    st.next_index += 1;
                    st.next_index - 1
                });
                // The next in line may find a slot free too.
                self.cv.notify_all();
                return SemaphoreGuard { sem: self, index };
            }
            st = self.cv.wait(st).expect("semaphore");
        }
    }
}

impl Drop for SemaphoreGuard<'_> {
    fn drop(&mut self) {
        let mut st = self.sem.state.lock().expect("semaphore");
        st.free += 1;
        st.returned.push(self.index);
        drop(st);
        self.sem.cv.notify_all();
    }
}

impl Scheduler<'_> {
    /// A slot for running an action here, for an action of remaining critical path
    /// `priority`.
    fn local_slot(&self, priority: u64) -> SemaphoreGuard<'_> {
        self.local_slots.acquire(priority)
    }

    /// Puts what staging the action needs into the CAS: its source files (checking they did
    /// not change since they were hashed) and its launcher scripts.
    pub(crate) fn stage_sources(&self, prep: &Prepared) -> Result<(), StageError> {
        for (path, d) in &prep.sources {
            // Staging reads (or mounts) every one of them next and fails on a lost blob.
            if !self.store.has_known(d) {
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
        priority: u64,
        graph: &ActionGraph,
        action: &ActionNode,
        opts: &Options,
        mut prep: Prepared,
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
            spec::Kind::Archive => {}
        }
        match self.fetch_missing(&needed) {
            Ok(()) => {}
            Err(FetchError::Lost(blobs)) => return Err(SchedError::LostInputs { blobs }),
            Err(FetchError::Sched(e)) => return Err(e),
        }
        let ran = {
            let wait = crate::phases::phase("wait for a local slot");
            let local = self.local_slot(priority);
            drop(wait);
            let ran = self.runner.run(&self.store, local.index(), &prep.spec)?;
            if prep.unobserved.is_some() && !ran.errors.is_empty() && !ran.timed_out {
                // A failure of an unobserved run: once more observed, so its errors can
                // name an undeclared input it looked for.
                prep.set_unobserved(None);
                self.runner.run(&self.store, local.index(), &prep.spec)?
            } else {
                ran
            }
        };
        let _finish = crate::phases::phase("finish (checks, cache entry, outputs)");
        if let Some(log) = &ran.accesses {
            self.store
                .put_access_log(&prep.action_digest, &log.to_json())?;
        }
        self.finish_run(graph, action, opts, &prep, ran, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_free_slot_goes_to_the_longest_path_and_slots_are_numbered() {
        let sem = Semaphore::new(2);
        let a = sem.acquire(0);
        let b = sem.acquire(0);
        assert_eq!([a.index(), b.index()], [0, 1]);
        drop(a);
        assert_eq!(
            sem.acquire(0).index(),
            0,
            "a slot given back is given again"
        );

        let one = Semaphore::new(1);
        let held = one.acquire(0);
        let order = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for prio in [1u64, 5, 3] {
                let (one, order) = (&one, &order);
                s.spawn(move || {
                    let g = one.acquire(prio);
                    order.lock().unwrap().push((prio, g.index()));
                    std::thread::sleep(std::time::Duration::from_millis(5));
                });
            }
            // Every waiter in line before the slot comes free.
            while one.state.lock().unwrap().waiting.len() < 3 {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            drop(held);
        });
        assert_eq!(*order.lock().unwrap(), [(5, 0), (3, 0), (1, 0)]);
    }
}
