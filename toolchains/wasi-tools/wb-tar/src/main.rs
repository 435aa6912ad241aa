//! wb-tar: writes deterministic ustar archives and lists them.
//!
//! ```text
//! wb-tar -o OUT.tar [--strip-prefix P]... FILE...
//! wb-tar --list ARCHIVE
//! ```
//!
//! Entries are the FILEs, named by their path with the first matching `--strip-prefix`
//! directory removed (files under no given prefix keep their path), sorted by name; mode 0644,
//! uid/gid 0, empty uname/gname, mtime `$SOURCE_DATE_EPOCH` (0 if unset); the archive ends
//! with two zero blocks. The same inputs always give the same bytes. All file access goes
//! through `wbuild-sdk`.
//!
//! It must never let the archive depend on anything but the input bytes, their names and
//! `$SOURCE_DATE_EPOCH` (no host mtimes, owners, modes or input order).

#![forbid(unsafe_code)]

mod ustar;

use wbuild_sdk::{self as sdk, OrFail};

const USAGE: &str =
    "usage: wb-tar -o OUT.tar [--strip-prefix P]... FILE...\n       wb-tar --list ARCHIVE";

#[derive(Debug, PartialEq, Eq)]
enum Command {
    Help,
    List(String),
    Create {
        output: String,
        strip_prefixes: Vec<String>,
        files: Vec<String>,
    },
}

fn parse_args(args: &[String]) -> Result<Command, String> {
    let mut output = None;
    let mut list = None;
    let mut strip_prefixes = Vec::new();
    let mut files = Vec::new();
    let mut it = args.iter();
    let mut only_files = false;
    while let Some(arg) = it.next() {
        if only_files {
            files.push(arg.clone());
            continue;
        }
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = |name: &str| -> Result<String, String> {
            match inline.clone() {
                Some(v) => Ok(v),
                None => it.next().cloned().ok_or(format!("{name} needs a value")),
            }
        };
        match flag {
            "-h" | "--help" => return Ok(Command::Help),
            "-o" | "--output" => {
                if output.is_some() {
                    return Err("-o given twice".to_string());
                }
                output = Some(value("-o")?);
            }
            "--strip-prefix" => strip_prefixes.push(value("--strip-prefix")?),
            "--list" | "-t" => list = Some(value("--list")?),
            "--" => only_files = true,
            _ if flag.starts_with('-') && flag.len() > 1 => {
                return Err(format!("unknown option {arg:?}"));
            }
            _ => files.push(arg.clone()),
        }
    }
    match (list, output) {
        (Some(archive), None) if files.is_empty() && strip_prefixes.is_empty() => {
            Ok(Command::List(archive))
        }
        (Some(_), _) => Err("--list takes exactly one ARCHIVE and no other options".to_string()),
        (None, None) => Err("no output given (-o OUT.tar)".to_string()),
        (None, Some(output)) => {
            if files.is_empty() {
                return Err("no input FILEs given".to_string());
            }
            Ok(Command::Create {
                output,
                strip_prefixes,
                files,
            })
        }
    }
}

/// The archive name of `path`: the first prefix that is a directory above it is removed.
fn entry_name(path: &str, strip_prefixes: &[String]) -> String {
    let path = path.strip_prefix("./").unwrap_or(path);
    for prefix in strip_prefixes {
        let prefix = prefix.trim_end_matches('/');
        if prefix.is_empty() {
            continue;
        }
        if let Some(rest) = path.strip_prefix(prefix).and_then(|r| r.strip_prefix('/'))
            && !rest.is_empty()
        {
            return rest.to_string();
        }
    }
    path.to_string()
}

/// `$SOURCE_DATE_EPOCH` as a tar mtime; unset means 0.
fn mtime_from(value: Option<&str>) -> Result<u64, String> {
    let Some(v) = value else { return Ok(0) };
    let secs: u64 = v.trim().parse().map_err(|_| {
        format!("SOURCE_DATE_EPOCH={v:?} is not a non-negative integer (seconds since 1970)")
    })?;
    if secs > ustar::MAX_OCTAL_11 {
        return Err(format!(
            "SOURCE_DATE_EPOCH={secs} is too large for a ustar header (max {})",
            ustar::MAX_OCTAL_11
        ));
    }
    Ok(secs)
}

fn main() {
    let command = parse_args(&sdk::args()).unwrap_or_else(|e| sdk::fail(format!("{e}\n{USAGE}")));
    match command {
        Command::Help => println!("{USAGE}"),
        Command::List(archive) => {
            let bytes = sdk::read(&archive).or_fail();
            let entries = ustar::decode(&bytes)
                .unwrap_or_else(|e| sdk::fail(format!("cannot list {archive}: {e}")));
            for e in entries {
                println!("{}", e.name);
            }
        }
        Command::Create {
            output,
            strip_prefixes,
            files,
        } => {
            let mtime = mtime_from(sdk::env("SOURCE_DATE_EPOCH").as_deref()).or_fail();
            let mut entries = Vec::with_capacity(files.len());
            for file in &files {
                let name = entry_name(file, &strip_prefixes);
                ustar::check_name(&name)
                    .unwrap_or_else(|e| sdk::fail(format!("input {file:?}: {e}")));
                entries.push(ustar::FileEntry {
                    name,
                    data: sdk::read(file).or_fail(),
                });
            }
            let bytes = ustar::encode(entries, mtime)
                .unwrap_or_else(|e| sdk::fail(format!("cannot write {output}: {e}")));
            sdk::write(&output, &bytes).or_fail();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<String> {
        s.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn parses_create_and_list() {
        assert_eq!(
            parse_args(&args(&[
                "-o",
                "pack/dist.tar",
                "--strip-prefix",
                "gen",
                "--strip-prefix=pack/",
                "gen/a.h",
                "pack/docs/x.md"
            ]))
            .unwrap(),
            Command::Create {
                output: "pack/dist.tar".into(),
                strip_prefixes: vec!["gen".into(), "pack/".into()],
                files: vec!["gen/a.h".into(), "pack/docs/x.md".into()],
            }
        );
        assert_eq!(
            parse_args(&args(&["--list", "a.tar"])).unwrap(),
            Command::List("a.tar".into())
        );
        assert_eq!(
            parse_args(&args(&["-o", "o.tar", "--", "-weird"])).unwrap(),
            Command::Create {
                output: "o.tar".into(),
                strip_prefixes: vec![],
                files: vec!["-weird".into()],
            }
        );
    }

    #[test]
    fn rejects_bad_command_lines() {
        assert!(parse_args(&args(&["a"])).unwrap_err().contains("-o"));
        assert!(
            parse_args(&args(&["-o", "x.tar"]))
                .unwrap_err()
                .contains("no input")
        );
        assert!(parse_args(&args(&["--list", "a.tar", "b"])).is_err());
        assert!(
            parse_args(&args(&["--bogus"]))
                .unwrap_err()
                .contains("unknown option")
        );
    }

    #[test]
    fn strips_first_matching_directory_prefix() {
        let p = vec!["gen/".to_string(), "pack".to_string()];
        assert_eq!(entry_name("gen/config.h", &p), "config.h");
        assert_eq!(entry_name("pack/docs/a.md", &p), "docs/a.md");
        assert_eq!(entry_name("./gen/x/y.c", &p), "x/y.c");
        // Only whole directory components are stripped.
        assert_eq!(entry_name("general/a", &p), "general/a");
        assert_eq!(entry_name("other/a", &p), "other/a");
        assert_eq!(entry_name("gen", &p), "gen");
    }

    #[test]
    fn mtime_comes_from_source_date_epoch() {
        assert_eq!(mtime_from(None), Ok(0));
        assert_eq!(mtime_from(Some("1700000000")), Ok(1_700_000_000));
        assert!(mtime_from(Some("-1")).is_err());
        assert!(mtime_from(Some("yesterday")).is_err());
        assert!(mtime_from(Some("99999999999999")).is_err());
    }

    /// Writes an archive to disk and, when GNU tar (or any `tar`) is installed, checks that it
    /// lists and extracts the same names and bytes.
    #[test]
    fn archive_is_readable_by_system_tar() {
        let dir = std::env::temp_dir().join(format!("wb-tar-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let long = format!("{}/long-name.txt", "deep/".repeat(30).trim_end_matches('/'));
        let entries = vec![
            ustar::FileEntry {
                name: "docs/readme.md".into(),
                data: b"# hi\n".to_vec(),
            },
            ustar::FileEntry {
                name: "config.h".into(),
                data: vec![b'x'; 5000],
            },
            ustar::FileEntry {
                name: long.clone(),
                data: b"deep".to_vec(),
            },
        ];
        let bytes = ustar::encode(entries, 1_600_000_000).unwrap();
        let archive = dir.join("t.tar");
        wbuild_sdk::write(&archive, &bytes).unwrap();
        let names: Vec<String> = ustar::decode(&wbuild_sdk::read(&archive).unwrap())
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(
            names,
            vec![
                "config.h".to_string(),
                long.clone(),
                "docs/readme.md".into()
            ]
        );

        let Ok(out) = std::process::Command::new("tar")
            .env("TZ", "UTC")
            .arg("-tvf")
            .arg(&archive)
            .output()
        else {
            eprintln!("no `tar` on PATH; skipping the system tar check");
            return;
        };
        assert!(
            out.status.success(),
            "tar -tvf failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stderr.is_empty(),
            "tar warned: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listing = String::from_utf8_lossy(&out.stdout);
        let listed: Vec<&str> = listing
            .lines()
            .map(|l| l.rsplit(' ').next().unwrap())
            .collect();
        assert_eq!(listed, names, "{listing}");
        assert!(
            listing.lines().all(|l| l.starts_with("-rw-r--r-- 0/0")),
            "{listing}"
        );
        assert!(
            listing.contains("2020-09-13"),
            "mtime 1600000000: {listing}"
        );

        let out = std::process::Command::new("tar")
            .arg("-xf")
            .arg(&archive)
            .arg("-C")
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            std::fs::read(dir.join("config.h")).unwrap(),
            vec![b'x'; 5000]
        );
        assert_eq!(std::fs::read(dir.join(&long)).unwrap(), b"deep");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
