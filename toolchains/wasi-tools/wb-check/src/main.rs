//! wb-check: assertions for `wasi_test` targets.
//!
//! ```text
//! wb-check file-contains FILE TEXT
//! wb-check tar-contains ARCHIVE NAME...
//! wb-check files-equal A B
//! wb-check nonempty FILE...
//! ```
//!
//! Exits 0 when the assertion holds; otherwise prints what failed (the file, what was
//! expected and what was found) to stderr and exits 1. All file access goes through
//! `wbuild-sdk`.
//!
//! It must never write a file: a test only reads its inputs.

#![forbid(unsafe_code)]

// The ustar reader is shared with wb-tar without a dependency between the tools (a tool may
// depend on nothing but wbuild-sdk).
#[path = "../../wb-tar/src/ustar.rs"]
#[allow(dead_code)] // the encoder is only used by wb-tar (and by the tests here)
mod ustar;

use wbuild_sdk::{self as sdk, OrFail};

const USAGE: &str = "usage: wb-check file-contains FILE TEXT
       wb-check tar-contains ARCHIVE NAME...
       wb-check files-equal A B
       wb-check nonempty FILE...";

/// How many lines of a file to show when a check fails.
const EXCERPT_LINES: usize = 20;
/// Longest line shown in an excerpt.
const EXCERPT_WIDTH: usize = 200;

fn truncate(line: &str) -> String {
    if line.chars().count() > EXCERPT_WIDTH {
        let cut: String = line.chars().take(EXCERPT_WIDTH).collect();
        format!("{cut}...")
    } else {
        line.to_string()
    }
}

/// The first lines of `bytes`, indented, for a failure report.
fn excerpt(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "    (empty file)".to_string();
    }
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().collect();
    let mut out: Vec<String> = lines
        .iter()
        .take(EXCERPT_LINES)
        .map(|l| format!("    | {}", truncate(l)))
        .collect();
    if lines.len() > EXCERPT_LINES {
        out.push(format!(
            "    ... ({} more lines)",
            lines.len() - EXCERPT_LINES
        ));
    }
    out.join("\n")
}

fn file_contains(file: &str, content: &[u8], text: &str) -> Result<(), String> {
    let needle = text.as_bytes();
    if needle.is_empty() || content.windows(needle.len()).any(|w| w == needle) {
        return Ok(());
    }
    Err(format!(
        "file-contains failed\n  file:     {file}\n  expected: to contain {text:?}\n  found:    {} bytes without it:\n{}",
        content.len(),
        excerpt(content)
    ))
}

fn tar_contains(archive: &str, bytes: &[u8], names: &[String]) -> Result<(), String> {
    let entries = ustar::decode(bytes).map_err(|e| {
        format!(
            "tar-contains failed\n  file:     {archive}\n  expected: a tar archive\n  found:    {e}"
        )
    })?;
    let present: Vec<&str> = entries
        .iter()
        .map(|e| e.name.trim_end_matches('/'))
        .collect();
    let missing: Vec<&str> = names
        .iter()
        .map(|n| n.as_str())
        .filter(|n| !present.contains(&n.trim_end_matches('/')))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let found = if present.is_empty() {
        "    (no entries)".to_string()
    } else {
        present
            .iter()
            .map(|n| format!("    {n}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    Err(format!(
        "tar-contains failed\n  file:     {archive}\n  expected: entries {}\n  missing:  {}\n  found:    {} entries:\n{found}",
        names.join(", "),
        missing.join(", "),
        present.len()
    ))
}

fn files_equal(a: &str, a_bytes: &[u8], b: &str, b_bytes: &[u8]) -> Result<(), String> {
    if a_bytes == b_bytes {
        return Ok(());
    }
    let first_diff = a_bytes
        .iter()
        .zip(b_bytes)
        .position(|(x, y)| x != y)
        .unwrap_or(a_bytes.len().min(b_bytes.len()));
    let line_no = a_bytes[..first_diff]
        .iter()
        .filter(|&&c| c == b'\n')
        .count()
        + 1;
    let line_of = |bytes: &[u8]| -> String {
        let text = String::from_utf8_lossy(bytes);
        match text.lines().nth(line_no - 1) {
            Some(l) => format!("{:?}", truncate(l)),
            None => "(end of file)".to_string(),
        }
    };
    Err(format!(
        "files-equal failed\n  files:    {a} ({} bytes) and {b} ({} bytes) differ\n  first difference at byte {first_diff}, line {line_no}:\n  expected ({a}): {}\n  found    ({b}): {}",
        a_bytes.len(),
        b_bytes.len(),
        line_of(a_bytes),
        line_of(b_bytes)
    ))
}

fn nonempty(file: &str, content: Result<Vec<u8>, std::io::Error>) -> Result<(), String> {
    match content {
        Ok(bytes) if !bytes.is_empty() => Ok(()),
        Ok(_) => Err(format!(
            "nonempty failed\n  file:     {file}\n  expected: at least 1 byte\n  found:    an empty file"
        )),
        Err(e) => Err(format!(
            "nonempty failed\n  file:     {file}\n  expected: a non-empty file\n  found:    {e}"
        )),
    }
}

fn usage_error(msg: &str) -> ! {
    sdk::fail(format!("{msg}\n{USAGE}"))
}

fn main() {
    let args = sdk::args();
    let Some((check, rest)) = args.split_first() else {
        usage_error("no check given");
    };
    let result = match (check.as_str(), rest) {
        ("-h" | "--help", _) => {
            println!("{USAGE}");
            return;
        }
        ("file-contains", [file, text]) => file_contains(file, &sdk::read(file).or_fail(), text),
        ("file-contains", _) => usage_error("file-contains takes FILE TEXT"),
        ("tar-contains", [archive, names @ ..]) if !names.is_empty() => {
            tar_contains(archive, &sdk::read(archive).or_fail(), names)
        }
        ("tar-contains", _) => usage_error("tar-contains takes ARCHIVE NAME..."),
        ("files-equal", [a, b]) => {
            files_equal(a, &sdk::read(a).or_fail(), b, &sdk::read(b).or_fail())
        }
        ("files-equal", _) => usage_error("files-equal takes A B"),
        ("nonempty", files) if !files.is_empty() => {
            let failures: Vec<String> = files
                .iter()
                .filter_map(|f| nonempty(f, sdk::read(f)).err())
                .collect();
            if failures.is_empty() {
                Ok(())
            } else {
                // One report per file, each prefixed like the first one.
                Err(failures.join(&format!("\n{}: ", sdk::program_name())))
            }
        }
        ("nonempty", _) => usage_error("nonempty takes FILE..."),
        (other, _) => usage_error(&format!("unknown check {other:?}")),
    };
    if let Err(report) = result {
        sdk::fail(report);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_contains_reports_file_expected_and_found() {
        assert!(file_contains("a.h", b"#define X 1\n", "X 1").is_ok());
        let e = file_contains("gen/a.h", b"line one\nline two\n", "#define Y").unwrap_err();
        assert!(e.contains("file:     gen/a.h"), "{e}");
        assert!(e.contains("expected: to contain \"#define Y\""), "{e}");
        assert!(e.contains("    | line two"), "{e}");
    }

    #[test]
    fn excerpt_is_bounded() {
        let big: String = (0..100).map(|i| format!("{i}\n")).collect();
        let ex = excerpt(big.as_bytes());
        assert_eq!(ex.lines().count(), EXCERPT_LINES + 1);
        assert!(ex.ends_with("(80 more lines)"), "{ex}");
        assert_eq!(excerpt(b""), "    (empty file)");
    }

    #[test]
    fn tar_contains_lists_missing_and_present_entries() {
        let bytes = ustar::encode(
            vec![
                ustar::FileEntry {
                    name: "config.h".into(),
                    data: b"x".to_vec(),
                },
                ustar::FileEntry {
                    name: "docs/a.md".into(),
                    data: vec![],
                },
            ],
            0,
        )
        .unwrap();
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(tar_contains("d.tar", &bytes, &names(&["docs/a.md", "config.h"])).is_ok());
        let e = tar_contains("d.tar", &bytes, &names(&["config.h", "version.c"])).unwrap_err();
        assert!(e.contains("missing:  version.c"), "{e}");
        assert!(e.contains("    docs/a.md"), "{e}");
        let e = tar_contains("x.tar", b"garbage", &names(&["a"])).unwrap_err();
        assert!(e.contains("expected: a tar archive"), "{e}");
    }

    #[test]
    fn files_equal_points_at_first_difference() {
        assert!(files_equal("a", b"same\n", "b", b"same\n").is_ok());
        let e = files_equal("want.h", b"l1\nl2\nl3\n", "got.h", b"l1\nL2\nl3\n").unwrap_err();
        assert!(e.contains("line 2"), "{e}");
        assert!(e.contains("expected (want.h): \"l2\""), "{e}");
        assert!(e.contains("found    (got.h): \"L2\""), "{e}");
        let e = files_equal("a", b"l1\n", "b", b"l1\nextra\n").unwrap_err();
        assert!(e.contains("line 2"), "{e}");
        assert!(e.contains("(end of file)"), "{e}");
    }

    #[test]
    fn nonempty_reports_empty_and_missing_files() {
        assert!(nonempty("a", Ok(b"x".to_vec())).is_ok());
        assert!(
            nonempty("a", Ok(vec![]))
                .unwrap_err()
                .contains("an empty file")
        );
        let missing = nonempty(
            "gone",
            Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "cannot read gone: No such file",
            )),
        )
        .unwrap_err();
        assert!(missing.contains("file:     gone"), "{missing}");
        assert!(missing.contains("No such file"), "{missing}");
    }
}
