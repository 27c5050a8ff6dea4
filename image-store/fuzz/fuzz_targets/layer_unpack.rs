//! The layer unpacker on arbitrary tar streams, into a fresh scratch directory each run:
//! `<tmp>/layer` is unpacked into `<tmp>/layer/root`. We run as root (as the daemon does),
//! so ownership, modes, device nodes and xattrs are really applied.
//!
//! The first input byte picks how the rest reaches the unpacker: odd → gzip-compressed
//! here first (the daemon's common case, and it lets the fuzzer mutate the tar itself
//! rather than the gzip stream), even → as is (plain tar, or gzip/zstd the input itself
//! carries, so corrupt compressed streams are covered too).
//!
//! Errors are expected (most inputs are refused). Bugs are: a panic; anything created
//! outside the root (`<tmp>` and `<tmp>/layer` must hold nothing else afterwards, and
//! the root must still be a directory); and a layer writing more bytes than its
//! uncompressed-size limit allows. The process runs with RLIMIT_FSIZE a little above that
//! limit (and SIGXFSZ ignored), so such a layer cannot fill the disk: it fails with EFBIG,
//! which is reported as the bug it is.
#![no_main]

use std::collections::HashSet;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::sync::atomic::{AtomicU64, Ordering};

use image_store::{Error, Limits};
use libfuzzer_sys::fuzz_target;

/// Uncompressed bytes one fuzzed layer may hold; fuzz inputs are a few KiB.
const MAX_LAYER_BYTES: u64 = 8 << 20;
/// No single file may grow beyond this (RLIMIT_FSIZE).
const MAX_FILE_BYTES: u64 = MAX_LAYER_BYTES + (1 << 20);

fn limits() -> Limits {
    Limits {
        max_layer_bytes: MAX_LAYER_BYTES,
        max_entries: 256,
        max_header_bytes: 1 << 20,
        max_path_len: 4096,
    }
}

static INIT: Once = Once::new();
static RUN: AtomicU64 = AtomicU64::new(0);

fn init() {
    INIT.call_once(|| {
        // SAFETY: plain libc calls on this process's own limits and signal disposition.
        unsafe {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let lim = libc::rlimit {
                rlim_cur: MAX_FILE_BYTES,
                rlim_max: MAX_FILE_BYTES,
            };
            assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &lim), 0);
        }
    });
}

fuzz_target!(|data: &[u8]| {
    init();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let stream: Vec<u8> = if mode & 1 == 1 {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(rest).unwrap();
        gz.finish().unwrap()
    } else {
        rest.to_vec()
    };

    // A fresh scratch dir per run, under $TMPDIR (deploy/fuzz.sh points it at its own
    // temporary directory, so a crashed run leaves nothing behind either).
    let tmp = std::env::temp_dir().join(format!(
        "berth-fuzz-unpack-{}-{}",
        std::process::id(),
        RUN.fetch_add(1, Ordering::Relaxed)
    ));
    let layer = tmp.join("layer");
    let root = layer.join("root");
    std::fs::create_dir_all(&root).unwrap();

    let result = image_store::unpack::unpack(&stream[..], &root, "fuzz", &limits());

    // Nothing may appear beside the root, one or two levels up.
    assert_eq!(
        names(&tmp),
        ["layer"],
        "unpacking wrote beside the layer dir"
    );
    assert_eq!(names(&layer), ["root"], "unpacking wrote beside the root");
    let meta = std::fs::symlink_metadata(&root).unwrap();
    assert!(
        meta.is_dir(),
        "the root was replaced by {:?}",
        meta.file_type()
    );

    match &result {
        Ok(u) => assert!(u.uncompressed_size <= MAX_LAYER_BYTES),
        Err(Error::Storage(msg)) if msg.contains("File too large") => panic!(
            "a layer of at most {MAX_LAYER_BYTES} uncompressed bytes wrote a file larger \
             than {MAX_FILE_BYTES} bytes: {msg}"
        ),
        Err(_) => {}
    }
    let written = file_bytes(&root);
    assert!(
        written <= MAX_LAYER_BYTES,
        "a layer of at most {MAX_LAYER_BYTES} uncompressed bytes wrote {written} bytes \
         of files ({result:?})"
    );

    std::fs::remove_dir_all(&tmp).unwrap();
});

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Bytes of the regular files below `dir` (each inode once), never following symlinks.
fn file_bytes(dir: &Path) -> u64 {
    let mut seen = HashSet::new();
    let mut total = 0;
    let mut pending: Vec<PathBuf> = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            if m.is_dir() {
                pending.push(e.path());
            } else if m.is_file() && seen.insert((m.dev(), m.ino())) {
                total += m.len();
            }
        }
    }
    total
}
