//! Capturing a native gcc toolchain from the Debian packages installed on this machine.
//!
//! [`capture`] builds a directory tree that mirrors `/` and holds exactly what a sandbox
//! whose root is only that tree needs to compile, link (and, for a cross target with a
//! captured qemu, run) C and C++ programs. The file list is computed, not written by hand:
//!
//! 1. The compiler drivers `<triple>-gcc`, `<triple>-g++` and `<triple>-ar` are found in
//!    `/usr/bin` and followed to their real files (e.g. `x86_64-linux-gnu-gcc-12`).
//! 2. The driver is asked which programs (`-print-prog-name=`: cc1, cc1plus, collect2, as,
//!    ld, lto-wrapper) and files (`-print-file-name=`: the LTO plugin, `libc.so`, `crt1.o`,
//!    libgcc, `libstdc++.so`) it uses, and where it searches headers (`-E -v`: the
//!    directories holding `stdio.h` and the C++ `iostream`).
//! 3. `dpkg -S` names the packages owning those files (trying each path as given, its real
//!    path and its un-merged alias: `/usr/bin/dash` is recorded as `/bin/dash`), plus
//!    `/bin/sh`'s owner (dash) and the shell utilities native build scripts run (coreutils,
//!    sed, grep, findutils, diffutils), plus [`CaptureSpec::packages`].
//! 4. `Depends` and `Pre-Depends` are closed over (first installed alternative; version
//!    constraints and architecture qualifiers ignored; virtual packages through `Provides`),
//!    except for the packages of [`DENIED_DEPENDENCIES`].
//! 5. Every file `dpkg -L` lists for those packages is copied to its real (usr-merged) path
//!    under the destination, symlinks recreated as symlinks with the same target text;
//!    documentation, manual pages, locales, lintian overrides and `/etc` are left out.
//! 6. [`CaptureSpec::programs`] are copied as single files (with the symlink chain from the
//!    name given to the real file), not as whole packages.
//! 7. Every ELF of the host architecture in the tree is read (program interpreter,
//!    `DT_NEEDED`, `DT_RPATH`/`DT_RUNPATH`); each library is resolved inside the tree the
//!    way the dynamic loader would, and one missing there is copied from the host (with its
//!    symlink chain) or reported.
//! 8. `usr/share/wbuild-toolchain/packages.txt` lists the captured packages.
//!
//! The same host gives the same tree: every list is sorted and no timestamps or host names
//! enter it; regular files are `0644` or `0755`, directories `0755`.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{BundleError, io_err};

#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureSpec {
    /// GNU triple of the target: "x86_64-linux-gnu" or "aarch64-linux-gnu" (host is x86_64).
    pub target: String,
    /// Extra programs captured as files (name on PATH or absolute path), with their shared
    /// libraries, e.g. "qemu-aarch64-static" (its whole package is not pulled in:
    /// qemu-user-static holds every architecture).
    #[serde(default)]
    pub programs: Vec<String>,
    /// Extra Debian packages included whole (with their dependencies).
    #[serde(default)]
    pub packages: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct Captured {
    /// "cc", "cxx", "ar", "sh" (and "test_runner" when a qemu program for the target is
    /// captured) -> path inside the tree (relative, e.g. "usr/bin/x86_64-linux-gnu-gcc-12").
    pub entry_points: BTreeMap<String, String>,
    /// Environment for native actions: CC, CXX, AR as absolute sandbox paths, and
    /// TEST_RUNNER: "" for a host-architecture target, the qemu command line (e.g.
    /// "/usr/bin/qemu-aarch64-static -L /usr/aarch64-linux-gnu") for another target when
    /// its qemu is among the programs, absent otherwise (the programs cannot be run).
    pub env: BTreeMap<String, String>,
    /// "name version" of every package captured, sorted (a package of a foreign
    /// architecture is named "name:arch").
    pub packages: Vec<String>,
    /// Dependencies left out by [`DENIED_DEPENDENCIES`], sorted.
    pub excluded: Vec<String>,
    /// Libraries (and program interpreters) copied because some ELF needs them but no
    /// captured package holds them: paths inside the tree, sorted.
    pub extra_libraries: Vec<String>,
    /// Regular files and symlinks in the tree.
    pub files: usize,
    /// Total size of the regular files.
    pub bytes: u64,
}

/// Dependencies not followed, with why: nothing a build runs needs them. A package named
/// in [`CaptureSpec::packages`] is still captured.
pub const DENIED_DEPENDENCIES: &[(&str, &str)] = &[(
    "dpkg",
    "the package manager: dash and grep depend on it only for their maintainer scripts \
     (diverting /bin/sh, install-info); it would bring tar, bzip2, xz and dpkg's database \
     tools, which no build action uses",
)];

/// Shell utilities native build scripts run; captured with the compiler.
const BASE_PACKAGES: &[&str] = &["coreutils", "sed", "grep", "findutils", "diffutils"];

/// Paths (inside the tree) not captured: documentation, translations, configuration.
const SKIPPED_PREFIXES: &[&str] = &[
    "usr/share/doc/",
    "usr/share/man/",
    "usr/share/info/",
    "usr/share/locale/",
    "usr/share/lintian/",
    "etc/",
];

/// Top-level names that a usr-merged host has as symlinks into `/usr`.
const MERGED_TOP: &[&str] = &["bin", "sbin", "lib", "lib32", "lib64", "libo32", "libx32"];

/// Where programs named without a `/` are looked for (Debian's default root PATH; the
/// caller's PATH is not used, so the capture does not depend on it).
const SEARCH_PATH: &[&str] = &[
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

/// The record of the captured packages, inside the tree.
pub const PACKAGES_FILE: &str = "usr/share/wbuild-toolchain/packages.txt";

/// Captures into `dest` (an empty or missing directory).
pub fn capture(spec: &CaptureSpec, dest: &Path) -> Result<Captured, BundleError> {
    let host = Host::detect()?;
    let target = Target::new(&spec.target, &host)?;
    check_dest(dest)?;
    let db = PackageDb::load()?;

    // 1-2: the drivers and what they use.
    let gcc = Driver::find(&format!("{}-gcc", target.triple), &target.gcc_pkg)?;
    let gxx = Driver::find(&format!("{}-g++", target.triple), &target.gxx_pkg)?;
    let ar = Driver::find(&format!("{}-ar", target.triple), &target.binutils_pkg)?;
    let mut wanted: Vec<Wanted> = Vec::new();
    for d in [&gcc, &gxx, &ar] {
        wanted.push(Wanted::new(&d.given, d.name.clone(), &d.hint));
    }
    for prog in ["cc1", "collect2", "as", "ld", "lto-wrapper"] {
        let p = gcc.prog_name(prog, &target.gcc_pkg)?;
        wanted.push(Wanted::new(
            &p,
            format!("{prog} of {}", gcc.name),
            &gcc.hint,
        ));
    }
    let p = gxx.prog_name("cc1plus", &target.gxx_pkg)?;
    wanted.push(Wanted::new(
        &p,
        format!("cc1plus of {}", gxx.name),
        &gxx.hint,
    ));
    let libc_hint = target.libc_dev_hint();
    for (file, driver, hint) in [
        ("liblto_plugin.so", &gcc, &gcc.hint),
        ("libgcc.a", &gcc, &gcc.hint),
        ("libgcc_s.so", &gcc, &gcc.hint),
        ("libc.so", &gcc, &libc_hint),
        ("crt1.o", &gcc, &libc_hint),
        ("libstdc++.so", &gxx, &gxx.hint),
    ] {
        let p = driver.file_name(file, hint)?;
        wanted.push(Wanted::new(&p, format!("{file} of {}", driver.name), hint));
    }
    for (driver, lang, header, hint) in [
        (&gcc, "c", "stdio.h", &libc_hint),
        (&gcc, "c", "stddef.h", &gcc.hint),
        (&gxx, "c++", "iostream", &gxx.hint),
    ] {
        let p = driver.find_header(lang, header, hint)?;
        wanted.push(Wanted::new(
            &p,
            format!("<{header}> of {}", driver.name),
            hint,
        ));
    }
    wanted.push(Wanted::new(
        Path::new("/bin/sh"),
        "the shell /bin/sh".to_owned(),
        "apt-get install dash",
    ));

    // 3: owners.
    let owners = find_owners(&wanted)?;
    let mut seeds: BTreeSet<String> = BTreeSet::new();
    for (w, names) in wanted.iter().zip(&owners) {
        if names.is_empty() {
            return Err(BundleError::Definition {
                path: w.path.clone(),
                message: format!(
                    "{} is not a file of any installed Debian package (a capture takes only \
                     packaged files); {}",
                    w.what, w.hint
                ),
            });
        }
        for n in names {
            seeds.insert(db.resolve_installed(n, &w.hint)?);
        }
    }
    for name in BASE_PACKAGES.iter().copied() {
        seeds.insert(db.resolve_installed(name, &format!("apt-get install {name}"))?);
    }
    let mut explicit = BTreeSet::new();
    for name in &spec.packages {
        let id = db.resolve_installed(name, &format!("apt-get install {name}"))?;
        explicit.insert(id.clone());
        seeds.insert(id);
    }

    // 4: the dependency closure.
    let (closure, excluded) = db.closure(&seeds, &explicit);

    // 5: the packages' files.
    let mut plan = Plan::default();
    let mut canon = Canonicalizer::default();
    for name in MERGED_TOP {
        let p = Path::new("/").join(name);
        if let Ok(meta) = std::fs::symlink_metadata(&p)
            && meta.file_type().is_symlink()
        {
            let t = std::fs::read_link(&p).map_err(|e| io_err(&p, e))?;
            plan.insert((*name).to_owned(), Node::Symlink(path_str(&t)?.to_owned()))?;
        }
    }
    for id in &closure {
        for listed in db.list_files(id)? {
            plan.add_host_entry(&listed, &mut canon, false)?;
        }
    }

    // 6: the extra programs.
    let mut runner: Option<String> = None;
    for prog in &spec.programs {
        let given = if prog.contains('/') {
            PathBuf::from(prog)
        } else {
            find_on_path(prog, SEARCH_PATH).ok_or_else(|| BundleError::Definition {
                path: PathBuf::from(prog),
                message: format!(
                    "program not found in {}; install it{}",
                    SEARCH_PATH.join(":"),
                    qemu_hint(prog)
                ),
            })?
        };
        let rel =
            plan.add_host_chain(&given, &mut canon)?
                .ok_or_else(|| BundleError::Definition {
                    path: given.clone(),
                    message: "program does not exist or is not a regular file".into(),
                })?;
        let base = given.file_name().and_then(OsStr::to_str).unwrap_or("");
        if target.qemu_names().iter().any(|n| n == base) {
            runner = Some(rel);
        }
    }

    // 7: shared libraries.
    let extra_libraries = plan.check_elves(&host, &mut canon)?;

    // 8: the package record.
    let mut packages: Vec<String> = closure.iter().map(|id| db.describe(id)).collect();
    packages.sort();
    let mut record = String::new();
    for p in &packages {
        record.push_str(p);
        record.push('\n');
    }
    plan.insert(PACKAGES_FILE.to_owned(), Node::Content(record.into_bytes()))?;

    // Entry points and environment.
    let mut entry_points = BTreeMap::new();
    let mut env = BTreeMap::new();
    for (entry, var, driver) in [("cc", "CC", &gcc), ("cxx", "CXX", &gxx), ("ar", "AR", &ar)] {
        let rel = plan.entry(&driver.real)?;
        env.insert(var.to_owned(), format!("/{rel}"));
        entry_points.insert(entry.to_owned(), rel);
    }
    let sh = plan
        .resolve("/bin/sh")
        .ok_or_else(|| BundleError::Definition {
            path: PathBuf::from("/bin/sh"),
            message: "the captured tree has no /bin/sh; apt-get install dash".into(),
        })?;
    entry_points.insert("sh".to_owned(), sh);
    if target.triple == host.triple {
        env.insert("TEST_RUNNER".to_owned(), String::new());
    } else if let Some(rel) = runner {
        let sysroot = format!("/usr/{}", target.triple);
        if !plan.dirs.contains(&sysroot[1..]) {
            return Err(BundleError::Definition {
                path: PathBuf::from(&sysroot),
                message: format!(
                    "the target's run-time libraries are not in the captured tree, so \
                     {rel} cannot run its programs; {libc_hint}"
                ),
            });
        }
        env.insert("TEST_RUNNER".to_owned(), format!("/{rel} -L {sysroot}"));
        entry_points.insert("test_runner".to_owned(), rel);
    }

    let (files, bytes) = plan.write(dest)?;
    Ok(Captured {
        entry_points,
        env,
        packages,
        excluded,
        extra_libraries,
        files,
        bytes,
    })
}

// ---------------------------------------------------------------------------------------
// Host and target.

struct Host {
    /// GNU triple, e.g. "x86_64-linux-gnu".
    triple: String,
    /// ELF e_machine of host binaries.
    machine: u16,
    /// The dynamic loader's system search path.
    lib_dirs: Vec<String>,
}

impl Host {
    fn detect() -> Result<Host, BundleError> {
        let (triple, machine) = match std::env::consts::ARCH {
            "x86_64" => ("x86_64-linux-gnu", object::elf::EM_X86_64),
            "aarch64" => ("aarch64-linux-gnu", object::elf::EM_AARCH64),
            other => {
                return Err(BundleError::Definition {
                    path: PathBuf::from("/"),
                    message: format!(
                        "capturing toolchains is supported on x86_64 and aarch64 hosts, not \
                         {other}"
                    ),
                });
            }
        };
        Ok(Host {
            triple: triple.to_owned(),
            machine,
            lib_dirs: vec![
                format!("/lib/{triple}"),
                format!("/usr/lib/{triple}"),
                "/lib".to_owned(),
                "/usr/lib".to_owned(),
            ],
        })
    }
}

struct Target {
    triple: String,
    gcc_pkg: String,
    gxx_pkg: String,
    binutils_pkg: String,
    /// Debian architecture of the target, when known.
    deb_arch: Option<&'static str>,
    cross: bool,
}

impl Target {
    fn new(triple: &str, host: &Host) -> Result<Target, BundleError> {
        let ok = triple.contains("-linux-")
            && triple
                .bytes()
                .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-'))
            && !triple.starts_with('-');
        if !ok {
            return Err(BundleError::Definition {
                path: PathBuf::from(triple),
                message: "the target must be a GNU triple such as x86_64-linux-gnu or \
                          aarch64-linux-gnu"
                    .into(),
            });
        }
        let cross = triple != host.triple;
        let pkg = |base: &str| {
            if cross {
                format!("{base}-{triple}")
            } else {
                base.to_owned()
            }
        };
        let deb_arch = match triple.split('-').next() {
            Some("x86_64") => Some("amd64"),
            Some("aarch64") => Some("arm64"),
            Some("riscv64") => Some("riscv64"),
            Some("powerpc64le") => Some("ppc64el"),
            Some("s390x") => Some("s390x"),
            _ => None,
        };
        Ok(Target {
            triple: triple.to_owned(),
            gcc_pkg: pkg("gcc"),
            gxx_pkg: pkg("g++"),
            binutils_pkg: pkg("binutils"),
            deb_arch,
            cross,
        })
    }

    fn libc_dev_hint(&self) -> String {
        match (self.cross, self.deb_arch) {
            (false, _) => "apt-get install libc6-dev".to_owned(),
            (true, Some(a)) => format!("apt-get install libc6-dev-{a}-cross"),
            (true, None) => format!("install the C library for {}", self.triple),
        }
    }

    /// Names of the qemu user-mode emulator for the target.
    fn qemu_names(&self) -> Vec<String> {
        if !self.cross {
            return Vec::new();
        }
        let cpu = self.triple.split('-').next().unwrap_or_default();
        let cpu = match cpu {
            "i386" | "i486" | "i586" | "i686" => "i386",
            "powerpc64le" => "ppc64le",
            c if c.starts_with("arm") => "arm",
            c => c,
        };
        vec![format!("qemu-{cpu}-static"), format!("qemu-{cpu}")]
    }
}

fn qemu_hint(prog: &str) -> &'static str {
    if prog.starts_with("qemu-") {
        " (apt-get install qemu-user-static)"
    } else {
        ""
    }
}

fn check_dest(dest: &Path) -> Result<(), BundleError> {
    match std::fs::read_dir(dest) {
        Ok(mut rd) => {
            if rd.next().is_some() {
                return Err(BundleError::Definition {
                    path: dest.to_owned(),
                    message: "the capture directory must be empty or missing".into(),
                });
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(dest, e)),
    }
}

// ---------------------------------------------------------------------------------------
// Running commands.

/// Runs `cmd` in the C locale (messages are parsed) and returns its output; fails if it
/// cannot be started. `what` names the program in errors, `hint` says what to install.
fn run(cmd: &mut Command, what: &Path, hint: &str) -> Result<std::process::Output, BundleError> {
    cmd.env("LC_ALL", "C")
        .env_remove("LANGUAGE")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| BundleError::Definition {
            path: what.to_owned(),
            message: format!("cannot run it: {e}; {hint}"),
        })
}

fn find_on_path(name: &str, dirs: &[&str]) -> Option<PathBuf> {
    dirs.iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

fn path_str(p: &Path) -> Result<&str, BundleError> {
    p.to_str().ok_or_else(|| BundleError::Definition {
        path: p.to_owned(),
        message: "path is not UTF-8".into(),
    })
}

// ---------------------------------------------------------------------------------------
// The compiler driver.

struct Driver {
    /// E.g. "x86_64-linux-gnu-gcc".
    name: String,
    /// Where it was found, e.g. /usr/bin/x86_64-linux-gnu-gcc.
    given: PathBuf,
    /// The real file, e.g. /usr/bin/x86_64-linux-gnu-gcc-12.
    real: PathBuf,
    /// "apt-get install <package>".
    hint: String,
}

impl Driver {
    fn find(name: &str, package: &str) -> Result<Driver, BundleError> {
        let hint = format!("apt-get install {package}");
        let given =
            find_on_path(name, &["/usr/bin", "/bin"]).ok_or_else(|| BundleError::Definition {
                path: PathBuf::from("/usr/bin").join(name),
                message: format!("not found; {hint}"),
            })?;
        let real = given.canonicalize().map_err(|e| io_err(&given, e))?;
        Ok(Driver {
            name: name.to_owned(),
            given,
            real,
            hint,
        })
    }

    fn ask(&self, arg: &str, hint: &str) -> Result<String, BundleError> {
        let out = run(Command::new(&self.real).arg(arg), &self.real, hint)?;
        if !out.status.success() {
            return Err(BundleError::Definition {
                path: self.real.clone(),
                message: format!(
                    "`{} {arg}` failed ({}): {}; {hint}",
                    self.name,
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// `-print-prog-name=`: an absolute path, or a bare name the driver runs from PATH.
    fn prog_name(&self, prog: &str, package: &str) -> Result<PathBuf, BundleError> {
        let hint = format!("apt-get install {package}");
        let answer = self.ask(&format!("-print-prog-name={prog}"), &hint)?;
        let path = if answer.starts_with('/') {
            PathBuf::from(&answer)
        } else {
            find_on_path(&answer, SEARCH_PATH).unwrap_or_else(|| PathBuf::from(&answer))
        };
        if !path.is_file() {
            return Err(BundleError::Definition {
                path: self.real.clone(),
                message: format!("its {prog} ('{answer}') does not exist; {hint}"),
            });
        }
        Ok(path)
    }

    /// `-print-file-name=`: the driver answers the bare name when it has no such file.
    fn file_name(&self, file: &str, hint: &str) -> Result<PathBuf, BundleError> {
        let answer = self.ask(&format!("-print-file-name={file}"), hint)?;
        let path = PathBuf::from(&answer);
        if !answer.starts_with('/') || !path.exists() {
            return Err(BundleError::Definition {
                path: self.real.clone(),
                message: format!("it finds no {file}; {hint}"),
            });
        }
        Ok(path)
    }

    /// The first `header` in the driver's `#include <...>` search list for `lang`.
    fn find_header(&self, lang: &str, header: &str, hint: &str) -> Result<PathBuf, BundleError> {
        let out = run(
            Command::new(&self.real).args([
                &format!("-x{lang}"),
                "-E",
                "-v",
                "/dev/null",
                "-o",
                "/dev/null",
            ]),
            &self.real,
            hint,
        )?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            return Err(BundleError::Definition {
                path: self.real.clone(),
                message: format!(
                    "`{} -x{lang} -E -v` failed ({}): {}; {hint}",
                    self.name,
                    out.status,
                    stderr.trim()
                ),
            });
        }
        let dirs: Vec<&str> = stderr
            .lines()
            .skip_while(|l| !l.starts_with("#include <...> search starts here:"))
            .skip(1)
            .take_while(|l| !l.starts_with("End of search list."))
            .map(str::trim)
            .collect();
        dirs.iter()
            .map(|d| Path::new(d).join(header))
            .find(|p| p.is_file())
            .ok_or_else(|| BundleError::Definition {
                path: self.real.clone(),
                message: format!(
                    "<{header}> is in none of its {lang} include directories ({}); {hint}",
                    dirs.join(", ")
                ),
            })
    }
}

// ---------------------------------------------------------------------------------------
// Owners (dpkg -S).

/// A file the toolchain uses, whose owning package is captured.
struct Wanted {
    path: PathBuf,
    what: String,
    hint: String,
}

impl Wanted {
    fn new(path: &Path, what: String, hint: &str) -> Wanted {
        Wanted {
            path: path.to_owned(),
            what,
            hint: hint.to_owned(),
        }
    }

    /// Paths dpkg may have recorded the file under: as given (directories resolved), its
    /// real path, and the un-merged (`/bin`, `/lib`, ...) or merged alias of each.
    fn candidates(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut add = |p: &Path| {
            if let Some(s) = p.to_str() {
                out.insert(s.to_owned());
                if let Some(a) = merge_alias(s) {
                    out.insert(a);
                }
            }
        };
        add(&lexical_normalize(&self.path));
        if let (Some(parent), Some(name)) = (self.path.parent(), self.path.file_name())
            && let Ok(p) = parent.canonicalize()
        {
            add(&p.join(name));
        }
        if let Ok(real) = self.path.canonicalize() {
            add(&real);
        }
        out
    }
}

/// `/usr/bin/x` <-> `/bin/x` (and sbin, lib, lib64, ...).
fn merge_alias(p: &str) -> Option<String> {
    for top in MERGED_TOP {
        if let Some(rest) = p.strip_prefix(&format!("/usr/{top}/")) {
            return Some(format!("/{top}/{rest}"));
        }
        if let Some(rest) = p.strip_prefix(&format!("/{top}/")) {
            return Some(format!("/usr/{top}/{rest}"));
        }
    }
    None
}

/// Removes `.` and `..` components without looking at the file system.
fn lexical_normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

/// Owners (package ids as dpkg prints them) of each wanted file, from one `dpkg -S` run.
fn find_owners(wanted: &[Wanted]) -> Result<Vec<BTreeSet<String>>, BundleError> {
    let cands: Vec<BTreeSet<String>> = wanted.iter().map(Wanted::candidates).collect();
    let all: BTreeSet<&String> = cands.iter().flatten().collect();
    let dpkg = Path::new("dpkg");
    // dpkg treats `*[?\` as a glob; escape them so that the path matches literally.
    let args: Vec<String> = all
        .iter()
        .map(|p| {
            p.chars()
                .flat_map(|c| {
                    let esc = matches!(c, '*' | '[' | '?' | '\\');
                    esc.then_some('\\').into_iter().chain([c])
                })
                .collect()
        })
        .collect();
    let out = run(
        Command::new("dpkg").arg("-S").args(&args),
        dpkg,
        "this works only on Debian-based systems with dpkg",
    )?;
    let mut by_path: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if line.starts_with("diversion by ") || line.starts_with("local diversion ") {
            continue;
        }
        let Some(i) = line.find(": /") else { continue };
        let (pkgs, path) = (&line[..i], &line[i + 2..]);
        by_path
            .entry(path.to_owned())
            .or_default()
            .extend(pkgs.split(", ").map(|s| s.trim().to_owned()));
    }
    Ok(cands
        .iter()
        .map(|c| {
            c.iter()
                .filter_map(|p| by_path.get(p))
                .flatten()
                .cloned()
                .collect()
        })
        .collect())
}

// ---------------------------------------------------------------------------------------
// The package database.

struct Package {
    /// `${binary:Package}`: "libc6:amd64" for Multi-Arch: same packages, else the name.
    name: String,
    arch: String,
    version: String,
    depends: String,
}

struct PackageDb {
    /// Installed packages by id (`${binary:Package}`).
    pkgs: BTreeMap<String, Package>,
    /// Package name -> ids.
    by_name: BTreeMap<String, Vec<String>>,
    /// Virtual package name -> ids of installed packages providing it.
    providers: BTreeMap<String, Vec<String>>,
    native_arch: String,
}

impl PackageDb {
    fn load() -> Result<PackageDb, BundleError> {
        let hint = "this works only on Debian-based systems with dpkg";
        let q = Path::new("dpkg-query");
        let out = run(
            Command::new("dpkg-query").args([
                "-W",
                "-f=${binary:Package}\\t${Package}\\t${Architecture}\\t${Version}\\t\
                 ${db:Status-Status}\\t${Provides}\\t${Depends}, ${Pre-Depends}\\n",
            ]),
            q,
            hint,
        )?;
        if !out.status.success() {
            return Err(BundleError::Definition {
                path: q.to_owned(),
                message: format!(
                    "listing the installed packages failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
        let arch = run(
            Command::new("dpkg").arg("--print-architecture"),
            Path::new("dpkg"),
            hint,
        )?;
        let native_arch = String::from_utf8_lossy(&arch.stdout).trim().to_owned();
        let mut db = PackageDb {
            pkgs: BTreeMap::new(),
            by_name: BTreeMap::new(),
            providers: BTreeMap::new(),
            native_arch,
        };
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let f: Vec<&str> = line.split('\t').collect();
            let [id, name, arch, version, status, provides, depends] = f[..] else {
                continue;
            };
            if status != "installed" {
                continue;
            }
            for p in provides.split(',') {
                if let Some(v) = dep_name(p) {
                    db.providers
                        .entry(v.0.to_owned())
                        .or_default()
                        .push(id.to_owned());
                }
            }
            db.by_name
                .entry(name.to_owned())
                .or_default()
                .push(id.to_owned());
            db.pkgs.insert(
                id.to_owned(),
                Package {
                    name: name.to_owned(),
                    arch: arch.to_owned(),
                    version: version.to_owned(),
                    depends: depends.to_owned(),
                },
            );
        }
        Ok(db)
    }

    /// "name version" ("name:arch version" for a foreign architecture).
    fn describe(&self, id: &str) -> String {
        let p = &self.pkgs[id];
        if p.arch == self.native_arch || p.arch == "all" {
            format!("{} {}", p.name, p.version)
        } else {
            format!("{}:{} {}", p.name, p.arch, p.version)
        }
    }

    /// The installed package `name` (an id as dpkg prints it, or a plain name) names.
    fn resolve_installed(&self, name: &str, hint: &str) -> Result<String, BundleError> {
        if self.pkgs.contains_key(name) {
            return Ok(name.to_owned());
        }
        let (base, qual) = match name.split_once(':') {
            Some((b, q)) => (b, Some(q)),
            None => (name, None),
        };
        self.pick(base, qual, &self.native_arch)
            .ok_or_else(|| BundleError::Definition {
                path: PathBuf::from(format!("package {name}")),
                message: format!("not installed; {hint}"),
            })
    }

    /// An installed package satisfying a dependency on `name` (with an optional
    /// architecture qualifier) from a package of architecture `from_arch`.
    fn pick(&self, name: &str, qual: Option<&str>, from_arch: &str) -> Option<String> {
        let ids = self
            .by_name
            .get(name)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let arch_of = |id: &String| self.pkgs[id].arch.as_str();
        let found = match qual {
            Some(q) if q != "any" && q != "native" => ids.iter().find(|id| arch_of(id) == q),
            Some("native") => ids
                .iter()
                .find(|id| matches!(arch_of(id), a if a == self.native_arch || a == "all")),
            _ => ids
                .iter()
                .find(|id| arch_of(id) == from_arch)
                .or_else(|| ids.iter().find(|id| arch_of(id) == "all"))
                .or_else(|| ids.iter().find(|id| arch_of(id) == self.native_arch))
                .or_else(|| ids.first()),
        };
        found.cloned().or_else(|| {
            let provs = self.providers.get(name)?;
            provs
                .iter()
                .find(|id| matches!(arch_of(id), a if a == from_arch || a == "all"))
                .or_else(|| provs.first())
                .cloned()
        })
    }

    /// The closure of `seeds` over Depends and Pre-Depends, and the dependencies left out
    /// by the deny list (`explicit` packages are never left out).
    fn closure(
        &self,
        seeds: &BTreeSet<String>,
        explicit: &BTreeSet<String>,
    ) -> (BTreeSet<String>, Vec<String>) {
        let mut done: BTreeSet<String> = BTreeSet::new();
        let mut excluded: BTreeSet<String> = BTreeSet::new();
        let mut queue: VecDeque<String> = seeds.iter().cloned().collect();
        while let Some(id) = queue.pop_front() {
            if !done.insert(id.clone()) {
                continue;
            }
            let pkg = &self.pkgs[&id];
            for group in pkg.depends.split(',') {
                let chosen = group.split('|').find_map(|alt| {
                    let (name, qual) = dep_name(alt)?;
                    self.pick(name, qual, &pkg.arch)
                });
                let Some(dep) = chosen else {
                    // Not installed at all: dpkg would not have configured the package, so
                    // this is an alternative satisfied some other way; nothing to capture.
                    continue;
                };
                let dep_pkg_name = self.pkgs[&dep].name.as_str();
                if DENIED_DEPENDENCIES.iter().any(|(n, _)| *n == dep_pkg_name)
                    && !explicit.contains(&dep)
                {
                    excluded.insert(self.pkgs[&dep].name.clone());
                    continue;
                }
                if !done.contains(&dep) {
                    queue.push_back(dep);
                }
            }
        }
        for e in explicit {
            excluded.remove(&self.pkgs[e].name);
        }
        (done, excluded.into_iter().collect())
    }

    /// The files `dpkg -L` lists for package `id` (directories included), with diverted
    /// files at the path their content is really at.
    fn list_files(&self, id: &str) -> Result<Vec<PathBuf>, BundleError> {
        let out = run(
            Command::new("dpkg").args(["-L", id]),
            Path::new("dpkg"),
            "dpkg is needed",
        )?;
        if !out.status.success() {
            return Err(BundleError::Definition {
                path: PathBuf::from(format!("package {id}")),
                message: format!(
                    "`dpkg -L {id}` failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
        let mut files: Vec<PathBuf> = Vec::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if line.starts_with('/') {
                files.push(PathBuf::from(line));
            } else if let Some(to) = line
                .strip_prefix("diverted by ")
                .and_then(|r| r.split_once(" to: "))
                .map(|(_, to)| to)
                .or_else(|| line.strip_prefix("locally diverted to: "))
            {
                // This package's copy of the previous file lives at `to`.
                if let Some(last) = files.last_mut() {
                    *last = PathBuf::from(to);
                }
            }
            // "package diverts others to: X": the previous file is ours; nothing to do.
        }
        Ok(files)
    }
}

/// The package name and architecture qualifier of one dependency alternative or provided
/// name: `libc6:any (>= 2.36)` -> ("libc6", Some("any")).
fn dep_name(alt: &str) -> Option<(&str, Option<&str>)> {
    let s = alt.trim();
    let s = s.split(['(', '[', '<']).next()?.trim();
    if s.is_empty() {
        return None;
    }
    Some(match s.split_once(':') {
        Some((n, q)) => (n.trim(), Some(q.trim())),
        None => (s, None),
    })
}

// ---------------------------------------------------------------------------------------
// The tree, planned in memory and written at the end.

enum Node {
    /// A regular file copied from the host: (source, executable).
    File(PathBuf, bool),
    /// A file with these contents (0644).
    Content(Vec<u8>),
    /// A symlink with this target text.
    Symlink(String),
}

#[derive(Default)]
struct Plan {
    /// Relative path (real, usr-merged) -> node.
    nodes: BTreeMap<String, Node>,
    /// Every directory implied by the nodes' paths.
    dirs: BTreeSet<String>,
}

/// Canonicalises host directories, with a cache (thousands of files share a few hundred).
#[derive(Default)]
struct Canonicalizer(HashMap<PathBuf, Option<PathBuf>>);

impl Canonicalizer {
    fn dir(&mut self, p: &Path) -> Option<PathBuf> {
        self.0
            .entry(p.to_owned())
            .or_insert_with(|| p.canonicalize().ok())
            .clone()
    }

    /// The real path of a host entry: its directory resolved, its last component kept.
    fn place(&mut self, p: &Path) -> Option<PathBuf> {
        let name = p.file_name()?;
        Some(self.dir(p.parent()?)?.join(name))
    }
}

fn rel_of(real: &Path) -> Result<String, BundleError> {
    let s = path_str(real)?;
    Ok(s.trim_start_matches('/').to_owned())
}

impl Plan {
    fn insert(&mut self, rel: String, node: Node) -> Result<(), BundleError> {
        crate::manifest::check_path(&rel).map_err(|error| BundleError::Definition {
            path: PathBuf::from(format!("/{rel}")),
            message: error.to_string(),
        })?;
        let mut p = rel.as_str();
        while let Some((parent, _)) = p.rsplit_once('/') {
            if !self.dirs.insert(parent.to_owned()) {
                break;
            }
            p = parent;
        }
        self.nodes.entry(rel).or_insert(node);
        Ok(())
    }

    /// Adds the host entry `listed` (a file, symlink or directory; missing ones and skipped
    /// paths are ignored) at its real path. Returns the path in the tree, if added.
    fn add_host_entry(
        &mut self,
        listed: &Path,
        canon: &mut Canonicalizer,
        keep_skipped: bool,
    ) -> Result<Option<(String, Option<PathBuf>)>, BundleError> {
        let Some(real) = canon.place(listed) else {
            return Ok(None);
        };
        let Ok(meta) = std::fs::symlink_metadata(&real) else {
            return Ok(None);
        };
        let rel = rel_of(&real)?;
        if rel.is_empty() || (!keep_skipped && SKIPPED_PREFIXES.iter().any(|s| rel.starts_with(s)))
        {
            return Ok(None);
        }
        let ft = meta.file_type();
        if ft.is_dir() {
            return Ok(None);
        }
        if ft.is_symlink() {
            let t = std::fs::read_link(&real).map_err(|e| io_err(&real, e))?;
            let text = path_str(&t)?.to_owned();
            let next = real.parent().unwrap_or(Path::new("/")).join(&t);
            self.insert(rel.clone(), Node::Symlink(text))?;
            return Ok(Some((rel, Some(next))));
        }
        if ft.is_file() {
            let exec = meta.permissions().mode() & 0o111 != 0;
            self.insert(rel.clone(), Node::File(real, exec))?;
            return Ok(Some((rel, None)));
        }
        Err(BundleError::Definition {
            path: real,
            message: "not a regular file, directory or symlink; a toolchain holds only those"
                .into(),
        })
    }

    /// Adds the host file at `path` and the symlinks leading to it; returns the regular
    /// file's path in the tree (None if `path` does not lead to one).
    fn add_host_chain(
        &mut self,
        path: &Path,
        canon: &mut Canonicalizer,
    ) -> Result<Option<String>, BundleError> {
        let mut p = path.to_owned();
        for _ in 0..40 {
            match self.add_host_entry(&p, canon, true)? {
                None => return Ok(None),
                Some((rel, None)) => return Ok(Some(rel)),
                Some((_, Some(next))) => p = next,
            }
        }
        Err(BundleError::Definition {
            path: path.to_owned(),
            message: "too many levels of symbolic links".into(),
        })
    }

    /// The tree path of the regular file at the host path `real`.
    fn entry(&self, real: &Path) -> Result<String, BundleError> {
        let rel = rel_of(real)?;
        match self.nodes.get(&rel) {
            Some(Node::File(..)) => Ok(rel),
            _ => Err(BundleError::Definition {
                path: real.to_owned(),
                message: "not captured although its package was (is it diverted?)".into(),
            }),
        }
    }

    /// Resolves the absolute sandbox path `abs` inside the tree the way the kernel would
    /// in a sandbox rooted at it; returns the regular file's tree path.
    fn resolve(&self, abs: &str) -> Option<String> {
        let mut stack: Vec<String> = abs.rsplit('/').map(str::to_owned).collect();
        let mut cur: Vec<String> = Vec::new();
        let mut hops = 0;
        while let Some(c) = stack.pop() {
            match c.as_str() {
                "" | "." => continue,
                ".." => {
                    cur.pop();
                    continue;
                }
                _ => {}
            }
            cur.push(c);
            let p = cur.join("/");
            match self.nodes.get(&p) {
                Some(Node::Symlink(t)) => {
                    hops += 1;
                    if hops > 40 {
                        return None;
                    }
                    cur.pop();
                    if t.starts_with('/') {
                        cur.clear();
                    }
                    stack.extend(t.rsplit('/').map(str::to_owned));
                }
                Some(_) => return stack.iter().all(|s| s.is_empty()).then_some(p),
                None if self.dirs.contains(&p) => {}
                None => return None,
            }
        }
        None
    }

    /// Checks the shared libraries of every host-architecture ELF in the tree, copying
    /// missing ones (and program interpreters) from the host. Returns the copied files.
    fn check_elves(
        &mut self,
        host: &Host,
        canon: &mut Canonicalizer,
    ) -> Result<Vec<String>, BundleError> {
        let mut added: BTreeSet<String> = BTreeSet::new();
        let mut checked: BTreeSet<String> = BTreeSet::new();
        loop {
            let todo: Vec<(String, PathBuf)> = self
                .nodes
                .iter()
                .filter(|(rel, _)| !checked.contains(*rel))
                .filter_map(|(rel, n)| match n {
                    Node::File(src, _) => Some((rel.clone(), src.clone())),
                    _ => None,
                })
                .collect();
            if todo.is_empty() {
                break;
            }
            for (rel, src) in todo {
                checked.insert(rel.clone());
                let Some(info) = read_elf(&src, host.machine)? else {
                    continue;
                };
                let origin = Path::new("/").join(&rel);
                let origin = origin.parent().unwrap_or(Path::new("/"));
                let origin = path_str(origin)?;
                if let Some(interp) = &info.interp
                    && self.resolve(interp).is_none()
                {
                    self.copy_missing(interp, &src, &mut added, canon)?;
                }
                let mut dirs: Vec<String> = Vec::new();
                let search = if info.runpath.is_empty() {
                    &info.rpath
                } else {
                    &info.runpath
                };
                for d in search.iter().flat_map(|s| s.split(':')) {
                    if ["$LIB", "${LIB}", "$PLATFORM", "${PLATFORM}"]
                        .iter()
                        .any(|t| d.contains(t))
                    {
                        continue;
                    }
                    let d = d.replace("${ORIGIN}", origin).replace("$ORIGIN", origin);
                    if d.starts_with('/') {
                        dirs.push(d);
                    }
                }
                dirs.extend(host.lib_dirs.iter().cloned());
                for lib in &info.needed {
                    let candidates: Vec<String> = if lib.contains('/') {
                        vec![lib.clone()]
                    } else {
                        dirs.iter().map(|d| format!("{d}/{lib}")).collect()
                    };
                    let in_tree = candidates.iter().any(|c| {
                        self.resolve(c).is_some_and(|r| match self.nodes.get(&r) {
                            Some(Node::File(s, _)) => {
                                matches!(read_elf(s, host.machine), Ok(Some(_)))
                            }
                            _ => false,
                        })
                    });
                    if in_tree {
                        continue;
                    }
                    let on_host = candidates.iter().find(|c| {
                        Path::new(c).is_file()
                            && matches!(read_elf(Path::new(c), host.machine), Ok(Some(_)))
                    });
                    match on_host {
                        Some(c) => {
                            let c = c.clone();
                            self.copy_missing(&c, &src, &mut added, canon)?;
                        }
                        None => {
                            return Err(BundleError::Definition {
                                path: src.clone(),
                                message: format!(
                                    "needs the shared library {lib}, which is neither in the \
                                     captured packages nor on this host (searched {}); \
                                     install the package providing it",
                                    dirs.join(":")
                                ),
                            });
                        }
                    }
                }
            }
        }
        Ok(added.into_iter().collect())
    }

    fn copy_missing(
        &mut self,
        host_path: &str,
        needed_by: &Path,
        added: &mut BTreeSet<String>,
        canon: &mut Canonicalizer,
    ) -> Result<(), BundleError> {
        match self.add_host_chain(Path::new(host_path), canon)? {
            Some(rel) => {
                added.insert(rel);
                Ok(())
            }
            None => Err(BundleError::Definition {
                path: needed_by.to_owned(),
                message: format!("needs {host_path}, which does not exist on this host"),
            }),
        }
    }

    /// Writes the tree under `dest`; returns (files and symlinks, bytes of regular files).
    fn write(&self, dest: &Path) -> Result<(usize, u64), BundleError> {
        std::fs::create_dir_all(dest).map_err(|e| io_err(dest, e))?;
        mkdir(dest)?;
        for d in &self.dirs {
            mkdir(&dest.join(d))?;
        }
        let mut bytes = 0u64;
        for (rel, node) in &self.nodes {
            let to = dest.join(rel);
            match node {
                Node::Symlink(t) => {
                    std::os::unix::fs::symlink(t, &to).map_err(|e| io_err(&to, e))?;
                }
                Node::File(src, exec) => {
                    let mut from = File::open(src).map_err(|e| io_err(src, e))?;
                    let mut out = File::create(&to).map_err(|e| io_err(&to, e))?;
                    bytes += std::io::copy(&mut from, &mut out).map_err(|e| io_err(&to, e))?;
                    let mode = if *exec { 0o755 } else { 0o644 };
                    out.set_permissions(std::fs::Permissions::from_mode(mode))
                        .map_err(|e| io_err(&to, e))?;
                }
                Node::Content(c) => {
                    std::fs::write(&to, c).map_err(|e| io_err(&to, e))?;
                    std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o644))
                        .map_err(|e| io_err(&to, e))?;
                    bytes += c.len() as u64;
                }
            }
        }
        Ok((self.nodes.len(), bytes))
    }
}

fn mkdir(p: &Path) -> Result<(), BundleError> {
    match std::fs::create_dir(p) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && p.is_dir() => {}
        Err(e) => return Err(io_err(p, e)),
    }
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).map_err(|e| io_err(p, e))
}

// ---------------------------------------------------------------------------------------
// ELF.

/// What the dynamic loader needs for an ELF file.
struct ElfInfo {
    interp: Option<String>,
    needed: Vec<String>,
    rpath: Vec<String>,
    runpath: Vec<String>,
}

/// Reads a 64-bit little-endian ELF for `machine`; None if `path` is not one (other
/// architectures, archives, scripts, ...). Malformed dynamic sections are errors.
///
/// Only what the dynamic loader uses is read: the program headers, `PT_INTERP`,
/// `PT_DYNAMIC` and the string table `DT_STRTAB` points to (found through the `PT_LOAD`
/// segment holding its address, as the loader does; section headers are not used).
fn read_elf(path: &Path, machine: u16) -> Result<Option<ElfInfo>, BundleError> {
    use object::elf::{DT_NEEDED, DT_NULL, DT_RPATH, DT_RUNPATH, DT_STRSZ, DT_STRTAB};
    use object::elf::{FileHeader64, PT_DYNAMIC, PT_INTERP, PT_LOAD};
    use object::read::elf::{Dyn as _, FileHeader as _, ProgramHeader as _};
    use object::{LittleEndian, ReadCache, ReadRef as _};

    let f = File::open(path).map_err(|e| io_err(path, e))?;
    let cache = ReadCache::new(f);
    let data = &cache;
    let Ok(header) = FileHeader64::<LittleEndian>::parse(data) else {
        return Ok(None);
    };
    let Ok(endian) = header.endian() else {
        return Ok(None); // big-endian
    };
    if header.e_machine(endian) != machine {
        return Ok(None);
    }
    let bad = |what: &str| BundleError::Definition {
        path: path.to_owned(),
        message: format!("malformed ELF file: {what}"),
    };
    let mut info = ElfInfo {
        interp: None,
        needed: Vec::new(),
        rpath: Vec::new(),
        runpath: Vec::new(),
    };
    if header.e_phnum(endian) == 0 {
        return Ok(Some(info));
    }
    if header.e_phnum(endian) > 4096 {
        return Err(bad("program header table"));
    }
    let phdrs = header
        .program_headers(endian, data)
        .map_err(|e| bad(&format!("program header table: {e}")))?;
    let mut dynamic = None;
    for ph in phdrs {
        match ph.p_type(endian) {
            PT_INTERP => {
                if ph.p_filesz(endian) > 4096 {
                    return Err(bad("PT_INTERP too long"));
                }
                let b = ph.data(endian, data).map_err(|()| bad("PT_INTERP"))?;
                let s = b.split(|&c| c == 0).next().unwrap_or_default();
                info.interp = Some(String::from_utf8_lossy(s).into_owned());
            }
            PT_DYNAMIC => {
                if ph.p_filesz(endian) > 1 << 20 {
                    return Err(bad("PT_DYNAMIC too large"));
                }
                dynamic = ph
                    .dynamic(endian, data)
                    .map_err(|e| bad(&format!("PT_DYNAMIC: {e}")))?;
            }
            _ => {}
        }
    }
    let Some(dynamic) = dynamic else {
        return Ok(Some(info));
    };
    let (mut strtab, mut strsz) = (None, None);
    let mut refs: Vec<(i64, u64)> = Vec::new(); // (tag, string offset)
    for d in dynamic {
        let (tag, val) = (d.d_tag(endian), d.d_val(endian));
        match tag {
            DT_NULL => break,
            DT_STRTAB => strtab = Some(val),
            DT_STRSZ => strsz = Some(val),
            DT_NEEDED | DT_RPATH | DT_RUNPATH => refs.push((tag, val)),
            _ => {}
        }
    }
    if refs.is_empty() {
        return Ok(Some(info));
    }
    let (Some(strtab), Some(strsz)) = (strtab, strsz) else {
        return Err(bad("dynamic section without a string table"));
    };
    if strsz > 16 << 20 {
        return Err(bad("string table too large"));
    }
    let stroff = phdrs
        .iter()
        .filter(|ph| ph.p_type(endian) == PT_LOAD)
        .map(|ph| (ph.p_vaddr(endian), ph.p_filesz(endian), ph.p_offset(endian)))
        .find(|&(v, sz, _)| v <= strtab && strtab - v < sz)
        .and_then(|(v, _, off)| off.checked_add(strtab - v))
        .ok_or_else(|| bad("string table outside the loaded segments"))?;
    let strs = data
        .read_bytes_at(stroff, strsz)
        .map_err(|()| bad("string table beyond the end"))?;
    for (tag, off) in refs {
        let s = usize::try_from(off)
            .ok()
            .and_then(|off| strs.get(off..))
            .and_then(|s| s.split(|&c| c == 0).next())
            .ok_or_else(|| bad("string offset out of range"))?;
        let s = String::from_utf8_lossy(s).into_owned();
        match tag {
            DT_NEEDED => info.needed.push(s),
            DT_RPATH => info.rpath.push(s),
            _ => info.runpath.push(s),
        }
    }
    Ok(Some(info))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependency_names() {
        assert_eq!(dep_name(" libc6 (>= 2.36)"), Some(("libc6", None)));
        assert_eq!(dep_name("python3:any"), Some(("python3", Some("any"))));
        assert_eq!(dep_name("  "), None);
    }

    #[test]
    fn merge_aliases() {
        assert_eq!(merge_alias("/usr/bin/dash").as_deref(), Some("/bin/dash"));
        assert_eq!(
            merge_alias("/lib/x86_64-linux-gnu/libc.so.6").as_deref(),
            Some("/usr/lib/x86_64-linux-gnu/libc.so.6")
        );
        assert_eq!(merge_alias("/usr/include/stdio.h"), None);
        assert_eq!(
            lexical_normalize(Path::new("/usr/lib/gcc/x/12/../../../x/libc.so")),
            Path::new("/usr/lib/x/libc.so")
        );
    }

    #[test]
    fn resolve_in_plan() {
        let mut plan = Plan::default();
        let file = || Node::Content(Vec::new());
        plan.insert("lib".into(), Node::Symlink("usr/lib".into()))
            .unwrap();
        plan.insert("lib64".into(), Node::Symlink("usr/lib64".into()))
            .unwrap();
        plan.insert(
            "usr/lib64/ld.so".into(),
            Node::Symlink("/lib/x/ld-real.so".into()),
        )
        .unwrap();
        plan.insert("usr/lib/x/ld-real.so".into(), file()).unwrap();
        plan.insert("usr/lib/x/libc.so.6".into(), file()).unwrap();
        assert_eq!(
            plan.resolve("/lib64/ld.so").as_deref(),
            Some("usr/lib/x/ld-real.so")
        );
        assert_eq!(
            plan.resolve("/usr/lib/x/../x/libc.so.6").as_deref(),
            Some("usr/lib/x/libc.so.6")
        );
        assert_eq!(plan.resolve("/lib/x/missing.so"), None);
        assert_eq!(plan.resolve("/usr/lib/x"), None);
        plan.insert("loop".into(), Node::Symlink("loop".into()))
            .unwrap();
        assert_eq!(plan.resolve("/loop"), None);
    }

    /// A minimal ELF64 little-endian shared object: a `PT_LOAD` of the whole file at
    /// 0x1000, a `PT_DYNAMIC` with `DT_NEEDED`, `DT_RUNPATH`, `DT_STRTAB`, `DT_STRSZ`.
    struct TinyElf {
        machine: u16,
        /// Overrides: (DT_NEEDED string offset, DT_STRTAB address, DT_STRSZ).
        needed_off: u64,
        strtab_addr: Option<u64>,
        strsz: Option<u64>,
        phnum: u16,
        truncate: Option<usize>,
    }

    impl Default for TinyElf {
        fn default() -> Self {
            TinyElf {
                machine: Host::detect().unwrap().machine,
                needed_off: 1,
                strtab_addr: None,
                strsz: None,
                phnum: 2,
                truncate: None,
            }
        }
    }

    impl TinyElf {
        fn bytes(&self) -> Vec<u8> {
            const STRS: &[u8] = b"\0libx.so.1\0$ORIGIN/../lib\0";
            let (dyn_off, dyn_len) = (64 + 2 * 56, 5 * 16);
            let str_off = dyn_off + dyn_len;
            let len = (str_off + STRS.len()) as u64;
            let mut b = Vec::new();
            b.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
            b.extend_from_slice(&3u16.to_le_bytes()); // ET_DYN
            b.extend_from_slice(&self.machine.to_le_bytes());
            b.extend_from_slice(&1u32.to_le_bytes());
            b.extend_from_slice(&0u64.to_le_bytes()); // entry
            b.extend_from_slice(&64u64.to_le_bytes()); // phoff
            b.extend_from_slice(&0u64.to_le_bytes()); // shoff
            b.extend_from_slice(&0u32.to_le_bytes());
            for v in [64u16, 56, self.phnum, 64, 0, 0] {
                b.extend_from_slice(&v.to_le_bytes());
            }
            let phdr = |b: &mut Vec<u8>, ptype: u32, off: u64, vaddr: u64, size: u64| {
                b.extend_from_slice(&ptype.to_le_bytes());
                b.extend_from_slice(&4u32.to_le_bytes());
                for v in [off, vaddr, vaddr, size, size, 8] {
                    b.extend_from_slice(&v.to_le_bytes());
                }
            };
            phdr(&mut b, 1, 0, 0x1000, len);
            phdr(
                &mut b,
                2,
                dyn_off as u64,
                0x1000 + dyn_off as u64,
                dyn_len as u64,
            );
            let strtab = self.strtab_addr.unwrap_or(0x1000 + str_off as u64);
            let strsz = self.strsz.unwrap_or(STRS.len() as u64);
            for (tag, val) in [
                (1u64, self.needed_off),
                (29, 11),
                (5, strtab),
                (10, strsz),
                (0, 0),
            ] {
                b.extend_from_slice(&tag.to_le_bytes());
                b.extend_from_slice(&val.to_le_bytes());
            }
            b.extend_from_slice(STRS);
            assert_eq!(b.len() as u64, len);
            if let Some(n) = self.truncate {
                b.truncate(n);
            }
            b
        }

        fn read(&self) -> Result<Option<ElfInfo>, BundleError> {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("lib.so");
            std::fs::write(&path, self.bytes()).unwrap();
            read_elf(&path, Host::detect().unwrap().machine)
        }
    }

    fn malformed(elf: TinyElf, want: &str) {
        let e = match elf.read() {
            Ok(_) => panic!("read a malformed ELF; wanted an error with {want:?}"),
            Err(e) => e.to_string(),
        };
        assert!(
            e.contains("lib.so: malformed ELF file") && e.contains(want),
            "{e}\nshould contain: {want}"
        );
    }

    #[test]
    fn reads_a_minimal_shared_object() {
        let info = TinyElf::default().read().unwrap().expect("an ELF");
        assert_eq!(info.interp, None);
        assert_eq!(info.needed, ["libx.so.1"]);
        assert_eq!(info.runpath, ["$ORIGIN/../lib"]);
        assert!(info.rpath.is_empty());
    }

    #[test]
    fn hostile_elves_are_refused_or_ignored() {
        // Not for this host: ignored, not an error.
        let other = if Host::detect().unwrap().machine == object::elf::EM_X86_64 {
            object::elf::EM_AARCH64
        } else {
            object::elf::EM_X86_64
        };
        let elf = TinyElf {
            machine: other,
            ..TinyElf::default()
        };
        assert!(elf.read().unwrap().is_none());
        // Shorter than an ELF header: not an ELF.
        let elf = TinyElf {
            truncate: Some(40),
            ..TinyElf::default()
        };
        assert!(elf.read().unwrap().is_none());
        // Big-endian: not for this host.
        let dir = tempfile::tempdir().unwrap();
        let be = dir.path().join("be.so");
        let mut bytes = TinyElf::default().bytes();
        bytes[5] = 2;
        std::fs::write(&be, bytes).unwrap();
        assert!(
            read_elf(&be, Host::detect().unwrap().machine)
                .unwrap()
                .is_none()
        );

        malformed(
            TinyElf {
                truncate: Some(100),
                ..TinyElf::default()
            },
            "program header table",
        );
        malformed(
            TinyElf {
                phnum: 5000,
                ..TinyElf::default()
            },
            "program header table",
        );
        malformed(
            TinyElf {
                needed_off: 1 << 40,
                ..TinyElf::default()
            },
            "string offset out of range",
        );
        malformed(
            TinyElf {
                strtab_addr: Some(0x10_0000),
                ..TinyElf::default()
            },
            "string table outside the loaded segments",
        );
        malformed(
            TinyElf {
                strtab_addr: Some(u64::MAX),
                ..TinyElf::default()
            },
            "string table outside the loaded segments",
        );
        malformed(
            TinyElf {
                strsz: Some(1 << 20),
                ..TinyElf::default()
            },
            "string table beyond the end",
        );
        malformed(
            TinyElf {
                strsz: Some(1 << 30),
                ..TinyElf::default()
            },
            "string table too large",
        );
    }

    #[test]
    fn reads_own_executable() {
        let exe = std::env::current_exe().unwrap();
        let host = Host::detect().unwrap();
        let info = read_elf(&exe, host.machine).unwrap().expect("an ELF");
        assert!(info.needed.iter().any(|n| n.starts_with("libc.so")));
        assert!(
            read_elf(
                Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")),
                host.machine
            )
            .unwrap()
            .is_none()
        );
    }
}
