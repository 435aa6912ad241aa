//! An action's declared inputs: a sorted set of workspace paths, part of which may be shared
//! with other actions.
//!
//! Every compile of a `cc_*` target declares the same headers (its own and those of its
//! dependencies) besides its source: in the suite's C graph, some 60 paths per compile, the
//! same for the ten compiles of a library. Held once per target (an `Arc`), and written once
//! per target in the analysis cache, they are neither copied by the analysis nor allocated
//! again, path by path, each time a build reads the cached graph.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

/// Sorted, deduplicated workspace paths: those of `shared` and those of `own` (which holds
/// none of `shared`'s). Compared, iterated and listed as the one sorted set they make.
#[derive(Clone, Default)]
pub struct Inputs {
    /// `None` for none (an empty `Arc<[String]>` would still be an allocation, one per action
    /// of most graphs).
    shared: Option<Arc<[String]>>,
    own: Vec<String>,
}

impl Inputs {
    /// The set `shared` (sorted and deduplicated, as [`Inputs::shared_set`] makes it) plus
    /// `own`.
    pub fn new(shared: Arc<[String]>, own: Vec<String>) -> Inputs {
        debug_assert!(
            shared.windows(2).all(|w| w[0] < w[1]),
            "shared: not a sorted set"
        );
        let mut own = own;
        own.sort();
        own.dedup();
        own.retain(|p| shared.binary_search(p).is_err());
        Inputs {
            shared: (!shared.is_empty()).then_some(shared),
            own,
        }
    }

    fn shared(&self) -> &[String] {
        self.shared.as_deref().unwrap_or_default()
    }

    /// `paths` as a sorted, deduplicated set to share between actions.
    pub fn shared_set(mut paths: Vec<String>) -> Arc<[String]> {
        paths.sort();
        paths.dedup();
        paths.into()
    }

    /// The paths, in order.
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            a: self.shared(),
            b: &self.own,
        }
    }

    pub fn len(&self) -> usize {
        self.shared().len() + self.own.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn contains(&self, path: &str) -> bool {
        let find = |set: &[String]| set.binary_search_by(|p| p.as_str().cmp(path)).is_ok();
        find(&self.own) || find(self.shared())
    }

    /// The first path, in order.
    pub fn first(&self) -> Option<&String> {
        self.iter().next()
    }

    pub fn to_vec(&self) -> Vec<String> {
        self.iter().cloned().collect()
    }
}

impl From<Vec<String>> for Inputs {
    fn from(mut paths: Vec<String>) -> Inputs {
        paths.sort();
        paths.dedup();
        Inputs {
            shared: None,
            own: paths,
        }
    }
}

/// The paths of two sorted, disjoint sets, merged in order.
pub struct Iter<'a> {
    a: &'a [String],
    b: &'a [String],
}

impl<'a> Iterator for Iter<'a> {
    type Item = &'a String;

    fn next(&mut self) -> Option<&'a String> {
        let take_a = match (self.a.first(), self.b.first()) {
            (Some(x), Some(y)) => x <= y,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => return None,
        };
        let side = if take_a { &mut self.a } else { &mut self.b };
        let (first, rest) = side.split_first()?;
        *side = rest;
        Some(first)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.a.len() + self.b.len();
        (n, Some(n))
    }
}

impl ExactSizeIterator for Iter<'_> {}

impl<'a> IntoIterator for &'a Inputs {
    type Item = &'a String;
    type IntoIter = Iter<'a>;
    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

impl PartialEq for Inputs {
    fn eq(&self, other: &Inputs) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Inputs {}

impl<T: AsRef<str>> PartialEq<[T]> for Inputs {
    fn eq(&self, other: &[T]) -> bool {
        self.len() == other.len() && self.iter().zip(other).all(|(a, b)| a == b.as_ref())
    }
}

impl<T: AsRef<str>, const N: usize> PartialEq<[T; N]> for Inputs {
    fn eq(&self, other: &[T; N]) -> bool {
        *self == other[..]
    }
}

impl<T: AsRef<str>> PartialEq<Vec<T>> for Inputs {
    fn eq(&self, other: &Vec<T>) -> bool {
        *self == other[..]
    }
}

impl std::fmt::Debug for Inputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// The shared sets already written (by address) or read (in order) in the current scope, and
/// the same of the tools actions run (`Exec::Wasi`'s [`crate::ToolRef`], see [`tool`]).
#[derive(Default)]
struct Table {
    written: HashMap<usize, u32>,
    read: Vec<Arc<[String]>>,
    tools_written: HashMap<usize, u32>,
    tools_read: Vec<Arc<crate::ToolRef>>,
}

thread_local! {
    static SHARING: RefCell<Option<Table>> = const { RefCell::new(None) };
}

/// Runs `f` (serializing or deserializing actions on this thread) with a shared set, or a
/// shared tool, written once: the first time in full, then by its number. What is written
/// inside one scope must be read inside one scope, in the same order.
pub(crate) fn sharing<R>(f: impl FnOnce() -> R) -> R {
    struct Reset(Option<Table>);
    impl Drop for Reset {
        fn drop(&mut self) {
            SHARING.with(|s| *s.borrow_mut() = self.0.take());
        }
    }
    let _reset = Reset(SHARING.with(|s| s.borrow_mut().replace(Table::default())));
    f()
}

/// The number `written` gave the value at `addr` if it was written before in this scope;
/// otherwise `None`, and it gets the next number.
fn seen<T: ?Sized>(written: &mut HashMap<usize, u32>, addr: *const T) -> Option<u32> {
    let next = written.len() as u32;
    match written.entry(addr as *const () as usize) {
        std::collections::hash_map::Entry::Occupied(e) => Some(*e.get()),
        std::collections::hash_map::Entry::Vacant(v) => {
            v.insert(next);
            None
        }
    }
}

/// How the shared set is written: none, the number of one written before, or in full.
const EMPTY: u8 = 0;
const AGAIN: u8 = 1;
const FULL: u8 = 2;

/// In text formats, the sorted list of paths. In binary formats (the analysis cache), the
/// shared set, then `own`: the shared set in full, or, within a [`sharing`] scope that
/// already wrote it, as its number.
impl serde::Serialize for Inputs {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        if s.is_human_readable() {
            return s.collect_seq(self.iter());
        }
        // The number of this shared set if the scope wrote it before. Addresses are not
        // reused within a scope: the actions being written hold their sets.
        let again = self.shared.as_ref().and_then(|shared| {
            SHARING.with(|t| Some(seen(&mut t.borrow_mut().as_mut()?.written, shared.as_ptr())))?
        });
        let mut tup = s.serialize_tuple(3)?;
        match (&self.shared, again) {
            (None, _) => {
                tup.serialize_element(&EMPTY)?;
                tup.serialize_element(&())?;
            }
            (Some(_), Some(n)) => {
                tup.serialize_element(&AGAIN)?;
                tup.serialize_element(&n)?;
            }
            (Some(shared), None) => {
                tup.serialize_element(&FULL)?;
                tup.serialize_element(&**shared)?;
            }
        }
        tup.serialize_element(&self.own)?;
        tup.end()
    }
}

impl<'de> serde::Deserialize<'de> for Inputs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Inputs, D::Error> {
        use serde::de::{Error, SeqAccess, Visitor};
        if d.is_human_readable() {
            let paths = <Vec<String> as serde::Deserialize>::deserialize(d)?;
            return Ok(Inputs::from(paths));
        }
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Inputs;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an action's inputs")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Inputs, A::Error> {
                let missing = || A::Error::custom("truncated inputs");
                let tag: u8 = seq.next_element()?.ok_or_else(missing)?;
                let shared: Option<Arc<[String]>> =
                    match tag {
                        EMPTY => {
                            seq.next_element::<()>()?.ok_or_else(missing)?;
                            None
                        }
                        AGAIN => {
                            let n: u32 = seq.next_element()?.ok_or_else(missing)?;
                            let set = SHARING.with(|t| {
                                t.borrow()
                                    .as_ref()
                                    .and_then(|t| t.read.get(n as usize).cloned())
                            });
                            Some(set.ok_or_else(|| {
                                A::Error::custom("inputs name an unknown shared set")
                            })?)
                        }
                        FULL => {
                            let paths: Vec<String> = seq.next_element()?.ok_or_else(missing)?;
                            if paths.is_empty() || !paths.windows(2).all(|w| w[0] < w[1]) {
                                return Err(A::Error::custom(
                                    "a shared set of inputs is empty or not sorted",
                                ));
                            }
                            let set: Arc<[String]> = paths.into();
                            SHARING.with(|t| {
                                if let Some(t) = t.borrow_mut().as_mut() {
                                    t.read.push(set.clone());
                                }
                            });
                            Some(set)
                        }
                        _ => return Err(A::Error::custom("unknown kind of shared inputs")),
                    };
                let own: Vec<String> = seq.next_element()?.ok_or_else(missing)?;
                let in_shared = |p: &String| {
                    shared
                        .as_deref()
                        .is_some_and(|s| s.binary_search(p).is_ok())
                };
                if !own.windows(2).all(|w| w[0] < w[1]) || own.iter().any(in_shared) {
                    return Err(A::Error::custom("an action's inputs are not a sorted set"));
                }
                Ok(Inputs { shared, own })
            }
        }
        d.deserialize_tuple(3, V)
    }
}

/// `Exec::Wasi`'s tool in binary formats: in full the first time a [`sharing`] scope writes
/// it, then by its number (the 100,000 actions of one tool wrote it 100,000 times: a fifth of
/// the analysis cache's entry, and read back as one copy per action). Text formats write it
/// in full.
pub(crate) mod tool {
    use super::*;
    use crate::ToolRef;

    pub(crate) fn serialize<S: serde::Serializer>(
        tool: &Arc<ToolRef>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        if s.is_human_readable() {
            return serde::Serialize::serialize(&**tool, s);
        }
        // As for sets of inputs: the actions being written hold their tools, so an address is
        // not reused within a scope.
        let again = SHARING.with(|t| {
            Some(seen(
                &mut t.borrow_mut().as_mut()?.tools_written,
                Arc::as_ptr(tool),
            ))?
        });
        let mut tup = s.serialize_tuple(2)?;
        match again {
            Some(n) => {
                tup.serialize_element(&AGAIN)?;
                tup.serialize_element(&n)?;
            }
            None => {
                tup.serialize_element(&FULL)?;
                tup.serialize_element(&**tool)?;
            }
        }
        tup.end()
    }

    pub(crate) fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Arc<ToolRef>, D::Error> {
        use serde::de::{Error, SeqAccess, Visitor};
        if d.is_human_readable() {
            return <ToolRef as serde::Deserialize>::deserialize(d).map(Arc::new);
        }
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Arc<ToolRef>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an action's tool")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Arc<ToolRef>, A::Error> {
                let missing = || A::Error::custom("truncated tool");
                let tag: u8 = seq.next_element()?.ok_or_else(missing)?;
                match tag {
                    AGAIN => {
                        let n: u32 = seq.next_element()?.ok_or_else(missing)?;
                        SHARING
                            .with(|t| {
                                t.borrow()
                                    .as_ref()
                                    .and_then(|t| t.tools_read.get(n as usize).cloned())
                            })
                            .ok_or_else(|| A::Error::custom("an action names an unknown tool"))
                    }
                    FULL => {
                        let tool: ToolRef = seq.next_element()?.ok_or_else(missing)?;
                        let tool = Arc::new(tool);
                        SHARING.with(|t| {
                            if let Some(t) = t.borrow_mut().as_mut() {
                                t.tools_read.push(tool.clone());
                            }
                        });
                        Ok(tool)
                    }
                    _ => Err(A::Error::custom("unknown kind of tool")),
                }
            }
        }
        d.deserialize_tuple(2, V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tool_is_written_once_per_scope_and_read_back_shared() {
        use crate::{Exec, ToolRef};
        let tool = Arc::new(ToolRef {
            label: crate::Label::new("tools", "t"),
            argv0: "t".to_owned(),
            module: "tools/t.wasm".to_owned(),
            data: vec![("/share/d".to_owned(), "tools/d".to_owned())],
        });
        let other = Arc::new(ToolRef {
            argv0: "u".to_owned(),
            ..(*tool).clone()
        });
        let execs = vec![
            Exec::Wasi(tool.clone()),
            Exec::Native,
            Exec::Wasi(other.clone()),
            Exec::Wasi(tool.clone()),
            Exec::Wasi(other.clone()),
        ];
        let shared = sharing(|| postcard::to_stdvec(&execs)).unwrap();
        let apart = postcard::to_stdvec(&execs).unwrap();
        let count = |bytes: &[u8]| bytes.windows(12).filter(|w| w == b"tools/t.wasm").count();
        assert_eq!((count(&shared), count(&apart)), (2, 4));
        let back: Vec<Exec> = sharing(|| postcard::from_bytes(&shared)).unwrap();
        assert_eq!(back, execs);
        let (Exec::Wasi(a), Exec::Wasi(b)) = (&back[0], &back[3]) else {
            panic!("{back:?}")
        };
        assert!(Arc::ptr_eq(a, b));
        // Written outside a scope, every tool is in full and reads anywhere.
        let back: Vec<Exec> = postcard::from_bytes(&apart).unwrap();
        assert_eq!(back, execs);
        let back: Vec<Exec> = sharing(|| postcard::from_bytes(&apart)).unwrap();
        assert_eq!(back, execs);
        // JSON holds the tool itself.
        let json = serde_json::to_string(&execs[0]).unwrap();
        assert!(json.contains("tools/t.wasm"), "{json}");
        assert_eq!(serde_json::from_str::<Exec>(&json).unwrap(), execs[0]);
        // A reference to a tool the reader never saw, or an unknown kind: refused.
        let again = sharing(|| {
            postcard::to_stdvec(&execs[0]).unwrap();
            postcard::to_stdvec(&execs[0]).unwrap()
        });
        assert!(sharing(|| postcard::from_bytes::<Exec>(&again)).is_err());
        assert!(postcard::from_bytes::<Exec>(&again).is_err());
        let mut bad = postcard::to_stdvec(&execs[0]).unwrap();
        // The variant, then the tool's tag.
        assert_eq!(bad[..2], [0, FULL]);
        bad[1] = 7;
        assert!(sharing(|| postcard::from_bytes::<Exec>(&bad)).is_err());
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn two_parts_are_one_sorted_set() {
        let shared = Inputs::shared_set(strings(&["b.h", "d.h", "b.h"]));
        let i = Inputs::new(shared, strings(&["e.c", "a.c", "d.h"]));
        assert_eq!(i, ["a.c", "b.h", "d.h", "e.c"]);
        assert_eq!(i.len(), 4);
        assert!(i.contains("d.h") && i.contains("a.c") && !i.contains("c.h"));
        assert_eq!(i.first().map(String::as_str), Some("a.c"));
        assert_eq!(i, Inputs::from(strings(&["a.c", "b.h", "d.h", "e.c"])));
        assert_eq!(format!("{i:?}"), r#"["a.c", "b.h", "d.h", "e.c"]"#);
        // No shared set is no allocation.
        assert!(Inputs::from(strings(&["a"])).shared.is_none());
        assert!(
            Inputs::new(Inputs::shared_set(vec![]), strings(&["a"]))
                .shared
                .is_none()
        );
    }

    #[test]
    fn a_shared_set_is_written_once_per_scope_and_read_back_shared() {
        let shared = Inputs::shared_set(strings(&["x/a.h", "x/b.h", "x/c.h"]));
        let actions: Vec<Inputs> = (0..3)
            .map(|i| Inputs::new(shared.clone(), vec![format!("x/{i}.c")]))
            .collect();
        let alone = postcard::to_stdvec(&actions).unwrap();
        let bytes = sharing(|| postcard::to_stdvec(&actions)).unwrap();
        assert!(bytes.len() < alone.len() - 2 * "x/a.hx/b.hx/c.h".len());
        let back: Vec<Inputs> = sharing(|| postcard::from_bytes(&bytes)).unwrap();
        assert_eq!(back, actions);
        let (a, b) = (back[0].shared.as_ref(), back[2].shared.as_ref());
        assert!(Arc::ptr_eq(a.unwrap(), b.unwrap()));
        // Outside a scope every set is written in full, and read so.
        let back: Vec<Inputs> = postcard::from_bytes(&alone).unwrap();
        assert_eq!(back, actions);
        // A reference read outside the scope that wrote the set is refused, not guessed.
        assert!(postcard::from_bytes::<Vec<Inputs>>(&bytes).is_err());
        // Text formats list the paths.
        assert_eq!(
            serde_json::to_string(&actions[1]).unwrap(),
            r#"["x/1.c","x/a.h","x/b.h","x/c.h"]"#
        );
    }

    #[test]
    fn damaged_inputs_are_refused() {
        let unsorted = sharing(|| postcard::to_stdvec(&(FULL, strings(&["b", "a"]), strings(&[]))));
        let unsorted = unsorted.unwrap();
        assert!(sharing(|| postcard::from_bytes::<Inputs>(&unsorted)).is_err());
        let overlapping =
            postcard::to_stdvec(&(FULL, strings(&["a", "b"]), strings(&["b"]))).unwrap();
        assert!(sharing(|| postcard::from_bytes::<Inputs>(&overlapping)).is_err());
        let empty = postcard::to_stdvec(&(FULL, strings(&[]), strings(&["a"]))).unwrap();
        assert!(sharing(|| postcard::from_bytes::<Inputs>(&empty)).is_err());
        let unknown = postcard::to_stdvec(&(7u8, (), strings(&[]))).unwrap();
        assert!(sharing(|| postcard::from_bytes::<Inputs>(&unknown)).is_err());
    }
}
