//! `cc_library`, `cc_binary` and `cc_test`: the outputs they declare and the shell command
//! their action runs in the native sandbox (one action per target: every source is compiled
//! into the action's private `/tmp`, then archived with a deterministic `ar` or linked).
//!
//! The script names the tools through variables the scheduler sets for the target platform
//! (and which are therefore part of the action key): `$CC`, `$CXX`, `$AR` and, for tests,
//! `$TEST_RUNNER` (empty on the host, `qemu-<arch>-static -L <sysroot>` when cross-compiling).

use crate::CcKind;

/// Package-relative outputs of a `cc_*` target named `name`.
pub(crate) fn outputs(kind: CcKind, name: &str) -> Vec<String> {
    match kind {
        CcKind::Library => vec![archive_name(name)],
        CcKind::Binary => vec![name.to_owned()],
        CcKind::Test => Vec::new(),
    }
}

/// `lib<name>.a`, the archive of a `cc_library`.
pub(crate) fn archive_name(name: &str) -> String {
    format!("lib{name}.a")
}

const CXX_EXTS: &[&str] = &["cc", "cpp", "cxx", "c++", "C"];
const SOURCE_EXTS: &[&str] = &["c", "cc", "cpp", "cxx", "c++", "C", "s", "S"];

fn ext(path: &str) -> &str {
    path.rsplit_once('.').map_or("", |(_, e)| e)
}

/// Whether `path` is compiled (as opposed to a header listed in `srcs`).
pub(crate) fn is_source(path: &str) -> bool {
    SOURCE_EXTS.contains(&ext(path))
}

/// Quote for `/bin/sh` when needed.
pub(crate) fn sh_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_./=+-:,@%".contains(c));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn quote_all(args: &[String]) -> String {
    args.iter()
        .map(|a| quote_keeping_o(a))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Quotes `a`, except that a leading `$o/` (the objects directory) stays expandable.
fn quote_keeping_o(a: &str) -> String {
    match a.strip_prefix("$o/") {
        Some(rest) => format!("\"$o\"/{}", sh_quote(rest)),
        None => sh_quote(a),
    }
}

/// Everything the command needs, with workspace paths.
pub(crate) struct CcCommand<'a> {
    pub kind: CcKind,
    pub package: &'a str,
    pub name: &'a str,
    /// Files to compile, in `srcs` order.
    pub sources: Vec<String>,
    pub copts: &'a [String],
    /// Own and transitive `defines`.
    pub defines: Vec<String>,
    /// Include directories (workspace paths; "" is the workspace root).
    pub include_dirs: Vec<String>,
    /// Archives to link, dependents before their dependencies.
    pub archives: Vec<String>,
    pub linkopts: &'a [String],
    /// The target's label, for messages.
    pub label: String,
    /// Headers listed in the target's own `srcs`.
    pub private_headers: Vec<String>,
    /// Each direct dependency with its `hdrs`.
    pub dep_headers: Vec<(String, Vec<String>)>,
}

impl CcCommand<'_> {
    /// Warnings from the compiler's depfiles (`$o/*.d`): private headers no source includes,
    /// and direct dependencies none of whose headers is included.
    fn unused_header_checks(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for h in &self.private_headers {
            lines.push(format!(
                "grep -qsF -- {h} \"$o\"/*.d || echo {} >&2",
                sh_quote(&format!(
                    "warning: {}: private header {h} is not included by any source; remove it from srcs",
                    self.label
                )),
                h = sh_quote(h)
            ));
        }
        for (dep, hdrs) in &self.dep_headers {
            if hdrs.is_empty() {
                continue;
            }
            let patterns: Vec<String> =
                hdrs.iter().map(|h| format!("-e {}", sh_quote(h))).collect();
            lines.push(format!(
                "grep -qsF {} \"$o\"/*.d || echo {} >&2",
                patterns.join(" "),
                sh_quote(&format!(
                    "warning: {}: no source includes a header of its dependency {dep}; remove it from deps if it is not needed",
                    self.label
                ))
            ));
        }
        lines
    }

    fn out(&self, file: &str) -> String {
        if self.package.is_empty() {
            file.to_owned()
        } else {
            format!("{}/{file}", self.package)
        }
    }

    /// The `/bin/sh -c` script.
    pub(crate) fn script(&self) -> String {
        let cxx = self.sources.iter().any(|s| CXX_EXTS.contains(&ext(s)));
        // Objects go to the action's private temp directory; debug info and __FILE__ record
        // paths relative to the working directory, wherever that is.
        let mut lines = vec![
            "set -e".to_owned(),
            "o=\"${TMPDIR:-/tmp}/o\"".to_owned(),
            "mkdir -p \"$o\"".to_owned(),
        ];
        let mut objects = Vec::new();
        for (i, src) in self.sources.iter().enumerate() {
            let compiler = if CXX_EXTS.contains(&ext(src)) {
                "\"$CXX\""
            } else {
                "\"$CC\""
            };
            let obj = format!("$o/{i}.o");
            let mut cmd = vec!["-c".to_owned()];
            cmd.extend(self.copts.iter().cloned());
            cmd.extend(self.defines.iter().map(|d| format!("-D{d}")));
            cmd.push("-iquote".to_owned());
            cmd.push(".".to_owned());
            for dir in &self.include_dirs {
                cmd.push("-I".to_owned());
                cmd.push(if dir.is_empty() {
                    ".".into()
                } else {
                    dir.clone()
                });
            }
            cmd.push("-o".to_owned());
            cmd.push(obj.clone());
            cmd.push(src.clone());
            lines.push(format!(
                "{compiler} \"-ffile-prefix-map=$PWD/=\" -MD -MF \"$o\"/{i}.d {}",
                quote_all(&cmd)
            ));
            objects.push(obj);
        }
        if !self.sources.is_empty() {
            lines.extend(self.unused_header_checks());
        }
        let linker = if cxx { "\"$CXX\"" } else { "\"$CC\"" };
        let link = |out: &str| {
            let mut cmd = vec!["-o".to_owned(), out.to_owned()];
            cmd.extend(objects.iter().cloned());
            cmd.extend(self.archives.iter().cloned());
            cmd.extend(self.linkopts.iter().cloned());
            format!("{linker} {}", quote_all(&cmd))
        };
        match self.kind {
            CcKind::Library => {
                // D: zero timestamps, uids and modes in the archive.
                let mut cmd = vec!["rcsD".to_owned(), self.out(&archive_name(self.name))];
                cmd.extend(objects.iter().cloned());
                lines.push(format!("\"$AR\" {}", quote_all(&cmd)));
            }
            CcKind::Binary => lines.push(link(&self.out(self.name))),
            CcKind::Test => {
                let exe = format!("$o/{}", self.name);
                lines.push(link(&exe));
                // $TEST_RUNNER is unquoted on purpose: empty, or a program and its options.
                lines.push(format!("$TEST_RUNNER {}", quote_keeping_o(&exe)));
            }
        }
        lines.join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_and_sources() {
        assert_eq!(sh_quote("a/b.c"), "a/b.c");
        assert_eq!(sh_quote("-DX=\"y z\""), "'-DX=\"y z\"'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
        assert!(is_source("x/a.cc") && is_source("b.c") && !is_source("c.h"));
    }

    #[test]
    fn library_script_compiles_and_archives() {
        let c = CcCommand {
            kind: CcKind::Library,
            package: "lib",
            name: "m",
            sources: vec!["lib/a.c".into(), "lib/b.cc".into()],
            copts: &["-O2".into()],
            defines: vec!["X=1".into()],
            include_dirs: vec!["lib/include".into()],
            archives: Vec::new(),
            linkopts: &[],
            label: "//lib:m".into(),
            private_headers: vec!["lib/p.h".into()],
            dep_headers: vec![("//x:y".into(), vec!["x/y.h".into()])],
        };
        let s = c.script();
        assert!(s.contains("\"$CC\" \"-ffile-prefix-map=$PWD/=\" -MD -MF \"$o\"/0.d -c -O2 -DX=1 -iquote . -I lib/include -o \"$o\"/0.o lib/a.c"), "{s}");
        assert!(
            s.contains("\"$CXX\" \"-ffile-prefix-map=$PWD/=\" -MD -MF \"$o\"/1.d -c"),
            "{s}"
        );
        assert!(s.contains("grep -qsF -- lib/p.h \"$o\"/*.d || echo"), "{s}");
        assert!(s.contains("grep -qsF -e x/y.h \"$o\"/*.d || echo"), "{s}");
        assert!(
            s.ends_with("\"$AR\" rcsD lib/libm.a \"$o\"/0.o \"$o\"/1.o"),
            "{s}"
        );
    }
}
