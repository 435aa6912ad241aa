//! Build history: builds, their actions (cache outcome, duration) and the last executed
//! duration per action label (critical-path priority). Action records are buffered in memory
//! and written by `flush` (which `finish_build` calls), so a no-op build of many actions does
//! not pay a commit per action.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use redb::ReadableTable;

use crate::store::{lock, now_ms};
use crate::tables::{BUILD_ACTIONS, BUILDS, DURATIONS, FOLDED_BUILDS};
use crate::{ActionRecord, BuildRecord, Store, StoreError};

/// Builds recorded without opening the index (a no-op proven by the up-to-date snapshot):
/// one `BuildRecord` JSON line each, appended to this file in the store's directory. The
/// next process that opens the store folds them into the history (their ids are given
/// then), so a no-op pays neither the index's open and close nor a durable commit: on this
/// machine's disk those are seven `fdatasync`s, a third of a no-op.
pub const PENDING_BUILDS: &str = "history-pending.jsonl";
/// A pending file being folded: renamed aside first, so new lines go to a new file.
const FOLDING_PREFIX: &str = "history-pending-";
const FOLDING_SUFFIX: &str = ".folding";

/// How long an append or a fold waits for the other's `flock` on a pending file (each holds
/// it for one write or one read; a process that holds it longer is not waited for).
const PENDING_LOCK_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// `flock(fd, op)` within `deadline`; `TimedOut` after it.
fn flock(f: &std::fs::File, op: libc::c_int, deadline: std::time::Duration) -> std::io::Result<()> {
    let start = std::time::Instant::now();
    loop {
        // SAFETY: flock on a descriptor this file owns.
        if unsafe { libc::flock(f.as_raw_fd(), op | libc::LOCK_NB) } == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => {}
            Some(libc::EWOULDBLOCK) if start.elapsed() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            Some(libc::EWOULDBLOCK) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "another process holds its lock",
                ));
            }
            _ => return Err(e),
        }
    }
}

/// Records `rec` (its id is ignored) as a build of the store in `dir` without opening the
/// index: one line appended to [`PENDING_BUILDS`], under a shared lock that a fold waits for.
pub fn record_pending_build(dir: &Path, rec: &BuildRecord) -> Result<(), StoreError> {
    let path = dir.join(PENDING_BUILDS);
    let mut line = to_json(rec);
    line.push('\n');
    loop {
        let f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o644)
            .open(&path)
            .map_err(StoreError::io("open", &path))?;
        flock(&f, libc::LOCK_SH, PENDING_LOCK_DEADLINE).map_err(StoreError::io("lock", &path))?;
        // A fold may have renamed the file between the open and the lock: write to the one
        // at the path now.
        let here = f.metadata().map(|m| m.ino()).ok();
        let there = std::fs::metadata(&path).map(|m| m.ino()).ok();
        if here.is_none() || here != there {
            continue;
        }
        return (&f)
            .write_all(line.as_bytes())
            .map_err(StoreError::io("append", &path));
    }
}

/// A build this process has begun or recorded into.
#[derive(Clone, Debug)]
struct Live {
    record: BuildRecord,
    next_seq: u64,
}

#[derive(Default)]
pub(crate) struct History {
    live: HashMap<u64, Live>,
    actions: Vec<(u64, u64, ActionRecord)>,
    durations: HashMap<String, u64>,
    dirty: Vec<u64>,
}

/// What `flush` writes.
#[derive(Default)]
pub(crate) struct PendingHistory {
    builds: Vec<BuildRecord>,
    actions: Vec<(u64, u64, ActionRecord)>,
    durations: HashMap<String, u64>,
}

impl PendingHistory {
    pub(crate) fn is_empty(&self) -> bool {
        self.builds.is_empty() && self.actions.is_empty() && self.durations.is_empty()
    }
}

impl History {
    pub(crate) fn take_pending(&mut self) -> PendingHistory {
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        dirty.dedup();
        PendingHistory {
            builds: dirty
                .iter()
                .filter_map(|id| self.live.get(id).map(|l| l.record.clone()))
                .collect(),
            actions: std::mem::take(&mut self.actions),
            durations: std::mem::take(&mut self.durations),
        }
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("history records serialise")
}

impl Store {
    pub(crate) fn write_history(
        &self,
        txn: &redb::WriteTransaction,
        p: &PendingHistory,
    ) -> Result<(), StoreError> {
        let mut builds = txn.open_table(BUILDS).map_err(|e| self.db_err(e))?;
        for b in &p.builds {
            builds
                .insert(b.id, to_json(b).as_str())
                .map_err(|e| self.db_err(e))?;
        }
        let mut actions = txn.open_table(BUILD_ACTIONS).map_err(|e| self.db_err(e))?;
        for (build, seq, rec) in &p.actions {
            actions
                .insert((*build, *seq), to_json(rec).as_str())
                .map_err(|e| self.db_err(e))?;
        }
        let mut durations = txn.open_table(DURATIONS).map_err(|e| self.db_err(e))?;
        for (label, ms) in &p.durations {
            durations
                .insert(label.as_str(), *ms)
                .map_err(|e| self.db_err(e))?;
        }
        Ok(())
    }

    /// Folds the builds recorded without the index ([`PENDING_BUILDS`]) into the history.
    /// Called when the store opens (this process holds the index exclusively). One durable
    /// commit, only when there is something to fold.
    pub(crate) fn fold_pending_builds(&self) -> Result<(), StoreError> {
        self.fold_pending(PENDING_LOCK_DEADLINE)
    }

    /// [`Store::fold_pending_builds`], waiting at most `lock_deadline` for a file's lock.
    pub(crate) fn fold_pending(
        &self,
        lock_deadline: std::time::Duration,
    ) -> Result<(), StoreError> {
        let pending = self.dir.join(PENDING_BUILDS);
        if pending.exists() {
            let aside = self.dir.join(format!(
                "{FOLDING_PREFIX}{}-{}{FOLDING_SUFFIX}",
                std::process::id(),
                now_ms()
            ));
            match std::fs::rename(&pending, &aside) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::from_io("rename", pending, e)),
            }
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map_err(StoreError::io("list", &self.dir))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(FOLDING_PREFIX) && n.ends_with(FOLDING_SUFFIX))
            })
            .collect();
        files.sort();
        if files.is_empty() {
            // The usual open: nothing to fold, and no marker left to clear (no write).
            use redb::{ReadableDatabase, ReadableTableMetadata};
            let read = self.db.begin_read().map_err(|e| self.db_err(e))?;
            let folded = read.open_table(FOLDED_BUILDS).map_err(|e| self.db_err(e))?;
            if folded.is_empty().map_err(|e| self.db_err(e))? {
                return Ok(());
            }
        }
        let mut folded_now: Vec<PathBuf> = Vec::new();
        let txn = self.durable_txn()?;
        {
            let mut folded = txn.open_table(FOLDED_BUILDS).map_err(|e| self.db_err(e))?;
            // Markers of files already removed are done with.
            let stale: Vec<String> = folded
                .iter()
                .map_err(|e| self.db_err(e))?
                .flatten()
                .map(|(k, _)| k.value().to_owned())
                .filter(|n| !self.dir.join(n).exists())
                .collect();
            if files.is_empty() && stale.is_empty() {
                drop(folded);
                txn.abort().map_err(|e| self.db_err(e))?;
                return Ok(());
            }
            for n in &stale {
                folded.remove(n.as_str()).map_err(|e| self.db_err(e))?;
            }
            let mut builds = txn.open_table(BUILDS).map_err(|e| self.db_err(e))?;
            let mut next = builds
                .last()
                .map_err(|e| self.db_err(e))?
                .map(|(k, _)| k.value())
                .unwrap_or(0)
                + 1;
            for f in &files {
                let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                if folded.get(name).map_err(|e| self.db_err(e))?.is_some() {
                    // Folded before a crash kept the file.
                    folded_now.push(f.clone());
                    continue;
                }
                let file = std::fs::File::open(f).map_err(StoreError::io("open", f))?;
                // Appends that opened the file before it was renamed finish first; a file
                // whose lock stays held is left for a later open.
                if flock(&file, libc::LOCK_EX, lock_deadline).is_err() {
                    continue;
                }
                let text = std::io::read_to_string(&file).map_err(StoreError::io("read", f))?;
                // A torn or foreign line is skipped: history is a record, not a key.
                for line in text.lines() {
                    if let Ok(mut rec) = serde_json::from_str::<BuildRecord>(line) {
                        rec.id = next;
                        next += 1;
                        builds
                            .insert(rec.id, to_json(&rec).as_str())
                            .map_err(|e| self.db_err(e))?;
                    }
                }
                folded.insert(name, now_ms()).map_err(|e| self.db_err(e))?;
                folded_now.push(f.clone());
            }
        }
        txn.commit().map_err(|e| self.db_err(e))?;
        for f in &folded_now {
            let _ = std::fs::remove_file(f);
        }
        Ok(())
    }

    /// Start recording a build; returns its id (greater than every earlier id).
    pub fn begin_build(&self, command: &str, targets: &[String]) -> Result<u64, StoreError> {
        let mut hist = lock(&self.history);
        let txn = self.write_txn()?;
        let record;
        {
            let mut t = txn.open_table(BUILDS).map_err(|e| self.db_err(e))?;
            let last = t
                .last()
                .map_err(|e| self.db_err(e))?
                .map(|(k, _)| k.value())
                .unwrap_or(0);
            let live_max = hist.live.keys().copied().max().unwrap_or(0);
            record = BuildRecord {
                id: last.max(live_max) + 1,
                command: command.to_string(),
                targets: targets.to_vec(),
                start_unix_ms: now_ms(),
                end_unix_ms: None,
                outcome: None,
                executed: 0,
                cached: 0,
                failed: 0,
            };
            t.insert(record.id, to_json(&record).as_str())
                .map_err(|e| self.db_err(e))?;
        }
        txn.commit().map_err(|e| self.db_err(e))?;
        let id = record.id;
        hist.live.insert(
            id,
            Live {
                record,
                next_seq: 0,
            },
        );
        Ok(id)
    }

    /// Load a build begun by another process into `live` (or fail if unknown).
    fn live<'h>(&self, hist: &'h mut History, build: u64) -> Result<&'h mut Live, StoreError> {
        if let std::collections::hash_map::Entry::Vacant(slot) = hist.live.entry(build) {
            let txn = self.read_txn()?;
            let t = txn.open_table(BUILDS).map_err(|e| self.db_err(e))?;
            let json = t
                .get(build)
                .map_err(|e| self.db_err(e))?
                .map(|v| v.value().to_string())
                .ok_or_else(|| StoreError::UnknownBuild {
                    id: build,
                    dir: self.dir.clone(),
                })?;
            let record: BuildRecord =
                serde_json::from_str(&json).map_err(|e| StoreError::Malformed {
                    what: format!("build record {build} in {}", self.index_path.display()),
                    message: e.to_string(),
                })?;
            let actions = txn.open_table(BUILD_ACTIONS).map_err(|e| self.db_err(e))?;
            let next_seq = actions
                .range((build, 0)..=(build, u64::MAX))
                .map_err(|e| self.db_err(e))?
                .next_back()
                .transpose()
                .map_err(|e| self.db_err(e))?
                .map(|(k, _)| k.value().1 + 1)
                .unwrap_or(0);
            slot.insert(Live { record, next_seq });
        }
        Ok(hist.live.get_mut(&build).expect("just inserted"))
    }

    /// When `build` began (Unix milliseconds): the origin of its actions' `start_us`.
    pub fn build_start_unix_ms(&self, build: u64) -> Result<u64, StoreError> {
        let mut guard = lock(&self.history);
        Ok(self.live(&mut guard, build)?.record.start_unix_ms)
    }

    /// Record one action of `build` (buffered; written by `flush`/`finish_build`).
    pub fn record_action(&self, build: u64, rec: &ActionRecord) -> Result<(), StoreError> {
        let mut guard = lock(&self.history);
        let hist = &mut *guard;
        let live = self.live(hist, build)?;
        let seq = live.next_seq;
        live.next_seq += 1;
        match rec.status.as_str() {
            "executed" => live.record.executed += 1,
            "cached" => live.record.cached += 1,
            "failed" => live.record.failed += 1,
            _ => {}
        }
        hist.actions.push((build, seq, rec.clone()));
        if rec.status == "executed" {
            hist.durations.insert(rec.label.clone(), rec.duration_ms);
        }
        hist.dirty.push(build);
        Ok(())
    }

    /// Count `n` actions of `build` that the up-to-date snapshot answered as cached, without a
    /// row each (as a no-op build records none): `wbuild log` shows what ran.
    pub fn count_known_actions(&self, build: u64, n: u64) -> Result<(), StoreError> {
        let mut guard = lock(&self.history);
        let hist = &mut *guard;
        self.live(hist, build)?.record.cached += n;
        hist.dirty.push(build);
        Ok(())
    }

    /// Mark `build` finished with `outcome` ("success" | "failed" | "interrupted") and flush
    /// durably.
    pub fn finish_build(&self, build: u64, outcome: &str) -> Result<(), StoreError> {
        {
            let mut guard = lock(&self.history);
            let hist = &mut *guard;
            let live = self.live(hist, build)?;
            live.record.end_unix_ms = Some(now_ms());
            live.record.outcome = Some(outcome.to_string());
            hist.dirty.push(build);
        }
        self.flush()
    }

    /// The most recent `limit` builds, newest first.
    pub fn builds(&self, limit: usize) -> Result<Vec<BuildRecord>, StoreError> {
        let live: HashMap<u64, BuildRecord> = lock(&self.history)
            .live
            .iter()
            .map(|(id, l)| (*id, l.record.clone()))
            .collect();
        let txn = self.read_txn()?;
        let t = txn.open_table(BUILDS).map_err(|e| self.db_err(e))?;
        let mut out = Vec::new();
        for row in t.iter().map_err(|e| self.db_err(e))?.rev() {
            if out.len() >= limit {
                break;
            }
            let (k, v) = row.map_err(|e| self.db_err(e))?;
            let id = k.value();
            let rec = match live.get(&id) {
                Some(r) => r.clone(),
                None => match serde_json::from_str::<BuildRecord>(v.value()) {
                    Ok(r) => r,
                    Err(_) => continue,
                },
            };
            out.push(rec);
        }
        Ok(out)
    }

    /// The actions recorded for `build`, in recording order.
    pub fn build_actions(&self, build: u64) -> Result<Vec<ActionRecord>, StoreError> {
        let mut by_seq: BTreeMap<u64, ActionRecord> = BTreeMap::new();
        {
            let txn = self.read_txn()?;
            let t = txn.open_table(BUILD_ACTIONS).map_err(|e| self.db_err(e))?;
            for row in t
                .range((build, 0)..=(build, u64::MAX))
                .map_err(|e| self.db_err(e))?
            {
                let (k, v) = row.map_err(|e| self.db_err(e))?;
                if let Ok(rec) = serde_json::from_str(v.value()) {
                    by_seq.insert(k.value().1, rec);
                }
            }
        }
        for (b, seq, rec) in &lock(&self.history).actions {
            if *b == build {
                by_seq.insert(*seq, rec.clone());
            }
        }
        Ok(by_seq.into_values().collect())
    }

    /// The duration of the most recent execution (status "executed") of the action labelled
    /// `label`, in any build.
    /// [`Store::last_duration_ms`] of each of `labels`, read in one transaction (the
    /// critical-path priorities of a whole graph).
    pub fn last_durations_ms(&self, labels: &[String]) -> Result<Vec<Option<u64>>, StoreError> {
        let txn = self.read_txn()?;
        let t = txn.open_table(DURATIONS).map_err(|e| self.db_err(e))?;
        let live = lock(&self.history);
        labels
            .iter()
            .map(|label| match live.durations.get(label.as_str()) {
                Some(ms) => Ok(Some(*ms)),
                None => Ok(t
                    .get(label.as_str())
                    .map_err(|e| self.db_err(e))?
                    .map(|v| v.value())),
            })
            .collect()
    }

    pub fn last_duration_ms(&self, label: &str) -> Result<Option<u64>, StoreError> {
        if let Some(ms) = lock(&self.history).durations.get(label) {
            return Ok(Some(*ms));
        }
        let txn = self.read_txn()?;
        let t = txn.open_table(DURATIONS).map_err(|e| self.db_err(e))?;
        Ok(t.get(label).map_err(|e| self.db_err(e))?.map(|v| v.value()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::store_in;

    fn rec(label: &str, status: &str, ms: u64) -> ActionRecord {
        ActionRecord {
            label: label.into(),
            mnemonic: "WasiRun".into(),
            action_digest: format!("{label}-digest"),
            status: status.into(),
            duration_ms: ms,
            ..ActionRecord::default()
        }
    }

    #[test]
    fn history_round_trip() {
        let (_dir, store) = store_in();
        let b1 = store.begin_build("build", &["//...".into()]).unwrap();
        store
            .record_action(b1, &rec("//a:x", "executed", 40))
            .unwrap();
        store.record_action(b1, &rec("//a:y", "cached", 0)).unwrap();
        store.record_action(b1, &rec("//a:z", "failed", 7)).unwrap();
        // Visible before flush.
        assert_eq!(store.build_actions(b1).unwrap().len(), 3);
        assert_eq!(store.last_duration_ms("//a:x").unwrap(), Some(40));
        store.finish_build(b1, "failed").unwrap();

        let b2 = store.begin_build("test", &["//a:x".into()]).unwrap();
        assert!(b2 > b1);
        store
            .record_action(b2, &rec("//a:x", "executed", 55))
            .unwrap();
        store.record_action(b2, &rec("//a:y", "cached", 0)).unwrap();
        assert_eq!(store.last_duration_ms("//a:x").unwrap(), Some(55));
        assert_eq!(store.last_duration_ms("//a:y").unwrap(), None);

        let builds = store.builds(10).unwrap();
        assert_eq!(builds.len(), 2);
        assert_eq!(builds[0].id, b2);
        assert_eq!(builds[0].outcome, None);
        assert_eq!((builds[0].executed, builds[0].cached), (1, 1));
        assert_eq!(builds[1].id, b1);
        assert_eq!(builds[1].outcome.as_deref(), Some("failed"));
        assert_eq!(
            (builds[1].executed, builds[1].cached, builds[1].failed),
            (1, 1, 1)
        );
        assert!(builds[1].end_unix_ms.is_some());
        assert_eq!(builds[1].targets, vec!["//...".to_string()]);
        assert_eq!(store.builds(1).unwrap().len(), 1);

        // Everything survives a reopen (drop flushes).
        let dir = store.dir().to_path_buf();
        drop(store);
        let store = Store::open(&dir).unwrap();
        let actions = store.build_actions(b1).unwrap();
        assert_eq!(
            actions.iter().map(|a| a.label.as_str()).collect::<Vec<_>>(),
            ["//a:x", "//a:y", "//a:z"]
        );
        assert_eq!(actions[0], rec("//a:x", "executed", 40));
        assert_eq!(store.build_actions(b2).unwrap().len(), 2);
        assert_eq!(store.last_duration_ms("//a:x").unwrap(), Some(55));
        let builds = store.builds(10).unwrap();
        assert_eq!((builds[0].executed, builds[0].cached), (1, 1));

        // A build from the earlier process can be continued and finished.
        store
            .record_action(b2, &rec("//a:w", "executed", 3))
            .unwrap();
        store.finish_build(b2, "interrupted").unwrap();
        let actions = store.build_actions(b2).unwrap();
        assert_eq!(actions.len(), 3);
        assert_eq!(actions[2].label, "//a:w");
        let b = &store.builds(1).unwrap()[0];
        assert_eq!((b.id, b.executed), (b2, 2));
        assert_eq!(b.outcome.as_deref(), Some("interrupted"));
        assert!(store.begin_build("build", &[]).unwrap() > b2);
    }

    #[test]
    fn unknown_build_is_an_error() {
        let (_dir, store) = store_in();
        let err = store
            .record_action(42, &rec("//a:x", "executed", 1))
            .unwrap_err();
        assert!(matches!(err, StoreError::UnknownBuild { id: 42, .. }));
        assert!(store.finish_build(42, "success").is_err());
        assert!(matches!(
            store.build_start_unix_ms(42),
            Err(StoreError::UnknownBuild { id: 42, .. })
        ));
        assert!(store.build_actions(42).unwrap().is_empty());
    }

    #[test]
    fn records_without_the_timeline_fields_still_decode() {
        // A row as written before start/slot/error/deps were recorded.
        let old = r#"{"label":"//a:x","mnemonic":"WasiRun","action_digest":"ab/3","status":"failed","duration_ms":7}"#;
        let rec: ActionRecord = serde_json::from_str(old).unwrap();
        assert_eq!(rec.label, "//a:x");
        assert_eq!(rec.duration_ms, 7);
        assert_eq!(
            (rec.start_us, rec.duration_us, rec.slot),
            (None, None, None)
        );
        assert_eq!((rec.error, rec.deps), (None, None));
    }

    #[test]
    fn timeline_fields_survive_a_reopen_and_old_rows_sit_beside_new_ones() {
        let (_dir, store) = store_in();
        let b = store.begin_build("build", &[]).unwrap();
        assert!(store.build_start_unix_ms(b).unwrap() > 0);
        let full = ActionRecord {
            start_us: Some(1500),
            duration_us: Some(7000),
            slot: Some(1),
            error: Some("exit 1\n</script><b>".into()),
            deps: Some(vec!["//a:x".into(), "//a:y lib/y.c".into()]),
            ..rec("//a:z", "failed", 7)
        };
        let no_deps = ActionRecord {
            deps: Some(Vec::new()),
            ..rec("//a:x", "executed", 3)
        };
        store.record_action(b, &no_deps).unwrap();
        store.record_action(b, &full).unwrap();
        store.finish_build(b, "failed").unwrap();
        // A row from an older version, written straight into the table.
        {
            let txn = store.write_txn().unwrap();
            {
                let mut t = txn.open_table(BUILD_ACTIONS).unwrap();
                t.insert(
                    (b, 2),
                    r#"{"label":"//a:old","mnemonic":"WasiRun","action_digest":"","status":"cached","duration_ms":0}"#,
                )
                .unwrap();
            }
            txn.commit().unwrap();
        }
        let dir = store.dir().to_path_buf();
        drop(store);
        let store = Store::open(&dir).unwrap();
        let actions = store.build_actions(b).unwrap();
        assert_eq!(actions.len(), 3);
        assert_eq!(actions[0], no_deps);
        assert_eq!(actions[1], full);
        assert_eq!(actions[2].label, "//a:old");
        assert_eq!(actions[2].deps, None);
        assert_eq!(
            store.build_start_unix_ms(b).unwrap(),
            store.builds(1).unwrap()[0].start_unix_ms
        );
    }

    #[test]
    fn failure_excerpts_keep_the_first_lines_and_say_what_was_cut() {
        assert_eq!(ActionRecord::failure_excerpt(None, None), None);
        assert_eq!(ActionRecord::failure_excerpt(Some(""), Some("\n")), None);
        assert_eq!(
            ActionRecord::failure_excerpt(Some("exit status 1"), Some("bad input\n")).as_deref(),
            Some("exit status 1\nbad input")
        );
        let many: String = (0..100).map(|i| format!("line {i}\n")).collect();
        let e = ActionRecord::failure_excerpt(Some("failed"), Some(&many)).unwrap();
        let lines: Vec<&str> = e.lines().collect();
        assert_eq!(lines.len(), ActionRecord::FAILURE_LINES + 1);
        assert_eq!(lines[0], "failed");
        assert_eq!(lines[ActionRecord::FAILURE_LINES - 1], "line 18");
        assert!(lines.last().unwrap().contains("101 lines"), "{e}");
        // One enormous line of multi-byte characters: cut on a character boundary.
        let wide = "é".repeat(10_000);
        let e = ActionRecord::failure_excerpt(None, Some(&wide)).unwrap();
        assert!(e.len() < ActionRecord::FAILURE_BYTES + 100, "{}", e.len());
        assert!(e.starts_with("éé"));
        assert!(e.ends_with("20000 bytes in all]"), "{e}");
    }
}
