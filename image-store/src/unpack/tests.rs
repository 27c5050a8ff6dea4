//! The unpacker against real files (we run as root, as the daemon does): what a normal
//! layer produces, and a table of malicious layers that must be refused or contained.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::*;

struct Tar(tar::Builder<Vec<u8>>);

impl Tar {
    fn new() -> Self {
        Tar(tar::Builder::new(Vec::new()))
    }

    /// Appends an entry with raw path bytes: tar::Builder's own path checks would stop
    /// the malicious cases from being written at all.
    fn raw(
        &mut self,
        path: &str,
        kind: tar::EntryType,
        data: &[u8],
        link: Option<&str>,
        mode: u32,
    ) -> &mut Self {
        let mut h = tar::Header::new_gnu();
        let old = h.as_old_mut();
        old.name[..path.len()].copy_from_slice(path.as_bytes());
        if let Some(l) = link {
            old.linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_600_000_000);
        if kind.is_character_special() || kind.is_block_special() {
            h.set_device_major(1).unwrap();
            h.set_device_minor(3).unwrap();
        }
        h.set_cksum();
        self.0.append(&h, data).unwrap();
        self
    }
    fn file(&mut self, path: &str, data: &[u8]) -> &mut Self {
        self.raw(path, tar::EntryType::Regular, data, None, 0o644)
    }
    fn dir(&mut self, path: &str) -> &mut Self {
        self.raw(path, tar::EntryType::Directory, b"", None, 0o755)
    }
    fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.raw(path, tar::EntryType::Symlink, b"", Some(target), 0o777)
    }
    fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.raw(path, tar::EntryType::Link, b"", Some(target), 0o644)
    }
    fn bytes(&mut self) -> Vec<u8> {
        self.0.get_ref();
        std::mem::replace(&mut self.0, tar::Builder::new(Vec::new()))
            .into_inner()
            .unwrap()
    }
}

/// A scratch area: `layer/` is unpacked into, `outside/` must stay untouched.
struct Scratch {
    _t: tempfile::TempDir,
    layer: PathBuf,
    outside: PathBuf,
}

fn scratch() -> Scratch {
    let t = tempfile::tempdir().unwrap();
    let layer = t.path().join("layer");
    let outside = t.path().join("outside");
    fs::create_dir(&layer).unwrap();
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("secret"), b"keep").unwrap();
    Scratch {
        _t: t,
        layer,
        outside,
    }
}

fn run(s: &Scratch, tar: Vec<u8>) -> Result<Unpacked> {
    unpack(&tar[..], &s.layer, "test", &Limits::default())
}

fn outside_untouched(s: &Scratch) {
    let names: Vec<_> = fs::read_dir(&s.outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["secret"], "something was written outside the layer");
    assert_eq!(fs::read(s.outside.join("secret")).unwrap(), b"keep");
    assert_eq!(fs::metadata(s.outside.join("secret")).unwrap().nlink(), 1);
    let parent = s.layer.parent().unwrap();
    let mut top: Vec<_> = fs::read_dir(parent)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    top.sort();
    assert_eq!(top, ["layer", "outside"]);
}

#[test]
fn a_normal_layer_keeps_everything() {
    let s = scratch();
    let mut t = Tar::new();
    t.dir("./")
        .dir("bin/")
        .raw("bin/su", tar::EntryType::Regular, b"#!", None, 0o4755)
        .raw("bin/busybox", tar::EntryType::Regular, b"elf", None, 0o755)
        .hardlink("bin/ls", "bin/busybox")
        .symlink("bin/sh", "/bin/busybox")
        .file("etc/deep/implicit", b"parents created")
        .raw("dev/null", tar::EntryType::Char, b"", None, 0o666);
    // Ownership and xattrs via a PAX record, as real layers carry them.
    let mut h = tar::Header::new_ustar();
    h.set_path("home/user/file").unwrap();
    h.set_size(2);
    h.set_mode(0o600);
    h.set_uid(1000);
    h.set_gid(1001);
    h.set_mtime(1_500_000_000);
    h.set_cksum();
    t.0.append_pax_extensions([
        ("SCHILY.xattr.user.note", &b"hi"[..]),
        ("SCHILY.xattr.trusted.overlay.redirect", &b"/x"[..]),
    ])
    .unwrap();
    t.0.append(&h, &b"ok"[..]).unwrap();
    let bytes = t.bytes();
    let u = run(&s, bytes.clone()).unwrap();
    assert_eq!(u.diff_id, crate::digest::sha256_of(&bytes));
    assert_eq!(u.uncompressed_size, bytes.len() as u64);

    let l = &s.layer;
    let su = fs::metadata(l.join("bin/su")).unwrap();
    assert_eq!(su.mode() & 0o7777, 0o4755, "setuid kept");
    assert_eq!(su.mtime(), 1_600_000_000);
    let bb = fs::metadata(l.join("bin/busybox")).unwrap();
    assert_eq!(
        bb.ino(),
        fs::metadata(l.join("bin/ls")).unwrap().ino(),
        "hardlink"
    );
    assert_eq!(
        fs::read_link(l.join("bin/sh")).unwrap(),
        Path::new("/bin/busybox")
    );
    assert_eq!(
        fs::read(l.join("etc/deep/implicit")).unwrap(),
        b"parents created"
    );
    let dev = fs::symlink_metadata(l.join("dev/null")).unwrap();
    assert!(dev.file_type().is_char_device());
    assert_eq!(dev.rdev(), libc::makedev(1, 3));
    let f = fs::metadata(l.join("home/user/file")).unwrap();
    assert_eq!(
        (f.uid(), f.gid(), f.mode() & 0o777, f.mtime()),
        (1000, 1001, 0o600, 1_500_000_000)
    );
    assert_eq!(
        xattr(&l.join("home/user/file"), "user.note").as_deref(),
        Some(&b"hi"[..])
    );
    assert_eq!(
        xattr(&l.join("home/user/file"), "trusted.overlay.redirect"),
        None,
        "overlay xattrs from images are dropped"
    );
    // Directory mtimes are set after their contents were created.
    assert_eq!(fs::metadata(l.join("bin")).unwrap().mtime(), 1_600_000_000);
}

fn xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let path = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let name = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: valid C strings and buffer.
    let n = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return None;
    }
    buf.truncate(n as usize);
    Some(buf)
}

#[test]
fn whiteouts_become_overlay_whiteouts() {
    let s = scratch();
    let mut t = Tar::new();
    t.dir("etc/")
        .file("etc/.wh.passwd", b"")
        .file("var/.wh..wh..opq", b"")
        .file(".wh..wh.plnk", b"");
    run(&s, t.bytes()).unwrap();
    let wh = fs::symlink_metadata(s.layer.join("etc/passwd")).unwrap();
    assert!(wh.file_type().is_char_device());
    assert_eq!(wh.rdev(), 0);
    assert_eq!(
        xattr(&s.layer.join("var"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert!(!s.layer.join(".wh..wh.plnk").exists());
}

#[test]
fn compressed_layers_have_the_uncompressed_diff_id() {
    let mut t = Tar::new();
    t.file("a", b"hello");
    let plain = t.bytes();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&plain).unwrap();
    let gz = gz.finish().unwrap();
    let zst = zstd::encode_all(&plain[..], 3).unwrap();
    for data in [plain.clone(), gz, zst] {
        let s = scratch();
        let u = run(&s, data).unwrap();
        assert_eq!(u.diff_id, crate::digest::sha256_of(&plain));
        assert_eq!(fs::read(s.layer.join("a")).unwrap(), b"hello");
    }
}

#[test]
fn malicious_layers_are_refused_or_contained() {
    let outside_abs = |s: &Scratch| s.outside.to_string_lossy().into_owned();
    type Build = fn(&Scratch, &mut Tar, &str);
    let cases: Vec<(&str, Build, bool)> = vec![
        // (name, layer, must it be refused?)
        (
            "dot-dot path",
            |_, t, _| {
                t.file("../outside/pwned", b"x");
            },
            true,
        ),
        (
            "nested dot-dot",
            |_, t, _| {
                t.file("a/../../outside/pwned", b"x");
            },
            true,
        ),
        (
            "absolute path stays in the layer",
            |_, t, o| {
                t.file(&format!("{o}/pwned"), b"x");
            },
            false,
        ),
        (
            "symlink escape then write through it",
            |_, t, o| {
                t.symlink("evil", o).file("evil/pwned", b"x");
            },
            false,
        ),
        (
            "relative symlink escape then write",
            |_, t, _| {
                t.symlink("evil", "../../outside").file("evil/pwned", b"x");
            },
            false,
        ),
        (
            "symlink to a file outside, then overwrite it",
            |_, t, o| {
                t.symlink("f", &format!("{o}/secret"))
                    .file("f", b"overwritten");
            },
            false,
        ),
        (
            "hardlink to outside via dot-dot",
            |_, t, _| {
                t.hardlink("lnk", "../outside/secret");
            },
            true,
        ),
        (
            "hardlink to an absolute host path",
            |_, t, o| {
                t.hardlink("lnk", &format!("{o}/secret"));
            },
            true,
        ),
        (
            "hardlink through a symlinked dir",
            |_, t, o| {
                t.symlink("sl", o).hardlink("lnk", "sl/secret");
            },
            true,
        ),
        (
            "whiteout of dot-dot",
            |_, t, _| {
                t.file("a/.wh...", b"");
            },
            true,
        ),
        (
            "whiteout outside",
            |_, t, _| {
                t.file("../outside/.wh.secret", b"");
            },
            true,
        ),
        (
            "opaque dir through a symlink",
            |_, t, o| {
                t.symlink("sl", o).file("sl/.wh..wh..opq", b"");
            },
            false,
        ),
        (
            "device node stays inside",
            |_, t, o| {
                t.raw(
                    &format!("{o}/disk"),
                    tar::EntryType::Block,
                    b"",
                    None,
                    0o600,
                );
            },
            false,
        ),
        (
            "chmod through a symlink (CVE-2021-32760 class)",
            |_, t, o| {
                t.symlink("sl", o)
                    .raw("sl", tar::EntryType::Directory, b"", None, 0o777);
            },
            false,
        ),
    ];
    for (name, build, refused) in cases {
        let s = scratch();
        let mut t = Tar::new();
        build(&s, &mut t, &outside_abs(&s));
        let r = run(&s, t.bytes());
        if refused {
            assert!(r.is_err(), "{name}: should be refused");
        }
        outside_untouched(&s);
        let m = fs::metadata(&s.outside).unwrap();
        assert_eq!(
            m.permissions().mode() & 0o777,
            0o755,
            "{name}: outside dir mode changed"
        );
    }
}

#[test]
fn limits_stop_bombs_and_huge_headers() {
    // A GNU long name bigger than the header limit: refused before it is held in memory.
    let s = scratch();
    let mut t = Tar::new();
    let long = vec![b'a'; 2 << 20];
    t.raw(
        "././@LongLink",
        tar::EntryType::GNULongName,
        &long,
        None,
        0o644,
    )
    .file("x", b"");
    let e = run(&s, t.bytes()).unwrap_err();
    assert!(matches!(e, Error::LimitExceeded(_)), "{e}");

    // More uncompressed bytes than allowed (a decompression bomb).
    let s = scratch();
    let mut t = Tar::new();
    t.file("big", &vec![0u8; 2 << 20]);
    let limits = Limits {
        max_layer_bytes: 1 << 20,
        ..Limits::default()
    };
    let e = unpack(&t.bytes()[..], &s.layer, "t", &limits).unwrap_err();
    assert!(matches!(e, Error::LimitExceeded(_)), "{e}");

    // Too many entries.
    let s = scratch();
    let mut t = Tar::new();
    for i in 0..20 {
        t.file(&format!("f{i}"), b"");
    }
    let limits = Limits {
        max_entries: 10,
        ..Limits::default()
    };
    let e = unpack(&t.bytes()[..], &s.layer, "t", &limits).unwrap_err();
    assert!(matches!(e, Error::LimitExceeded(_)), "{e}");

    // A header that claims more data than the stream has.
    let s = scratch();
    let mut h = tar::Header::new_gnu();
    h.set_path("truncated").unwrap();
    h.set_size(1 << 30);
    h.set_cksum();
    let mut bytes = h.as_bytes().to_vec();
    bytes.extend_from_slice(&[1u8; 100]);
    assert!(run(&s, bytes).is_err());
}

/// A GNU sparse entry (type 'S', the old block map in its header): `blocks` of
/// (offset, length), `real_size`, and the data of the blocks.
fn gnu_sparse(blocks: &[(u64, u64)], real_size: u64, data: &[u8]) -> Vec<u8> {
    // Octal, or GNU's base-256 (a leading 0x80, then big-endian) when it does not fit.
    fn octal(field: &mut [u8], v: u64) {
        let text = format!("{v:0width$o}\0", width = field.len() - 1);
        if text.len() == field.len() {
            field.copy_from_slice(text.as_bytes());
        } else {
            field.fill(0);
            field[0] = 0x80;
            let n = field.len();
            field[n - 8..].copy_from_slice(&v.to_be_bytes());
        }
    }
    let mut h = [0u8; 512];
    h[..6].copy_from_slice(b"sparse");
    octal(&mut h[100..108], 0o644);
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], data.len() as u64);
    octal(&mut h[136..148], 1_600_000_000);
    h[156] = b'S';
    h[257..265].copy_from_slice(b"ustar  \0");
    for (i, (offset, len)) in blocks.iter().enumerate() {
        let at = 386 + 24 * i;
        octal(&mut h[at..at + 12], *offset);
        octal(&mut h[at + 12..at + 24], *len);
    }
    octal(&mut h[483..495], real_size);
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut out = h.to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out.extend_from_slice(&[0; 1024]);
    out
}

/// A 1.5 KiB layer whose one sparse entry claims a terabyte: the holes the tar reader
/// fills with zeros count against the layer size limit like any other byte written.
#[test]
fn a_sparse_entry_cannot_expand_past_the_layer_limit() {
    let s = scratch();
    let limits = Limits {
        max_layer_bytes: 8 << 20,
        ..Limits::default()
    };
    let bomb = gnu_sparse(&[(1 << 40, 0)], 1 << 40, b"");
    assert!(bomb.len() < 2048);
    let e = unpack(&bomb[..], &s.layer, "t", &limits).unwrap_err();
    assert!(
        matches!(&e, Error::LimitExceeded(m) if m.contains("layer size limit")),
        "{e}"
    );
    let written = fs::metadata(s.layer.join("sparse")).map_or(0, |m| m.len());
    assert!(written <= 8 << 20, "{written} bytes written");
    outside_untouched(&s);
    // A sparse file within the limit still unpacks, holes and data in place.
    let s = scratch();
    let ok = gnu_sparse(&[(1024, 512)], 1536, &[b's'; 512]);
    unpack(&ok[..], &s.layer, "t", &limits).unwrap();
    let got = fs::read(s.layer.join("sparse")).unwrap();
    assert_eq!(got.len(), 1536);
    assert!(got[..1024].iter().all(|b| *b == 0) && got[1024..1536].iter().all(|b| *b == b's'));
}
