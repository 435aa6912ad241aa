//! Builds without the bytes (`--remote-download`): which outputs of a result are written to
//! `wbuild-out/` ([`Download`]), fetching blobs only the remote holds when something here
//! needs them, and what happens when the remote no longer has one.
//!
//! An output is materialised when the build asked for it (every output with
//! [`Download::All`], the requested targets' with `toplevel`, none with `minimal`) or when
//! its bytes are here anyway (a local run); otherwise it stays remote: it is recorded as
//! remote-only, and a stale file at its path is removed, so `wbuild-out/` never shows bytes
//! of an older build. A local action's inputs and a requested output are fetched when
//! needed. A blob the remote has lost (evicted) is recorded in [`Scheduler::lost`]: results
//! naming it are distrusted from then on, and if it was needed as an input the pass stops
//! with [`crate::SchedError::LostInputs`], which [`Scheduler::run_passes`] answers by running
//! the build again, the actions that produced the lost blobs then re-running.

use std::collections::HashSet;
use std::sync::Arc;

use wbuild_remote::ClientError;
use wbuild_store::Digest;

use crate::events::Event;
use crate::{Options, SchedError, Scheduler};

/// Which outputs a build writes to `wbuild-out/`.
#[derive(Clone, Debug, Default)]
pub enum Download {
    /// Every output of every action (`--remote-download=all`).
    #[default]
    All,
    /// Only these outputs (paths relative to the pass's output directory), plus those whose
    /// bytes are here anyway: the requested targets' (`toplevel`) or none (`minimal`).
    Only(Arc<HashSet<String>>),
}

impl Download {
    /// Whether the build asked for `path` (relative to the pass's output directory).
    pub fn wants(&self, path: &str) -> bool {
        match self {
            Download::All => true,
            Download::Only(set) => set.contains(path),
        }
    }
}

/// Why blobs could not be fetched.
pub(crate) enum FetchError {
    /// The remote does not have them (or there is no remote that could).
    Lost(Vec<Digest>),
    /// The build cannot go on.
    Sched(SchedError),
}

impl From<wbuild_store::StoreError> for FetchError {
    fn from(e: wbuild_store::StoreError) -> FetchError {
        FetchError::Sched(e.into())
    }
}

impl Scheduler<'_> {
    /// Whether a result with `outputs` names a blob the remote lost that is not here: it
    /// cannot be used (its bytes are nowhere), so the action runs again.
    pub(crate) fn names_lost(&self, outputs: &[(String, Digest)]) -> bool {
        self.any_lost(outputs.iter().map(|(_, d)| d))
    }

    /// [`Scheduler::names_lost`] of digests.
    pub(crate) fn any_lost<'d>(&self, digests: impl IntoIterator<Item = &'d Digest>) -> bool {
        let lost = self.lost.lock().expect("lost blobs");
        !lost.is_empty()
            && digests
                .into_iter()
                .any(|d| lost.contains(d) && !self.store.has(d))
    }

    /// Whether every output's bytes are in the store.
    pub(crate) fn all_here(&self, outputs: &[(String, Digest)]) -> bool {
        outputs.iter().all(|(_, d)| self.store.has(d))
    }

    /// The digests among `outputs` that `opts` asks to materialise and that are not here
    /// (what a result's download should include).
    pub(crate) fn wanted_missing(
        &self,
        opts: &Options,
        outputs: &[(String, Digest)],
    ) -> Vec<Digest> {
        outputs
            .iter()
            .filter(|(p, d)| opts.download.wants(p) && !self.store.has(d))
            .map(|(_, d)| *d)
            .collect()
    }

    /// Puts `blobs` into the store: those not here are downloaded (verified) from the
    /// remote executor or the remote cache. Blobs no remote can give are recorded as lost.
    pub(crate) fn fetch_missing(&self, blobs: &[Digest]) -> Result<(), FetchError> {
        let mut missing: Vec<Digest> = blobs
            .iter()
            .filter(|d| !self.store.has(d))
            .copied()
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        missing.sort_by_key(|d| d.hash);
        missing.dedup();
        let _phase = crate::phases::phase("fetch remote blobs");
        let lost = |missing: Vec<Digest>| {
            self.lost
                .lock()
                .expect("lost blobs")
                .extend(missing.iter().copied());
            Err(FetchError::Lost(missing))
        };
        let got = if let Some(ex) = self.executor() {
            Some((ex.download(&missing), true))
        } else {
            self.remote().map(|r| (r.download(&missing), false))
        };
        match got {
            None => lost(missing),
            Some((Ok(blobs), _)) => {
                for (d, bytes) in blobs {
                    if self.store.put_bytes(&bytes)? != d {
                        return lost(vec![d]);
                    }
                }
                let still: Vec<Digest> =
                    missing.into_iter().filter(|d| !self.store.has(d)).collect();
                if still.is_empty() {
                    Ok(())
                } else {
                    lost(still)
                }
            }
            Some((Err(ClientError::MissingBlob(d)), _)) => lost(vec![d]),
            Some((Err(e), _)) if e.is_not_found() => lost(missing),
            Some((Err(e), executor)) => {
                // The remote is unusable: what only it held is lost for this build.
                if executor {
                    self.executor_failed(e);
                } else {
                    self.remote_failed(e);
                }
                lost(missing)
            }
        }
    }

    /// Writes the outputs of a result to `wbuild-out/` as `opts.download` asks: the wanted
    /// ones (fetched if only the remote has them) and those whose bytes are here; the others
    /// stay remote (a stale file at their path is removed). `Err(Lost)`: a wanted output
    /// could not be fetched (the result is then not used).
    pub(crate) fn deliver(
        &self,
        opts: &Options,
        outputs: &[(String, Digest)],
        executables: &HashSet<String>,
    ) -> Result<(), FetchError> {
        let out_dir = opts.platform.out_dir();
        if let Download::All = opts.download {
            self.fetch_missing(&outputs.iter().map(|(_, d)| *d).collect::<Vec<_>>())?;
            return Ok(self.materialize(outputs, executables, &out_dir)?);
        }
        self.fetch_missing(&self.wanted_missing(opts, outputs))?;
        let (here, remote): (Vec<_>, Vec<_>) = outputs
            .iter()
            .cloned()
            .partition(|(_, d)| self.store.has(d));
        self.materialize(&here, executables, &out_dir)?;
        let mut remote_only = self.remote_only.lock().expect("remote-only outputs");
        for (p, _) in &here {
            remote_only.remove(p);
        }
        for (p, d) in remote {
            let dest = self.ws.root.join(&out_dir).join(&p);
            if std::fs::symlink_metadata(&dest).is_ok()
                && self.store.file_digest(&dest).ok() != Some(d)
            {
                std::fs::remove_file(&dest).map_err(|error| {
                    FetchError::Sched(SchedError::Io {
                        path: dest.clone(),
                        error,
                    })
                })?;
            }
            remote_only.insert(p);
        }
        Ok(())
    }

    /// Says once per build attempt that lost blobs make the build run again.
    pub(crate) fn warn_lost(&self, blobs: &[Digest], attempt: usize, max: usize) {
        let shown: Vec<String> = blobs.iter().take(3).map(|d| d.to_string()).collect();
        let more = blobs.len().saturating_sub(shown.len());
        self.events.event(&Event::Warning {
            message: format!(
                "the remote no longer has {} blob{} this build needs ({}{}): running the build again, the actions that produced them re-running (attempt {} of {})",
                blobs.len(),
                if blobs.len() == 1 { "" } else { "s" },
                shown.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                },
                attempt + 1,
                max + 1
            ),
        });
    }
}
