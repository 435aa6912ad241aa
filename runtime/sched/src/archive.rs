//! The builtin archiver: a `cc_library`'s objects written as a GNU `ar` archive with a symbol
//! index, as `ar rcsD` writes it (members named by their file names, in the given order, with
//! zero dates, owners and groups and mode 644; the index lists every defined global, weak or
//! common symbol of each member), by wbuild itself: no process, no sandbox, no dynamic loading
//! of the archiver and its plugins. It reads exactly its declared inputs, so its key is exact.
//!
//! Objects it cannot index the way `ar` would, GCC's slim LTO objects (their symbols are in
//! the LTO sections, which `ar` reads through the compiler's plugin) and anything that is not
//! an ELF relocatable object (LLVM bitcode), are refused with an error naming the object; the
//! cc rules keep `ar` for targets compiled with `-flto`.
//!
//! A library's header checks come with it (`--header-checks=` JSON before `rcsD`): once the
//! archive is written, the compiles' depfiles (inputs of the action) are read and a private
//! header no source includes, or a direct dependency none of whose headers is included, is
//! warned about on the action's stderr, as the `ar` step's script did.

use object::{Object, ObjectKind, ObjectSection, ObjectSymbol};

/// Part of every builtin archive action's key (`wbuild-executor`): bump it whenever the
/// bytes written for the same objects change.
pub const ARCHIVE_VERSION: &str = "wbuild-archive/1";

/// Why an archive could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error(
        "{path}: not an ELF relocatable object ({why}); the builtin archiver indexes ELF objects \
         only (an object compiled with clang's -flto is LLVM bitcode: add -flto to the target's \
         copts so that the rule runs `ar`)"
    )]
    NotAnObject { path: String, why: String },
    #[error(
        "{path}: a GCC LTO object (section {section}); its symbols are in the LTO sections, which \
         only `ar` with the compiler's plugin can index: add -flto to the target's copts so that \
         the rule runs `ar`"
    )]
    Lto { path: String, section: String },
    #[error("the archive would be {size} bytes; its 32-bit symbol index cannot address past 4 GiB")]
    TooLarge { size: u64 },
}

/// The defined global, weak and common symbols of the object `data` (the workspace path
/// `path`, for messages), in symbol-table order.
fn symbols(path: &str, data: &[u8]) -> Result<Vec<Vec<u8>>, ArchiveError> {
    let not = |why: String| ArchiveError::NotAnObject {
        path: path.to_owned(),
        why,
    };
    let file = object::File::parse(data).map_err(|e| not(e.to_string()))?;
    if file.format() != object::BinaryFormat::Elf {
        return Err(not(format!("{:?}", file.format())));
    }
    if file.kind() != ObjectKind::Relocatable {
        return Err(not(format!("an ELF file of kind {:?}", file.kind())));
    }
    if let Some(s) = file
        .sections()
        .find(|s| s.name_bytes().is_ok_and(|n| n.starts_with(b".gnu.lto_")))
    {
        return Err(ArchiveError::Lto {
            path: path.to_owned(),
            section: String::from_utf8_lossy(s.name_bytes().unwrap_or_default()).into_owned(),
        });
    }
    let mut out = Vec::new();
    for s in file.symbols() {
        if s.is_undefined() || !(s.is_global() || s.is_common()) {
            continue;
        }
        if matches!(
            s.kind(),
            object::SymbolKind::File | object::SymbolKind::Section
        ) {
            continue;
        }
        match s.name_bytes() {
            Ok(n) if !n.is_empty() && !n.contains(&0) => out.push(n.to_vec()),
            _ => {}
        }
    }
    Ok(out)
}

/// A member header: 60 bytes, fields padded with spaces.
fn header(out: &mut Vec<u8>, name: &[u8], mode: &str, size: usize) {
    let start = out.len();
    let field = |out: &mut Vec<u8>, v: &[u8], width: usize| {
        out.extend_from_slice(v);
        out.extend(std::iter::repeat_n(b' ', width - v.len()));
    };
    field(out, name, 16);
    field(out, b"0", 12);
    field(out, b"0", 6);
    field(out, b"0", 6);
    field(out, mode.as_bytes(), 8);
    field(out, size.to_string().as_bytes(), 10);
    out.extend_from_slice(b"`\n");
    debug_assert_eq!(out.len() - start, 60);
}

/// What the archive needs of a member besides its bytes.
struct Indexed<'a> {
    path: &'a str,
    size: usize,
    symbols: Vec<Vec<u8>>,
}

/// The archive as pieces: the head (magic, index, long names), then each member's header
/// (its bytes follow it, padded to an even length with `\n`).
fn layout(members: &[Indexed<'_>]) -> Result<(Vec<u8>, Vec<Vec<u8>>), ArchiveError> {
    if members.is_empty() {
        // A library of headers only: `ar` writes the magic alone.
        return Ok((b"!<arch>\n".to_vec(), Vec::new()));
    }
    let base = |m: &Indexed<'_>| {
        m.path
            .rsplit('/')
            .next()
            .unwrap_or(m.path)
            .as_bytes()
            .to_vec()
    };
    // Names longer than 15 bytes go to the `//` table as "name/\n", members pointing at them
    // as "/offset".
    let mut long = Vec::new();
    let mut names = Vec::with_capacity(members.len());
    for m in members {
        let mut name = base(m);
        if name.len() > 15 {
            let at = long.len();
            long.extend_from_slice(&name);
            long.extend_from_slice(b"/\n");
            name = format!("/{at}").into_bytes();
        } else {
            name.push(b'/');
        }
        names.push(name);
    }
    if long.len() % 2 == 1 {
        long.push(b'\n');
    }
    let count: usize = members.iter().map(|m| m.symbols.len()).sum();
    let mut names_len: usize = members
        .iter()
        .flat_map(|m| &m.symbols)
        .map(|n| n.len() + 1)
        .sum();
    if names_len % 2 == 1 {
        names_len += 1;
    }
    // `s`: an index even when no member defines a symbol (then it counts none).
    let index_size = 4 + 4 * count + names_len;
    // Offsets of each member's header.
    let mut offset = 8 + 60 + index_size;
    if !long.is_empty() {
        offset += 60 + long.len();
    }
    let mut offsets = Vec::with_capacity(members.len());
    for m in members {
        offsets.push(offset);
        offset += 60 + m.size + m.size % 2;
    }
    if offset as u64 > u64::from(u32::MAX) {
        return Err(ArchiveError::TooLarge {
            size: offset as u64,
        });
    }
    let mut head = Vec::with_capacity(offsets[0]);
    head.extend_from_slice(b"!<arch>\n");
    header(&mut head, b"/", "0", index_size);
    head.extend_from_slice(&(count as u32).to_be_bytes());
    for (m, at) in members.iter().zip(&offsets) {
        for _ in &m.symbols {
            head.extend_from_slice(&(*at as u32).to_be_bytes());
        }
    }
    let names_start = head.len();
    for n in members.iter().flat_map(|m| &m.symbols) {
        head.extend_from_slice(n);
        head.push(0);
    }
    if (head.len() - names_start) % 2 == 1 {
        head.push(0);
    }
    if !long.is_empty() {
        // The extended-names member's header has blank date, owner, group and mode.
        head.extend_from_slice(b"//");
        head.extend(std::iter::repeat_n(b' ', 46));
        let size = long.len().to_string();
        head.extend_from_slice(size.as_bytes());
        head.extend(std::iter::repeat_n(b' ', 10 - size.len()));
        head.extend_from_slice(b"`\n");
        head.extend_from_slice(&long);
    }
    debug_assert_eq!(head.len(), offsets[0]);
    let headers = members
        .iter()
        .zip(&names)
        .map(|(m, name)| {
            let mut h = Vec::with_capacity(60);
            header(&mut h, name, "644", m.size);
            h
        })
        .collect();
    Ok((head, headers))
}

/// Writes the archive laid out as `head` and `headers` (from [`layout`]): the head, then each
/// member's header and bytes (`bytes(i)`), padded to an even length.
fn assemble(
    w: &mut impl std::io::Write,
    head: &[u8],
    headers: &[Vec<u8>],
    mut bytes: impl FnMut(usize) -> std::io::Result<Vec<u8>>,
) -> std::io::Result<()> {
    w.write_all(head)?;
    for (i, h) in headers.iter().enumerate() {
        w.write_all(h)?;
        let data = bytes(i)?;
        w.write_all(&data)?;
        if data.len() % 2 == 1 {
            w.write_all(b"\n")?;
        }
    }
    w.flush()
}

/// A library's header checks (see [`wbuild_graph::HEADER_CHECKS_ARG`]).
#[derive(Debug, serde::Deserialize)]
struct HeaderChecks {
    label: String,
    depfiles: Vec<String>,
    private: Vec<String>,
    deps: Vec<(String, Vec<String>)>,
}

impl HeaderChecks {
    /// The warnings, given the depfiles' texts: each header counts as included when a
    /// depfile names it, its `.` and `dir/..` components removed (a source may include
    /// `../common/x.h`).
    fn warnings(&self, depfiles: &[String]) -> Vec<String> {
        let included: std::collections::HashSet<String> = depfiles
            .iter()
            .flat_map(|text| crate::observed::depfile_prerequisites(text))
            .filter_map(|p| {
                // The sandbox's working directory is the workspace root.
                let p = p.strip_prefix("/work/").unwrap_or(&p);
                crate::observed::normalise(p)
            })
            .collect();
        let mut out = Vec::new();
        for h in &self.private {
            if !included.contains(h) {
                out.push(wbuild_graph::unused_private_header(&self.label, h));
            }
        }
        for (dep, hdrs) in &self.deps {
            if !hdrs.is_empty() && !hdrs.iter().any(|h| included.contains(h)) {
                out.push(wbuild_graph::unused_dependency(&self.label, dep));
            }
        }
        out
    }
}

/// Runs a builtin archive action, `wbuild-archive [--header-checks=JSON] rcsD OUTPUT
/// OBJECT...`: its members are the objects in that order (their blobs, verified as they are
/// read), its one output OUTPUT; the archive goes into the store, the header checks'
/// warnings to its stderr.
pub(crate) fn run(
    store: &wbuild_store::Store,
    spec: &crate::spec::Spec,
) -> Result<crate::spec::RunOutput, crate::SchedError> {
    let _running = crate::phases::phase("execution");
    let (checks, rest) = match spec.argv.split_first() {
        Some((argv0, rest)) if argv0 == wbuild_graph::ARCHIVER => match rest.split_first() {
            Some((first, rest)) if first.starts_with(wbuild_graph::HEADER_CHECKS_ARG) => {
                match serde_json::from_str::<HeaderChecks>(
                    &first[wbuild_graph::HEADER_CHECKS_ARG.len()..],
                ) {
                    Ok(c) => (Some(c), rest),
                    Err(e) => {
                        return Ok(crate::spec::RunOutput::failed_with(format!(
                            "the builtin archiver's header checks cannot be read: {e}"
                        )));
                    }
                }
            }
            _ => (None, rest),
        },
        _ => (None, &[][..]),
    };
    let (output, objects) = match rest {
        [mode, output, objects @ ..] if mode == "rcsD" && spec.outputs == [output.clone()] => {
            (output, objects)
        }
        _ => {
            return Ok(crate::spec::RunOutput::failed_with(format!(
                "a builtin archive action runs `{} [{}JSON] rcsD OUTPUT OBJECT...` with OUTPUT \
                 its one output; got {:?}",
                wbuild_graph::ARCHIVER,
                wbuild_graph::HEADER_CHECKS_ARG,
                spec.argv
            )));
        }
    };
    // The depfiles the checks read: inputs like the objects.
    let mut depfiles = Vec::new();
    for p in checks.iter().flat_map(|c| &c.depfiles) {
        let Some(d) = spec.files.get(p) else {
            return Ok(crate::spec::RunOutput::failed_with(format!(
                "{p} is given to the archiver's header checks but is not among the action's inputs"
            )));
        };
        depfiles.push(String::from_utf8_lossy(&store.get_bytes(d)?).into_owned());
    }
    // Memory holds one object at a time: each is read (verified) for its symbols, then again
    // as it is copied into the archive, which is written to a file and moved into the store.
    let mut indexed = Vec::with_capacity(objects.len());
    let mut digests = Vec::with_capacity(objects.len());
    for o in objects {
        let Some(d) = spec.files.get(o) else {
            return Ok(crate::spec::RunOutput::failed_with(format!(
                "{o} is given to the archiver but is not among the action's inputs"
            )));
        };
        let data = store.get_bytes(d)?;
        match symbols(o, &data) {
            Ok(symbols) => indexed.push(Indexed {
                path: o,
                size: data.len(),
                symbols,
            }),
            Err(e) => return Ok(failed(&e)),
        }
        digests.push(*d);
    }
    let (head, headers) = match layout(&indexed) {
        Ok(l) => l,
        Err(e) => return Ok(failed(&e)),
    };
    let tmp_dir = store.tmp_dir();
    let io = |e: std::io::Error| crate::SchedError::Io {
        path: tmp_dir.clone(),
        error: e,
    };
    std::fs::create_dir_all(&tmp_dir).map_err(io)?;
    let mut file = tempfile::NamedTempFile::new_in(&tmp_dir).map_err(io)?;
    // A store error (a corrupt or lost object) keeps its type: the scheduler acts on it.
    let mut lost = None;
    let written = assemble(
        &mut std::io::BufWriter::new(file.as_file_mut()),
        &head,
        &headers,
        |i| {
            store.get_bytes(&digests[i]).map_err(|e| {
                lost = Some(e);
                std::io::Error::other("the store could not give an object")
            })
        },
    );
    if let Some(e) = lost {
        return Err(e.into());
    }
    written.map_err(io)?;
    let (_, path) = file.keep().map_err(|e| io(e.error))?;
    let d = store.put_file_move(&path);
    let _ = std::fs::remove_file(&path);
    let mut stderr = String::new();
    for w in checks.map(|c| c.warnings(&depfiles)).unwrap_or_default() {
        stderr.push_str(&w);
        stderr.push('\n');
    }
    Ok(crate::spec::RunOutput {
        outputs: vec![(output.clone(), d?)],
        stderr: stderr.into_bytes(),
        ..Default::default()
    })
}

/// A failed run whose error is `e` (also its stderr, as a tool's would be).
fn failed(e: &ArchiveError) -> crate::spec::RunOutput {
    let mut out = crate::spec::RunOutput::failed_with(e.to_string());
    out.stderr = format!("wbuild-archive: {e}\n").into_bytes();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::process::Command;

    #[test]
    fn header_checks_read_the_depfiles_as_the_script_did() {
        let checks = HeaderChecks {
            label: "//lib:m".into(),
            depfiles: vec!["lib/_objs/m/a.d".into(), "lib/_objs/m/b.d".into()],
            private: vec!["lib/p.h".into(), "lib/q.h".into(), "lib/r.h".into()],
            deps: vec![
                ("//x:y".into(), vec!["x/y.h".into()]),
                ("//x:z".into(), vec!["x/z.h".into(), "x/z2.h".into()]),
                ("//x:none".into(), Vec::new()),
            ],
        };
        let a = "lib/_objs/m/a.o: lib/a.c lib/sub/../p.h \\\n /usr/include/stdio.h ./x/z2.h\n"
            .to_owned();
        let b = "lib/_objs/m/b.o: lib/b.c /work/lib/r.h\nlib/q.h.other:\n".to_owned();
        assert_eq!(
            checks.warnings(&[a, b]),
            [
                "warning: //lib:m: private header lib/q.h is not included by any source; remove it from srcs",
                "warning: //lib:m: no source includes a header of its dependency //x:y; remove it from deps if it is not needed",
            ]
        );
        // No depfile text at all: every check warns (as `sed` failing did).
        assert_eq!(checks.warnings(&[]).len(), 5);
    }

    fn run(dir: &Path, program: &str, args: &[&str]) {
        let out = Command::new(program)
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap_or_else(|e| panic!("{program}: {e}"));
        assert!(
            out.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Objects as the cc rules make them, with what an index must handle: two members of one
    /// name, a name too long for the header, common, weak and hidden symbols, an object
    /// without any global symbol, and an odd-sized member.
    fn objects(dir: &Path) -> Vec<&'static str> {
        let sources = [
            ("a/f.c", "int fa(void) { return 1; }\n"),
            ("b/f.c", "int fb(void) { return 2; }\n"),
            (
                "averyveryverylongname.c",
                "int common_one;\n__attribute__((weak)) int weak_one(void) { return 3; }\n\
                 __attribute__((visibility(\"hidden\"))) int hidden_one = 4;\n",
            ),
            (
                "static_only.c",
                "static int s(void) { return 5; }\nint (*keep)(void) = 0;\n",
            ),
            ("locals.c", "static int t(void) { return 6; }\n"),
        ];
        let mut objs = Vec::new();
        for (src, text) in sources {
            let path = dir.join(src);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, text).unwrap();
            let obj: &'static str = Box::leak(src.replace(".c", ".o").into_boxed_str());
            run(dir, "gcc", &["-fcommon", "-O2", "-c", src, "-o", obj]);
            objs.push(obj);
        }
        objs
    }

    fn members<'a>(dir: &Path, objs: &[&'a str]) -> Vec<(&'a str, Vec<u8>)> {
        objs.iter()
            .map(|o| (*o, std::fs::read(dir.join(o)).unwrap()))
            .collect()
    }

    /// The archive of `m` (path, bytes), as `run` writes it.
    fn write_all(m: &[(&str, Vec<u8>)]) -> Result<Vec<u8>, ArchiveError> {
        let mut indexed = Vec::with_capacity(m.len());
        for (path, data) in m {
            indexed.push(Indexed {
                path,
                size: data.len(),
                symbols: symbols(path, data)?,
            });
        }
        let (head, headers) = layout(&indexed)?;
        let mut out = Vec::new();
        assemble(&mut out, &head, &headers, |i| Ok(m[i].1.clone())).unwrap();
        Ok(out)
    }

    #[test]
    fn the_archive_is_byte_for_byte_what_ar_rcsd_writes() {
        let dir = tempfile::tempdir().unwrap();
        let objs = objects(dir.path());
        for set in [&objs[..], &objs[3..], &objs[4..], &objs[..1], &[]] {
            let mut args = vec!["rcsD", "ref.a"];
            args.extend(set.iter().copied());
            let _ = std::fs::remove_file(dir.path().join("ref.a"));
            run(dir.path(), "ar", &args);
            let want = std::fs::read(dir.path().join("ref.a")).unwrap();
            let got = write_all(&members(dir.path(), set)).unwrap();
            assert!(got == want, "differs from ar rcsD for {set:?}");
        }
    }

    #[test]
    fn a_program_links_against_the_archive() {
        let dir = tempfile::tempdir().unwrap();
        let objs = objects(dir.path());
        std::fs::write(
            dir.path().join("lib.a"),
            write_all(&members(dir.path(), &objs)).unwrap(),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("main.c"),
            "int fa(void); int fb(void); int weak_one(void);\n\
             int main(void) { return fa() + fb() + weak_one() == 6 ? 0 : 1; }\n",
        )
        .unwrap();
        run(dir.path(), "gcc", &["main.c", "lib.a", "-o", "main"]);
        run(dir.path(), "./main", &[]);
    }

    #[test]
    fn what_is_not_an_elf_object_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let objs = objects(dir.path());
        let mut m = members(dir.path(), &objs[..1]);
        m.push(("lib/_objs/l/text.o", b"int not_an_object;\n".to_vec()));
        let e = write_all(&m).unwrap_err().to_string();
        assert!(
            e.starts_with("lib/_objs/l/text.o: not an ELF relocatable object"),
            "{e}"
        );

        // GCC's slim LTO objects hold their symbols where only ar's plugin reads them.
        std::fs::write(dir.path().join("lto.c"), "int lto_fn(void) { return 7; }\n").unwrap();
        run(dir.path(), "gcc", &["-flto", "-c", "lto.c", "-o", "lto.o"]);
        let e = write_all(&members(dir.path(), &["lto.o"]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("lto.o: a GCC LTO object (section .gnu.lto_"),
            "{e}"
        );

        // A linked program is ELF but not relocatable.
        std::fs::write(dir.path().join("main.c"), "int main(void) { return 0; }\n").unwrap();
        run(dir.path(), "gcc", &["main.c", "-o", "main"]);
        let e = write_all(&members(dir.path(), &["main"]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("main: not an ELF relocatable object (an ELF file of kind"),
            "{e}"
        );
    }

    #[test]
    fn damaged_objects_give_an_error_or_an_archive_never_a_panic() {
        // What a hostile compiler could leave as its object: every truncation and a byte
        // flipped at every position of a real one.
        let dir = tempfile::tempdir().unwrap();
        let objs = objects(dir.path());
        let good = std::fs::read(dir.path().join(objs[2])).unwrap();
        for cut in 0..good.len() {
            let _ = write_all(&[("x.o", good[..cut].to_vec())]);
        }
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0xff;
            if let Ok(a) = write_all(&[("x.o", bad.clone())]) {
                // Whatever it indexed, the member is there, whole.
                assert!(a.windows(bad.len()).any(|w| w == bad.as_slice()));
            }
        }
    }
}
