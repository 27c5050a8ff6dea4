//! The CRI container log: `<RFC3339Nano> <stdout|stderr> <F|P> <text>\n` per record.
//! Lines longer than 16 KiB become `P` records and a final `F`; bytes still without a
//! newline when the stream ends are written as a `P` record.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// containerd's `max_container_log_line_size`.
pub const MAX_LINE: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        }
    }
}

/// Splits each stream's bytes into records; holds an incomplete line per stream.
#[derive(Debug, Default)]
pub struct Framer {
    pending: [Vec<u8>; 2],
}

impl Framer {
    /// Writes the records completed by `data` to `out`, stamped with `now_ns`.
    pub fn feed(
        &mut self,
        stream: Stream,
        data: &[u8],
        now_ns: i64,
        out: &mut impl RecordWrite,
    ) -> io::Result<()> {
        let ts = rfc3339_nano(now_ns);
        let pending = &mut self.pending[stream as usize];
        let mut rest = data;
        while !rest.is_empty() {
            let room = MAX_LINE - pending.len();
            match rest[..rest.len().min(room)]
                .iter()
                .position(|&b| b == b'\n')
            {
                Some(i) => {
                    pending.extend_from_slice(&rest[..i]);
                    if pending.last() == Some(&b'\r') {
                        pending.pop();
                    }
                    write_record(out, &ts, stream, 'F', pending)?;
                    pending.clear();
                    rest = &rest[i + 1..];
                }
                None if rest.len() >= room => {
                    pending.extend_from_slice(&rest[..room]);
                    write_record(out, &ts, stream, 'P', pending)?;
                    pending.clear();
                    rest = &rest[room..];
                }
                None => {
                    pending.extend_from_slice(rest);
                    rest = &[];
                }
            }
        }
        Ok(())
    }

    /// The stream ended: whatever is left has no newline and goes out as `P`.
    pub fn finish(
        &mut self,
        stream: Stream,
        now_ns: i64,
        out: &mut impl RecordWrite,
    ) -> io::Result<()> {
        let pending = &mut self.pending[stream as usize];
        if !pending.is_empty() {
            write_record(out, &rfc3339_nano(now_ns), stream, 'P', pending)?;
            pending.clear();
        }
        Ok(())
    }
}

/// Where whole records go.
pub trait RecordWrite {
    /// Writes one complete record (ending in a newline) in one piece, or nothing of it.
    fn record(&mut self, record: &[u8]) -> io::Result<()>;
}

impl RecordWrite for Vec<u8> {
    fn record(&mut self, record: &[u8]) -> io::Result<()> {
        self.extend_from_slice(record);
        Ok(())
    }
}

fn format_record(ts: &str, stream: Stream, tag: char, text: &[u8]) -> Vec<u8> {
    let mut record = Vec::with_capacity(ts.len() + text.len() + 12);
    record.extend_from_slice(ts.as_bytes());
    record.push(b' ');
    record.extend_from_slice(stream.name().as_bytes());
    record.push(b' ');
    record.push(tag as u8);
    record.push(b' ');
    record.extend_from_slice(text);
    record.push(b'\n');
    record
}

fn write_record(
    out: &mut impl RecordWrite,
    ts: &str,
    stream: Stream,
    tag: char,
    text: &[u8],
) -> io::Result<()> {
    out.record(&format_record(ts, stream, tag, text))
}

/// Go's `time.RFC3339Nano` in UTC: trailing zeros of the fraction are dropped.
pub fn rfc3339_nano(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let frac = ns.rem_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let mut s = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    );
    if frac != 0 {
        let digits = format!("{frac:09}");
        s.push('.');
        s.push_str(digits.trim_end_matches('0'));
    }
    s.push('Z');
    s
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The log file, opened without following symlinks, reopenable at the same path.
pub struct LogFile {
    path: PathBuf,
    file: File,
    /// Records lost since the last one written, and why the first of them was.
    dropped: Option<(u64, String)>,
}

impl LogFile {
    pub fn open(path: &Path) -> io::Result<Self> {
        Ok(Self {
            path: path.to_owned(),
            file: open_log(path)?,
            dropped: None,
        })
    }

    /// After rotation renamed the file away: continue in a new file at the original path.
    pub fn reopen(&mut self) -> io::Result<()> {
        self.file = open_log(&self.path)?;
        Ok(())
    }

    pub fn file(&mut self) -> &mut File {
        &mut self.file
    }

    /// Appends `record` with one write; a short write (the disk filled up midway) is cut
    /// back off, so the file only ever holds whole records.
    fn append_whole(&mut self, record: &[u8]) -> io::Result<()> {
        let n = loop {
            match self.file.write(record) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => break r?,
            }
        };
        if n == record.len() {
            return Ok(());
        }
        let len = self.file.metadata()?.len();
        self.file.set_len(len.saturating_sub(n as u64))?;
        Err(io::Error::new(
            io::ErrorKind::StorageFull,
            "no room for a whole record",
        ))
    }
}

impl RecordWrite for LogFile {
    /// Never fails: a record that cannot be written is counted, and the count is written
    /// (as a stderr record of its own) before the next record that fits.
    fn record(&mut self, record: &[u8]) -> io::Result<()> {
        if let Some((count, why)) = &self.dropped {
            let note = format_record(
                &rfc3339_nano(now_ns()),
                Stream::Stderr,
                'F',
                format!("[berth] {count} log record(s) dropped: {why}").as_bytes(),
            );
            if let Err(e) = self.append_whole(&note) {
                count_dropped(&mut self.dropped, e);
                return Ok(());
            }
            self.dropped = None;
        }
        if let Err(e) = self.append_whole(record) {
            count_dropped(&mut self.dropped, e);
        }
        Ok(())
    }
}

/// Counts one more dropped record; the first failure's reason is the one reported.
fn count_dropped(dropped: &mut Option<(u64, String)>, e: io::Error) {
    match dropped {
        Some((count, _)) => *count += 1,
        None => *dropped = Some((1, e.to_string())),
    }
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// Opens for appending without following a symlink, and without blocking on (or writing
/// into) a FIFO or device planted at the path.
fn open_log(path: &Path) -> io::Result<File> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the log path is not a regular file",
        ));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 1_700_000_000_123_456_789;

    fn lines(out: &[u8]) -> Vec<String> {
        String::from_utf8(out.to_vec())
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn timestamps_are_go_rfc3339nano() {
        assert_eq!(rfc3339_nano(T), "2023-11-14T22:13:20.123456789Z");
        assert_eq!(rfc3339_nano(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_nano(1_500_000_000), "1970-01-01T00:00:01.5Z");
        assert_eq!(
            rfc3339_nano(951_782_400_000_000_000),
            "2000-02-29T00:00:00Z"
        );
        assert_eq!(
            rfc3339_nano(4_102_444_799_000_000_010),
            "2099-12-31T23:59:59.00000001Z"
        );
    }

    #[test]
    fn complete_lines_are_full_records_per_stream() {
        let mut f = Framer::default();
        let mut out = Vec::new();
        f.feed(Stream::Stdout, b"hello\nwor", T, &mut out).unwrap();
        f.feed(Stream::Stderr, b"oops\r\n", T, &mut out).unwrap();
        f.feed(Stream::Stdout, b"ld\n\n", T, &mut out).unwrap();
        let ts = rfc3339_nano(T);
        assert_eq!(
            lines(&out),
            [
                format!("{ts} stdout F hello"),
                format!("{ts} stderr F oops"),
                format!("{ts} stdout F world"),
                format!("{ts} stdout F "),
            ]
        );
    }

    #[test]
    fn long_lines_split_into_partial_records_and_a_final_full_one() {
        let mut f = Framer::default();
        let mut out = Vec::new();
        let mut data = vec![b'a'; MAX_LINE * 2 + 10];
        data.push(b'\n');
        // Feed in odd chunks to cross the buffer boundaries.
        for chunk in data.chunks(5000) {
            f.feed(Stream::Stdout, chunk, T, &mut out).unwrap();
        }
        let got = lines(&out);
        assert_eq!(got.len(), 3);
        let tags: Vec<&str> = got.iter().map(|l| l.split(' ').nth(2).unwrap()).collect();
        assert_eq!(tags, ["P", "P", "F"]);
        let lens: Vec<usize> = got
            .iter()
            .map(|l| l.splitn(4, ' ').nth(3).unwrap().len())
            .collect();
        assert_eq!(lens, [MAX_LINE, MAX_LINE, 10]);
    }

    #[test]
    fn a_trailing_fragment_at_eof_is_partial() {
        let mut f = Framer::default();
        let mut out = Vec::new();
        f.feed(Stream::Stdout, b"no newline", T, &mut out).unwrap();
        assert!(out.is_empty());
        f.finish(Stream::Stdout, T, &mut out).unwrap();
        f.finish(Stream::Stderr, T, &mut out).unwrap();
        assert_eq!(
            lines(&out),
            [format!("{} stdout P no newline", rfc3339_nano(T))]
        );
    }

    /// On a full file system a record is written whole or not at all, and once there is
    /// room again a note says how many were lost before logging resumes.
    #[test]
    fn a_full_disk_drops_whole_records_and_says_so_afterwards() {
        use nix::mount::{MntFlags, MsFlags, mount, umount2};
        let dir = tempfile::tempdir().unwrap();
        if mount(
            Some("tmpfs"),
            dir.path(),
            Some("tmpfs"),
            MsFlags::empty(),
            Some("size=16k"),
        )
        .is_err()
        {
            eprintln!("skipped: cannot mount a tmpfs here");
            return;
        }
        let path = dir.path().join("0.log");
        let mut log = LogFile::open(&path).unwrap();
        let mut framer = Framer::default();
        let line = [b'y'; 999];
        let mut fed = Vec::new();
        for _ in 0..40 {
            fed.extend_from_slice(&line);
            fed.push(b'\n');
        }
        framer.feed(Stream::Stdout, &fed, T, &mut log).unwrap();
        let full = std::fs::read(&path).unwrap();
        assert!(full.len() <= 16 * 1024 && !full.is_empty());
        assert!(full.ends_with(b"\n"), "a record was cut mid-line");
        let whole = full.iter().filter(|&&b| b == b'\n').count();
        assert!(whole < 40);
        // Room again (log rotation removed the old file): the note, then the next line.
        std::fs::remove_file(&path).unwrap();
        log.reopen().unwrap();
        framer.feed(Stream::Stdout, b"back\n", T, &mut log).unwrap();
        let text = String::from_utf8(std::fs::read(&path).unwrap()).unwrap();
        let got: Vec<&str> = text.lines().map(|l| l.split_once(' ').unwrap().1).collect();
        assert_eq!(got.len(), 2, "{text}");
        assert!(
            got[0].starts_with(&format!(
                "stderr F [berth] {} log record(s) dropped: ",
                40 - whole
            )),
            "{}",
            got[0]
        );
        assert_eq!(got[1], "stdout F back");
        drop(log);
        umount2(dir.path(), MntFlags::MNT_DETACH).unwrap();
    }

    #[test]
    fn log_files_are_not_followed_through_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, "").unwrap();
        let link = dir.path().join("0.log");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(LogFile::open(&link).is_err());
        let fifo = dir.path().join("1.log");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(LogFile::open(&fifo).is_err());
    }
}
