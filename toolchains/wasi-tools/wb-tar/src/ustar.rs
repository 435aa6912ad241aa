//! Deterministic ustar (POSIX.1-1988) encoding and a small reader. Pure: no I/O here.
//!
//! Also compiled into `wb-check` (via `#[path]`), which needs the reader for `tar-contains`
//! but may depend on nothing but `wbuild-sdk`.

use std::fmt;

pub const BLOCK: usize = 512;
/// Largest value an 11-digit octal header field holds (8 GiB - 1).
pub const MAX_OCTAL_11: u64 = 0o77777777777;

/// What goes wrong encoding or decoding an archive; the message names the entry or offset.
#[derive(Debug, PartialEq, Eq)]
pub struct TarError(pub String);

impl fmt::Display for TarError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One regular file to store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileEntry {
    pub name: String,
    pub data: Vec<u8>,
}

/// Checks that `name` is a clean relative archive path: non-empty `/`-separated components,
/// none of them `.` or `..`, no leading or trailing `/`, no NUL.
pub fn check_name(name: &str) -> Result<(), TarError> {
    let bad = |why: &str| Err(TarError(format!("invalid entry name {name:?}: {why}")));
    if name.is_empty() {
        return bad("empty");
    }
    if name.contains('\0') {
        return bad("contains NUL");
    }
    if name.starts_with('/') {
        return bad("absolute path");
    }
    for comp in name.split('/') {
        match comp {
            "" => return bad("empty path component (leading, trailing or double '/')"),
            "." | ".." => return bad("'.' or '..' component"),
            _ => {}
        }
    }
    Ok(())
}

/// Splits `name` into ustar (prefix, name) fields: name <= 100 bytes, prefix <= 155 bytes,
/// split at a `/` (which is not stored). The shortest possible prefix is used.
fn split_name(name: &str) -> Result<(&str, &str), TarError> {
    if name.len() <= 100 {
        return Ok(("", name));
    }
    for (i, b) in name.bytes().enumerate() {
        if b == b'/' && name.len() - i - 1 <= 100 {
            if i <= 155 {
                return Ok((&name[..i], &name[i + 1..]));
            }
            break;
        }
    }
    Err(TarError(format!(
        "entry name {name:?} is too long for ustar (at most 155 bytes of directories + '/' + 100 bytes)"
    )))
}

fn put_octal(field: &mut [u8], value: u64, what: &str, name: &str) -> Result<(), TarError> {
    let digits = field.len() - 1;
    let s = format!("{value:0digits$o}");
    if s.len() > digits {
        return Err(TarError(format!(
            "{what} {value} of entry {name:?} does not fit in a ustar header"
        )));
    }
    field[..digits].copy_from_slice(s.as_bytes());
    field[digits] = 0;
    Ok(())
}

/// Sum of the header bytes with the checksum field counted as spaces.
fn checksum(header: &[u8; BLOCK]) -> u64 {
    header
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u64::from(b)
            }
        })
        .sum()
}

fn header(name: &str, size: u64, mtime: u64) -> Result<[u8; BLOCK], TarError> {
    let (prefix, short) = split_name(name)?;
    let mut h = [0u8; BLOCK];
    h[..short.len()].copy_from_slice(short.as_bytes());
    put_octal(&mut h[100..108], 0o644, "mode", name)?;
    put_octal(&mut h[108..116], 0, "uid", name)?;
    put_octal(&mut h[116..124], 0, "gid", name)?;
    put_octal(&mut h[124..136], size, "size", name)?;
    put_octal(&mut h[136..148], mtime, "mtime", name)?;
    h[156] = b'0'; // regular file
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    // uname (265..297) and gname (297..329) stay empty.
    put_octal(&mut h[329..337], 0, "devmajor", name)?;
    put_octal(&mut h[337..345], 0, "devminor", name)?;
    h[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
    let sum = checksum(&h);
    h[148..154].copy_from_slice(format!("{sum:06o}").as_bytes());
    h[154] = 0;
    h[155] = b' ';
    Ok(h)
}

/// Encodes `entries` as a deterministic ustar archive: entries sorted by name (bytewise),
/// mode 0644, uid/gid 0, empty uname/gname, the given mtime, two zero blocks at the end.
/// Duplicate names are an error.
pub fn encode(mut entries: Vec<FileEntry>, mtime: u64) -> Result<Vec<u8>, TarError> {
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    for pair in entries.windows(2) {
        if pair[0].name == pair[1].name {
            return Err(TarError(format!(
                "two inputs map to the same entry name {:?}",
                pair[0].name
            )));
        }
    }
    let mut out = Vec::new();
    for e in &entries {
        check_name(&e.name)?;
        out.extend_from_slice(&header(&e.name, e.data.len() as u64, mtime)?);
        out.extend_from_slice(&e.data);
        let pad = (BLOCK - e.data.len() % BLOCK) % BLOCK;
        out.resize(out.len() + pad, 0);
    }
    out.resize(out.len() + 2 * BLOCK, 0);
    Ok(out)
}

/// One entry read back from an archive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadEntry {
    pub name: String,
    /// `b'0'` (or `0`) for regular files, `b'5'` for directories, ...
    pub typeflag: u8,
    pub mode: u64,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub uname: String,
    pub gname: String,
    pub data: Vec<u8>,
}

fn parse_octal(field: &[u8], what: &str, offset: usize) -> Result<u64, TarError> {
    let text: Vec<u8> = field
        .iter()
        .copied()
        .take_while(|&b| b != 0)
        .filter(|&b| b != b' ')
        .collect();
    if text.is_empty() {
        return Ok(0);
    }
    let s = std::str::from_utf8(&text).unwrap_or("?");
    u64::from_str_radix(s, 8).map_err(|_| {
        TarError(format!(
            "header at byte {offset}: {what} field {s:?} is not an octal number"
        ))
    })
}

fn cstr(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

/// Reads every entry of a ustar archive (also GNU `L` long names and pax `path` records).
/// Checksums are verified. A missing end-of-archive marker is tolerated, as GNU tar does.
pub fn decode(bytes: &[u8]) -> Result<Vec<ReadEntry>, TarError> {
    let mut entries = Vec::new();
    let mut offset = 0;
    let mut long_name: Option<String> = None;
    while offset + BLOCK <= bytes.len() {
        let block: &[u8; BLOCK] = bytes[offset..offset + BLOCK].try_into().expect("block");
        if block.iter().all(|&b| b == 0) {
            break; // end of archive
        }
        let stored = parse_octal(&block[148..156], "checksum", offset)?;
        let computed = checksum(block);
        if stored != computed {
            return Err(TarError(format!(
                "header at byte {offset}: checksum {stored:o} does not match computed {computed:o} (not a tar archive, or corrupt)"
            )));
        }
        let size = parse_octal(&block[124..136], "size", offset)?;
        let typeflag = block[156];
        let data_start = offset + BLOCK;
        let data_end = usize::try_from(size)
            .ok()
            .and_then(|s| data_start.checked_add(s))
            .filter(|&end| end <= bytes.len())
            .ok_or_else(|| {
                TarError(format!(
                    "header at byte {offset}: entry data of {size} bytes runs past the end of the archive ({} bytes)",
                    bytes.len()
                ))
            })?;
        let data = bytes[data_start..data_end].to_vec();
        offset = data_start + data.len().div_ceil(BLOCK) * BLOCK;
        match typeflag {
            b'L' => {
                long_name = Some(cstr(&data));
                continue;
            }
            b'x' => {
                if let Some(path) = pax_path(&data) {
                    long_name = Some(path);
                }
                continue;
            }
            b'g' => continue,
            _ => {}
        }
        let name = match long_name.take() {
            Some(n) => n,
            None => {
                let short = cstr(&block[..100]);
                let prefix = if &block[257..262] == b"ustar" {
                    cstr(&block[345..500])
                } else {
                    String::new()
                };
                if prefix.is_empty() {
                    short
                } else {
                    format!("{prefix}/{short}")
                }
            }
        };
        entries.push(ReadEntry {
            name,
            typeflag,
            mode: parse_octal(&block[100..108], "mode", offset)?,
            uid: parse_octal(&block[108..116], "uid", offset)?,
            gid: parse_octal(&block[116..124], "gid", offset)?,
            mtime: parse_octal(&block[136..148], "mtime", offset)?,
            uname: cstr(&block[265..297]),
            gname: cstr(&block[297..329]),
            data,
        });
    }
    if offset < bytes.len() && offset + BLOCK > bytes.len() {
        return Err(TarError(format!(
            "not a tar archive, or truncated: {} trailing bytes at byte {offset} do not form a 512-byte block",
            bytes.len() - offset
        )));
    }
    Ok(entries)
}

/// The `path` record of a pax extended header (records are `"<len> path=<value>\n"`).
fn pax_path(data: &[u8]) -> Option<String> {
    let mut rest = data;
    while !rest.is_empty() {
        let space = rest.iter().position(|&b| b == b' ')?;
        let len: usize = std::str::from_utf8(&rest[..space]).ok()?.parse().ok()?;
        if len <= space || len > rest.len() {
            return None;
        }
        let record = &rest[space + 1..len];
        let record = record.strip_suffix(b"\n").unwrap_or(record);
        if let Some(value) = record.strip_prefix(b"path=") {
            return Some(String::from_utf8_lossy(value).into_owned());
        }
        rest = &rest[len..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, data: &[u8]) -> FileEntry {
        FileEntry {
            name: name.to_string(),
            data: data.to_vec(),
        }
    }

    #[test]
    fn round_trips_sorted_entries_with_fixed_metadata() {
        let bytes = encode(
            vec![
                entry("b.txt", b"bee\n"),
                entry("a/x.h", &[7u8; 1000]),
                entry("empty", b""),
            ],
            1_700_000_000,
        )
        .unwrap();
        assert_eq!(bytes.len() % BLOCK, 0);
        // 3 headers + 2 data blocks for x.h + 1 for b.txt + 2 end blocks.
        assert_eq!(bytes.len(), (3 + 2 + 1 + 2) * BLOCK);
        assert!(bytes[bytes.len() - 2 * BLOCK..].iter().all(|&b| b == 0));
        let read = decode(&bytes).unwrap();
        let names: Vec<&str> = read.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["a/x.h", "b.txt", "empty"]);
        for e in &read {
            assert_eq!(e.typeflag, b'0');
            assert_eq!(e.mode, 0o644);
            assert_eq!((e.uid, e.gid), (0, 0));
            assert_eq!(e.mtime, 1_700_000_000);
            assert_eq!((e.uname.as_str(), e.gname.as_str()), ("", ""));
        }
        assert_eq!(read[0].data, vec![7u8; 1000]);
        assert_eq!(read[1].data, b"bee\n");
        assert!(read[2].data.is_empty());
    }

    #[test]
    fn output_does_not_depend_on_input_order() {
        let a = encode(vec![entry("x", b"1"), entry("y", b"2")], 0).unwrap();
        let b = encode(vec![entry("y", b"2"), entry("x", b"1")], 0).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn header_fields_are_exact() {
        let bytes = encode(vec![entry("hello.txt", b"hi")], 0).unwrap();
        let h = &bytes[..BLOCK];
        assert_eq!(&h[..10], b"hello.txt\0");
        assert_eq!(&h[100..108], b"0000644\0");
        assert_eq!(&h[124..136], b"00000000002\0");
        assert_eq!(&h[136..148], b"00000000000\0");
        assert_eq!(h[156], b'0');
        assert_eq!(&h[257..265], b"ustar\x0000");
        assert_eq!(h[155], b' ');
        assert_eq!(h[154], 0);
        let mut copy = [0u8; BLOCK];
        copy.copy_from_slice(h);
        let stored = u64::from_str_radix(std::str::from_utf8(&h[148..154]).unwrap(), 8).unwrap();
        assert_eq!(stored, checksum(&copy));
    }

    #[test]
    fn long_names_use_the_prefix_field() {
        let dir = "d".repeat(120);
        let name = format!("{dir}/file.txt");
        let bytes = encode(vec![entry(&name, b"x")], 0).unwrap();
        assert_eq!(&bytes[345..345 + 120], dir.as_bytes());
        assert_eq!(&bytes[..9], b"file.txt\0");
        assert_eq!(decode(&bytes).unwrap()[0].name, name);
        let too_long = format!("{}/{}", "a".repeat(200), "b".repeat(10));
        assert!(encode(vec![entry(&too_long, b"")], 0).is_err());
        let long_base = format!("a/{}", "b".repeat(101));
        assert!(encode(vec![entry(&long_base, b"")], 0).is_err());
    }

    #[test]
    fn rejects_bad_names_duplicates_and_huge_mtime() {
        for bad in ["", "/abs", "a//b", "a/", "../x", "a/./b"] {
            assert!(encode(vec![entry(bad, b"")], 0).is_err(), "{bad:?}");
        }
        let e = encode(vec![entry("x", b"1"), entry("x", b"2")], 0).unwrap_err();
        assert!(e.0.contains("same entry name \"x\""), "{e}");
        assert!(encode(vec![entry("x", b"")], MAX_OCTAL_11 + 1).is_err());
        assert!(encode(vec![entry("x", b"")], MAX_OCTAL_11).is_ok());
    }

    #[test]
    fn decode_detects_corruption_and_truncation() {
        let mut bytes = encode(vec![entry("x", b"data")], 0).unwrap();
        bytes[0] = b'y';
        assert!(decode(&bytes).unwrap_err().0.contains("checksum"));
        let bytes = encode(vec![entry("x", &[1u8; 600])], 0).unwrap();
        assert!(
            decode(&bytes[..BLOCK + 100])
                .unwrap_err()
                .0
                .contains("past the end")
        );
        assert!(decode(b"not a tar").unwrap_err().0.contains("truncated"));
        // An empty archive (just the end marker) has no entries.
        assert!(decode(&encode(vec![], 0).unwrap()).unwrap().is_empty());
    }

    #[test]
    fn decode_reads_pax_and_gnu_long_names() {
        // Build a pax header by hand around an ordinary entry.
        let long = format!("{}/n.txt", "p".repeat(300));
        let record = format!(" path={long}\n");
        let len = record.len() + (record.len() + 3).to_string().len();
        let pax = format!("{len}{record}");
        assert_eq!(pax.len(), len);
        let mut bytes = Vec::new();
        let mut h = header("PaxHeader", pax.len() as u64, 0).unwrap();
        h[156] = b'x';
        h[148..156].copy_from_slice(b"        ");
        let sum = checksum(&h);
        h[148..154].copy_from_slice(format!("{sum:06o}").as_bytes());
        h[154] = 0;
        bytes.extend_from_slice(&h);
        bytes.extend_from_slice(pax.as_bytes());
        bytes.resize(bytes.len().div_ceil(BLOCK) * BLOCK, 0);
        bytes.extend(encode(vec![entry("short", b"z")], 0).unwrap());
        let read = decode(&bytes).unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].name, long);
        assert_eq!(read[0].data, b"z");
    }
}
