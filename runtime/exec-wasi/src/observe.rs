//! Observation and policy for the guest's file-system calls.
//!
//! The `wasi_snapshot_preview1` file-system imports are shadowed in the `Linker` by wrappers
//! that decode the path from guest memory, decide whether the call is allowed (writes only to
//! declared outputs, temporary files beside them, and `/tmp`), call the wiggle-generated
//! implementation in `wasmtime-wasi`, and record what happened. A look-up of a path above the
//! root is a miss like any other (such a path cannot exist in the sandbox). Directory listings are produced here, in sorted order, and file
//! metadata handed to the guest is made deterministic (fixed times, inode numbers derived
//! from the path).

use std::collections::{BTreeSet, HashMap, HashSet};

use wasmtime::{Caller, Extern, Linker};
use wasmtime_wasi::p1::wasi_snapshot_preview1 as p1;
use wiggle::GuestMemory;

use crate::State;
use crate::access::{AccessKind, AccessLog};

// WASI preview1 constants (witx `wasi_snapshot_preview1`).
pub(crate) const ERRNO_SUCCESS: i32 = 0;
const ERRNO_ACCES: i32 = 2;
const ERRNO_BADF: i32 = 8;
const ERRNO_FAULT: i32 = 21;
const ERRNO_ILSEQ: i32 = 25;
const ERRNO_MFILE: i32 = 33;
const ERRNO_NOENT: i32 = 44;
const ERRNO_NOTDIR: i32 = 54;
const ERRNO_PERM: i32 = 63;
const ERRNO_NOTCAPABLE: i32 = 76;
const OFLAGS_CREAT: i32 = 1;
const OFLAGS_DIRECTORY: i32 = 2;
const OFLAGS_EXCL: i32 = 4;
const OFLAGS_TRUNC: i32 = 8;
const RIGHTS_FD_WRITE: i64 = 1 << 6;
const FILETYPE_DIRECTORY: u8 = 3;
const FILETYPE_REGULAR_FILE: u8 = 4;
const FILETYPE_SYMBOLIC_LINK: u8 = 7;

/// Which of the two preopened trees a guest path lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tree {
    /// The action root, preopened at `/`: inputs at their workspace paths, outputs.
    Root,
    /// The private temp directory, preopened at `/tmp`.
    Tmp,
}

#[derive(Clone, Debug)]
struct FdInfo {
    tree: Tree,
    /// Normalised path inside the tree ("" = the tree itself).
    rel: String,
    writable: bool,
}

/// Per-action observation state, stored in the wasmtime `Store`.
pub(crate) struct Observer {
    fds: HashMap<i32, FdInfo>,
    pub(crate) log: AccessLog,
    /// Workspace paths the guest may create or write (declared outputs).
    outputs: BTreeSet<String>,
    /// Directories that lead to a declared output (may be created).
    output_dirs: BTreeSet<String>,
    /// The directories holding a declared output: the guest may create temporary files there
    /// (any name that is not an input or a directory leading to one) and rename them onto its
    /// outputs, as compilers and linkers do.
    output_parents: BTreeSet<String>,
    /// Temporary files the guest created beside its outputs and has not renamed or removed
    /// yet; what is left at exit fails the action.
    pub(crate) extra: BTreeSet<String>,
    /// Everything in the root tree the guest may know of: inputs, outputs and the directories
    /// leading to them. The host directory may hold more (staging directories are reused
    /// between actions); anything else is reported as not existing.
    visible: HashSet<String>,
    /// Host-side capability handles for listing directories.
    root_dir: cap_std::fs::Dir,
    tmp_dir: cap_std::fs::Dir,
    /// Timestamp (ns since the Unix epoch) reported for every file.
    time_ns: u64,
    /// How many descriptors the guest may hold open (its share of the process's limit).
    max_open: usize,
}

impl Observer {
    pub(crate) fn new(
        root_dir: cap_std::fs::Dir,
        tmp_dir: cap_std::fs::Dir,
        inputs: &[String],
        outputs: &[String],
        time_ns: u64,
        max_open: usize,
    ) -> Observer {
        let mut output_dirs = BTreeSet::new();
        let output_parents = outputs
            .iter()
            .map(|o| o.rsplit_once('/').map_or("", |(d, _)| d).to_owned())
            .collect();
        for o in outputs {
            let mut p = o.as_str();
            while let Some(i) = p.rfind('/') {
                p = &p[..i];
                output_dirs.insert(p.to_owned());
            }
        }
        let mut visible: HashSet<String> = HashSet::new();
        visible.insert(String::new());
        for f in inputs.iter().chain(outputs) {
            let mut p = f.as_str();
            visible.insert(p.to_owned());
            while let Some(i) = p.rfind('/') {
                p = &p[..i];
                if !visible.insert(p.to_owned()) {
                    break;
                }
            }
        }
        let mut fds = HashMap::new();
        fds.insert(
            3,
            FdInfo {
                tree: Tree::Root,
                rel: String::new(),
                writable: false,
            },
        );
        fds.insert(
            4,
            FdInfo {
                tree: Tree::Tmp,
                rel: String::new(),
                writable: true,
            },
        );
        Observer {
            fds,
            log: AccessLog::default(),
            outputs: outputs.iter().cloned().collect(),
            output_dirs,
            output_parents,
            extra: BTreeSet::new(),
            visible,
            root_dir,
            tmp_dir,
            time_ns,
            max_open,
        }
    }

    /// Resolve `path` relative to directory fd `fd`. `Err(errno)` for unknown fds; `Ok(None)`
    /// for a path that leaves its tree (recorded as denied by the caller).
    fn resolve(&self, fd: i32, path: &str) -> Result<Option<(Tree, String)>, i32> {
        let base = self.fds.get(&fd).ok_or(ERRNO_BADF)?;
        if path.starts_with('/') {
            return Ok(None);
        }
        let mut parts: Vec<&str> = if base.rel.is_empty() {
            Vec::new()
        } else {
            base.rel.split('/').collect()
        };
        for comp in path.split('/') {
            match comp {
                "" | "." => {}
                ".." => {
                    if parts.pop().is_none() {
                        return Ok(None);
                    }
                }
                c => parts.push(c),
            }
        }
        Ok(Some((base.tree, parts.join("/"))))
    }

    /// The path a guest names for a look-up (stat, readlink): resolved and visible, or the
    /// errno to answer with, recorded (a path outside the trees is denied, one the guest may
    /// not see is missing, whether or not the host has it).
    fn look_up(&mut self, fd: i32, path: &str) -> Result<(Tree, String), i32> {
        let Some((tree, rel)) = self.resolve(fd, path)? else {
            self.record_beyond(fd, path);
            return Err(ERRNO_NOENT);
        };
        if !self.is_visible(tree, &rel) {
            self.log
                .record(AccessKind::Missing, &Observer::display(tree, &rel));
            return Err(ERRNO_NOENT);
        }
        Ok((tree, rel))
    }

    /// Records a look-up of a path that leaves the sandbox's trees (`..` above the root, or
    /// an absolute path handed to a directory descriptor) as a miss: nothing can exist there.
    /// Shown as the guest named it, after the directory it was relative to.
    fn record_beyond(&mut self, fd: i32, path: &str) {
        let shown = match self.fds.get(&fd) {
            Some(base) if !path.starts_with('/') => {
                let dir = Observer::display(base.tree, &base.rel);
                if dir == "." {
                    path.to_owned()
                } else {
                    format!("{dir}/{path}")
                }
            }
            _ => path.to_owned(),
        };
        self.log.record(AccessKind::Missing, &shown);
    }

    /// Records the outcome of a look-up the implementation answered with `errno`, and
    /// returns the errno for the guest: a look-up the implementation refused (through a
    /// symlink made in /tmp that climbs out of it) found nothing, like any other path outside
    /// the sandbox.
    fn record_look_up(&mut self, tree: Tree, rel: &str, errno: i32) -> i32 {
        let shown = Observer::display(tree, rel);
        match errno {
            ERRNO_NOENT | ERRNO_NOTDIR => {
                self.log.record(AccessKind::Missing, &shown);
                errno
            }
            ERRNO_NOTCAPABLE | ERRNO_PERM => {
                self.log.record(AccessKind::Missing, &shown);
                ERRNO_NOENT
            }
            _ => {
                self.log.record(AccessKind::Stat, &shown);
                errno
            }
        }
    }

    /// The path as shown in logs and errors.
    fn display(tree: Tree, rel: &str) -> String {
        match (tree, rel.is_empty()) {
            (Tree::Root, true) => ".".to_owned(),
            (Tree::Root, false) => rel.to_owned(),
            (Tree::Tmp, true) => "/tmp".to_owned(),
            (Tree::Tmp, false) => format!("/tmp/{rel}"),
        }
    }

    /// Whether the guest may see `rel` at all (the `/tmp` tree is entirely its own).
    fn is_visible(&self, tree: Tree, rel: &str) -> bool {
        tree == Tree::Tmp || self.visible.contains(rel)
    }

    fn may_write(&self, tree: Tree, rel: &str) -> bool {
        match tree {
            Tree::Tmp => !rel.is_empty(),
            Tree::Root => {
                self.outputs.contains(rel) || self.extra.contains(rel) || self.may_create_temp(rel)
            }
        }
    }

    /// Whether `rel` (in the root) is a new temporary file's name: in the directory of a
    /// declared output, and neither an input nor a directory leading to a declared path.
    fn may_create_temp(&self, rel: &str) -> bool {
        let (dir, name) = rel.rsplit_once('/').unwrap_or(("", rel));
        !name.is_empty()
            && self.output_parents.contains(dir)
            && !self.visible.contains(rel)
            && !self.output_dirs.contains(rel)
    }

    /// A temporary file now exists at `rel` (created, or renamed there).
    fn add_temp(&mut self, rel: &str) {
        if !self.outputs.contains(rel) {
            self.extra.insert(rel.to_owned());
            self.visible.insert(rel.to_owned());
        }
    }

    /// Nothing exists at `rel` any more (removed, or renamed away), if it was a temporary
    /// file.
    fn drop_temp(&mut self, rel: &str) {
        if self.extra.remove(rel) {
            self.visible.remove(rel);
        }
    }

    fn may_create_dir(&self, tree: Tree, rel: &str) -> bool {
        tree == Tree::Tmp && !rel.is_empty() || self.output_dirs.contains(rel)
    }

    /// Whether the symlink target `target`, stored at `rel` in `tree`, points above the
    /// tree's top (or is absolute).
    fn link_escapes(rel: &str, target: &str) -> bool {
        if target.starts_with('/') {
            return true;
        }
        let mut depth = rel.split('/').count().saturating_sub(1);
        for comp in target.split('/') {
            match comp {
                "" | "." => {}
                ".." => match depth.checked_sub(1) {
                    Some(d) => depth = d,
                    None => return true,
                },
                _ => depth += 1,
            }
        }
        false
    }

    /// Whether `rel` in `tree` is a regular file (not following a final symlink).
    fn is_regular_file(&self, tree: Tree, rel: &str) -> bool {
        !rel.is_empty()
            && self
                .dir_for(tree)
                .symlink_metadata(rel)
                .is_ok_and(|m| m.is_file())
    }

    fn dir_for(&self, tree: Tree) -> &cap_std::fs::Dir {
        match tree {
            Tree::Root => &self.root_dir,
            Tree::Tmp => &self.tmp_dir,
        }
    }
}

/// A stable fake inode number for a path.
fn fake_ino(tree: Tree, rel: &str) -> u64 {
    let h = blake3::hash(format!("{tree:?}/{rel}").as_bytes());
    u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes")) | 1
}

fn memory<'a>(caller: &'a mut Caller<'_, State>) -> Option<(&'a mut [u8], &'a mut State)> {
    match caller.get_export("memory") {
        Some(Extern::Memory(m)) => Some(m.data_and_store_mut(caller)),
        _ => None,
    }
}

fn read_str(mem: &[u8], ptr: i32, len: i32) -> Result<String, i32> {
    let (ptr, len) = (ptr as u32 as usize, len as u32 as usize);
    let bytes = mem.get(ptr..ptr.checked_add(len).ok_or(ERRNO_FAULT)?);
    let bytes = bytes.ok_or(ERRNO_FAULT)?;
    String::from_utf8(bytes.to_vec()).map_err(|_| ERRNO_ILSEQ)
}

fn read_u32(mem: &[u8], ptr: i32) -> Option<u32> {
    let p = ptr as u32 as usize;
    Some(u32::from_le_bytes(mem.get(p..p + 4)?.try_into().ok()?))
}

fn write_bytes(mem: &mut [u8], ptr: u32, bytes: &[u8]) -> Result<(), i32> {
    let p = ptr as usize;
    mem.get_mut(p..p + bytes.len())
        .ok_or(ERRNO_FAULT)?
        .copy_from_slice(bytes);
    Ok(())
}

/// Overwrite the non-deterministic fields of a `filestat` the implementation wrote at `buf`:
/// device, inode, link count and times; a directory's size (which depends on the host file
/// system and on what earlier actions left in a reused staging directory) reads as 0.
fn fix_filestat(mem: &mut [u8], buf: i32, ino: u64, time_ns: u64) {
    let b = buf as u32;
    let _ = write_bytes(mem, b, &0u64.to_le_bytes()); // dev
    let _ = write_bytes(mem, b + 8, &ino.to_le_bytes());
    let _ = write_bytes(mem, b + 24, &1u64.to_le_bytes()); // nlink
    if mem.get(b as usize + 16) == Some(&FILETYPE_DIRECTORY) {
        let _ = write_bytes(mem, b + 32, &0u64.to_le_bytes()); // size
    }
    for off in [40, 48, 56] {
        let _ = write_bytes(mem, b + off, &time_ns.to_le_bytes());
    }
}

/// Run an async wiggle-generated preview1 function to completion.
fn block<F: std::future::Future<Output = wasmtime::Result<i32>>>(f: F) -> wasmtime::Result<i32> {
    wasmtime_wasi::runtime::in_tokio(f)
}

macro_rules! with_mem {
    ($caller:ident, |$mem:ident, $state:ident| $body:expr) => {{
        let Some(($mem, $state)) = memory(&mut $caller) else {
            wasmtime::bail!("guest module exports no memory");
        };
        $body
    }};
}

/// Install the observing wrappers over the `wasi_snapshot_preview1` file-system functions.
pub(crate) fn shadow(linker: &mut Linker<State>) -> wasmtime::Result<()> {
    const M: &str = "wasi_snapshot_preview1";
    linker.allow_shadowing(true);

    linker.func_wrap(
        M,
        "path_open",
        |mut caller: Caller<'_, State>,
         fd: i32,
         dirflags: i32,
         path_ptr: i32,
         path_len: i32,
         oflags: i32,
         rights_base: i64,
         rights_inh: i64,
         fdflags: i32,
         fd_out: i32|
         -> wasmtime::Result<i32> {
            let Some((mem, state)) = memory(&mut caller) else {
                wasmtime::bail!("guest module exports no memory");
            };
            let path = match read_str(mem, path_ptr, path_len) {
                Ok(p) => p,
                Err(e) => return Ok(e),
            };
            let obs = &mut state.obs;
            let resolved = match obs.resolve(fd, &path) {
                Ok(r) => r,
                Err(e) => return Ok(e),
            };
            let write = rights_base & RIGHTS_FD_WRITE != 0
                || oflags & (OFLAGS_CREAT | OFLAGS_TRUNC | OFLAGS_EXCL) != 0;
            let Some((tree, rel)) = resolved else {
                if write {
                    obs.log.record(AccessKind::Denied, &path);
                    return Ok(ERRNO_NOTCAPABLE);
                }
                obs.record_beyond(fd, &path);
                return Ok(ERRNO_NOENT);
            };
            let shown = Observer::display(tree, &rel);
            if write && !obs.may_write(tree, &rel) {
                obs.log.record(AccessKind::Denied, &shown);
                return Ok(ERRNO_ACCES);
            }
            let new_temp = tree == Tree::Root
                && oflags & OFLAGS_CREAT != 0
                && !obs.is_visible(tree, &rel)
                && obs.may_create_temp(&rel);
            if new_temp {
                // Whatever an earlier action of this staging slot left under that name is
                // not this guest's: the name is free for it.
                let _ = obs.root_dir.remove_file(&rel);
            } else if !obs.is_visible(tree, &rel) {
                obs.log.record(AccessKind::Missing, &shown);
                return Ok(ERRNO_NOENT);
            }
            // Every open descriptor is one of the host process's: a guest that opened files
            // without end would make every other action of the build fail.
            if obs.fds.len() >= obs.max_open {
                return Ok(ERRNO_MFILE);
            }
            let errno = block(p1::path_open(
                &mut state.wasi,
                &mut GuestMemory::Unshared(&mut *mem),
                fd,
                dirflags,
                path_ptr,
                path_len,
                oflags,
                rights_base,
                rights_inh,
                fdflags,
                fd_out,
            ))?;
            let obs = &mut state.obs;
            match errno {
                ERRNO_SUCCESS => {
                    let kind = if write {
                        AccessKind::Write
                    } else if oflags & OFLAGS_DIRECTORY != 0 {
                        AccessKind::Stat
                    } else {
                        AccessKind::Read
                    };
                    obs.log.record(kind, &shown);
                    if new_temp {
                        obs.add_temp(&rel);
                    }
                    if let Some(new_fd) = read_u32(mem, fd_out) {
                        obs.fds.insert(
                            new_fd as i32,
                            FdInfo {
                                tree,
                                rel,
                                writable: write,
                            },
                        );
                    }
                }
                ERRNO_NOENT => obs.log.record(AccessKind::Missing, &shown),
                // Reading through a symlink that climbs out of /tmp finds nothing there;
                // writing through one is refused.
                ERRNO_NOTCAPABLE | ERRNO_PERM if !write => {
                    obs.log.record(AccessKind::Missing, &shown);
                    return Ok(ERRNO_NOENT);
                }
                ERRNO_NOTCAPABLE | ERRNO_PERM | ERRNO_ACCES => {
                    obs.log.record(AccessKind::Denied, &shown)
                }
                _ => {}
            }
            Ok(errno)
        },
    )?;

    linker.func_wrap(
        M,
        "path_filestat_get",
        |mut caller: Caller<'_, State>,
         fd: i32,
         flags: i32,
         path_ptr: i32,
         path_len: i32,
         buf: i32|
         -> wasmtime::Result<i32> {
            with_mem!(caller, |mem, state| {
                let path = match read_str(mem, path_ptr, path_len) {
                    Ok(p) => p,
                    Err(e) => return Ok(e),
                };
                let (tree, rel) = match state.obs.look_up(fd, &path) {
                    Ok(r) => r,
                    Err(e) => return Ok(e),
                };
                let errno = block(p1::path_filestat_get(
                    &mut state.wasi,
                    &mut GuestMemory::Unshared(&mut *mem),
                    fd,
                    flags,
                    path_ptr,
                    path_len,
                    buf,
                ))?;
                let errno = state.obs.record_look_up(tree, &rel, errno);
                if errno == ERRNO_SUCCESS {
                    fix_filestat(mem, buf, fake_ino(tree, &rel), state.obs.time_ns);
                }
                Ok(errno)
            })
        },
    )?;

    // readlink reveals whether a path exists (EINVAL for a file, ENOENT for nothing): it is
    // held to the same visibility as stat and recorded like it.
    linker.func_wrap(
        M,
        "path_readlink",
        |mut caller: Caller<'_, State>,
         fd: i32,
         path_ptr: i32,
         path_len: i32,
         buf: i32,
         buf_len: i32,
         bufused: i32|
         -> wasmtime::Result<i32> {
            with_mem!(caller, |mem, state| {
                let path = match read_str(mem, path_ptr, path_len) {
                    Ok(p) => p,
                    Err(e) => return Ok(e),
                };
                let (tree, rel) = match state.obs.look_up(fd, &path) {
                    Ok(r) => r,
                    Err(e) => return Ok(e),
                };
                let errno = block(p1::path_readlink(
                    &mut state.wasi,
                    &mut GuestMemory::Unshared(&mut *mem),
                    fd,
                    path_ptr,
                    path_len,
                    buf,
                    buf_len,
                    bufused,
                ))?;
                Ok(state.obs.record_look_up(tree, &rel, errno))
            })
        },
    )?;

    linker.func_wrap(
        M,
        "fd_filestat_get",
        |mut caller: Caller<'_, State>, fd: i32, buf: i32| -> wasmtime::Result<i32> {
            with_mem!(caller, |mem, state| {
                let errno = block(p1::fd_filestat_get(
                    &mut state.wasi,
                    &mut GuestMemory::Unshared(&mut *mem),
                    fd,
                    buf,
                ))?;
                if errno == ERRNO_SUCCESS {
                    let ino = match state.obs.fds.get(&fd) {
                        Some(info) => fake_ino(info.tree, &info.rel),
                        None => fd as u64 + 1,
                    };
                    fix_filestat(mem, buf, ino, state.obs.time_ns);
                }
                Ok(errno)
            })
        },
    )?;

    linker.func_wrap(
        M,
        "fd_readdir",
        |mut caller: Caller<'_, State>,
         fd: i32,
         buf: i32,
         buf_len: i32,
         cookie: i64,
         bufused: i32|
         -> wasmtime::Result<i32> {
            with_mem!(caller, |mem, state| {
                let obs = &mut state.obs;
                let Some(info) = obs.fds.get(&fd).cloned() else {
                    return Ok(ERRNO_BADF);
                };
                obs.log
                    .record(AccessKind::List, &Observer::display(info.tree, &info.rel));
                let dir = obs.dir_for(info.tree);
                let listing = if info.rel.is_empty() {
                    dir.entries()
                } else {
                    dir.read_dir(&info.rel)
                };
                let Ok(listing) = listing else {
                    return Ok(ERRNO_NOTDIR);
                };
                let mut entries: Vec<(String, u8)> = vec![
                    (".".to_owned(), FILETYPE_DIRECTORY),
                    ("..".to_owned(), FILETYPE_DIRECTORY),
                ];
                let mut names: Vec<(String, u8)> = listing
                    .filter_map(|e| e.ok())
                    .filter_map(|e| {
                        let name = e.file_name().into_string().ok()?;
                        let child = if info.rel.is_empty() {
                            name.clone()
                        } else {
                            format!("{}/{name}", info.rel)
                        };
                        if !obs.is_visible(info.tree, &child) {
                            return None;
                        }
                        let ft = e.file_type().ok()?;
                        let t = if ft.is_dir() {
                            FILETYPE_DIRECTORY
                        } else if ft.is_symlink() {
                            FILETYPE_SYMBOLIC_LINK
                        } else if ft.is_file() {
                            FILETYPE_REGULAR_FILE
                        } else {
                            0
                        };
                        Some((name, t))
                    })
                    .collect();
                names.sort();
                entries.extend(names);
                // Serialise dirents starting at `cookie`, truncating the last one at the end
                // of the buffer as the preview1 ABI allows.
                let mut out = Vec::new();
                for (i, (name, t)) in entries.iter().enumerate().skip(cookie as u64 as usize) {
                    let child = if info.rel.is_empty() {
                        name.clone()
                    } else {
                        format!("{}/{name}", info.rel)
                    };
                    out.extend_from_slice(&(i as u64 + 1).to_le_bytes());
                    out.extend_from_slice(&fake_ino(info.tree, &child).to_le_bytes());
                    out.extend_from_slice(&(name.len() as u32).to_le_bytes());
                    out.extend_from_slice(&[*t, 0, 0, 0]);
                    out.extend_from_slice(name.as_bytes());
                    if out.len() >= buf_len as u32 as usize {
                        break;
                    }
                }
                out.truncate(buf_len as u32 as usize);
                if let Err(e) = write_bytes(mem, buf as u32, &out) {
                    return Ok(e);
                }
                if let Err(e) = write_bytes(mem, bufused as u32, &(out.len() as u32).to_le_bytes())
                {
                    return Ok(e);
                }
                Ok(ERRNO_SUCCESS)
            })
        },
    )?;

    linker.func_wrap(
        M,
        "fd_close",
        |mut caller: Caller<'_, State>, fd: i32| -> wasmtime::Result<i32> {
            with_mem!(caller, |mem, state| {
                let errno = block(p1::fd_close(
                    &mut state.wasi,
                    &mut GuestMemory::Unshared(&mut *mem),
                    fd,
                ))?;
                if errno == ERRNO_SUCCESS {
                    state.obs.fds.remove(&fd);
                }
                Ok(errno)
            })
        },
    )?;

    linker.func_wrap(
        M,
        "fd_renumber",
        |mut caller: Caller<'_, State>, from: i32, to: i32| -> wasmtime::Result<i32> {
            with_mem!(caller, |mem, state| {
                let errno = block(p1::fd_renumber(
                    &mut state.wasi,
                    &mut GuestMemory::Unshared(&mut *mem),
                    from,
                    to,
                ))?;
                if errno == ERRNO_SUCCESS {
                    if let Some(info) = state.obs.fds.remove(&from) {
                        state.obs.fds.insert(to, info);
                    } else {
                        state.obs.fds.remove(&to);
                    }
                }
                Ok(errno)
            })
        },
    )?;

    // Path mutations: allowed only on declared outputs (and the directories leading to them)
    // and inside /tmp.
    macro_rules! guarded_path_op {
        ($name:literal, $func:ident, $dirs:expr, $dirs_create:expr, $removes:expr, ($($a:ident: $t:ty),*), fd = $fd:ident, ptr = $ptr:ident, len = $len:ident) => {
            linker.func_wrap(
                M,
                $name,
                |mut caller: Caller<'_, State>, $($a: $t),*| -> wasmtime::Result<i32> {
                    with_mem!(caller, |mem, state| {
                        let path = match read_str(mem, $ptr, $len) {
                            Ok(p) => p,
                            Err(e) => return Ok(e),
                        };
                        let resolved = match state.obs.resolve($fd, &path) {
                            Ok(r) => r,
                            Err(e) => return Ok(e),
                        };
                        let Some((tree, rel)) = resolved else {
                            state.obs.log.record(AccessKind::Denied, &path);
                            return Ok(ERRNO_NOTCAPABLE);
                        };
                        let shown = Observer::display(tree, &rel);
                        let allowed = if $dirs {
                            state.obs.may_create_dir(tree, &rel)
                        } else {
                            state.obs.may_write(tree, &rel)
                        };
                        if !allowed {
                            state.obs.log.record(AccessKind::Denied, &shown);
                            return Ok(ERRNO_ACCES);
                        }
                        // Only what the guest can see may be changed: a name some earlier
                        // action left in the staging slot does not exist for it.
                        if !$dirs_create && !state.obs.is_visible(tree, &rel) {
                            state.obs.log.record(AccessKind::Missing, &shown);
                            return Ok(ERRNO_NOENT);
                        }
                        let errno = block(p1::$func(&mut state.wasi, &mut GuestMemory::Unshared(&mut *mem), $($a),*))?;
                        if errno == ERRNO_SUCCESS {
                            state.obs.log.record(AccessKind::Write, &shown);
                            if $removes && tree == Tree::Root {
                                state.obs.drop_temp(&rel);
                            }
                        }
                        Ok(errno)
                    })
                },
            )?;
        };
    }
    guarded_path_op!("path_create_directory", path_create_directory, true, true, false,
        (fd: i32, ptr: i32, len: i32), fd = fd, ptr = ptr, len = len);
    guarded_path_op!("path_remove_directory", path_remove_directory, true, false, false,
        (fd: i32, ptr: i32, len: i32), fd = fd, ptr = ptr, len = len);
    guarded_path_op!("path_unlink_file", path_unlink_file, false, false, true,
        (fd: i32, ptr: i32, len: i32), fd = fd, ptr = ptr, len = len);
    guarded_path_op!("path_filestat_set_times", path_filestat_set_times, false, false, false,
        (fd: i32, flags: i32, ptr: i32, len: i32, atim: i64, mtim: i64, fst: i32), fd = fd, ptr = ptr, len = len);

    // Symlinks only in /tmp. In the root, a symlink at an output path (or at a directory
    // leading to one, when one output lies under another) would let the guest write through
    // it to an input, which shares its inode with a CAS blob, and would make the host follow
    // it when it collects and cleans up the outputs with ordinary paths (moving a file from
    // outside the sandbox into the cache). Outputs must be regular files anyway.
    linker.func_wrap(
        M,
        "path_symlink",
        |mut caller: Caller<'_, State>,
         old_ptr: i32,
         old_len: i32,
         fd: i32,
         ptr: i32,
         len: i32|
         -> wasmtime::Result<i32> {
            with_mem!(caller, |mem, state| {
                let (Ok(target), Ok(path)) =
                    (read_str(mem, old_ptr, old_len), read_str(mem, ptr, len))
                else {
                    return Ok(ERRNO_FAULT);
                };
                let (tree, rel) = match state.obs.resolve(fd, &path) {
                    Err(e) => return Ok(e),
                    Ok(None) => {
                        state.obs.log.record(AccessKind::Denied, &path);
                        return Ok(ERRNO_NOTCAPABLE);
                    }
                    Ok(Some(r)) => r,
                };
                let shown = Observer::display(tree, &rel);
                if !state.obs.may_write(tree, &rel) {
                    state.obs.log.record(AccessKind::Denied, &shown);
                    return Ok(ERRNO_ACCES);
                }
                if tree == Tree::Root {
                    if Observer::link_escapes(&rel, &target) {
                        state.obs.log.record(AccessKind::Denied, &target);
                    }
                    return Ok(ERRNO_PERM);
                }
                let errno = block(p1::path_symlink(
                    &mut state.wasi,
                    &mut GuestMemory::Unshared(&mut *mem),
                    old_ptr,
                    old_len,
                    fd,
                    ptr,
                    len,
                ))?;
                if errno == ERRNO_SUCCESS {
                    state.obs.log.record(AccessKind::Write, &shown);
                }
                Ok(errno)
            })
        },
    )?;

    // Rename and link touch two paths: both must be writable, and only regular files may
    // be moved into the root (no symlinks, no directories that could hold them).
    linker.func_wrap(
        M,
        "path_rename",
        |mut caller: Caller<'_, State>,
         fd: i32,
         old_ptr: i32,
         old_len: i32,
         new_fd: i32,
         new_ptr: i32,
         new_len: i32|
         -> wasmtime::Result<i32> {
            with_mem!(caller, |mem, state| {
                let (Ok(old), Ok(new)) = (
                    read_str(mem, old_ptr, old_len),
                    read_str(mem, new_ptr, new_len),
                ) else {
                    return Ok(ERRNO_FAULT);
                };
                let mut source: Option<(Tree, String)> = None;
                let mut ends: Vec<(Tree, String)> = Vec::with_capacity(2);
                for (dfd, p) in [(fd, &old), (new_fd, &new)] {
                    match state.obs.resolve(dfd, p) {
                        Err(e) => return Ok(e),
                        Ok(None) => {
                            state.obs.log.record(AccessKind::Denied, p);
                            return Ok(ERRNO_NOTCAPABLE);
                        }
                        Ok(Some((tree, rel))) if !state.obs.may_write(tree, &rel) => {
                            state
                                .obs
                                .log
                                .record(AccessKind::Denied, &Observer::display(tree, &rel));
                            return Ok(ERRNO_ACCES);
                        }
                        Ok(Some((tree, rel))) => {
                            if source.is_none() && !state.obs.is_visible(tree, &rel) {
                                state
                                    .obs
                                    .log
                                    .record(AccessKind::Missing, &Observer::display(tree, &rel));
                                return Ok(ERRNO_NOENT);
                            }
                            if let Some((src_tree, src_rel)) = source.take() {
                                if tree == Tree::Root
                                    && !state.obs.is_regular_file(src_tree, &src_rel)
                                {
                                    return Ok(ERRNO_PERM);
                                }
                            } else {
                                source = Some((tree, rel.clone()));
                            }
                            state
                                .obs
                                .log
                                .record(AccessKind::Write, &Observer::display(tree, &rel));
                            ends.push((tree, rel));
                        }
                    }
                }
                let errno = block(p1::path_rename(
                    &mut state.wasi,
                    &mut GuestMemory::Unshared(&mut *mem),
                    fd,
                    old_ptr,
                    old_len,
                    new_fd,
                    new_ptr,
                    new_len,
                ))?;
                if errno == ERRNO_SUCCESS
                    && let [(from_tree, from), (to_tree, to)] = &ends[..]
                    && from != to
                {
                    if *from_tree == Tree::Root {
                        state.obs.drop_temp(from);
                    }
                    if *to_tree == Tree::Root {
                        state.obs.add_temp(to);
                    }
                }
                Ok(errno)
            })
        },
    )?;
    linker.func_wrap(
        M,
        "path_link",
        |mut caller: Caller<'_, State>,
         _old_fd: i32,
         _old_flags: i32,
         old_ptr: i32,
         old_len: i32,
         _new_fd: i32,
         _new_ptr: i32,
         _new_len: i32|
         -> wasmtime::Result<i32> {
            // Hard links would alias inputs (which share storage with the cache) as outputs.
            with_mem!(caller, |mem, state| {
                let old = read_str(mem, old_ptr, old_len).unwrap_or_default();
                state.obs.log.record(AccessKind::Denied, &old);
                Ok(ERRNO_PERM)
            })
        },
    )?;

    // Descriptor mutations: only on descriptors opened for writing.
    macro_rules! guarded_fd_op {
        ($name:literal, $func:ident, ($fd:ident: i32 $(, $a:ident: $t:ty)*)) => {
            linker.func_wrap(
                M,
                $name,
                |mut caller: Caller<'_, State>, $fd: i32 $(, $a: $t)*| -> wasmtime::Result<i32> {
                    with_mem!(caller, |mem, state| {
                        match state.obs.fds.get(&$fd) {
                            Some(info) if info.writable => {}
                            Some(info) => {
                                let shown = Observer::display(info.tree, &info.rel);
                                state.obs.log.record(AccessKind::Denied, &shown);
                                return Ok(ERRNO_ACCES);
                            }
                            None if $fd <= 2 => {}
                            None => return Ok(ERRNO_BADF),
                        }
                        block(p1::$func(&mut state.wasi, &mut GuestMemory::Unshared(&mut *mem), $fd $(, $a)*))
                    })
                },
            )?;
        };
    }
    guarded_fd_op!("fd_filestat_set_size", fd_filestat_set_size, (fd: i32, size: i64));
    guarded_fd_op!("fd_filestat_set_times", fd_filestat_set_times, (fd: i32, atim: i64, mtim: i64, flags: i32));

    linker.allow_shadowing(false);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::Access;

    /// An observer over two empty temporary trees, with `inputs` and `outputs` declared.
    fn observer(inputs: &[&str], outputs: &[&str]) -> (Observer, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("root")).unwrap();
        std::fs::create_dir(dir.path().join("tmp")).unwrap();
        let open = |p: &str| {
            cap_std::fs::Dir::open_ambient_dir(dir.path().join(p), cap_std::ambient_authority())
                .unwrap()
        };
        let own = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let obs = Observer::new(
            open("root"),
            open("tmp"),
            &own(inputs),
            &own(outputs),
            0,
            64,
        );
        (obs, dir)
    }

    #[test]
    fn paths_resolve_inside_their_tree_or_not_at_all() {
        let (obs, _d) = observer(&["src/a.c"], &["out/a.o"]);
        let root = |p: &str| obs.resolve(3, p).unwrap();
        assert_eq!(root("src/a.c"), Some((Tree::Root, "src/a.c".into())));
        assert_eq!(root("./src//./a.c"), Some((Tree::Root, "src/a.c".into())));
        assert_eq!(root("src/../out/a.o"), Some((Tree::Root, "out/a.o".into())));
        assert_eq!(root(""), Some((Tree::Root, String::new())));
        // Above the top, absolute: outside the sandbox.
        assert_eq!(root(".."), None);
        assert_eq!(root("src/../../etc/passwd"), None);
        assert_eq!(root("/etc/passwd"), None);
        assert_eq!(
            obs.resolve(4, "x/../y").unwrap(),
            Some((Tree::Tmp, "y".into()))
        );
        assert_eq!(obs.resolve(4, "../root/src/a.c").unwrap(), None);
        assert_eq!(obs.resolve(9, "a"), Err(ERRNO_BADF));
    }

    #[test]
    fn only_declared_paths_and_their_parents_are_visible() {
        let (obs, _d) = observer(&["src/a.c", "inc/x/y.h"], &["out/gen/a.o"]);
        for p in [
            "",
            "src",
            "src/a.c",
            "inc",
            "inc/x",
            "inc/x/y.h",
            "out",
            "out/gen",
            "out/gen/a.o",
        ] {
            assert!(obs.is_visible(Tree::Root, p), "{p}");
        }
        for p in [
            "src/b.c",
            "sr",
            "src/a",
            "inc/x/z.h",
            "out/gen/b.o",
            "wbuild-out",
            ".wbuild",
        ] {
            assert!(!obs.is_visible(Tree::Root, p), "{p}");
        }
        assert!(obs.is_visible(Tree::Tmp, "anything/at/all"));
    }

    #[test]
    fn writes_reach_only_declared_outputs_files_beside_them_and_tmp() {
        let (obs, _d) = observer(&["src/a.c", "out/gen/in.h"], &["out/gen/a.o", "top.txt"]);
        assert!(obs.may_write(Tree::Root, "out/gen/a.o"));
        assert!(obs.may_write(Tree::Root, "top.txt"));
        assert!(!obs.may_write(Tree::Root, "src/a.c"), "an input");
        assert!(
            !obs.may_write(Tree::Root, "out/gen/in.h"),
            "an input beside an output"
        );
        assert!(
            !obs.may_write(Tree::Root, "out/gen"),
            "a directory leading to an output"
        );
        assert!(
            !obs.may_write(Tree::Root, "out"),
            "a directory leading to an output, beside one"
        );
        // Temporary files beside an output (an output's directory, or the root, which holds
        // top.txt), but not in a directory that holds no output.
        assert!(obs.may_write(Tree::Root, "out/gen/a.o.tmp"));
        assert!(obs.may_write(Tree::Root, "scratch-1"));
        assert!(!obs.may_write(Tree::Root, "src/a.o.tmp"));
        assert!(!obs.may_write(Tree::Root, "out/gen/sub/x"));
        assert!(!obs.may_write(Tree::Root, ""));
        assert!(obs.may_write(Tree::Tmp, "x"));
        assert!(!obs.may_write(Tree::Tmp, ""), "the /tmp preopen itself");
        assert!(obs.may_create_dir(Tree::Root, "out"));
        assert!(obs.may_create_dir(Tree::Root, "out/gen"));
        assert!(!obs.may_create_dir(Tree::Root, "out/gen/a.o"));
        assert!(!obs.may_create_dir(Tree::Root, "src"));
        assert!(obs.may_create_dir(Tree::Tmp, "d"));
    }

    #[test]
    fn temporary_files_exist_from_creation_until_renamed_or_removed() {
        let (mut obs, _d) = observer(&["src/a.c"], &["out/a.o"]);
        assert!(!obs.is_visible(Tree::Root, "out/a.o.tmp"));
        obs.add_temp("out/a.o.tmp");
        assert!(obs.is_visible(Tree::Root, "out/a.o.tmp"));
        assert!(obs.may_write(Tree::Root, "out/a.o.tmp"));
        assert_eq!(obs.extra.iter().collect::<Vec<_>>(), ["out/a.o.tmp"]);
        // Renamed onto the output: the temporary name is gone, the output is not a temp.
        obs.drop_temp("out/a.o.tmp");
        obs.add_temp("out/a.o");
        assert!(obs.extra.is_empty());
        assert!(!obs.is_visible(Tree::Root, "out/a.o.tmp"));
        assert!(
            obs.is_visible(Tree::Root, "out/a.o"),
            "declared outputs stay"
        );
        // Dropping a declared path is no-op: only temporaries come and go.
        obs.drop_temp("out/a.o");
        obs.drop_temp("src/a.c");
        assert!(obs.is_visible(Tree::Root, "out/a.o"));
        assert!(obs.is_visible(Tree::Root, "src/a.c"));
    }

    #[test]
    fn paths_above_the_root_are_recorded_as_misses_as_the_guest_named_them() {
        let (mut obs, _d) = observer(&["src/a.c"], &["out/a.o"]);
        assert_eq!(obs.look_up(3, "../lib/clang"), Err(ERRNO_NOENT));
        assert_eq!(obs.look_up(3, "src/../../x"), Err(ERRNO_NOENT));
        assert_eq!(
            obs.log.accesses,
            vec![
                Access {
                    kind: AccessKind::Missing,
                    path: "../lib/clang".into()
                },
                Access {
                    kind: AccessKind::Missing,
                    path: "src/../../x".into()
                },
            ]
        );
        assert!(obs.log.paths(AccessKind::Denied).next().is_none());
    }

    #[test]
    fn link_targets_that_climb_out_of_their_tree_are_escapes() {
        assert!(Observer::link_escapes("a", "/etc"));
        assert!(Observer::link_escapes("a", ".."));
        assert!(Observer::link_escapes("d/a", "../.."));
        assert!(Observer::link_escapes("d/a", "x/../../../y"));
        assert!(!Observer::link_escapes("d/a", ".."));
        assert!(!Observer::link_escapes("d/a", "../b"));
        assert!(!Observer::link_escapes("a", "b/./c"));
    }

    #[test]
    fn only_regular_files_count_as_regular_files() {
        let (obs, d) = observer(&[], &["o"]);
        std::fs::write(d.path().join("root/o"), "x").unwrap();
        std::fs::create_dir(d.path().join("tmp/dir")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("tmp/link")).unwrap();
        assert!(obs.is_regular_file(Tree::Root, "o"));
        assert!(!obs.is_regular_file(Tree::Root, ""));
        assert!(!obs.is_regular_file(Tree::Tmp, "dir"));
        assert!(
            !obs.is_regular_file(Tree::Tmp, "link"),
            "a symlink, not followed"
        );
        assert!(!obs.is_regular_file(Tree::Tmp, "missing"));
    }

    #[test]
    fn metadata_is_normalised() {
        // A filestat as the implementation writes it: dev, ino, filetype, nlink, size, times.
        let stat = |filetype: u8| {
            let mut m = vec![0xAAu8; 64];
            m[16] = filetype;
            m[32..40].copy_from_slice(&4096u64.to_le_bytes());
            m
        };
        let field = |m: &[u8], off: usize| u64::from_le_bytes(m[off..off + 8].try_into().unwrap());
        let mut dir = stat(FILETYPE_DIRECTORY);
        fix_filestat(&mut dir, 0, 42, 7);
        assert_eq!(field(&dir, 0), 0, "dev");
        assert_eq!(field(&dir, 8), 42, "ino");
        assert_eq!(field(&dir, 24), 1, "nlink");
        assert_eq!(field(&dir, 32), 0, "a directory's size");
        for off in [40, 48, 56] {
            assert_eq!(field(&dir, off), 7, "time at {off}");
        }
        let mut file = stat(FILETYPE_REGULAR_FILE);
        fix_filestat(&mut file, 0, 42, 7);
        assert_eq!(field(&file, 32), 4096, "a file keeps its size");
        // Inode numbers depend on the path and tree only.
        assert_eq!(fake_ino(Tree::Root, "a"), fake_ino(Tree::Root, "a"));
        assert_ne!(fake_ino(Tree::Root, "a"), fake_ino(Tree::Tmp, "a"));
        assert_ne!(fake_ino(Tree::Root, "a"), fake_ino(Tree::Root, "b"));
    }
}
