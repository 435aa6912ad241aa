//! The action cache (REAPI `ActionResult`s keyed by action digest) and per-action access logs.

use prost::Message;

use crate::store::now_ms;
use crate::tables::{AC, AC_LABEL, ACCESS_LOGS};
use crate::{Digest, DigestFunction, Store, StoreError, reapi};

/// Version 2 rows carry a checksum: redb does not verify its pages on ordinary reads, and a
/// damaged row must read as a miss, never as another result.
const ENTRY_VERSION: u8 = 2;
const CHECKSUM_LEN: usize = 16;

/// A decoded action-cache row.
pub(crate) struct AcEntry {
    pub(crate) label: String,
    pub(crate) action_size: u64,
    pub(crate) result: reapi::ActionResult,
}

/// `[version][BLAKE3(body)[..16]][body]`, body = time, label length, label, action size,
/// prost-encoded `ActionResult`.
pub(crate) fn encode_entry(action: &Digest, result: &reapi::ActionResult, label: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(8 + 4 + label.len() + 8 + result.encoded_len());
    body.extend_from_slice(&now_ms().to_le_bytes());
    body.extend_from_slice(&(label.len() as u32).to_le_bytes());
    body.extend_from_slice(label.as_bytes());
    body.extend_from_slice(&action.size.to_le_bytes());
    result.encode(&mut body).expect("Vec grows");
    let mut v = Vec::with_capacity(1 + CHECKSUM_LEN + body.len());
    v.push(ENTRY_VERSION);
    v.extend_from_slice(&blake3::hash(&body).as_bytes()[..CHECKSUM_LEN]);
    v.extend_from_slice(&body);
    v
}

/// The row, or `None` if it is of another version, damaged, or undecodable.
pub(crate) fn decode_entry(b: &[u8]) -> Option<AcEntry> {
    if b.first() != Some(&ENTRY_VERSION) || b.len() < 1 + CHECKSUM_LEN + 12 {
        return None;
    }
    let (sum, body) = b[1..].split_at(CHECKSUM_LEN);
    if blake3::hash(body).as_bytes()[..CHECKSUM_LEN] != *sum {
        return None;
    }
    let label_len = u32::from_le_bytes(body[8..12].try_into().ok()?) as usize;
    let rest = &body[12..];
    if rest.len() < label_len + 8 {
        return None;
    }
    let label = std::str::from_utf8(&rest[..label_len]).ok()?.to_string();
    let action_size = u64::from_le_bytes(rest[label_len..label_len + 8].try_into().ok()?);
    let result = reapi::ActionResult::decode(&rest[label_len + 8..]).ok()?;
    Some(AcEntry {
        label,
        action_size,
        result,
    })
}

/// How an `ActionResult` references a blob (described only when an error needs it).
pub(crate) enum RefKind<'a> {
    OutputFile(&'a str),
    /// An `OutputDirectory` tree: the files it lists are references too.
    Tree(&'a str),
    RootDirectory(&'a str),
    Stdout,
    Stderr,
}

impl RefKind<'_> {
    pub(crate) fn describe(&self) -> String {
        match self {
            RefKind::OutputFile(p) => format!("output file '{p}'"),
            RefKind::Tree(p) => format!("output directory '{p}' (tree)"),
            RefKind::RootDirectory(p) => format!("output directory '{p}' (root directory)"),
            RefKind::Stdout => "stdout".to_string(),
            RefKind::Stderr => "stderr".to_string(),
        }
    }
}

/// The blobs `result` references directly: output files, output directory trees (and root
/// directories), stdout and stderr.
pub(crate) fn direct_refs(result: &reapi::ActionResult) -> Vec<(RefKind<'_>, &reapi::Digest)> {
    let mut refs = Vec::with_capacity(result.output_files.len() + 2);
    for f in &result.output_files {
        if let Some(d) = &f.digest {
            refs.push((RefKind::OutputFile(&f.path), d));
        }
    }
    for dir in &result.output_directories {
        if let Some(d) = &dir.tree_digest {
            refs.push((RefKind::Tree(&dir.path), d));
        }
        if let Some(d) = &dir.root_directory_digest {
            refs.push((RefKind::RootDirectory(&dir.path), d));
        }
    }
    if let Some(d) = &result.stdout_digest {
        refs.push((RefKind::Stdout, d));
    }
    if let Some(d) = &result.stderr_digest {
        refs.push((RefKind::Stderr, d));
    }
    refs
}

impl Store {
    /// Every blob `result` references, including the files listed in its output-directory
    /// trees (tree blobs are read and verified). Err(MissingBlob) names the first absent one.
    pub(crate) fn all_refs(
        &self,
        action: &Digest,
        result: &reapi::ActionResult,
    ) -> Result<Vec<Digest>, StoreError> {
        let f = action.function;
        let mut out = Vec::new();
        let missing = |what: String, digest: Digest| StoreError::MissingBlob {
            action: *action,
            what,
            digest,
        };
        for (kind, proto) in direct_refs(result) {
            let d = Digest::from_proto(f, proto)?;
            if !self.exists(&d) {
                return Err(missing(kind.describe(), d));
            }
            out.push(d);
            if let RefKind::Tree(_) = kind {
                let bytes = match self.get_bytes_inner(&d) {
                    Ok(b) => b,
                    Err(StoreError::NotFound { .. }) => return Err(missing(kind.describe(), d)),
                    Err(e) => return Err(e),
                };
                let tree =
                    reapi::Tree::decode(bytes.as_slice()).map_err(|e| StoreError::Malformed {
                        what: format!("{} {d} of action {action}", kind.describe()),
                        message: e.to_string(),
                    })?;
                for dir in tree.root.iter().chain(tree.children.iter()) {
                    for file in &dir.files {
                        if let Some(p) = &file.digest {
                            let fd = Digest::from_proto(f, p)?;
                            if !self.exists(&fd) {
                                return Err(missing(
                                    format!("file '{}' in {}", file.name, kind.describe()),
                                    fd,
                                ));
                            }
                            out.push(fd);
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// The cached result of `action`, or `None` if absent or if any blob it references
    /// directly is missing (the entry is then dropped). Referenced blobs count as used.
    pub fn ac_get(&self, action: &Digest) -> Result<Option<reapi::ActionResult>, StoreError> {
        let _g = self.shared();
        let key = action.key();
        let entry = {
            let txn = self.read_txn()?;
            let table = txn.open_table(AC).map_err(|e| self.db_err(e))?;
            match table.get(key.as_slice()).map_err(|e| self.db_err(e))? {
                None => return Ok(None),
                Some(v) => decode_entry(v.value()),
            }
        };
        let Some(entry) = entry else {
            self.ac_drop(action, None)?;
            return Ok(None);
        };
        let refs = direct_refs(&entry.result);
        let mut used = Vec::with_capacity(refs.len());
        for (_, proto) in refs {
            match Digest::from_proto(action.function, proto) {
                Ok(d) if self.exists(&d) => used.push(d),
                _ => {
                    self.ac_drop(action, Some(&entry.label))?;
                    return Ok(None);
                }
            }
        }
        self.touch_all(&used);
        Ok(Some(entry.result))
    }

    /// [`Store::ac_get`] without side effects: the result if the row is intact and every blob
    /// it references directly is present, else `None`; a broken row is left in place and no
    /// blob counts as used (what `wbuild aquery` needs to say whether a build would hit).
    pub fn ac_peek(&self, action: &Digest) -> Result<Option<reapi::ActionResult>, StoreError> {
        let _g = self.shared();
        let key = action.key();
        let txn = self.read_txn()?;
        let table = txn.open_table(AC).map_err(|e| self.db_err(e))?;
        let Some(row) = table.get(key.as_slice()).map_err(|e| self.db_err(e))? else {
            return Ok(None);
        };
        let Some(entry) = decode_entry(row.value()) else {
            return Ok(None);
        };
        let complete = direct_refs(&entry.result).into_iter().all(|(_, proto)| {
            Digest::from_proto(action.function, proto).is_ok_and(|d| self.exists(&d))
        });
        Ok(complete.then_some(entry.result))
    }

    /// Record `result` for `action`. Refuses (Err(MissingBlob)) unless every blob it
    /// references is already in the CAS, so an entry never points at nothing.
    pub fn ac_put(
        &self,
        action: &Digest,
        result: &reapi::ActionResult,
        label: &str,
    ) -> Result<(), StoreError> {
        let _g = self.shared();
        let refs = self.all_refs(action, result)?;
        let key = action.key();
        let value = encode_entry(action, result, label);
        let txn = self.write_txn()?;
        {
            let mut table = txn.open_table(AC).map_err(|e| self.db_err(e))?;
            let old_label = table
                .insert(key.as_slice(), value.as_slice())
                .map_err(|e| self.db_err(e))?
                .and_then(|old| decode_entry(old.value()).map(|e| e.label));
            let mut index = txn
                .open_multimap_table(AC_LABEL)
                .map_err(|e| self.db_err(e))?;
            let full = action.encode_full();
            if let Some(old) = old_label
                && old != label
            {
                index
                    .remove(old.as_str(), full.as_slice())
                    .map_err(|e| self.db_err(e))?;
            }
            index
                .insert(label, full.as_slice())
                .map_err(|e| self.db_err(e))?;
        }
        txn.commit().map_err(|e| self.db_err(e))?;
        self.touch_all(&refs);
        Ok(())
    }

    /// How many action-cache entries are keyed with each digest function (entries are keyed
    /// by function code first, so each count is one range of the table).
    pub fn ac_entries_by_function(&self) -> Result<Vec<(DigestFunction, u64)>, StoreError> {
        let _g = self.shared();
        let txn = self.read_txn()?;
        let table = txn.open_table(AC).map_err(|e| self.db_err(e))?;
        let mut out = Vec::with_capacity(DigestFunction::ALL.len());
        for f in DigestFunction::ALL {
            let (lo, hi) = ([f.code()], [f.code() + 1]);
            let range = table
                .range(lo.as_slice()..hi.as_slice())
                .map_err(|e| self.db_err(e))?;
            out.push((f, range.count() as u64));
        }
        Ok(out)
    }

    /// Remove the entry for `action`; whether there was one.
    pub fn ac_remove(&self, action: &Digest) -> Result<bool, StoreError> {
        let _g = self.shared();
        self.ac_drop(action, None)
    }

    /// Delete an AC row and its label-index row (label read from the row if not given).
    pub(crate) fn ac_drop(&self, action: &Digest, label: Option<&str>) -> Result<bool, StoreError> {
        let key = action.key();
        let txn = self.write_txn()?;
        let existed;
        {
            let mut table = txn.open_table(AC).map_err(|e| self.db_err(e))?;
            let removed = table
                .remove(key.as_slice())
                .map_err(|e| self.db_err(e))?
                .map(|v| (decode_entry(v.value()), v.value().len()));
            existed = removed.is_some();
            let stored = removed.and_then(|(e, _)| e);
            let label = label
                .map(str::to_string)
                .or_else(|| stored.as_ref().map(|e| e.label.clone()));
            if let Some(label) = label {
                let size = stored.map(|e| e.action_size).unwrap_or(action.size);
                let full = Digest { size, ..*action }.encode_full();
                let mut index = txn
                    .open_multimap_table(AC_LABEL)
                    .map_err(|e| self.db_err(e))?;
                index
                    .remove(label.as_str(), full.as_slice())
                    .map_err(|e| self.db_err(e))?;
            }
        }
        txn.commit().map_err(|e| self.db_err(e))?;
        Ok(existed)
    }

    /// Digests of the actions whose cached results were recorded under `label`.
    pub fn ac_find_by_label(&self, label: &str) -> Result<Vec<Digest>, StoreError> {
        let txn = self.read_txn()?;
        let index = txn
            .open_multimap_table(AC_LABEL)
            .map_err(|e| self.db_err(e))?;
        let mut out = Vec::new();
        for v in index.get(label).map_err(|e| self.db_err(e))? {
            let v = v.map_err(|e| self.db_err(e))?;
            if let Some(d) = Digest::decode_full(v.value()) {
                out.push(d);
            }
        }
        Ok(out)
    }

    /// Store the access log (opaque JSON from exec-wasi) of `action`, replacing any earlier one.
    pub fn put_access_log(&self, action: &Digest, json: &str) -> Result<(), StoreError> {
        let txn = self.write_txn()?;
        {
            let mut t = txn.open_table(ACCESS_LOGS).map_err(|e| self.db_err(e))?;
            t.insert(action.key().as_slice(), json)
                .map_err(|e| self.db_err(e))?;
        }
        txn.commit().map_err(|e| self.db_err(e))
    }

    pub fn access_log(&self, action: &Digest) -> Result<Option<String>, StoreError> {
        let txn = self.read_txn()?;
        let t = txn.open_table(ACCESS_LOGS).map_err(|e| self.db_err(e))?;
        Ok(t.get(action.key().as_slice())
            .map_err(|e| self.db_err(e))?
            .map(|v| v.value().to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{result_with, store_in};
    use crate::{DigestFunction, Hasher};

    fn action(n: u32) -> Digest {
        Digest::of(DigestFunction::Blake3, format!("action {n}").as_bytes())
    }

    #[test]
    fn put_get_remove() {
        let (_dir, store) = store_in();
        let out = store.put_bytes(b"output").unwrap();
        let log = store.put_bytes(b"stdout text").unwrap();
        let mut r = result_with(&[("pkg/out.txt", out)]);
        r.stdout_digest = Some(log.to_proto());
        r.exit_code = 0;
        store.ac_put(&action(1), &r, "//pkg:gen").unwrap();
        assert_eq!(store.ac_get(&action(1)).unwrap(), Some(r.clone()));
        assert_eq!(store.ac_get(&action(2)).unwrap(), None);
        assert_eq!(
            store.ac_find_by_label("//pkg:gen").unwrap(),
            vec![action(1)]
        );
        assert!(store.ac_remove(&action(1)).unwrap());
        assert!(!store.ac_remove(&action(1)).unwrap());
        assert_eq!(store.ac_get(&action(1)).unwrap(), None);
        assert!(store.ac_find_by_label("//pkg:gen").unwrap().is_empty());
    }

    #[test]
    fn put_refuses_missing_blobs() {
        let (_dir, store) = store_in();
        let absent = Digest::of(DigestFunction::Blake3, b"never stored");
        let r = result_with(&[("a/out", absent)]);
        let err = store.ac_put(&action(1), &r, "//a:x").unwrap_err();
        match &err {
            StoreError::MissingBlob { what, digest, .. } => {
                assert_eq!(*digest, absent);
                assert!(what.contains("a/out"), "{what}");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(err.to_string().contains(&absent.hex()));
        assert_eq!(store.ac_get(&action(1)).unwrap(), None);

        let r = reapi::ActionResult {
            stderr_digest: Some(absent.to_proto()),
            ..Default::default()
        };
        assert!(matches!(
            store.ac_put(&action(1), &r, "//a:x"),
            Err(StoreError::MissingBlob { .. })
        ));
        // The empty blob is always present.
        let r = result_with(&[("a/empty", Digest::empty(DigestFunction::Blake3))]);
        store.ac_put(&action(1), &r, "//a:x").unwrap();
        assert!(store.ac_get(&action(1)).unwrap().is_some());
    }

    #[test]
    fn get_drops_entry_whose_blob_vanished() {
        let (_dir, store) = store_in();
        let out = store.put_bytes(b"soon gone").unwrap();
        store
            .ac_put(&action(1), &result_with(&[("x", out)]), "//:x")
            .unwrap();
        std::fs::remove_file(store.blob_path(&out)).unwrap();
        assert_eq!(store.ac_get(&action(1)).unwrap(), None);
        assert!(store.ac_find_by_label("//:x").unwrap().is_empty());
        // Putting the blob back does not resurrect the dropped entry.
        store.put_bytes(b"soon gone").unwrap();
        assert_eq!(store.ac_get(&action(1)).unwrap(), None);
    }

    #[test]
    fn relabel_moves_index_entry() {
        let (_dir, store) = store_in();
        let r = result_with(&[]);
        store.ac_put(&action(1), &r, "//:old").unwrap();
        store.ac_put(&action(1), &r, "//:new").unwrap();
        assert!(store.ac_find_by_label("//:old").unwrap().is_empty());
        assert_eq!(store.ac_find_by_label("//:new").unwrap(), vec![action(1)]);
        store.ac_put(&action(2), &r, "//:new").unwrap();
        let mut found = store.ac_find_by_label("//:new").unwrap();
        found.sort();
        let mut want = vec![action(1), action(2)];
        want.sort();
        assert_eq!(found, want);
    }

    #[test]
    fn output_directory_trees_are_checked() {
        let (_dir, store) = store_in();
        let file = Digest::of(DigestFunction::Blake3, b"in a tree");
        let tree = reapi::Tree {
            root: Some(reapi::Directory {
                files: vec![reapi::FileNode {
                    name: "f".into(),
                    digest: Some(file.to_proto()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            children: vec![],
        };
        let tree_d = store.put_bytes(&tree.encode_to_vec()).unwrap();
        let mut r = reapi::ActionResult::default();
        r.output_directories.push(reapi::OutputDirectory {
            path: "out/dir".into(),
            tree_digest: Some(tree_d.to_proto()),
            ..Default::default()
        });
        let err = store.ac_put(&action(3), &r, "//:d").unwrap_err();
        assert!(err.to_string().contains("file 'f'"), "{err}");
        store.put_bytes(b"in a tree").unwrap();
        store.ac_put(&action(3), &r, "//:d").unwrap();
        assert_eq!(store.ac_get(&action(3)).unwrap(), Some(r));
    }

    #[test]
    fn access_logs_round_trip() {
        let (_dir, store) = store_in();
        assert_eq!(store.access_log(&action(1)).unwrap(), None);
        store.put_access_log(&action(1), r#"{"reads":[]}"#).unwrap();
        store
            .put_access_log(&action(1), r#"{"reads":["a"]}"#)
            .unwrap();
        assert_eq!(
            store.access_log(&action(1)).unwrap().as_deref(),
            Some(r#"{"reads":["a"]}"#)
        );
    }

    #[test]
    fn sha256_action_keys_are_separate() {
        let (_dir, store) = store_in();
        let mut h = Hasher::new(DigestFunction::Sha256);
        h.update(b"action 1");
        let sha_action = Digest {
            hash: action(1).hash,
            ..h.finish()
        };
        store
            .ac_put(&action(1), &result_with(&[]), "//:b3")
            .unwrap();
        assert_eq!(store.ac_get(&sha_action).unwrap(), None);
    }

    #[test]
    fn corrupt_entry_is_dropped() {
        let (_dir, store) = store_in();
        let txn = store.write_txn().unwrap();
        {
            let mut t = txn.open_table(AC).unwrap();
            t.insert(action(9).key().as_slice(), b"garbage".as_slice())
                .unwrap();
        }
        txn.commit().unwrap();
        assert_eq!(store.ac_get(&action(9)).unwrap(), None);
        assert!(!store.ac_remove(&action(9)).unwrap());
    }
}
