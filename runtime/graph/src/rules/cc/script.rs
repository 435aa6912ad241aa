//! `cc_library`, `cc_binary` and `cc_test`: the files they produce and the shell commands
//! their actions run in the native sandbox.
//!
//! As in Bazel, every source file is its own compile action (`CcCompile`, producing
//! `<pkg>/_objs/<name>/<source>.o` and the compiler's depfile beside it), so compiles run in
//! parallel and an edit recompiles exactly the sources whose inputs changed. A library's
//! objects are archived with a deterministic `ar` (`CcArchive`), a binary's are linked with
//! the transitive archives (`CcLink`); a test is linked like a binary and run by a separate
//! `CcTest` action.
//!
//! The scripts name the tools through variables the scheduler sets for the target platform
//! (and which are therefore part of the action key): `$CC`, `$CXX`, `$AR` and, for tests,
//! `$TEST_RUNNER` (empty on the host, `qemu-<arch>-static -L <sysroot>` when cross-compiling).

use crate::CcKind;

/// Package-relative files a `cc_*` target named `name` provides (its archive or program; a
/// WASI program is `<name>.wasm`).
pub(crate) fn outputs(kind: CcKind, name: &str, wasi: bool) -> Vec<String> {
    match kind {
        CcKind::Library => vec![archive_name(name)],
        CcKind::Binary | CcKind::Test if wasi => vec![format!("{name}.wasm")],
        CcKind::Binary | CcKind::Test => vec![name.to_owned()],
    }
}

/// `lib<name>.a`, the archive of a `cc_library`.
pub(crate) fn archive_name(name: &str) -> String {
    format!("lib{name}.a")
}

const CXX_EXTS: &[&str] = &["cc", "cpp", "cxx", "c++", "C"];
const SOURCE_EXTS: &[&str] = &["c", "cc", "cpp", "cxx", "c++", "C", "s", "S"];

fn ext(path: &str) -> &str {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.rsplit_once('.').map_or("", |(_, e)| e)
}

/// Whether `path` is compiled (as opposed to a header listed in `srcs`).
pub(crate) fn is_source(path: &str) -> bool {
    SOURCE_EXTS.contains(&ext(path))
}

/// Whether `path` is compiled as C++ (and so a program containing it is linked with `$CXX`).
pub(crate) fn is_cxx(path: &str) -> bool {
    CXX_EXTS.contains(&ext(path))
}

/// Object file stem of `source` (a workspace path) for target `name` of package `pkg`:
/// `<pkg>/_objs/<name>/<source relative to pkg, extension removed>`. The object is this plus
/// `.o`, the depfile plus `.d`.
pub(crate) fn object_stem(pkg: &str, name: &str, source: &str) -> String {
    let rel = crate::label::strip_package(source, pkg).unwrap_or(source);
    let stem = match rel.rsplit_once('.') {
        Some((s, _)) if !s.ends_with('/') && !s.is_empty() => s,
        _ => rel,
    };
    crate::label::join(pkg, &format!("_objs/{name}/{stem}"))
}

/// Quote for `/bin/sh` when needed.
pub fn sh_quote(s: &str) -> String {
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
        .map(|a| sh_quote(a))
        .collect::<Vec<_>>()
        .join(" ")
}

/// How one source is compiled.
pub(crate) struct Compile<'a> {
    pub source: &'a str,
    pub object: &'a str,
    pub depfile: &'a str,
    pub copts: &'a [String],
    /// Own and transitive `defines`.
    pub defines: &'a [String],
    /// Include directories (workspace paths; "" is the workspace root).
    pub include_dirs: &'a [String],
}

impl Compile<'_> {
    /// The `/bin/sh -c` script. Debug info and `__FILE__` record paths relative to the
    /// working directory, wherever that is (`-ffile-prefix-map`).
    ///
    /// GCC (any `$CC` or `$CXX` whose name holds `gcc` or `g++`; the test is the shell's own
    /// `case`, no process) also gets `-fno-canonical-system-headers`, as Bazel gives it: by
    /// default GCC canonicalises every system header's path with a `readlink` of each of its
    /// components, about 1,000 calls for a source that includes `<stdio.h>`, `<stdlib.h>`
    /// and `<string.h>`, each of which the sandbox's observation stops and answers. The
    /// object is the same either way; only the spelling of system headers' paths in the
    /// depfile changes, and system headers are the toolchain's (keyed by its identity),
    /// never part of a path set.
    pub(crate) fn script(&self) -> String {
        let (var, compiler) = if is_cxx(self.source) {
            ("CXX", "\"$CXX\"")
        } else {
            ("CC", "\"$CC\"")
        };
        let mut cmd = vec![
            "-MD".to_owned(),
            "-MF".to_owned(),
            self.depfile.to_owned(),
            "-c".to_owned(),
        ];
        cmd.extend(self.copts.iter().cloned());
        cmd.extend(self.defines.iter().map(|d| format!("-D{d}")));
        cmd.push("-iquote".to_owned());
        cmd.push(".".to_owned());
        for dir in self.include_dirs {
            cmd.push("-I".to_owned());
            cmd.push(if dir.is_empty() {
                ".".into()
            } else {
                dir.clone()
            });
        }
        cmd.extend([
            "-o".to_owned(),
            self.object.to_owned(),
            self.source.to_owned(),
        ]);
        format!(
            "case ${var} in *gcc*|*g++*) set -- -fno-canonical-system-headers ;; esac; \
             exec {compiler} \"-ffile-prefix-map=$PWD/=\" \"$@\" {}",
            quote_all(&cmd)
        )
    }
}

/// GNU sed arguments that drop `.` components and `dir/..` pairs from every path of a depfile
/// (until none is left; a leading `..` stays).
const NORMALISE_PATHS: &str = r"-e ':a' -e 's#\(^\|[ /]\)\./#\1#g' -e 's#\(^\|[ /]\)\([^ /.][^ /]*\|\.[^ /.][^ /]*\|\.\.[^ /][^ /]*\)/\.\./#\1#' -e 'ta'";

/// What the archive or link step of a target needs.
pub(crate) struct Finish<'a> {
    pub kind: CcKind,
    /// The archive or program to write (workspace path).
    pub output: &'a str,
    /// The target's objects, in `srcs` order.
    pub objects: &'a [String],
    /// Their depfiles, for the unused-header warnings.
    pub depfiles: &'a [String],
    /// Archives to link, dependents before their dependencies.
    pub archives: &'a [String],
    pub linkopts: &'a [String],
    /// Whether any source of the target is C++ (link with `$CXX`).
    pub cxx: bool,
    /// The target's label, for messages.
    pub label: &'a str,
    /// Headers listed in the target's own `srcs`.
    pub private_headers: &'a [String],
    /// Each direct dependency with its `hdrs`.
    pub dep_headers: &'a [(String, Vec<String>)],
}

impl Finish<'_> {
    /// Warnings from the compiler's depfiles: private headers no source includes, and direct
    /// dependencies none of whose headers is included.
    fn unused_header_checks(&self) -> Vec<String> {
        if self.depfiles.is_empty() {
            return Vec::new();
        }
        // The depfiles' paths with `.` and `dir/..` components removed (a source may include
        // `../common/x.h`), read once; each check is then a `case` on that text (no process
        // per check: a target with many dependencies would pay a fork and exec for each).
        let mut lines = vec![format!(
            "deps=$(sed {NORMALISE_PATHS} {} 2>/dev/null || true)",
            quote_all(self.depfiles)
        )];
        // A header as a `case` pattern matching any text that contains it (quoted: literal).
        let contains = |h: &str| format!("*'{}'*", h.replace('\'', r"'\''"));
        for h in self.private_headers {
            lines.push(format!(
                "case \"$deps\" in {}) ;; *) echo {} >&2 ;; esac",
                contains(h),
                sh_quote(&crate::unused_private_header(self.label, h)),
            ));
        }
        for (dep, hdrs) in self.dep_headers {
            if hdrs.is_empty() {
                continue;
            }
            let patterns: Vec<String> = hdrs.iter().map(|h| contains(h)).collect();
            lines.push(format!(
                "case \"$deps\" in {}) ;; *) echo {} >&2 ;; esac",
                patterns.join("|"),
                sh_quote(&crate::unused_dependency(self.label, dep))
            ));
        }
        // Nothing to check (no private headers, no dependency with headers): no `sed` either.
        if lines.len() == 1 {
            return Vec::new();
        }
        lines
    }

    /// Whether the step reads the depfiles (it has header checks to make).
    pub(crate) fn reads_depfiles(&self) -> bool {
        !self.depfiles.is_empty()
            && (!self.private_headers.is_empty()
                || self.dep_headers.iter().any(|(_, hdrs)| !hdrs.is_empty()))
    }

    /// A library's header checks as wbuild's builtin archiver makes them (it writes the
    /// archive, then reads the depfiles and warns as [`Finish::script`]'s checks would): one
    /// `--header-checks=` argument holding them as JSON, or `None` with nothing to check.
    pub(crate) fn header_checks_arg(&self) -> Option<String> {
        if !self.reads_depfiles() {
            return None;
        }
        let deps: Vec<(&str, &[String])> = self
            .dep_headers
            .iter()
            .filter(|(_, hdrs)| !hdrs.is_empty())
            .map(|(dep, hdrs)| (dep.as_str(), hdrs.as_slice()))
            .collect();
        let checks = serde_json::json!({
            "label": self.label,
            "depfiles": self.depfiles,
            "private": self.private_headers,
            "deps": deps,
        });
        Some(format!("{}{checks}", crate::HEADER_CHECKS_ARG))
    }

    /// The `/bin/sh -c` script: `ar` (D: zero timestamps, uids and modes) or the link, with
    /// the header checks made while it runs (the tool is started first, in the background,
    /// and waited for: its status is the script's; the checks' `sed` and shell take no time
    /// of their own on an otherwise idle machine, as after a one-file edit).
    pub(crate) fn script(&self) -> String {
        let mut lines = vec!["set -e".to_owned()];
        let tool = match self.kind {
            CcKind::Library => {
                let mut cmd = vec!["rcsD".to_owned(), self.output.to_owned()];
                cmd.extend(self.objects.iter().cloned());
                format!("\"$AR\" {}", quote_all(&cmd))
            }
            CcKind::Binary | CcKind::Test => {
                let linker = if self.cxx { "\"$CXX\"" } else { "\"$CC\"" };
                let mut cmd = vec!["-o".to_owned(), self.output.to_owned()];
                cmd.extend(self.objects.iter().cloned());
                // The archives reach the linker as `-Wl,` arguments, in the same place: the
                // compiler driver then does not canonicalise each (GCC compares the real path
                // of every input file with the output's: about 450 `readlink`s for a program
                // linking 100 archives, each a stopped call when observed). A path holding a
                // comma, where `-Wl,` would split it, goes as it is.
                cmd.extend(self.archives.iter().map(|a| {
                    if a.contains(',') {
                        a.clone()
                    } else {
                        format!("-Wl,{a}")
                    }
                }));
                cmd.extend(self.linkopts.iter().cloned());
                format!("{linker} {}", quote_all(&cmd))
            }
        };
        let checks = self.unused_header_checks();
        if checks.is_empty() {
            lines.push(format!("exec {tool}"));
        } else {
            lines.push(format!("{tool} &"));
            lines.push("tool=$!".to_owned());
            lines.extend(checks);
            lines.push("wait $tool".to_owned());
        }
        lines.join("\n")
    }
}

/// The script of a `CcTest` action: run the linked test program (under the platform's
/// `$TEST_RUNNER`, unquoted on purpose: empty, or a program and its options).
pub(crate) fn test_script(program: &str) -> String {
    format!("exec $TEST_RUNNER ./{}", sh_quote(program))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_sources_and_objects() {
        assert_eq!(sh_quote("a/b.c"), "a/b.c");
        assert_eq!(sh_quote("-DX=\"y z\""), "'-DX=\"y z\"'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
        assert!(is_source("x/a.cc") && is_source("b.c") && !is_source("c.h"));
        assert!(!is_source("v1.2/README"));
        assert_eq!(object_stem("lib", "m", "lib/src/a.c"), "lib/_objs/m/src/a");
        assert_eq!(object_stem("", "m", "a.cc"), "_objs/m/a");
        assert_eq!(object_stem("lib", "m", "gen/x.c"), "lib/_objs/m/gen/x");
    }

    /// The archive step of `//lib:m`, a C library.
    fn archive<'a>(
        objects: &'a [String],
        depfiles: &'a [String],
        private_headers: &'a [String],
        dep_headers: &'a [(String, Vec<String>)],
    ) -> Finish<'a> {
        Finish {
            kind: CcKind::Library,
            output: "lib/libm.a",
            objects,
            depfiles,
            archives: &[],
            linkopts: &[],
            cxx: false,
            label: "//lib:m",
            private_headers,
            dep_headers,
        }
    }

    #[test]
    fn compile_archive_link_and_test_scripts() {
        let c = Compile {
            source: "lib/b.cc",
            object: "lib/_objs/m/b.o",
            depfile: "lib/_objs/m/b.d",
            copts: &["-O2".into()],
            defines: &["X=1".into()],
            include_dirs: &["lib/include".into(), String::new()],
        };
        assert_eq!(
            c.script(),
            "case $CXX in *gcc*|*g++*) set -- -fno-canonical-system-headers ;; esac; exec \"$CXX\" \"-ffile-prefix-map=$PWD/=\" \"$@\" -MD -MF lib/_objs/m/b.d -c -O2 -DX=1 -iquote . -I lib/include -I . -o lib/_objs/m/b.o lib/b.cc"
        );
        let objects = ["lib/_objs/m/a.o".to_owned(), "lib/_objs/m/b.o".to_owned()];
        let depfiles = ["lib/_objs/m/a.d".to_owned(), "lib/_objs/m/b.d".to_owned()];
        let dep_headers = [("//x:y".to_owned(), vec!["x/y.h".to_owned()])];
        let private_headers = ["lib/p.h".to_owned()];
        let f = Finish {
            cxx: true,
            ..archive(&objects, &depfiles, &private_headers, &dep_headers)
        };
        let s = f.script();
        assert!(
            s.contains("deps=$(sed -e ':a' ")
                && s.contains(" lib/_objs/m/a.d lib/_objs/m/b.d 2>/dev/null || true)"),
            "{s}"
        );
        assert!(
            s.contains("case \"$deps\" in *'lib/p.h'*) ;; *) echo"),
            "{s}"
        );
        assert!(s.contains("case \"$deps\" in *'x/y.h'*) ;; *) echo"), "{s}");
        // The tool first, in the background; the checks meanwhile; its status last.
        assert!(
            s.starts_with(
                "set -e\n\"$AR\" rcsD lib/libm.a lib/_objs/m/a.o lib/_objs/m/b.o &\ntool=$!\n"
            ) && s.ends_with("\nwait $tool"),
            "{s}"
        );
        let link = Finish {
            kind: CcKind::Binary,
            output: "app/app",
            archives: &["lib/libm.a".into(), "odd,name/libo.a".into()],
            linkopts: &["-lm".into()],
            ..f
        };
        assert!(
            link.script().starts_with(
                "set -e\n\"$CXX\" -o app/app lib/_objs/m/a.o lib/_objs/m/b.o -Wl,lib/libm.a odd,name/libo.a -lm &\n"
            ),
            "{}",
            link.script()
        );
        // Nothing to check: no `sed` over the depfiles.
        let plain = Finish {
            private_headers: &[],
            dep_headers: &[("//x:z".to_owned(), Vec::new())],
            ..f
        };
        assert_eq!(
            plain.script(),
            "set -e\nexec \"$AR\" rcsD lib/libm.a lib/_objs/m/a.o lib/_objs/m/b.o"
        );
        // ... so the depfiles are not its inputs (an input never read would keep its runs
        // observed: see the scheduler's `elide`).
        assert!(!plain.reads_depfiles());
        assert!(f.reads_depfiles() && link.reads_depfiles());
        assert_eq!(test_script("app/t"), "exec $TEST_RUNNER ./app/t");
    }

    /// The archive step run by `/bin/sh`: the tool's status is the script's, and the checks'
    /// warnings are printed whether the tool is done first or not.
    #[test]
    fn the_tool_runs_while_the_depfiles_are_checked_and_its_status_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("lib/_objs/m")).unwrap();
        std::fs::write(
            dir.path().join("lib/_objs/m/a.d"),
            "lib/_objs/m/a.o: lib/a.c lib/sub/../p.h\n",
        )
        .unwrap();
        let objects = ["lib/_objs/m/a.o".to_owned()];
        let depfiles = ["lib/_objs/m/a.d".to_owned()];
        let dep_headers = [("//x:y".to_owned(), vec!["x/y.h".to_owned()])];
        let private_headers = ["lib/p.h".to_owned(), "lib/q.h".to_owned()];
        let f = archive(&objects, &depfiles, &private_headers, &dep_headers);
        let run = |ar: &str| {
            std::process::Command::new("/bin/sh")
                .arg("-c")
                .arg(f.script())
                .env("AR", ar)
                .current_dir(dir.path())
                .output()
                .unwrap()
        };
        // A script stands for `ar`: done at once, done after the checks, or failing.
        let tool = |body: &str| {
            use std::os::unix::fs::PermissionsExt;
            let path = dir.path().join("ar.sh");
            std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        for body in ["true", "sleep 0.2; true"] {
            tool(body);
            let out = run("./ar.sh");
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(out.status.success(), "{err}");
            assert!(!err.contains("lib/p.h"), "{err}");
            assert!(
                err.contains("private header lib/q.h is not included"),
                "{err}"
            );
            assert!(err.contains("dependency //x:y"), "{err}");
        }
        tool("exit 3");
        assert_eq!(run("./ar.sh").status.code(), Some(3));
    }
}
