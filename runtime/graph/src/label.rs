//! Labels (`//pkg:name`), target patterns (`//pkg/...`) and workspace-path helpers.

use std::fmt;
use std::str::FromStr;

use crate::GraphError;

/// A target or file in the workspace: `//pkg:name`.
///
/// `package` is the workspace path of the package directory (`""` for the root package) and
/// `name` is relative to it (it may contain `/` for files in sub-directories that are not packages).
///
/// A label is shared, not copied: a target's label is held by its target, the target graph's
/// index, each of its actions, the producers of its outputs and the targets naming it, and
/// a clone is a reference count (100,000 targets held some 500,000 copies of two strings).
/// Its parts are read as fields (`label.package`, `label.name`) through [`LabelParts`].
///
/// Each label carries a hash of its parts, computed once when it is made: hash maps keyed by
/// labels (the loader's and the analysis's, 100,000 entries) hash one number instead of two
/// strings, and two labels with different hashes are unequal without comparing them.
#[derive(Clone)]
pub struct Label(std::sync::Arc<LabelParts>);

/// The parts of a [`Label`]; compared (and ordered) package first, then name.
#[derive(Clone, Debug)]
pub struct LabelParts {
    pub package: String,
    pub name: String,
    /// [`parts_hash`] of the two.
    hash: u64,
}

/// A hash of a label's parts, the same in every process (labels are hashed into maps only,
/// never into anything stored).
fn parts_hash(package: &str, name: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = rustc_hash::FxHasher::default();
    package.hash(&mut h);
    name.hash(&mut h);
    h.finish()
}

impl PartialEq for Label {
    fn eq(&self, other: &Label) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
            || (self.0.hash == other.0.hash
                && self.0.name == other.0.name
                && self.0.package == other.0.package)
    }
}

impl Eq for Label {}

impl std::hash::Hash for Label {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.0.hash);
    }
}

impl Ord for Label {
    fn cmp(&self, other: &Label) -> std::cmp::Ordering {
        if std::sync::Arc::ptr_eq(&self.0, &other.0) {
            return std::cmp::Ordering::Equal;
        }
        (&self.0.package, &self.0.name).cmp(&(&other.0.package, &other.0.name))
    }
}

impl PartialOrd for Label {
    fn partial_cmp(&self, other: &Label) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Default for Label {
    fn default() -> Label {
        Label::new(String::new(), String::new())
    }
}

impl std::ops::Deref for Label {
    type Target = LabelParts;
    fn deref(&self) -> &LabelParts {
        &self.0
    }
}

impl fmt::Debug for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl Label {
    /// The label `//package:name` (both already checked).
    pub fn new(package: impl Into<String>, name: impl Into<String>) -> Label {
        let (package, name) = (package.into(), name.into());
        let hash = parts_hash(&package, &name);
        Label(std::sync::Arc::new(LabelParts {
            package,
            name,
            hash,
        }))
    }

    /// Parses `//a/b:c`, `//a/b` (= `//a/b:b`), `:c` or `c` (both relative to `current_package`).
    pub fn parse(s: &str, current_package: &str) -> Result<Label, GraphError> {
        let (package, name) = Label::parse_parts(s, current_package)?;
        Ok(Label::new(package, name))
    }

    /// The package and name [`Label::parse`] finds in `s`, checked the same, borrowed (no label
    /// is made: analysis compares every `$(location)` argument with the target's sources).
    pub(crate) fn parse_parts<'s>(
        s: &'s str,
        current_package: &'s str,
    ) -> Result<(&'s str, &'s str), GraphError> {
        let bad = |reason: &str| GraphError::InvalidLabel {
            label: s.to_owned(),
            reason: reason.to_owned(),
        };
        if s.is_empty() {
            return Err(bad("a label must not be empty"));
        }
        if s.starts_with('@') {
            return Err(bad(
                "external repositories ('@repo//...') are not supported; use '//pkg:name'",
            ));
        }
        let (package, name) = if let Some(rest) = s.strip_prefix("//") {
            match rest.split_once(':') {
                Some((pkg, name)) => (pkg, name),
                None => {
                    if rest.is_empty() {
                        return Err(bad(
                            "'//' names the root package, which has no name; write '//:name'",
                        ));
                    }
                    let last = rest.rsplit('/').next().unwrap_or(rest);
                    (rest, last)
                }
            }
        } else if let Some(name) = s.strip_prefix(':') {
            (current_package, name)
        } else if s.contains(':') {
            return Err(bad(
                "a relative label is ':name' or 'name'; to name another package write '//pkg:name'",
            ));
        } else {
            (current_package, s)
        };
        if !package.is_empty() {
            check_rel_path(package).map_err(|e| bad(&format!("package '{package}': {e}")))?;
        }
        if name.is_empty() {
            return Err(bad("the target name after ':' must not be empty"));
        }
        if name.contains(':') {
            return Err(bad("a label contains at most one ':'"));
        }
        check_rel_path(name).map_err(|e| bad(&format!("name '{name}': {e}")))?;
        Ok((package, name))
    }

    /// Whether `other` is this very label (one allocation), not an equal copy.
    #[cfg(test)]
    pub(crate) fn shares(&self, other: &Label) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }

    /// Workspace path of the file this label names, if it names a file (`pkg/name`).
    pub fn path(&self) -> String {
        join(&self.package, &self.name)
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "//{}:{}", self.package, self.name)
    }
}

impl FromStr for Label {
    type Err = GraphError;
    /// Parses an absolute label (relative labels are taken to be in the root package).
    fn from_str(s: &str) -> Result<Label, GraphError> {
        Label::parse(s, "")
    }
}

/// `//pkg:name` in text formats (JSON), parsed and checked when read. In binary formats,
/// whose only use is wbuild's own analysis cache (written from labels checked when they were
/// parsed), the package and the name as they are: checking them again cost about 3 ms per
/// 10,000 actions on every build that reads the cache.
impl serde::Serialize for Label {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            serde::Serialize::serialize(&(&self.package, &self.name), s)
        }
    }
}

impl<'de> serde::Deserialize<'de> for Label {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Label, D::Error> {
        if d.is_human_readable() {
            let s = <String as serde::Deserialize>::deserialize(d)?;
            Label::parse(&s, "").map_err(serde::de::Error::custom)
        } else {
            let (package, name) = <(String, String) as serde::Deserialize>::deserialize(d)?;
            Ok(Label::new(package, name))
        }
    }
}

/// What to build or test, as given on the command line.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum TargetPattern {
    /// One target (or an output file, which stands for the target that produces it).
    /// As in Bazel, `//pkg:all` (or `:*`) means every target of `pkg` unless a target is
    /// named `all`.
    Label(Label),
    /// Every target in every package under this package prefix (`""` = the whole workspace).
    Recursive(String),
}

impl TargetPattern {
    /// Parses `//...`, `//pkg/...`, `//pkg:x`, `//pkg`, `:x`, `x`, and the relative forms
    /// `...`, `sub/...` and `sub:x` (relative to `current_package`, as on Bazel's command line).
    pub fn parse(s: &str, current_package: &str) -> Result<TargetPattern, GraphError> {
        let bad = |reason: &str| GraphError::InvalidPattern {
            pattern: s.to_owned(),
            reason: reason.to_owned(),
        };
        // Bazel spells "all targets below" also as `//pkg/...:all` and `//pkg/...:*`.
        let base = s
            .strip_suffix(":all")
            .or_else(|| s.strip_suffix(":*"))
            .or_else(|| s.strip_suffix(":all-targets"))
            .filter(|b| b.ends_with("..."))
            .unwrap_or(s);
        let recursive_prefix = if base == "//..." {
            Some(String::new())
        } else if let Some(p) = base.strip_prefix("//").and_then(|r| r.strip_suffix("/...")) {
            Some(p.to_owned())
        } else if base == "..." {
            Some(current_package.to_owned())
        } else if !base.starts_with("//") {
            base.strip_suffix("/...").map(|p| join(current_package, p))
        } else {
            None
        };
        if let Some(prefix) = recursive_prefix {
            if !prefix.is_empty() {
                check_rel_path(&prefix).map_err(|e| bad(&format!("package '{prefix}': {e}")))?;
            }
            return Ok(TargetPattern::Recursive(prefix));
        }
        if s.contains("...") && !s.contains(':') {
            return Err(bad(
                "'...' must be the last path component, as in '//pkg/...'",
            ));
        }
        if !s.starts_with("//")
            && !s.starts_with(':')
            && let Some((pkg, name)) = s.split_once(':')
        {
            // `sub:x` relative to the current directory.
            let abs = format!("//{}:{}", join(current_package, pkg), name);
            return Label::parse(&abs, current_package)
                .map(TargetPattern::Label)
                .map_err(|e| bad(&e.to_string()));
        }
        Label::parse(s, current_package)
            .map(TargetPattern::Label)
            .map_err(|e| match e {
                GraphError::InvalidLabel { reason, .. } => bad(&reason),
                other => other,
            })
    }
}

impl fmt::Display for TargetPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetPattern::Label(l) => l.fmt(f),
            TargetPattern::Recursive(p) if p.is_empty() => f.write_str("//..."),
            TargetPattern::Recursive(p) => write!(f, "//{p}/..."),
        }
    }
}

/// Joins a package and a package-relative path into a workspace path.
pub(crate) fn join(package: &str, rel: &str) -> String {
    if package.is_empty() {
        rel.to_owned()
    } else if rel.is_empty() {
        package.to_owned()
    } else {
        let mut path = String::with_capacity(package.len() + 1 + rel.len());
        path.push_str(package);
        path.push('/');
        path.push_str(rel);
        path
    }
}

/// Whether `path` is [`join`]`(package, rel)`, without making it.
pub(crate) fn is_join(path: &str, package: &str, rel: &str) -> bool {
    if package.is_empty() {
        path == rel
    } else if rel.is_empty() {
        path == package
    } else {
        path.len() == package.len() + 1 + rel.len()
            && path.starts_with(package)
            && path.as_bytes()[package.len()] == b'/'
            && path.ends_with(rel)
    }
}

/// Checks that `p` is a normalised relative `/`-separated path: not empty, no leading or
/// trailing `/`, no empty, `.` or `..` components, no NUL or newline.
pub(crate) fn check_rel_path(p: &str) -> Result<(), String> {
    if p.is_empty() {
        return Err("path is empty".to_owned());
    }
    if p.starts_with('/') {
        return Err("must be relative (no leading '/')".to_owned());
    }
    if p.contains(['\0', '\n', '\r']) {
        return Err("contains a control character".to_owned());
    }
    for c in p.split('/') {
        match c {
            "" => return Err("contains an empty path component ('//' or a trailing '/')".into()),
            "." | ".." => {
                return Err(format!(
                    "contains a '{c}' component; write a normalised path"
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// The package-relative part of `path` if it lies inside `package`.
pub(crate) fn strip_package<'a>(path: &'a str, package: &str) -> Option<&'a str> {
    if package.is_empty() {
        Some(path)
    } else {
        path.strip_prefix(package)?.strip_prefix('/')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_compare_and_hash_by_their_parts_not_by_their_allocation() {
        use std::hash::BuildHasher;
        let fx = |l: &Label| rustc_hash::FxBuildHasher.hash_one(l);
        // Equal parts made apart: equal, the same hash in any map, ordered equal.
        let (a, b) = (l("a/b", "c"), Label::parse("//a/b:c", "").unwrap());
        assert!(!a.shares(&b));
        assert_eq!(a, b);
        assert_eq!(fx(&a), fx(&b));
        assert_eq!(a.cmp(&b), std::cmp::Ordering::Equal);
        let state = std::collections::hash_map::RandomState::new();
        assert_eq!(state.hash_one(&a), state.hash_one(&b));
        // The same path split differently is another label; so is a name moved to the package.
        for (p, n) in [("a", "b/c"), ("a/b/c", "c"), ("a/b", "d"), ("", "a/b:c")] {
            let other = l(p, n);
            assert_ne!(a, other, "//{p}:{n}");
            assert_ne!(a.cmp(&other), std::cmp::Ordering::Equal, "//{p}:{n}");
        }
        // Ordered by package, then name, as the parts are.
        let mut labels = [
            l("b", "a"),
            l("a/b", "c"),
            l("a", "z"),
            l("", "x"),
            l("a", "b"),
        ];
        labels.sort();
        let parts: Vec<(&str, &str)> = labels
            .iter()
            .map(|l| (l.package.as_str(), l.name.as_str()))
            .collect();
        assert_eq!(
            parts,
            [("", "x"), ("a", "b"), ("a", "z"), ("a/b", "c"), ("b", "a")]
        );
        // A map finds a label by an equal one made apart.
        let map: std::collections::HashMap<Label, u32> = [(a.clone(), 1)].into_iter().collect();
        assert_eq!(map.get(&b), Some(&1));
        assert_eq!(map.get(&l("a", "b/c")), None);
    }

    #[test]
    fn labels_are_text_in_json_checked_when_read_and_parts_in_the_analysis_cache() {
        let label = l("a/b", "c");
        let json = serde_json::to_string(&label).unwrap();
        assert_eq!(json, "\"//a/b:c\"");
        assert_eq!(serde_json::from_str::<Label>(&json).unwrap(), label);
        assert!(serde_json::from_str::<Label>("\"//a/../b:c\"").is_err());
        let bin = postcard::to_stdvec(&label).unwrap();
        assert_eq!(postcard::from_bytes::<Label>(&bin).unwrap(), label);
        assert_eq!(
            postcard::from_bytes::<(String, String)>(&bin).unwrap(),
            ("a/b".to_owned(), "c".to_owned())
        );
    }

    fn l(p: &str, n: &str) -> Label {
        Label::new(p, n)
    }

    #[test]
    fn parse_labels() {
        assert_eq!(Label::parse("//a/b:c", "x").unwrap(), l("a/b", "c"));
        assert_eq!(Label::parse("//a/b", "x").unwrap(), l("a/b", "b"));
        assert_eq!(Label::parse("//:c", "x").unwrap(), l("", "c"));
        assert_eq!(Label::parse(":c", "x/y").unwrap(), l("x/y", "c"));
        assert_eq!(Label::parse("c", "x").unwrap(), l("x", "c"));
        assert_eq!(Label::parse("sub/f.txt", "").unwrap(), l("", "sub/f.txt"));
        assert_eq!(
            Label::parse("//a:sub/f.txt", "").unwrap(),
            l("a", "sub/f.txt")
        );
        assert_eq!(l("a/b", "c").to_string(), "//a/b:c");
        assert_eq!(l("", "c").to_string(), "//:c");
        assert_eq!(l("a", "d/e").path(), "a/d/e");
        assert_eq!(l("", "e").path(), "e");
        assert_eq!("//a:b".parse::<Label>().unwrap(), l("a", "b"));
    }

    /// `is_join` says what comparing with `join` says, for every way a path can fail to be one.
    #[test]
    fn a_path_is_a_join_exactly_when_join_makes_it() {
        let parts = ["", "a", "ab", "a/b", "b", "a/"];
        let paths = [
            "", "a", "b", "ab", "a/b", "a/a", "a/ab", "ab/b", "a/b/b", "a//b", "a/",
        ];
        for package in parts {
            for rel in parts {
                for path in paths {
                    assert_eq!(
                        is_join(path, package, rel),
                        join(package, rel) == path,
                        "{path:?} as {package:?} joined with {rel:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn reject_bad_labels() {
        for bad in [
            "", "//", "//a:", "//a/:b", "//a//b:c", "//../a:b", "//a:../b", "//a:b:c", "a:b",
            "@r//a:b", "//a:./b", ":", "//a:b/",
        ] {
            let err = Label::parse(bad, "p").unwrap_err();
            assert!(
                matches!(err, GraphError::InvalidLabel { .. }),
                "{bad}: {err:?}"
            );
            assert!(err.to_string().contains(bad), "{err}");
        }
    }

    #[test]
    fn parse_patterns() {
        use TargetPattern::*;
        let p = |s: &str, cur: &str| TargetPattern::parse(s, cur).unwrap();
        assert_eq!(p("//...", "x"), Recursive("".into()));
        assert_eq!(p("//a/b/...", "x"), Recursive("a/b".into()));
        assert_eq!(p("//a/...:all", "x"), Recursive("a".into()));
        assert_eq!(p("...", "x"), Recursive("x".into()));
        assert_eq!(p("...", ""), Recursive("".into()));
        assert_eq!(p("sub/...", "x"), Recursive("x/sub".into()));
        assert_eq!(p("//a:x", "q"), Label(l("a", "x")));
        assert_eq!(p("//a", "q"), Label(l("a", "a")));
        assert_eq!(p(":x", "q"), Label(l("q", "x")));
        assert_eq!(p("x", "q"), Label(l("q", "x")));
        assert_eq!(p("sub:x", "q"), Label(l("q/sub", "x")));
        assert_eq!(p("sub:x", ""), Label(l("sub", "x")));
        assert_eq!(p("//a/...", "").to_string(), "//a/...");
        assert_eq!(p("//...", "").to_string(), "//...");
        for bad in ["//a/.../b", "//../...", "", "//a::b", "//a/:x"] {
            let err = TargetPattern::parse(bad, "").unwrap_err();
            assert!(
                matches!(err, GraphError::InvalidPattern { .. }),
                "{bad}: {err:?}"
            );
        }
    }

    #[test]
    fn rel_paths() {
        assert!(check_rel_path("a/b.c").is_ok());
        assert!(check_rel_path("a/../b").is_err());
        assert!(check_rel_path("/a").is_err());
        assert!(check_rel_path("a/").is_err());
        assert!(check_rel_path("./a").is_err());
        assert_eq!(strip_package("a/b/c", "a"), Some("b/c"));
        assert_eq!(strip_package("ab/c", "a"), None);
        assert_eq!(strip_package("c", ""), Some("c"));
        assert_eq!(join("", "x"), "x");
        assert_eq!(join("p", "x"), "p/x");
    }
}
