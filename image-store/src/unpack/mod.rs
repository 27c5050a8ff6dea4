//! Unpacks one layer (a tar stream, gzip/zstd or plain) into its own directory, which later
//! becomes an overlayfs lowerdir. Written by us on purpose: the `tar` crate only parses
//! entries here; its unpack/unpack_in have a history of writing outside the destination.
//!
//! Every path is resolved with openat2(RESOLVE_IN_ROOT) on the layer's directory fd, so a
//! symlink in the layer (even an absolute one) can never lead outside it; `..` components
//! are refused outright. Whiteouts become what overlayfs expects: `.wh.x` a 0/0 character
//! device, `.wh..wh..opq` the `trusted.overlay.opaque=y` xattr. Directory mtimes are set
//! after their contents, because creating the contents changes them.

mod sys;

use std::cell::Cell;
use std::ffi::{CStr, CString};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::rc::Rc;

use crate::digest::Hasher;
use crate::error::{Error, Result};

pub use sys::{remove_tree_at, syncfs};

/// Bounds on what one layer may contain.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Uncompressed bytes of the whole tar stream (decompression bombs).
    pub max_layer_bytes: u64,
    /// Number of tar entries.
    pub max_entries: u64,
    /// Bytes of headers and extension records (GNU long names, PAX) before one entry; the
    /// tar parser holds these in memory.
    pub max_header_bytes: u64,
    /// Length of one path or link target.
    pub max_path_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_layer_bytes: 64 << 30,
            max_entries: 4_000_000,
            max_header_bytes: 1 << 20,
            max_path_len: 4096,
        }
    }
}

/// What unpacking measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpacked {
    /// sha256 of the uncompressed tar stream.
    pub diff_id: String,
    pub uncompressed_size: u64,
    pub entries: u64,
}

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];

/// Unpacks `layer` (compression detected from its first bytes, as containerd does) into
/// the existing empty directory `dir`. `name` only labels errors.
pub fn unpack(layer: impl Read, dir: &Path, name: &str, limits: &Limits) -> Result<Unpacked> {
    let unsafe_layer = |reason: String| Error::UnsafeLayer {
        layer: name.to_string(),
        reason,
    };
    let mut buffered = BufReader::with_capacity(256 * 1024, layer);
    let head = buffered.fill_buf().map_err(|e| read_error(name, e))?;
    let decoded: Box<dyn Read> = if head.starts_with(GZIP_MAGIC) {
        Box::new(flate2::read::MultiGzDecoder::new(buffered))
    } else if head.starts_with(ZSTD_MAGIC) {
        Box::new(
            zstd::stream::read::Decoder::with_buffer(buffered).map_err(|e| read_error(name, e))?,
        )
    } else {
        Box::new(buffered)
    };
    let meter = Rc::new(Meter::default());
    let metered = Metered {
        inner: decoded,
        hasher: Hasher::default(),
        meter: meter.clone(),
        limits: limits.clone(),
    };
    let root = std::fs::File::open(dir)
        .map_err(|e| Error::storage(format!("open {}", dir.display()), e))?;
    let mut x = Extractor {
        root: OwnedFd::from(root),
        limits: limits.clone(),
        dir_times: Vec::new(),
        buf: vec![0; 128 * 1024],
        written: 0,
    };

    let mut archive = tar::Archive::new(metered);
    let mut entries = 0u64;
    for entry in archive.entries().map_err(|e| read_error(name, e))? {
        let mut entry = entry.map_err(|e| meter.explain(name, e))?;
        meter.between.set(0);
        meter.in_entry.set(true);
        entries += 1;
        if entries > limits.max_entries {
            return Err(Error::LimitExceeded(format!(
                "layer {name}: more than {} entries",
                limits.max_entries
            )));
        }
        x.entry(&mut entry).map_err(|e| match e {
            EntryError::Unsafe(r) => unsafe_layer(r),
            EntryError::Limit(what) => Error::LimitExceeded(format!("layer {name}: {what}")),
            EntryError::Read(e) => meter.explain(name, e),
            EntryError::Io(e) => Error::storage(format!("unpacking layer {name}"), e),
        })?;
        // Whatever the entry's data was not used for still counts towards the DiffID.
        io::copy(&mut entry, &mut io::sink()).map_err(|e| meter.explain(name, e))?;
        meter.in_entry.set(false);
    }
    x.finish()
        .map_err(|e| Error::storage(format!("layer {name}"), e))?;
    // Trailing blocks after the end-of-archive marker are part of the DiffID too.
    meter.in_entry.set(true);
    let mut metered = archive.into_inner();
    io::copy(&mut metered, &mut io::sink()).map_err(|e| meter.explain(name, e))?;
    let uncompressed_size = metered.hasher.bytes();
    Ok(Unpacked {
        diff_id: metered.hasher.finish(),
        uncompressed_size,
        entries,
    })
}

fn read_error(name: &str, e: io::Error) -> Error {
    Error::Verification(format!("layer {name}: {e}"))
}

/// Shared between the reader (inside the tar parser) and the entry loop.
#[derive(Default)]
struct Meter {
    /// Bytes read since the parser last handed us an entry (headers, long names, PAX).
    between: Cell<u64>,
    /// True while we consume an entry's data, which is bounded by the total limit only.
    in_entry: Cell<bool>,
    /// Set when a limit stopped reading, so the error says which.
    exceeded: Cell<Option<&'static str>>,
}

impl Meter {
    fn explain(&self, name: &str, e: io::Error) -> Error {
        match self.exceeded.get() {
            Some(what) => Error::LimitExceeded(format!("layer {name}: {what}")),
            None => read_error(name, e),
        }
    }
}

/// Hashes the uncompressed stream (the DiffID) and enforces the byte limits.
struct Metered<R> {
    inner: R,
    hasher: Hasher,
    meter: Rc<Meter>,
    limits: Limits,
}

impl<R: Read> Read for Metered<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        let over = |m: &Meter, what| {
            m.exceeded.set(Some(what));
            Err(io::Error::other(what))
        };
        if self.hasher.bytes() > self.limits.max_layer_bytes {
            return over(
                &self.meter,
                "uncompressed size exceeds the layer size limit",
            );
        }
        if !self.meter.in_entry.get() {
            let between = self.meter.between.get() + n as u64;
            self.meter.between.set(between);
            if between > self.limits.max_header_bytes {
                return over(&self.meter, "tar headers exceed the header size limit");
            }
        }
        Ok(n)
    }
}

enum EntryError {
    /// The entry breaks a rule: the whole layer is refused.
    Unsafe(String),
    /// Reading the layer stream failed (cut download, corrupt compression, a limit).
    Read(io::Error),
    /// Writing the layer directory failed (disk full, ...).
    Io(io::Error),
    /// What the entries expand to passes a limit.
    Limit(String),
}

impl From<io::Error> for EntryError {
    fn from(e: io::Error) -> Self {
        EntryError::Io(e)
    }
}

type EntryResult<T> = std::result::Result<T, EntryError>;

fn unsafe_entry<T>(msg: impl Into<String>) -> EntryResult<T> {
    Err(EntryError::Unsafe(msg.into()))
}

struct Extractor {
    root: OwnedFd,
    limits: Limits,
    /// Directories created, with their mtimes, applied last.
    dir_times: Vec<(CString, (i64, i64))>,
    buf: Vec<u8>,
    /// File bytes written so far. A GNU sparse entry expands to its real size (the tar
    /// reader fills the holes with zeros), which the stream's size does not bound: a tiny
    /// layer could otherwise write a file of a terabyte.
    written: u64,
}

/// Metadata common to every entry.
struct Meta {
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: (i64, i64),
    xattrs: Vec<(CString, Vec<u8>)>,
}

impl Extractor {
    fn root(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    fn entry<R: Read>(&mut self, e: &mut tar::Entry<'_, R>) -> EntryResult<()> {
        let path = e.path_bytes().into_owned();
        let comps = self.clean(&path)?;
        let kind = e.header().entry_type();
        let meta = self.meta(e)?;

        if kind.is_pax_global_extensions() {
            return Ok(());
        }
        let Some((name, parent_comps)) = comps.split_last() else {
            // The layer root itself (`./`): only a directory makes sense here.
            if kind.is_dir() {
                let root =
                    sys::open_in_root(self.root(), c".", libc::O_RDONLY | libc::O_DIRECTORY)?;
                apply_meta(root.as_fd(), &meta)?;
                self.dir_times.push((c".".to_owned(), meta.mtime));
                return Ok(());
            }
            return unsafe_entry(format!(
                "{:?} is not a directory but names the layer root",
                kind
            ));
        };

        // Whiteouts.
        if let Some(target) = name.strip_prefix(b".wh.") {
            let parent = self.dir(parent_comps, true, libc::O_RDONLY)?;
            if target == b".wh..opq" {
                sys::fsetxattr(parent.as_fd(), c"trusted.overlay.opaque", b"y")?;
                return Ok(());
            }
            if target.starts_with(b".wh.") {
                return Ok(()); // aufs bookkeeping (.wh..wh.plnk etc.), meaningless to overlay
            }
            if target.is_empty() || target == b"." || target == b".." {
                return unsafe_entry(format!("whiteout {:?} names nothing", show(&path)));
            }
            let target = sys::cstring(target)?;
            self.clear(parent.as_fd(), &target, false)?;
            sys::mknod_at(parent.as_fd(), &target, libc::S_IFCHR, 0)?;
            return Ok(());
        }

        let parent = self.dir(parent_comps, true, libc::O_PATH)?;
        let parent = parent.as_fd();
        let cname = sys::cstring(name)?;

        if kind.is_dir() {
            let existing = sys::lstat_at(parent, &cname)?;
            if existing.is_none_or(|st| st.st_mode & libc::S_IFMT != libc::S_IFDIR) {
                self.clear(parent, &cname, false)?;
                sys::mkdir_at(parent, &cname, 0o700)?;
            }
            let d = sys::open_at(parent, &cname, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
            apply_meta(d.as_fd(), &meta)?;
            self.dir_times
                .push((sys::cstring(&comps.join(&b'/'))?, meta.mtime));
        } else if kind.is_file() || kind == tar::EntryType::Continuous || kind.is_gnu_sparse() {
            self.clear(parent, &cname, true)?;
            let fd = sys::open_at(
                parent,
                &cname,
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
                0o600,
            )?;
            let mut f = std::fs::File::from(fd);
            loop {
                let n = e.read(&mut self.buf).map_err(EntryError::Read)?;
                if n == 0 {
                    break;
                }
                self.written += n as u64;
                if self.written > self.limits.max_layer_bytes {
                    return Err(EntryError::Limit(format!(
                        "{:?} expands past the layer size limit of {} bytes",
                        show(&path),
                        self.limits.max_layer_bytes
                    )));
                }
                f.write_all(&self.buf[..n])?;
            }
            apply_meta(f.as_fd(), &meta)?;
        } else if kind.is_symlink() {
            let target = e.link_name_bytes().ok_or_else(|| {
                EntryError::Unsafe(format!("symlink {:?} has no target", show(&path)))
            })?;
            if target.is_empty() || target.len() > self.limits.max_path_len {
                return unsafe_entry(format!("symlink {:?}: bad target length", show(&path)));
            }
            self.clear(parent, &cname, true)?;
            sys::symlink_at(&sys::cstring(&target)?, parent, &cname)?;
            sys::lchown_at(parent, &cname, meta.uid, meta.gid)?;
            sys::lutimens_at(parent, &cname, meta.mtime)?;
        } else if kind.is_hard_link() {
            let target = e.link_name_bytes().unwrap_or_default().into_owned();
            let tcomps = self.clean(&target)?;
            let Some((tname, tparent)) = tcomps.split_last() else {
                return unsafe_entry(format!("hardlink {:?} to the layer root", show(&path)));
            };
            let tparent = self.dir(tparent, false, libc::O_PATH).map_err(|_| {
                EntryError::Unsafe(format!(
                    "hardlink {:?}: target {:?} is not in this layer",
                    show(&path),
                    show(&target)
                ))
            })?;
            let tname = sys::cstring(tname)?;
            if sys::lstat_at(tparent.as_fd(), &tname)?.is_none() {
                return unsafe_entry(format!(
                    "hardlink {:?}: target {:?} is not in this layer",
                    show(&path),
                    show(&target)
                ));
            }
            if comps == tcomps {
                return Ok(());
            }
            self.clear(parent, &cname, true)?;
            sys::link_at(tparent.as_fd(), &tname, parent, &cname)?;
        } else if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
            let file_type = if kind.is_character_special() {
                libc::S_IFCHR
            } else if kind.is_block_special() {
                libc::S_IFBLK
            } else {
                libc::S_IFIFO
            };
            let malformed =
                |e: io::Error| EntryError::Unsafe(format!("malformed device number: {e}"));
            let major = e.header().device_major().map_err(malformed)?.unwrap_or(0);
            let minor = e.header().device_minor().map_err(malformed)?.unwrap_or(0);
            self.clear(parent, &cname, true)?;
            sys::mknod_at(
                parent,
                &cname,
                file_type | (meta.mode & 0o777),
                libc::makedev(major, minor),
            )?;
            sys::lchown_at(parent, &cname, meta.uid, meta.gid)?;
            // umask applied at mknod; the node is ours and no symlink (we just made it).
            sys::chmod_at(parent, &cname, meta.mode & 0o7777)?;
            sys::lutimens_at(parent, &cname, meta.mtime)?;
        } else {
            return unsafe_entry(format!(
                "{:?}: unsupported tar entry type {:?}",
                show(&path),
                kind
            ));
        }
        Ok(())
    }

    /// Splits an entry path into components: leading `/` and `.` are dropped (absolute
    /// paths are relative to the layer root), `..` refuses the layer.
    fn clean<'a>(&self, path: &'a [u8]) -> EntryResult<Vec<&'a [u8]>> {
        if path.len() > self.limits.max_path_len {
            return unsafe_entry(format!("path of {} bytes exceeds the limit", path.len()));
        }
        if path.contains(&0) {
            return unsafe_entry(format!("{:?} contains NUL", show(path)));
        }
        let mut out = Vec::new();
        for c in path.split(|b| *b == b'/') {
            match c {
                b"" | b"." => {}
                b".." => return unsafe_entry(format!("{:?} contains \"..\"", show(path))),
                c => out.push(c),
            }
        }
        Ok(out)
    }

    fn meta<R: Read>(&self, e: &mut tar::Entry<'_, R>) -> EntryResult<Meta> {
        let h = e.header();
        let old = h.as_old();
        // An all-blank numeric field is 0 (some writers leave uid/gid/mtime empty);
        // anything else unparsable is a malformed header.
        let num = |r: io::Result<u64>, raw: &[u8], what: &str| match r {
            Ok(v) => Ok(v),
            Err(_) if raw.iter().all(|b| *b == 0 || *b == b' ') => Ok(0),
            Err(e) => Err(EntryError::Unsafe(format!("malformed {what}: {e}"))),
        };
        let id = |v: u64, what: &str| {
            u32::try_from(v)
                .map_err(|_| EntryError::Unsafe(format!("{what} {v} is larger than 32 bits")))
        };
        let uid = id(num(h.uid(), &old.uid, "uid")?, "uid")?;
        let gid = id(num(h.gid(), &old.gid, "gid")?, "gid")?;
        let mode = num(h.mode().map(u64::from), &old.mode, "mode")? as u32 & 0o7777;
        let mtime = num(h.mtime(), &old.mtime, "mtime")?;
        let mut mtime = (i64::try_from(mtime).unwrap_or(0), 0i64);
        let mut xattrs = Vec::new();
        if let Some(pax) = e.pax_extensions()? {
            for ext in pax {
                let ext = ext?;
                let key = ext.key_bytes();
                if key == b"mtime" {
                    mtime = parse_pax_time(ext.value_bytes()).unwrap_or(mtime);
                } else if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                    // Overlay's own control xattrs could redirect lookups; only we set them.
                    if name.starts_with(b"trusted.overlay.") {
                        continue;
                    }
                    xattrs.push((sys::cstring(name)?, ext.value_bytes().to_vec()));
                }
            }
        }
        Ok(Meta {
            uid,
            gid,
            mode,
            mtime,
            xattrs,
        })
    }

    /// Opens the directory `comps` inside the layer, creating missing ones (0755, root) when
    /// asked, as containerd does for parents a layer does not list.
    fn dir(&self, comps: &[&[u8]], create: bool, flags: libc::c_int) -> EntryResult<OwnedFd> {
        let path = if comps.is_empty() {
            c".".to_owned()
        } else {
            sys::cstring(&comps.join(&b'/'))?
        };
        match sys::open_in_root(self.root(), &path, flags | libc::O_DIRECTORY) {
            Ok(fd) => return Ok(fd),
            Err(e) if create && e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e.into()),
        }
        let mut cur = sys::open_in_root(self.root(), c".", libc::O_PATH | libc::O_DIRECTORY)?;
        for (i, c) in comps.iter().enumerate() {
            let name = sys::cstring(c)?;
            if sys::lstat_at(cur.as_fd(), &name)?.is_none() {
                sys::mkdir_at(cur.as_fd(), &name, 0o755)?;
            }
            let sub = sys::cstring(&comps[..=i].join(&b'/'))?;
            let last = i + 1 == comps.len();
            let f = if last { flags } else { libc::O_PATH };
            cur = sys::open_in_root(self.root(), &sub, f | libc::O_DIRECTORY)?;
        }
        Ok(cur)
    }

    /// Makes room for a new entry `name` in `parent`: a later entry replaces an earlier one.
    fn clear(&self, parent: BorrowedFd, name: &CStr, dirs_too: bool) -> EntryResult<()> {
        match sys::lstat_at(parent, name)? {
            None => Ok(()),
            Some(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {
                if dirs_too {
                    sys::remove_tree_at(parent, name)?;
                }
                Ok(())
            }
            Some(_) => Ok(sys::unlink_at(parent, name, false)?),
        }
    }

    /// Sets directory mtimes, deepest first, once nothing more is created inside them.
    fn finish(&mut self) -> io::Result<()> {
        for (path, mtime) in self.dir_times.iter().rev() {
            // A later entry may have replaced the directory; then there is nothing to do.
            if let Ok(d) = sys::open_in_root(self.root(), path, libc::O_RDONLY | libc::O_DIRECTORY)
            {
                sys::futimens(d.as_fd(), *mtime)?;
            }
        }
        Ok(())
    }
}

/// Ownership, then mode (chown clears setuid), xattrs and mtime on an open file or dir.
fn apply_meta(fd: BorrowedFd, m: &Meta) -> io::Result<()> {
    sys::fchown(fd, m.uid, m.gid)?;
    sys::fchmod(fd, m.mode)?;
    for (k, v) in &m.xattrs {
        sys::fsetxattr(fd, k, v)?;
    }
    sys::futimens(fd, m.mtime)
}

fn parse_pax_time(v: &[u8]) -> Option<(i64, i64)> {
    let s = std::str::from_utf8(v).ok()?;
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = secs.parse().ok()?;
    let frac: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
    let nanos: i64 = frac.parse().ok()?;
    Some((secs, if secs < 0 { -nanos } else { nanos }))
}

fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[cfg(test)]
mod tests;
