//! Fuzzes the store (`runtime/store`: blake3 CAS + redb index) with random operations checked
//! against a `BTreeMap` model, with I/O failures injected into the index's storage backend
//! (`Store::open_with_index_backend` and a `redb::StorageBackend` that fails reads, writes,
//! syncs and resizes on command).
//!
//! Input: a sequence of `[op][arg]` byte pairs (see `step`).
//!
//! Invariants:
//! - without an injected failure, every operation returns what the model says;
//! - an operation during which a failure was injected returns an error or the right value,
//!   never a wrong one;
//! - after a failure, the store reopens without faults, and the action cache then holds one of
//!   the model's states: as of the last durable commit (ordinary commits use
//!   `Durability::None`), or just before or just after the failed operation; the label index
//!   agrees with it; `verify` repairs what it finds, and a second `verify` finds nothing.

#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};
use wbuild_store::{Digest, DigestFunction, IndexOpener, Store, StoreError, reapi};

const POOL: usize = 12;
const ACTIONS: u8 = 6;
const LABELS: [&str; 3] = ["//m:a", "//m:b", "//m:c"];

/// The failure plan shared by the backend and the test.
#[derive(Debug, Default)]
struct Faults {
    armed: AtomicBool,
    /// I/O calls left before the failure.
    countdown: AtomicI64,
    /// Every call after the first failure fails too (a device that went away).
    sticky: AtomicBool,
    /// 0: EIO, 1: ENOSPC, 2: UnexpectedEof (what redb makes of a short file).
    kind: AtomicU8,
    fired: AtomicBool,
}

impl Faults {
    fn check(&self) -> io::Result<()> {
        if !self.armed.load(Ordering::SeqCst) {
            return Ok(());
        }
        let fail = (self.fired.load(Ordering::SeqCst) && self.sticky.load(Ordering::SeqCst))
            || self.countdown.fetch_sub(1, Ordering::SeqCst) == 0;
        if !fail {
            return Ok(());
        }
        self.fired.store(true, Ordering::SeqCst);
        Err(match self.kind.load(Ordering::SeqCst) {
            0 => io::Error::from_raw_os_error(5),
            1 => io::Error::from_raw_os_error(28),
            _ => io::Error::new(io::ErrorKind::UnexpectedEof, "injected short read"),
        })
    }

    fn disarm(&self) {
        self.armed.store(false, Ordering::SeqCst);
        self.fired.store(false, Ordering::SeqCst);
    }
}

#[derive(Debug)]
struct FaultyBackend {
    inner: FileBackend,
    faults: Arc<Faults>,
}

impl StorageBackend for FaultyBackend {
    fn len(&self) -> Result<u64, io::Error> {
        self.faults.check()?;
        self.inner.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.faults.check()?;
        self.inner.read(offset, out)
    }
    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.faults.check()?;
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> Result<(), io::Error> {
        self.faults.check()?;
        self.inner.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.faults.check()?;
        self.inner.write(offset, data)
    }
    fn close(&self) -> Result<(), io::Error> {
        self.inner.close()
    }
    fn try_lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_range(s, e)
    }
    fn try_lock_shared_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_shared_range(s, e)
    }
    fn lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_range(s, e)
    }
    fn lock_shared_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_shared_range(s, e)
    }
    fn unlock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), BackendError> {
        self.inner.unlock_range(s, e)
    }
    fn query_lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.query_lock_range(s, e)
    }
}

fn open(dir: &Path, faults: &Arc<Faults>) -> Result<Store, StoreError> {
    let faults = faults.clone();
    let opener: IndexOpener = Arc::new(move |builder: &redb::Builder, file| {
        builder.create_with_backend(FaultyBackend {
            inner: FileBackend::new(file)?,
            faults: faults.clone(),
        })
    });
    Store::open_with_index_backend(dir, DigestFunction::Blake3, Duration::from_secs(5), opener)
}

#[path = "common.rs"]
mod common;
use common::scratch;

fn pool_bytes(i: usize) -> Vec<u8> {
    if i == 0 {
        return Vec::new();
    }
    let len = (i * 37) % 200 + 1;
    (0..len).map(|j| (i * 31 + j * 7) as u8).collect()
}

fn action(n: u8) -> Digest {
    Digest::of(
        DigestFunction::Blake3,
        format!("fuzz action {n}").as_bytes(),
    )
}

#[derive(Clone, Debug, PartialEq)]
struct Entry {
    result: reapi::ActionResult,
    label: &'static str,
    refs: Vec<Digest>,
}

type Ac = BTreeMap<Digest, Entry>;

struct Model {
    /// Blob files that exist.
    blobs: BTreeSet<Digest>,
    /// The action cache as the open store sees it (dangling entries included until a read
    /// drops them).
    ac: Ac,
    /// As of the last durable commit.
    durable: Ac,
}

impl Model {
    fn present(&self, d: &Digest) -> bool {
        d.size == 0 || self.blobs.contains(d)
    }
    /// What `ac_get` answers for each action in `ac`.
    fn visible(&self, ac: &Ac) -> BTreeMap<Digest, reapi::ActionResult> {
        ac.iter()
            .filter(|(_, e)| e.refs.iter().all(|d| self.present(d)))
            .map(|(a, e)| (*a, e.result.clone()))
            .collect()
    }
    /// `visible`, with the label each entry is indexed under.
    fn visible_labelled(&self, ac: &Ac) -> BTreeMap<Digest, (reapi::ActionResult, &'static str)> {
        ac.iter()
            .filter(|(_, e)| e.refs.iter().all(|d| self.present(d)))
            .map(|(a, e)| (*a, (e.result.clone(), e.label)))
            .collect()
    }
    fn drop_dangling(&mut self) {
        let blobs = self.blobs.clone();
        self.ac
            .retain(|_, e| e.refs.iter().all(|d| d.size == 0 || blobs.contains(d)));
    }
}

struct Run<'a> {
    dir: &'a Path,
    faults: Arc<Faults>,
    store: Option<Store>,
    model: Model,
    pool: Vec<(Digest, Vec<u8>)>,
}

/// An error from an operation: fine if a failure was injected, a bug otherwise.
fn tolerate<T: std::fmt::Debug>(faults: &Faults, what: &str, r: &Result<T, StoreError>) {
    if let Err(e) = r {
        assert!(
            faults.fired.load(Ordering::SeqCst),
            "{what} failed without an injected fault: {e}"
        );
    }
}

impl Run<'_> {
    fn s(&self) -> &Store {
        self.store.as_ref().unwrap()
    }

    fn check_labels(&self) {
        for label in LABELS {
            let got: BTreeSet<Digest> = self
                .s()
                .ac_find_by_label(label)
                .expect("label index")
                .into_iter()
                .collect();
            let want: BTreeSet<Digest> = self
                .model
                .ac
                .iter()
                .filter(|(_, e)| e.label == label)
                .map(|(a, _)| *a)
                .collect();
            assert_eq!(got, want, "label index of {label}");
        }
    }

    /// After an injected failure: reopen without faults, find which model state the store
    /// holds, verify.
    fn recover(&mut self, before: Ac, after: Ac) {
        self.faults.disarm();
        drop(self.store.take());
        let store = open(self.dir, &self.faults).expect("reopen after an I/O failure");
        self.store = Some(store);
        let mut observed = BTreeMap::new();
        for n in 0..ACTIONS {
            let a = action(n);
            if let Some(r) = self.s().ac_get(&a).expect("ac_get after reopening") {
                observed.insert(a, (r, ""));
            }
        }
        // Each entry's label, from the label index (an entry under no label, or under two,
        // matches no model state).
        for label in LABELS {
            for a in self.s().ac_find_by_label(label).expect("label index") {
                match observed.get_mut(&a) {
                    Some(e) if e.1.is_empty() => e.1 = label,
                    _ => panic!(
                        "label index: {a} under {label} (entry {:?})",
                        observed.get(&a)
                    ),
                }
            }
        }
        let replaced = matches!(
            self.s().index_check(),
            Some(wbuild_store::IndexCheck::Replaced { .. })
        ) || std::fs::read_dir(self.dir)
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().contains("broken"));
        let candidates = [self.model.durable.clone(), before, after];
        let found = candidates
            .into_iter()
            .find(|c| self.model.visible_labelled(c) == observed);
        let state = match found {
            Some(c) => c,
            None if replaced && observed.is_empty() => {
                static ONCE: Once = Once::new();
                ONCE.call_once(|| {
                    eprintln!(
                        "note: an injected I/O failure ({:?}) made the store replace its \
                         index: {:?}",
                        self.faults.kind,
                        self.s().index_check()
                    )
                });
                Ac::new()
            }
            None => panic!(
                "after an I/O failure the action cache holds {:?}, none of the model's states \
                 (durable {:?}, current {:?})",
                observed.keys().collect::<Vec<_>>(),
                self.model
                    .visible(&self.model.durable)
                    .keys()
                    .collect::<Vec<_>>(),
                self.model
                    .visible(&self.model.ac)
                    .keys()
                    .collect::<Vec<_>>(),
            ),
        };
        self.model.ac = state;
        self.model.drop_dangling();
        self.check_labels();
        let first = self.s().verify().expect("verify after reopening");
        assert!(first.corrupt.is_empty(), "{first:?}");
        self.model.drop_dangling();
        let second = self.s().verify().expect("second verify");
        assert!(
            second.is_clean(),
            "verify left something to repair: {second:?}"
        );
        self.model.durable = self.model.ac.clone();
        self.check_labels();
    }

    fn step(&mut self, op: u8, arg: u8) {
        let before = self.model.ac.clone();
        let (d, bytes) = self.pool[arg as usize % POOL].clone();
        let faults = self.faults.clone();
        match op % 12 {
            0 | 1 => {
                let r = self.s().put_bytes(&bytes);
                tolerate(&faults, "put_bytes", &r);
                if let Ok(got) = r {
                    assert_eq!(got, d);
                    if d.size > 0 {
                        self.model.blobs.insert(d);
                    }
                }
            }
            2 => {
                let r = self.s().get_bytes(&d);
                if self.model.present(&d) {
                    tolerate(&faults, "get_bytes", &r);
                    if let Ok(b) = r {
                        assert_eq!(b, bytes);
                    }
                } else {
                    assert!(r.unwrap_err().is_not_found());
                }
            }
            3 | 4 => {
                let a = action(arg % ACTIONS);
                let label = LABELS[(arg >> 3) as usize % 3];
                let n = (arg >> 5) as usize % 4;
                let outs: Vec<Digest> = (0..n)
                    .map(|i| self.pool[(arg as usize * 7 + i * 5) % POOL].0)
                    .collect();
                let mut result = reapi::ActionResult {
                    output_files: outs
                        .iter()
                        .enumerate()
                        .map(|(i, d)| reapi::OutputFile {
                            path: format!("o{i}"),
                            digest: Some(d.to_proto()),
                            ..Default::default()
                        })
                        .collect(),
                    exit_code: (arg & 1) as i32,
                    ..Default::default()
                };
                let mut refs = outs.clone();
                if arg & 2 != 0 {
                    let s = self.pool[(arg as usize / 3) % POOL].0;
                    result.stdout_digest = Some(s.to_proto());
                    refs.push(s);
                }
                let r = self.s().ac_put(&a, &result, label);
                if refs.iter().all(|d| self.model.present(d)) {
                    tolerate(&faults, "ac_put", &r);
                } else {
                    assert!(
                        matches!(r, Err(StoreError::MissingBlob { .. })),
                        "ac_put with a missing blob: {r:?}"
                    );
                }
                let entry = Entry {
                    result,
                    label,
                    refs,
                };
                let mut after = before.clone();
                after.insert(a, entry.clone());
                if r.is_ok() {
                    self.model.ac.insert(a, entry);
                }
                return self.settle(before, after);
            }
            5 => {
                let a = action(arg % ACTIONS);
                let r = self.s().ac_get(&a);
                tolerate(&faults, "ac_get", &r);
                let want = self.model.visible(&self.model.ac).remove(&a);
                let mut after = before.clone();
                if want.is_none() {
                    after.remove(&a);
                }
                if let Ok(got) = r {
                    assert_eq!(got, want, "ac_get {a}");
                    if want.is_none() {
                        self.model.ac.remove(&a);
                    }
                }
                return self.settle(before, after);
            }
            6 => {
                let a = action(arg % ACTIONS);
                let r = self.s().ac_remove(&a);
                tolerate(&faults, "ac_remove", &r);
                let mut after = before.clone();
                let existed = after.remove(&a).is_some();
                if let Ok(got) = r {
                    assert_eq!(got, existed, "ac_remove {a}");
                    self.model.ac.remove(&a);
                }
                return self.settle(before, after);
            }
            7 => {
                let r = self.s().flush();
                tolerate(&faults, "flush", &r);
                if r.is_ok() {
                    self.model.durable = self.model.ac.clone();
                }
            }
            8 => {
                // Reopen (dropping the store flushes it).
                drop(self.store.take());
                if !faults.fired.load(Ordering::SeqCst) {
                    self.model.durable = self.model.ac.clone();
                }
                match open(self.dir, &faults) {
                    Ok(s) => self.store = Some(s),
                    Err(e) => {
                        assert!(faults.fired.load(Ordering::SeqCst), "reopen failed: {e}");
                        self.faults.disarm();
                        self.store = Some(open(self.dir, &self.faults).expect("reopen"));
                        return self.recover(before.clone(), before);
                    }
                }
            }
            9 => {
                // Arm a failure: `arg & 31` I/O calls from now.
                faults.countdown.store((arg & 31) as i64, Ordering::SeqCst);
                faults.sticky.store(arg & 0x20 != 0, Ordering::SeqCst);
                faults.kind.store((arg >> 6) % 3, Ordering::SeqCst);
                faults.fired.store(false, Ordering::SeqCst);
                faults.armed.store(true, Ordering::SeqCst);
            }
            10 => {
                // A blob file disappears behind the store's back; often one an entry uses.
                let referenced: Vec<Digest> = self
                    .model
                    .ac
                    .values()
                    .flat_map(|e| e.refs.iter().copied())
                    .collect();
                let victim = if !referenced.is_empty() && arg & 1 == 0 {
                    referenced[arg as usize % referenced.len()]
                } else {
                    d
                };
                if victim.size > 0 && self.model.blobs.remove(&victim) {
                    let hex = victim.hex();
                    std::fs::remove_file(self.dir.join("cas").join(&hex[..2]).join(hex)).unwrap();
                }
            }
            _ => {
                if faults.armed.load(Ordering::SeqCst) {
                    // verify and gc under faults: errors are fine; then recover.
                    let r = if arg & 1 == 0 {
                        self.s().verify().map(|_| ())
                    } else {
                        self.s().gc(u64::MAX).map(|_| ())
                    };
                    tolerate(&faults, "verify/gc", &r);
                    if r.is_ok() {
                        self.model.drop_dangling();
                        self.model.durable = self.model.ac.clone();
                    }
                    let after = self.model.ac.clone();
                    return self.settle(before, after);
                }
                self.check_labels();
                let report = self.s().verify().expect("verify");
                assert!(report.corrupt.is_empty(), "{report:?}");
                self.model.drop_dangling();
                self.model.durable = self.model.ac.clone();
                assert!(self.s().verify().expect("verify").is_clean());
                self.check_labels();
            }
        }
        if faults.fired.load(Ordering::SeqCst) {
            let after = self.model.ac.clone();
            self.recover(before, after);
        }
    }

    /// After a mutation: recover if a failure was injected.
    fn settle(&mut self, before: Ac, after: Ac) {
        if self.faults.fired.load(Ordering::SeqCst) {
            self.recover(before, after);
        }
    }
}

fn install_panic_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        // As libFuzzer's hook (abort, so the crash is recorded), except for the redb panics
        // the store catches and handles itself.
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if wbuild_store::redb_panic_is_handled() {
                return;
            }
            default(info);
            std::process::abort();
        }));
    });
}

fuzz_target!(|data: &[u8]| {
    install_panic_hook();
    let dir = tempfile::Builder::new()
        .prefix("wbuild-fuzz-store")
        .tempdir_in(scratch())
        .expect("temp dir");
    let cache = dir.path().join("cache");
    let faults = Arc::new(Faults::default());
    let store = open(&cache, &faults).expect("open");
    let pool = (0..POOL)
        .map(|i| {
            let b = pool_bytes(i);
            (Digest::of(DigestFunction::Blake3, &b), b)
        })
        .collect();
    let mut run = Run {
        dir: &cache,
        faults,
        store: Some(store),
        model: Model {
            blobs: BTreeSet::new(),
            ac: Ac::new(),
            durable: Ac::new(),
        },
        pool,
    };
    for pair in data.chunks_exact(2).take(64) {
        run.step(pair[0], pair[1]);
    }
    // Final check without faults.
    run.faults.disarm();
    let before = run.model.ac.clone();
    let after = before.clone();
    run.faults.fired.store(true, Ordering::SeqCst);
    run.recover(before, after);
});
