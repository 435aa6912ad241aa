//! Model-based test: random operations on a real store, checked against a `BTreeMap` model.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;

use crate::store_tests::corrupt_file;
use crate::test_util::result_with;
use crate::{Digest, DigestFunction, Store, StoreError, reapi};

/// xorshift64* — small, deterministic, good enough for picking operations.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const POOL: usize = 24;
const ACTIONS: u32 = 8;
const LABELS: [&str; 3] = ["//m:a", "//m:b", "//m:c"];

#[derive(Clone, Debug, PartialEq)]
struct ModelBlob {
    bytes: Vec<u8>,
    corrupt: bool,
}

#[derive(Default)]
struct Model {
    /// Blob files that exist (possibly corrupted on disk).
    blobs: BTreeMap<Digest, ModelBlob>,
    /// action -> (result, label, referenced blobs)
    ac: BTreeMap<Digest, (reapi::ActionResult, String, Vec<Digest>)>,
}

impl Model {
    fn present(&self, d: &Digest) -> bool {
        d.size == 0 || self.blobs.contains_key(d)
    }
    fn drop_dangling(&mut self) {
        let blobs = &self.blobs;
        self.ac
            .retain(|_, (_, _, refs)| refs.iter().all(|d| d.size == 0 || blobs.contains_key(d)));
    }
}

fn pool_bytes(i: usize) -> Vec<u8> {
    if i == 0 {
        return Vec::new();
    }
    let len = (i * 37) % 300 + 1;
    (0..len).map(|j| (i * 31 + j * 7) as u8).collect()
}

fn action(n: u32) -> Digest {
    Digest::of(
        DigestFunction::Blake3,
        format!("model action {n}").as_bytes(),
    )
}

fn check_labels(store: &Store, model: &Model, step: usize) {
    for label in LABELS {
        let got: BTreeSet<Digest> = store.ac_find_by_label(label).unwrap().into_iter().collect();
        let want: BTreeSet<Digest> = model
            .ac
            .iter()
            .filter(|(_, (_, l, _))| l == label)
            .map(|(a, _)| *a)
            .collect();
        assert_eq!(got, want, "step {step}: label index of {label}");
    }
}

fn run_model(seed: u64, steps: usize) {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let mut store = Some(Store::open(&cache).unwrap());
    let mut model = Model::default();
    let mut rng = Rng(seed);
    let pool: Vec<(Digest, Vec<u8>)> = (0..POOL)
        .map(|i| {
            let b = pool_bytes(i);
            (Digest::of(DigestFunction::Blake3, &b), b)
        })
        .collect();

    for step in 0..steps {
        let s = store.as_ref().unwrap();
        let (d, bytes) = pool[rng.below(POOL as u64) as usize].clone();
        // Weighted choice of operation (see the match arms).
        const WEIGHTS: [u64; 15] = [4, 0, 1, 2, 0, 1, 1, 4, 4, 1, 1, 2, 1, 1, 1];
        let mut pick = rng.below(WEIGHTS.iter().sum());
        let op = WEIGHTS
            .iter()
            .position(|w| {
                if pick < *w {
                    true
                } else {
                    pick -= w;
                    false
                }
            })
            .unwrap();
        match op {
            0 | 1 => {
                assert_eq!(s.put_bytes(&bytes).unwrap(), d);
                // put_bytes of an existing (even corrupt) blob does not rewrite it.
                model.blobs.entry(d).or_insert(ModelBlob {
                    bytes: bytes.clone(),
                    corrupt: false,
                });
            }
            2 => {
                let src = dir.path().join("src");
                fs::write(&src, &bytes).unwrap();
                assert_eq!(s.put_file(&src).unwrap(), d);
                // put_file always renames a fresh copy into place: repairs corruption.
                model.blobs.insert(
                    d,
                    ModelBlob {
                        bytes: bytes.clone(),
                        corrupt: false,
                    },
                );
            }
            3 | 4 => {
                let got = s.get_bytes(&d);
                match model.blobs.get(&d) {
                    _ if d.size == 0 => assert_eq!(got.unwrap(), bytes, "step {step}"),
                    Some(b) if !b.corrupt => assert_eq!(got.unwrap(), b.bytes, "step {step}"),
                    Some(_) => {
                        assert!(got.unwrap_err().is_corrupt(), "step {step}");
                        model.blobs.remove(&d);
                    }
                    None => assert!(got.unwrap_err().is_not_found(), "step {step}"),
                }
            }
            5 => assert_eq!(s.has(&d), model.present(&d), "step {step}: has"),
            6 => {
                let dest = dir.path().join("out/m");
                let got = s.materialize(&d, &dest, rng.below(2) == 0);
                match model.blobs.get(&d) {
                    _ if d.size == 0 => {
                        got.unwrap();
                        assert_eq!(fs::read(&dest).unwrap(), b"");
                    }
                    Some(b) if !b.corrupt => {
                        got.unwrap();
                        assert_eq!(fs::read(&dest).unwrap(), b.bytes, "step {step}");
                    }
                    Some(_) => {
                        assert!(got.unwrap_err().is_corrupt(), "step {step}");
                        model.blobs.remove(&d);
                    }
                    None => assert!(got.unwrap_err().is_not_found(), "step {step}"),
                }
            }
            7 => {
                // ac_put with 0..3 outputs from the pool.
                let a = action(rng.below(ACTIONS as u64) as u32);
                let label = LABELS[rng.below(3) as usize];
                let n = rng.below(4) as usize;
                let outs: Vec<Digest> = (0..n)
                    .map(|_| pool[rng.below(POOL as u64) as usize].0)
                    .collect();
                let named: Vec<(String, Digest)> = outs
                    .iter()
                    .enumerate()
                    .map(|(i, d)| (format!("o{i}"), *d))
                    .collect();
                let refs: Vec<(&str, Digest)> =
                    named.iter().map(|(p, d)| (p.as_str(), *d)).collect();
                let mut r = result_with(&refs);
                r.exit_code = rng.below(2) as i32;
                let got = s.ac_put(&a, &r, label);
                if outs.iter().all(|d| model.present(d)) {
                    got.unwrap();
                    model.ac.insert(a, (r, label.to_string(), outs));
                } else {
                    assert!(
                        matches!(got, Err(StoreError::MissingBlob { .. })),
                        "step {step}: {got:?}"
                    );
                }
            }
            8 => {
                let a = action(rng.below(ACTIONS as u64) as u32);
                let got = s.ac_get(&a).unwrap();
                let want = match model.ac.get(&a) {
                    Some((r, _, refs)) if refs.iter().all(|d| model.present(d)) => Some(r.clone()),
                    Some(_) => {
                        model.ac.remove(&a);
                        None
                    }
                    None => None,
                };
                assert_eq!(got, want, "step {step}: ac_get");
            }
            9 => {
                let a = action(rng.below(ACTIONS as u64) as u32);
                assert_eq!(
                    s.ac_remove(&a).unwrap(),
                    model.ac.remove(&a).is_some(),
                    "step {step}"
                );
            }
            10 => {
                // Corrupt a stored non-empty blob on disk.
                let stored: Vec<Digest> =
                    model.blobs.keys().filter(|d| d.size > 0).copied().collect();
                if !stored.is_empty() {
                    let victim = stored[rng.below(stored.len() as u64) as usize];
                    let b = model.blobs.get_mut(&victim).unwrap();
                    let mut bad = b.bytes.clone();
                    bad[0] ^= 0xff;
                    corrupt_file(&s.blob_path(&victim), &bad);
                    b.corrupt = true;
                }
            }
            11 => {
                // A blob file disappears behind the store's back; often one an entry uses.
                let referenced: Vec<Digest> = model
                    .ac
                    .values()
                    .flat_map(|v| v.2.iter().copied())
                    .collect();
                let d = if !referenced.is_empty() && rng.below(2) == 0 {
                    referenced[rng.below(referenced.len() as u64) as usize]
                } else {
                    d
                };
                if d.size > 0 && model.blobs.remove(&d).is_some() {
                    fs::remove_file(s.blob_path(&d)).unwrap();
                }
            }
            12 => {
                // Reopen (drop flushes).
                drop(store.take());
                store = Some(Store::open(&cache).unwrap());
            }
            13 => {
                let report = s.verify().unwrap();
                let corrupt: BTreeSet<String> = model
                    .blobs
                    .iter()
                    .filter(|(_, b)| b.corrupt)
                    .map(|(d, _)| d.to_string())
                    .collect();
                let found: BTreeSet<String> =
                    report.corrupt.iter().map(|c| c.digest.clone()).collect();
                assert_eq!(found, corrupt, "step {step}: verify");
                model.blobs.retain(|_, b| !b.corrupt);
                model.drop_dangling();
                assert!(s.verify().unwrap().is_clean(), "step {step}");
            }
            _ => {
                let cap = rng.below(6000);
                let report = s.gc(cap).unwrap();
                assert!(report.bytes_after <= cap, "step {step}: {report:?}");
                model
                    .blobs
                    .retain(|d, _| d.size == 0 || s.blob_path(d).exists());
                model.drop_dangling();
                assert_eq!(s.stats().unwrap().blob_bytes, report.bytes_after);
            }
        }
        if step % 50 == 49 {
            let s = store.as_ref().unwrap();
            check_labels(s, &model, step);
            assert_eq!(
                s.stats().unwrap().ac_entries,
                model.ac.len() as u64,
                "step {step}: ac entries"
            );
        }
    }
    // Final full comparison.
    let s = store.as_ref().unwrap();
    check_labels(s, &model, steps);
    for n in 0..ACTIONS {
        let a = action(n);
        let want = model
            .ac
            .get(&a)
            .filter(|(_, _, refs)| refs.iter().all(|d| model.present(d)))
            .map(|(r, _, _)| r.clone());
        assert_eq!(s.ac_get(&a).unwrap(), want, "final ac_get {n}");
    }
    for (d, bytes) in &pool {
        if let Some(b) = model.blobs.get(d)
            && !b.corrupt
        {
            assert_eq!(&s.get_bytes(d).unwrap(), bytes);
        }
    }
}

#[test]
fn model_seeds() {
    for seed in 1..=8u64 {
        run_model(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15), 600);
    }
}
