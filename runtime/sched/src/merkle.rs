//! REAPI `Directory` Merkle trees of an action's input root.

use std::collections::BTreeMap;

use wbuild_store::{Digest, DigestFunction, digest_message, reapi};

#[derive(Default)]
struct Node {
    files: BTreeMap<String, Digest>,
    dirs: BTreeMap<String, Node>,
}

/// Error: a path is both a file and a directory, or is malformed.
#[derive(Debug)]
pub struct PathConflict(pub String);

/// A serialised `Directory` message and its digest.
pub type DirectoryBlob = (Digest, Vec<u8>);

/// The root `Directory` digest of `files` (workspace-relative paths), with every `Directory`
/// message of the tree (serialised) for upload to a CAS.
pub fn input_root(
    f: DigestFunction,
    files: &BTreeMap<String, Digest>,
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
        node.files.insert(name.to_owned(), *digest);
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
            .map(|(name, d)| reapi::FileNode {
                name: name.clone(),
                digest: Some(d.to_proto()),
                is_executable: false,
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
        let (ra, blobs) = input_root(DigestFunction::Blake3, &a).unwrap();
        assert_eq!(blobs.len(), 2);
        let mut b = BTreeMap::new();
        b.insert("a.txt".to_owned(), d("2"));
        b.insert("x/y.txt".to_owned(), d("1"));
        assert_eq!(ra, input_root(DigestFunction::Blake3, &b).unwrap().0);
        b.insert("x/y.txt".to_owned(), d("changed"));
        assert_ne!(ra, input_root(DigestFunction::Blake3, &b).unwrap().0);
    }

    #[test]
    fn file_and_dir_conflict_is_an_error() {
        let mut a = BTreeMap::new();
        a.insert("x".to_owned(), d("1"));
        a.insert("x/y".to_owned(), d("2"));
        assert!(input_root(DigestFunction::Blake3, &a).is_err());
    }
}
