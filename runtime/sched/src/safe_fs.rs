//! File-system operations on staging directories an action could write to (a native
//! action's output directories, a reused staging slot): every path is resolved beneath a
//! directory handle with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, and entries are
//! removed with `unlinkat` relative to their directory, so the host never follows a symlink
//! it did not create. A symlink found where a directory is needed is removed, never followed.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::Path;

fn c_name(name: &[u8]) -> io::Result<CString> {
    CString::new(name).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "the path holds a NUL byte".to_owned(),
        )
    })
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Opens the directory `path` (a host path wbuild chose, e.g. a staging root), refusing a
/// symlink at its last component.
pub(crate) fn open_dir(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(path)
}

/// `openat2(dir, rel, flags)` resolving `rel` strictly beneath `dir` with no symlink (or
/// magic link) anywhere, its last component included: a symlink gives `ELOOP`, a `..` that
/// climbs out `EXDEV`. `rel` empty opens `dir` itself again.
pub(crate) fn open_beneath(dir: &File, rel: &str, flags: libc::c_int) -> io::Result<File> {
    open_beneath_bytes(dir, rel.as_bytes(), flags)
}

fn open_beneath_bytes(dir: &File, rel: &[u8], flags: libc::c_int) -> io::Result<File> {
    let path = c_name(if rel.is_empty() { b"." } else { rel })?;
    // SAFETY: `open_how` is plain data; all-zero is its documented default.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC | libc::O_NOFOLLOW) as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    let mut attempts = 0;
    loop {
        // SAFETY: openat2 with a valid directory descriptor, a NUL-terminated path and an
        // `open_how` of the size passed; the returned descriptor is owned by the `File`.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                path.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd >= 0 {
            // SAFETY: a fresh descriptor nothing else owns.
            return Ok(unsafe { File::from_raw_fd(fd as libc::c_int) });
        }
        let e = io::Error::last_os_error();
        attempts += 1;
        // EAGAIN: a concurrent rename elsewhere on the system made the kernel unsure the
        // lookup stayed beneath `dir`; it asks to retry.
        if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EINTR)) && attempts < 16 {
            continue;
        }
        return Err(e);
    }
}

/// Whether an error from [`open_beneath`] means a symlink (or a non-directory) stood in the way.
pub(crate) fn is_symlink_refusal(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ELOOP | libc::EXDEV | libc::ENOTDIR)
    )
}

/// The directory `rel` beneath `root`, created as needed. Whatever stands in its way that is
/// not a real directory (a symlink, a file) is removed (never followed) and replaced by one.
pub(crate) fn ensure_dir(root: &File, rel: &str) -> io::Result<File> {
    let mut cur = open_beneath(root, "", libc::O_RDONLY | libc::O_DIRECTORY)?;
    for comp in rel.split('/').filter(|c| !c.is_empty()) {
        if comp == "." || comp == ".." {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("path {rel:?} is not a normalised relative path"),
            ));
        }
        let name = c_name(comp.as_bytes())?;
        let mut attempts = 0;
        cur = loop {
            attempts += 1;
            match open_beneath(&cur, comp, libc::O_RDONLY | libc::O_DIRECTORY) {
                Ok(d) => break d,
                Err(e) if attempts > 3 => return Err(e),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) if is_symlink_refusal(&e) => remove_entry(&cur, &name)?,
                Err(e) => return Err(e),
            }
            // SAFETY: mkdirat with a valid directory descriptor and a NUL-terminated name.
            match check(unsafe { libc::mkdirat(cur.as_raw_fd(), name.as_ptr(), 0o755) }) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => return Err(e),
            }
        };
    }
    Ok(cur)
}

/// The names in `dir` (without `.` and `..`).
fn entries(dir: &File) -> io::Result<Vec<CString>> {
    // A descriptor of its own for the directory stream (`closedir` closes it).
    let fd = open_beneath(dir, "", libc::O_RDONLY | libc::O_DIRECTORY)?;
    // SAFETY: fdopendir takes ownership of the descriptor on success.
    let stream = unsafe { libc::fdopendir(fd.as_raw_fd()) };
    if stream.is_null() {
        return Err(io::Error::last_os_error());
    }
    std::mem::forget(fd);
    let mut names = Vec::new();
    let result = loop {
        // SAFETY: errno is thread-local; reset to tell the end of the stream from an error.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: a valid stream; the entry is read before the next readdir call.
        let ent = unsafe { libc::readdir(stream) };
        if ent.is_null() {
            let e = io::Error::last_os_error();
            break if e.raw_os_error().unwrap_or(0) == 0 {
                Ok(())
            } else {
                Err(e)
            };
        }
        // SAFETY: d_name is NUL-terminated within the entry.
        let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) };
        if name.to_bytes() != b"." && name.to_bytes() != b".." {
            names.push(name.to_owned());
        }
    };
    // SAFETY: the stream from fdopendir above, closed once.
    unsafe { libc::closedir(stream) };
    result.map(|()| names)
}

/// Removes the entry `name` of `dir` whatever it is: a symlink or file is unlinked, a
/// directory emptied (without following anything) and removed.
fn remove_entry(dir: &File, name: &CStr) -> io::Result<()> {
    // SAFETY: unlinkat with a valid directory descriptor and a NUL-terminated name; a
    // symlink is removed itself.
    match check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) }) {
        Ok(_) => return Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EISDIR | libc::EPERM)) => {}
        Err(e) => return Err(e),
    }
    match open_beneath_bytes(dir, name.to_bytes(), libc::O_RDONLY | libc::O_DIRECTORY) {
        Ok(sub) => {
            // A read-only directory left by an action would refuse the removal of its entries.
            // SAFETY: fchmod on a descriptor this function owns.
            unsafe { libc::fchmod(sub.as_raw_fd(), 0o755) };
            empty(&sub)?;
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(e),
    }
    // SAFETY: as above.
    match check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), libc::AT_REMOVEDIR) }) {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Removes everything in `dir` (the directory stays). Symlinks are unlinked, never followed.
pub(crate) fn empty(dir: &File) -> io::Result<()> {
    for name in entries(dir)? {
        remove_entry(dir, &name)?;
    }
    Ok(())
}

/// Creates the file `name` in `dir` with `mode` (exclusively, never through a symlink):
/// whatever is at `name` is removed first (never followed).
pub(crate) fn create_file(dir: &File, name: &str, mode: u32) -> io::Result<File> {
    let c = c_name(name.as_bytes())?;
    let mut attempts = 0;
    loop {
        attempts += 1;
        // SAFETY: openat with a valid directory descriptor and a NUL-terminated name; the
        // returned descriptor is owned by the `File`.
        let fd = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                c.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                mode as libc::c_uint,
            )
        };
        if fd >= 0 {
            // SAFETY: a fresh descriptor nothing else owns.
            return Ok(unsafe { File::from_raw_fd(fd) });
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) || attempts > 3 {
            return Err(e);
        }
        remove_entry(dir, &c)?;
    }
}

/// Removes everything under `dir` but what the caller keeps, never following a symlink:
/// `keep_dir(path)` says whether to keep (and look into) the real directory at `path` (relative
/// to `dir`; it gets mode 0755 back), `keep_file(path, file)` whether to keep the regular file
/// there, given it opened (read-only, reached without a symlink). Everything else (symlinks,
/// special files, other directories and files) is removed.
pub(crate) fn sweep(
    dir: &File,
    keep_dir: &dyn Fn(&str) -> bool,
    keep_file: &mut dyn FnMut(&str, &mut File) -> bool,
) -> io::Result<()> {
    sweep_at(dir, "", keep_dir, keep_file)
}

fn sweep_at(
    dir: &File,
    rel: &str,
    keep_dir: &dyn Fn(&str) -> bool,
    keep_file: &mut dyn FnMut(&str, &mut File) -> bool,
) -> io::Result<()> {
    for name in entries(dir)? {
        let Ok(text) = name.to_str() else {
            remove_entry(dir, &name)?;
            continue;
        };
        let path = if rel.is_empty() {
            text.to_owned()
        } else {
            format!("{rel}/{text}")
        };
        // SAFETY: `stat` is plain data; all-zero is a valid value.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstatat on a valid directory descriptor and a NUL-terminated name, the
        // entry itself (AT_SYMLINK_NOFOLLOW), into the stat above.
        let kind = match check(unsafe {
            libc::fstatat(
                dir.as_raw_fd(),
                name.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        }) {
            Ok(_) => st.st_mode & libc::S_IFMT,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(e),
        };
        let kept = match kind {
            libc::S_IFDIR if keep_dir(&path) => {
                match open_beneath_bytes(dir, name.to_bytes(), libc::O_RDONLY | libc::O_DIRECTORY) {
                    Ok(sub) => {
                        // SAFETY: fchmod on a descriptor this function owns.
                        unsafe { libc::fchmod(sub.as_raw_fd(), 0o755) };
                        sweep_at(&sub, &path, keep_dir, keep_file)?;
                        true
                    }
                    // Replaced meanwhile: removed below.
                    Err(e) if is_symlink_refusal(&e) => false,
                    Err(e) => return Err(e),
                }
            }
            libc::S_IFREG => match open_beneath_bytes(dir, name.to_bytes(), libc::O_RDONLY) {
                Ok(mut f) => keep_file(&path, &mut f),
                Err(_) => false,
            },
            _ => false,
        };
        if !kept {
            remove_entry(dir, &name)?;
        }
    }
    Ok(())
}

/// Makes `rel` beneath `root` an existing, empty directory (see [`ensure_dir`], [`empty`]).
pub(crate) fn ensure_empty_dir(root: &File, rel: &str) -> io::Result<File> {
    let dir = ensure_dir(root, rel)?;
    empty(&dir)?;
    Ok(dir)
}

/// Removes the file `rel` beneath `root` if it is reachable without following a symlink
/// (whatever it is: a symlink itself is unlinked). Best effort: what cannot be reached stays.
pub(crate) fn remove_beneath(root: &File, rel: &str) -> io::Result<()> {
    let (parent, name) = split(rel);
    let dir = match open_beneath(root, parent, libc::O_RDONLY | libc::O_DIRECTORY) {
        Ok(d) => d,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) || is_symlink_refusal(&e) => {
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    remove_entry(&dir, &c_name(name.as_bytes())?)
}

/// `(parent, name)` of a relative path (`""` for a path without `/`).
pub(crate) fn split(rel: &str) -> (&str, &str) {
    rel.rsplit_once('/').unwrap_or(("", rel))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn a_sweep_keeps_what_it_is_told_and_follows_no_symlink() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let host = t.path().join("host");
        std::fs::create_dir_all(root.join("keep/sub")).unwrap();
        std::fs::create_dir_all(root.join("gone/deep")).unwrap();
        std::fs::create_dir_all(&host).unwrap();
        std::fs::write(host.join("victim"), "v").unwrap();
        std::fs::write(root.join("keep/a"), "a").unwrap();
        std::fs::write(root.join("keep/b"), "b").unwrap();
        std::fs::write(root.join("keep/sub/c"), "c").unwrap();
        std::fs::write(root.join("gone/deep/d"), "d").unwrap();
        std::fs::set_permissions(root.join("gone"), std::fs::Permissions::from_mode(0o555))
            .unwrap();
        std::fs::set_permissions(root.join("keep"), std::fs::Permissions::from_mode(0o500))
            .unwrap();
        // Links where a kept directory and a kept file are expected, and one to a host file.
        symlink(&host, root.join("keep/linked")).unwrap();
        symlink(host.join("victim"), root.join("keep/sub/victim")).unwrap();
        symlink(&host, root.join("top")).unwrap();
        let dir = open_dir(&root).unwrap();
        let mut asked = Vec::new();
        sweep(
            &dir,
            &|p| ["keep", "keep/sub", "keep/linked", "gone/deep"].contains(&p),
            &mut |p, f| {
                asked.push(p.to_owned());
                let mut s = String::new();
                std::io::Read::read_to_string(f, &mut s).unwrap();
                s == "a" || s == "c" || p == "keep/sub/victim"
            },
        )
        .unwrap();
        asked.sort();
        // Only regular files reached without a link are offered; `gone/` is not looked into.
        assert_eq!(asked, ["keep/a", "keep/b", "keep/sub/c"]);
        let mut left: Vec<String> = walk(&root);
        left.sort();
        assert_eq!(left, ["keep", "keep/a", "keep/sub", "keep/sub/c"]);
        assert_eq!(
            std::fs::metadata(root.join("keep"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o755
        );
        assert_eq!(std::fs::read_to_string(host.join("victim")).unwrap(), "v");
    }

    #[test]
    fn a_file_is_created_in_place_of_whatever_is_there() {
        use std::io::Write;
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let host = t.path().join("host");
        std::fs::create_dir_all(root.join("d/x")).unwrap();
        std::fs::create_dir_all(&host).unwrap();
        std::fs::write(host.join("victim"), "v").unwrap();
        std::fs::write(host.join("inner"), "i").unwrap();
        symlink(host.join("victim"), root.join("link")).unwrap();
        std::fs::write(root.join("d/x/inner"), "old").unwrap();
        let dir = open_dir(&root).unwrap();
        for name in ["link", "d", "new"] {
            let mut f = create_file(&dir, name, 0o600).unwrap();
            f.write_all(name.as_bytes()).unwrap();
            assert_eq!(std::fs::read_to_string(root.join(name)).unwrap(), name);
        }
        assert_eq!(std::fs::read_to_string(host.join("victim")).unwrap(), "v");
        assert_eq!(std::fs::read_to_string(host.join("inner")).unwrap(), "i");
        assert!(
            std::fs::symlink_metadata(root.join("link"))
                .unwrap()
                .is_file()
        );
    }

    /// Every path under `root`, relative to it (links not followed).
    fn walk(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(root).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            out.push(name.clone());
            if e.file_type().unwrap().is_dir() {
                out.extend(walk(&e.path()).into_iter().map(|p| format!("{name}/{p}")));
            }
        }
        out
    }

    #[test]
    fn open_beneath_refuses_symlinks_anywhere_and_escapes() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let host = t.path().join("host");
        std::fs::create_dir_all(root.join("real")).unwrap();
        std::fs::create_dir_all(&host).unwrap();
        std::fs::write(host.join("victim"), "v").unwrap();
        std::fs::write(root.join("real/f"), "f").unwrap();
        symlink(&host, root.join("link")).unwrap();
        symlink(host.join("victim"), root.join("real/flink")).unwrap();
        let r = open_dir(&root).unwrap();
        assert!(open_beneath(&r, "real/f", libc::O_RDONLY).is_ok());
        for bad in ["link/victim", "real/flink", "../host/victim", "/etc/passwd"] {
            let e = open_beneath(&r, bad, libc::O_RDONLY).unwrap_err();
            assert!(is_symlink_refusal(&e), "{bad}: {e}");
        }
        assert!(open_dir(&root.join("link")).is_err());
    }

    #[test]
    fn ensure_empty_dir_replaces_symlinks_and_never_follows_them() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let host = t.path().join("host");
        std::fs::create_dir_all(host.join("sub")).unwrap();
        std::fs::write(host.join("victim"), "v").unwrap();
        std::fs::write(host.join("sub/victim2"), "v2").unwrap();
        std::fs::create_dir_all(root.join("out/keep")).unwrap();
        // A parent replaced by a symlink to a host directory, and symlinks inside the
        // directory to empty (to the host directory and to a host file).
        symlink(&host, root.join("gen")).unwrap();
        symlink(&host, root.join("out/dirlink")).unwrap();
        symlink(host.join("victim"), root.join("out/filelink")).unwrap();
        std::fs::create_dir_all(root.join("out/deep/er")).unwrap();
        symlink(&host, root.join("out/deep/er/l")).unwrap();
        let r = open_dir(&root).unwrap();
        ensure_empty_dir(&r, "gen/sub").unwrap();
        ensure_empty_dir(&r, "out").unwrap();
        assert!(root.join("gen").symlink_metadata().unwrap().is_dir());
        assert!(root.join("gen/sub").is_dir());
        assert_eq!(std::fs::read_dir(root.join("out")).unwrap().count(), 0);
        assert_eq!(std::fs::read_to_string(host.join("victim")).unwrap(), "v");
        assert_eq!(
            std::fs::read_to_string(host.join("sub/victim2")).unwrap(),
            "v2"
        );
        // A file in the way of a directory goes too; `..` is refused.
        std::fs::write(root.join("file"), "x").unwrap();
        ensure_dir(&r, "file/x").unwrap();
        assert!(root.join("file/x").is_dir());
        assert!(ensure_dir(&r, "a/../b").is_err());
        // remove_beneath unlinks a symlink, never what it points to, and skips what it
        // cannot reach without following one.
        symlink(host.join("victim"), root.join("gen/sub/f")).unwrap();
        remove_beneath(&r, "gen/sub/f").unwrap();
        assert!(!root.join("gen/sub/f").exists());
        std::fs::remove_dir_all(root.join("gen")).unwrap();
        symlink(&host, root.join("gen")).unwrap();
        remove_beneath(&r, "gen/victim").unwrap();
        assert_eq!(std::fs::read_to_string(host.join("victim")).unwrap(), "v");
    }
}
