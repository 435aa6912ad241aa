//! REAPI `Directory` Merkle trees of an action's input root.

use std::collections::{BTreeMap, HashMap, HashSet};

use wbuild_store::{Digest, DigestFunction, digest_message, reapi};

#[derive(Default)]
struct Node {
    /// Name -> (digest, executable).
    files: BTreeMap<String, (Digest, bool)>,
    dirs: BTreeMap<String, Node>,
}

/// Error: a path is both a file and a directory, or is malformed.
#[derive(Debug)]
pub struct PathConflict(pub String);

/// A serialised `Directory` message and its digest.
pub type DirectoryBlob = (Digest, Vec<u8>);

/// The root `Directory` digest of `files` (workspace-relative paths; those in `executables`
/// marked executable), with every `Directory` message of the tree (serialised) for upload to
/// a CAS.
pub fn input_root(
    f: DigestFunction,
    files: &BTreeMap<String, Digest>,
    executables: &HashSet<String>,
) -> Result<(Digest, Vec<DirectoryBlob>), PathConflict> {
    let mut root = Node::default();
    for (path, digest) in files {
        let mut node = &mut root;
        let mut comps: Vec<&str> = path.split('/').collect();
        let name = comps.pop().filter(|n| !n.is_empty());
        let Some(name) = name else {
            return Err(PathConflict(path.clone()));
        };
        for c in comps {
            if c.is_empty() || c == "." || c == ".." || node.files.contains_key(c) {
                return Err(PathConflict(path.clone()));
            }
            node = node.dirs.entry(c.to_owned()).or_default();
        }
        if node.dirs.contains_key(name) {
            return Err(PathConflict(path.clone()));
        }
        node.files
            .insert(name.to_owned(), (*digest, executables.contains(path)));
    }
    let mut blobs = Vec::new();
    let d = encode(f, &root, &mut blobs);
    Ok((d, blobs))
}

fn encode(f: DigestFunction, node: &Node, blobs: &mut Vec<DirectoryBlob>) -> Digest {
    let dir = reapi::Directory {
        files: node
            .files
            .iter()
            .map(|(name, (d, exec))| reapi::FileNode {
                name: name.clone(),
                digest: Some(d.to_proto()),
                is_executable: *exec,
                node_properties: None,
            })
            .collect(),
        directories: node
            .dirs
            .iter()
            .map(|(name, child)| reapi::DirectoryNode {
                name: name.clone(),
                digest: Some(encode(f, child, blobs).to_proto()),
            })
            .collect(),
        symlinks: Vec::new(),
        node_properties: None,
    };
    let (d, bytes) = digest_message(f, &dir);
    blobs.push((d, bytes));
    d
}

/// A file of an input tree: its digest and whether it is executable.
pub type TreeFile = (Digest, bool);

/// The files of the input tree rooted at `root` (workspace-relative paths), from its
/// `Directory` messages. Names that are not plain path components, symlinks and missing
/// directories are errors.
pub fn tree_files(
    f: DigestFunction,
    root: &Digest,
    dirs: &HashMap<Digest, reapi::Directory>,
) -> Result<BTreeMap<String, TreeFile>, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![(String::new(), *root)];
    while let Some((prefix, d)) = stack.pop() {
        let dir = dirs
            .get(&d)
            .ok_or_else(|| format!("directory {d} of the input tree is missing"))?;
        if !dir.symlinks.is_empty() {
            return Err(format!("input tree directory {d} holds symlinks"));
        }
        let join = |name: &str| -> Result<String, String> {
            if name.is_empty() || name == "." || name == ".." || name.contains('/') {
                return Err(format!("bad name {name:?} in input tree directory {d}"));
            }
            Ok(if prefix.is_empty() {
                name.to_owned()
            } else {
                format!("{prefix}/{name}")
            })
        };
        for file in &dir.files {
            let digest = file
                .digest
                .as_ref()
                .ok_or_else(|| format!("file {} has no digest", file.name))
                .and_then(|p| Digest::from_proto(f, p).map_err(|e| e.to_string()))?;
            out.insert(join(&file.name)?, (digest, file.is_executable));
        }
        for sub in &dir.directories {
            let digest = sub
                .digest
                .as_ref()
                .ok_or_else(|| format!("directory {} has no digest", sub.name))
                .and_then(|p| Digest::from_proto(f, p).map_err(|e| e.to_string()))?;
            stack.push((join(&sub.name)?, digest));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Digest {
        Digest::of(DigestFunction::Blake3, s.as_bytes())
    }

    #[test]
    fn same_files_same_digest_and_order_independent() {
        let mut a = BTreeMap::new();
        a.insert("x/y.txt".to_owned(), d("1"));
        a.insert("a.txt".to_owned(), d("2"));
        let (ra, blobs) = input_root(DigestFunction::Blake3, &a, &HashSet::new()).unwrap();
        assert_eq!(blobs.len(), 2);
        // The tree reads back as the same files.
        let dirs: HashMap<Digest, reapi::Directory> = blobs
            .iter()
            .map(|(d, b)| (*d, prost::Message::decode(&b[..]).unwrap()))
            .collect();
        let back = tree_files(DigestFunction::Blake3, &ra, &dirs).unwrap();
        let want: BTreeMap<String, TreeFile> =
            a.iter().map(|(p, d)| (p.clone(), (*d, false))).collect();
        assert_eq!(back, want);
        // The executable bit is part of the tree.
        let exec: HashSet<String> = ["a.txt".to_owned()].into();
        let (re, _) = input_root(DigestFunction::Blake3, &a, &exec).unwrap();
        assert_ne!(ra, re);
        let mut b = BTreeMap::new();
        b.insert("a.txt".to_owned(), d("2"));
        b.insert("x/y.txt".to_owned(), d("1"));
        assert_eq!(
            ra,
            input_root(DigestFunction::Blake3, &b, &HashSet::new())
                .unwrap()
                .0
        );
        b.insert("x/y.txt".to_owned(), d("changed"));
        assert_ne!(
            ra,
            input_root(DigestFunction::Blake3, &b, &HashSet::new())
                .unwrap()
                .0
        );
    }

    #[test]
    fn file_and_dir_conflict_is_an_error() {
        let mut a = BTreeMap::new();
        a.insert("x".to_owned(), d("1"));
        a.insert("x/y".to_owned(), d("2"));
        assert!(input_root(DigestFunction::Blake3, &a, &HashSet::new()).is_err());
    }
}
