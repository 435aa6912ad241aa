//! Observed-input keys: the store's half of two-phase lookup. The scheduler computes a weak
//! key (what is known before an action runs), records the path set a run observed under it,
//! and maps the strong key (weak key + the state of every path in the path set) to the full
//! action digest of the run whose result answers it. The rows are wbuild's own index: the
//! action cache itself stays plain REAPI entries keyed by full action digests.
//!
//! Every row is checksummed: a damaged row reads as a miss, never as another action.

use redb::ReadableTable;

use crate::store::now_ms;
use crate::tables::{KEY_MANIFESTS, OBSERVED, PATH_SETS};
use crate::{Digest, Store, StoreError};

/// Path sets kept per weak key (the most recently used ones; older ones are dropped).
pub const PATH_SETS_PER_KEY: usize = 8;

const VERSION: u8 = 1;
const CHECKSUM_LEN: usize = 16;

fn seal(body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(1 + CHECKSUM_LEN + body.len());
    v.push(VERSION);
    v.extend_from_slice(&blake3::hash(body).as_bytes()[..CHECKSUM_LEN]);
    v.extend_from_slice(body);
    v
}

fn open(row: &[u8]) -> Option<&[u8]> {
    if row.first() != Some(&VERSION) || row.len() < 1 + CHECKSUM_LEN {
        return None;
    }
    let (sum, body) = row[1..].split_at(CHECKSUM_LEN);
    (blake3::hash(body).as_bytes()[..CHECKSUM_LEN] == *sum).then_some(body)
}

/// A path-set row's body: last use (unix ms) then the path set's bytes.
fn path_set_row(bytes: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(8 + bytes.len());
    body.extend_from_slice(&now_ms().to_le_bytes());
    body.extend_from_slice(bytes);
    seal(&body)
}

fn path_set_key(weak: &Digest, path_set: &[u8]) -> Vec<u8> {
    let mut key = weak.key().to_vec();
    key.extend_from_slice(blake3::hash(path_set).as_bytes());
    key
}

impl Store {
    /// The path sets recorded under `weak`, most recently used first. Damaged rows are
    /// skipped (and dropped by the next [`Store::observed_put`] under the same key).
    pub fn path_sets(&self, weak: &Digest) -> Result<Vec<Vec<u8>>, StoreError> {
        let _g = self.shared();
        let (lo, hi) = prefix_range(weak);
        let txn = self.read_txn()?;
        let t = txn.open_table(PATH_SETS).map_err(|e| self.db_err(e))?;
        let mut out = Vec::new();
        for row in t
            .range(lo.as_slice()..hi.as_slice())
            .map_err(|e| self.db_err(e))?
        {
            let (_, v) = row.map_err(|e| self.db_err(e))?;
            if let Some(body) = open(v.value())
                && body.len() >= 8
            {
                let used = u64::from_le_bytes(body[..8].try_into().expect("8 bytes"));
                out.push((used, body[8..].to_vec()));
            }
        }
        out.sort_by_key(|r| std::cmp::Reverse(r.0));
        Ok(out.into_iter().map(|(_, b)| b).collect())
    }

    /// Record that a run of `action` observed `path_set` under `weak`, and that `strong`
    /// (weak key + the state of those paths when it ran) is answered by `action`'s result.
    /// Keeps at most [`PATH_SETS_PER_KEY`] path sets per weak key, dropping the least
    /// recently used (and any damaged row).
    pub fn observed_put(
        &self,
        weak: &Digest,
        path_set: &[u8],
        strong: &Digest,
        action: &Digest,
    ) -> Result<(), StoreError> {
        let _g = self.shared();
        let (lo, hi) = prefix_range(weak);
        let txn = self.write_txn()?;
        {
            let mut t = txn.open_table(PATH_SETS).map_err(|e| self.db_err(e))?;
            t.insert(
                path_set_key(weak, path_set).as_slice(),
                path_set_row(path_set).as_slice(),
            )
            .map_err(|e| self.db_err(e))?;
            let mut rows: Vec<(u64, Vec<u8>)> = Vec::new();
            for row in t
                .range(lo.as_slice()..hi.as_slice())
                .map_err(|e| self.db_err(e))?
            {
                let (k, v) = row.map_err(|e| self.db_err(e))?;
                let used = open(v.value()).filter(|b| b.len() >= 8).map_or(0, |b| {
                    u64::from_le_bytes(b[..8].try_into().expect("8 bytes"))
                });
                rows.push((used, k.value().to_vec()));
            }
            rows.sort_by_key(|r| std::cmp::Reverse(r.0));
            // Damaged rows (read as used at 0) go first, then the least recently used.
            for (i, (used, key)) in rows.iter().enumerate() {
                if *used == 0 || i >= PATH_SETS_PER_KEY {
                    t.remove(key.as_slice()).map_err(|e| self.db_err(e))?;
                }
            }
            let mut o = txn.open_table(OBSERVED).map_err(|e| self.db_err(e))?;
            o.insert(
                strong.key().as_slice(),
                seal(&action.encode_full()).as_slice(),
            )
            .map_err(|e| self.db_err(e))?;
        }
        txn.commit().map_err(|e| self.db_err(e))
    }

    /// The action whose result answers `strong`, if one was recorded (a damaged row is a miss).
    pub fn observed_get(&self, strong: &Digest) -> Result<Option<Digest>, StoreError> {
        let _g = self.shared();
        let txn = self.read_txn()?;
        let t = txn.open_table(OBSERVED).map_err(|e| self.db_err(e))?;
        let Some(row) = t.get(strong.key().as_slice()).map_err(|e| self.db_err(e))? else {
            return Ok(None);
        };
        Ok(open(row.value())
            .and_then(Digest::decode_full)
            .filter(|d| d.function == strong.function))
    }

    /// Forget the strong key `strong` (its action's result is gone).
    pub fn observed_remove(&self, strong: &Digest) -> Result<(), StoreError> {
        let _g = self.shared();
        let txn = self.write_txn()?;
        {
            let mut t = txn.open_table(OBSERVED).map_err(|e| self.db_err(e))?;
            t.remove(strong.key().as_slice())
                .map_err(|e| self.db_err(e))?;
        }
        txn.commit().map_err(|e| self.db_err(e))
    }

    /// Store what the last run of the action `id` was keyed by (opaque JSON), replacing the
    /// earlier one.
    pub fn key_manifest_put(&self, id: &str, json: &str) -> Result<(), StoreError> {
        let _g = self.shared();
        let txn = self.write_txn()?;
        {
            let mut t = txn.open_table(KEY_MANIFESTS).map_err(|e| self.db_err(e))?;
            t.insert(id, json).map_err(|e| self.db_err(e))?;
        }
        txn.commit().map_err(|e| self.db_err(e))
    }

    /// What the last run of the action `id` was keyed by.
    pub fn key_manifest(&self, id: &str) -> Result<Option<String>, StoreError> {
        let _g = self.shared();
        let txn = self.read_txn()?;
        let t = txn.open_table(KEY_MANIFESTS).map_err(|e| self.db_err(e))?;
        Ok(t.get(id)
            .map_err(|e| self.db_err(e))?
            .map(|v| v.value().to_owned()))
    }

    /// Every stored manifest whose action identity starts with `prefix`, by identity.
    pub fn key_manifests(&self, prefix: &str) -> Result<Vec<(String, String)>, StoreError> {
        let _g = self.shared();
        let txn = self.read_txn()?;
        let t = txn.open_table(KEY_MANIFESTS).map_err(|e| self.db_err(e))?;
        let mut out = Vec::new();
        for row in t.range(prefix..).map_err(|e| self.db_err(e))? {
            let (k, v) = row.map_err(|e| self.db_err(e))?;
            if !k.value().starts_with(prefix) {
                break;
            }
            out.push((k.value().to_owned(), v.value().to_owned()));
        }
        Ok(out)
    }
}

/// The key range of the rows of `weak` in `PATH_SETS`.
fn prefix_range(weak: &Digest) -> (Vec<u8>, Vec<u8>) {
    let lo = weak.key().to_vec();
    let mut hi = lo.clone();
    hi.extend_from_slice(&[0xff; 33]);
    (lo, hi)
}

#[cfg(test)]
mod tests {
    use crate::DigestFunction;
    use crate::test_util::store_in as temp_store;

    use super::*;

    fn d(n: u8) -> Digest {
        Digest::of(DigestFunction::Blake3, &[n])
    }

    #[test]
    fn path_sets_round_trip_most_recent_first_and_bounded() {
        let (_dir, store) = temp_store();
        let weak = d(1);
        assert!(store.path_sets(&weak).unwrap().is_empty());
        for i in 0..(PATH_SETS_PER_KEY as u8 + 3) {
            store
                .observed_put(&weak, &[b'p', i], &d(100 + i), &d(200 + i))
                .unwrap();
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let sets = store.path_sets(&weak).unwrap();
        assert_eq!(sets.len(), PATH_SETS_PER_KEY);
        assert_eq!(sets[0], vec![b'p', PATH_SETS_PER_KEY as u8 + 2]);
        assert!(!sets.contains(&vec![b'p', 0]), "the oldest is dropped");
        // Another weak key's rows are its own.
        assert!(store.path_sets(&d(2)).unwrap().is_empty());
        assert_eq!(store.observed_get(&d(100)).unwrap(), Some(d(200)));
        assert_eq!(store.observed_get(&d(99)).unwrap(), None);
        store.observed_remove(&d(100)).unwrap();
        assert_eq!(store.observed_get(&d(100)).unwrap(), None);
    }

    #[test]
    fn damaged_rows_read_as_misses() {
        let (_dir, store) = temp_store();
        let (weak, strong) = (d(1), d(2));
        store.observed_put(&weak, b"set", &strong, &d(3)).unwrap();
        {
            let txn = store.write_txn().unwrap();
            {
                let mut o = txn.open_table(OBSERVED).unwrap();
                let mut row = o
                    .get(strong.key().as_slice())
                    .unwrap()
                    .unwrap()
                    .value()
                    .to_vec();
                let last = row.len() - 1;
                row[last] ^= 1;
                o.insert(strong.key().as_slice(), row.as_slice()).unwrap();
                let mut p = txn.open_table(PATH_SETS).unwrap();
                let key = path_set_key(&weak, b"set");
                let mut row = p.get(key.as_slice()).unwrap().unwrap().value().to_vec();
                row[1] ^= 1;
                p.insert(key.as_slice(), row.as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }
        assert_eq!(store.observed_get(&strong).unwrap(), None);
        assert!(store.path_sets(&weak).unwrap().is_empty());
        // The next record under the key drops the damaged row.
        store.observed_put(&weak, b"other", &strong, &d(3)).unwrap();
        assert_eq!(store.path_sets(&weak).unwrap(), vec![b"other".to_vec()]);
        assert_eq!(store.observed_get(&strong).unwrap(), Some(d(3)));
    }

    #[test]
    fn manifests_by_prefix() {
        let (_dir, store) = temp_store();
        store.key_manifest_put("//a:b\0X", "1").unwrap();
        store.key_manifest_put("//a:b\0Y", "2").unwrap();
        store.key_manifest_put("//a:bc\0X", "3").unwrap();
        assert_eq!(
            store.key_manifest("//a:b\0Y").unwrap().as_deref(),
            Some("2")
        );
        let got = store.key_manifests("//a:b\0").unwrap();
        assert_eq!(got.len(), 2);
        store.key_manifest_put("//a:b\0X", "4").unwrap();
        assert_eq!(
            store.key_manifest("//a:b\0X").unwrap().as_deref(),
            Some("4")
        );
    }
}
