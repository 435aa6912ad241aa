//! `glob()` for WBUILD files: package-relative patterns matched against the real directory
//! tree. Only directory listings and file types are read, never file contents.

use std::path::Path;

use crate::workspace::{BUILD_FILE, OUT_DIR};

/// One `/`-separated component of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// `**`: zero or more directories.
    AnyDirs,
    /// A name with `*` (any characters) and `?` (one character) wildcards.
    Name(String),
}

#[derive(Debug, Clone)]
struct Pattern(Vec<Segment>);

impl Pattern {
    fn parse(p: &str) -> Result<Pattern, String> {
        if p.is_empty() {
            return Err("empty glob pattern".into());
        }
        if p.starts_with('/') {
            return Err(format!(
                "glob pattern '{p}' must be relative to the package (no leading '/')"
            ));
        }
        let mut segs = Vec::new();
        for c in p.split('/') {
            match c {
                "" => return Err(format!("glob pattern '{p}' has an empty path component")),
                "." | ".." => {
                    return Err(format!(
                        "glob pattern '{p}' must not contain '{c}'; globs never leave their package"
                    ));
                }
                "**" => {
                    if segs.last() != Some(&Segment::AnyDirs) {
                        segs.push(Segment::AnyDirs);
                    }
                }
                c if c.contains("**") => {
                    return Err(format!(
                        "glob pattern '{p}': '**' must be a whole path component, as in 'a/**/b'"
                    ));
                }
                c => segs.push(Segment::Name(c.to_owned())),
            }
        }
        Ok(Pattern(segs))
    }

    fn matches(&self, path: &[&str]) -> bool {
        match_segments(&self.0, path)
    }
}

fn match_segments(pat: &[Segment], path: &[&str]) -> bool {
    match pat.split_first() {
        None => path.is_empty(),
        Some((Segment::AnyDirs, rest)) => {
            (0..=path.len()).any(|i| match_segments(rest, &path[i..]))
        }
        Some((Segment::Name(p), rest)) => {
            !path.is_empty() && match_name(p, path[0]) && match_segments(rest, &path[1..])
        }
    }
}

/// Shell-style match of one component. A leading `.` is only matched by a literal `.`.
fn match_name(pat: &str, name: &str) -> bool {
    if name.starts_with('.') && !pat.starts_with('.') {
        return false;
    }
    let p: Vec<char> = pat.chars().collect();
    let n: Vec<char> = name.chars().collect();
    // Iterative wildcard matching with backtracking on the last '*'.
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// Whether the walk skips the directory `name`: hidden directories, `target/` and `wbuild-out/`.
pub(crate) fn skip_dir(name: &str) -> bool {
    name.starts_with('.') || name == "target" || name == OUT_DIR
}

/// Lists files under `pkg_dir` (package-relative, `/`-separated), not descending into
/// sub-packages, hidden directories, `target/` or `wbuild-out/`. Symlinks to files count as
/// files; symlinks to directories are not followed.
fn list_package_files(pkg_dir: &Path) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut stack = vec![(pkg_dir.to_path_buf(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
            let Ok(name) = entry.file_name().into_string() else {
                continue; // Not representable in a label.
            };
            let path = entry.path();
            let ft = entry
                .file_type()
                .map_err(|e| format!("{}: {e}", path.display()))?;
            let child = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            if ft.is_dir() {
                if !skip_dir(&name) && !path.join(BUILD_FILE).is_file() {
                    stack.push((path, child));
                }
            } else if ft.is_file() || (ft.is_symlink() && path.is_file()) {
                out.push(child);
            }
        }
    }
    Ok(out)
}

/// Evaluates `glob(include, exclude)` in the package directory `pkg_dir`: the sorted
/// package-relative paths of files matching some `include` and no `exclude` pattern.
pub(crate) fn glob(
    pkg_dir: &Path,
    include: &[String],
    exclude: &[String],
) -> Result<Vec<String>, String> {
    let include = include
        .iter()
        .map(|p| Pattern::parse(p))
        .collect::<Result<Vec<_>, _>>()?;
    let exclude = exclude
        .iter()
        .map(|p| Pattern::parse(p))
        .collect::<Result<Vec<_>, _>>()?;
    if include.is_empty() {
        return Ok(Vec::new());
    }
    let mut files: Vec<String> = list_package_files(pkg_dir)?
        .into_iter()
        .filter(|f| {
            let parts: Vec<&str> = f.split('/').collect();
            include.iter().any(|p| p.matches(&parts)) && !exclude.iter().any(|p| p.matches(&parts))
        })
        .collect();
    files.sort();
    files.dedup();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(match_name("*", "a.c"));
        assert!(match_name("*.c", "a.c"));
        assert!(!match_name("*.c", "a.h"));
        assert!(match_name("a?c", "abc"));
        assert!(match_name("*a*b*", "xxaxxbxx"));
        assert!(!match_name("*", ".hidden"));
        assert!(match_name(".*", ".hidden"));
        assert!(match_name("", "") && !match_name("", "a"));
    }

    #[test]
    fn patterns() {
        let m = |p: &str, path: &str| {
            Pattern::parse(p)
                .unwrap()
                .matches(&path.split('/').collect::<Vec<_>>())
        };
        assert!(m("**/*.c", "a.c"));
        assert!(m("**/*.c", "x/y/a.c"));
        assert!(m("x/**", "x/y/a.c"));
        assert!(m("x/**/a.c", "x/a.c"));
        assert!(!m("*.c", "x/a.c"));
        assert!(m("**", "x/a.c"));
        assert!(Pattern::parse("../a").is_err());
        assert!(Pattern::parse("/a").is_err());
        assert!(Pattern::parse("a**").is_err());
        assert!(Pattern::parse("a//b").is_err());
    }

    #[test]
    fn glob_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        for f in [
            "a.c",
            "b.c",
            "b.h",
            "sub/c.c",
            "sub/deep/d.c",
            "subpkg/WBUILD",
            "subpkg/e.c",
            ".git/f.c",
            "target/g.c",
            "wbuild-out/h.c",
            ".hidden.c",
        ] {
            let p = d.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, "").unwrap();
        }
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            glob(d, &s(&["**/*.c"]), &[]).unwrap(),
            s(&["a.c", "b.c", "sub/c.c", "sub/deep/d.c"])
        );
        assert_eq!(
            glob(d, &s(&["**/*.c", "*.h"]), &s(&["sub/**"])).unwrap(),
            s(&["a.c", "b.c", "b.h"])
        );
        assert_eq!(glob(d, &s(&["*.c"]), &s(&["a.*"])).unwrap(), s(&["b.c"]));
        assert_eq!(glob(d, &s(&[".*.c"]), &[]).unwrap(), s(&[".hidden.c"]));
        assert!(glob(d, &s(&["subpkg/*"]), &[]).unwrap().is_empty());
        assert!(glob(d, &s(&["../x"]), &[]).is_err());
    }
}
