//! Letting go of start-up pages. A monitor spends its life in a poll loop that touches a
//! few pages of code, but setting up a container (reading the spec, forking, the
//! handshake) maps in a couple of MiB of berth's and libc's text. Those pages are clean
//! and shared (the sealed binary and libc stay in the page cache), so unmapping them frees
//! nothing but this process's page-table references, and they fault back in if ever needed.
//! It is what memory reclaim would do to an idle monitor anyway; doing it up front keeps
//! each monitor's resident set to what it really uses.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileExt;

const PAGE: usize = 4096;

/// Drops this process's mappings of clean pages of read-only, private file mappings
/// (program and library text and constants). Pages that were copied on write (relocated
/// data) are kept: they hold what the file does not.
pub(crate) fn release_clean_file_pages() {
    // Everything that reads or allocates happens first: each page of code touched after
    // the drop faults a whole fault-around window (64 KiB) back in.
    let ranges = clean_file_ranges();
    for &(start, len) in &ranges {
        // SAFETY: the range holds only unmodified pages of a private, read-only file
        // mapping: dropping their page-table entries only makes the next access fault the
        // same file contents back in.
        unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_DONTNEED) };
    }
}

/// `(start, length)` of every run of pages `release_clean_file_pages` may drop.
fn clean_file_ranges() -> Vec<(usize, usize)> {
    let (Ok(smaps), Ok(pagemap)) = (
        File::open("/proc/self/smaps"),
        File::open("/proc/self/pagemap"),
    ) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut candidate: Option<(usize, usize)> = None;
    for line in BufReader::new(smaps).lines().map_while(Result::ok) {
        if let Some((range, rest)) = mapping_header(&line) {
            candidate = clean_file_mapping(range, rest);
        } else if let Some(kb) = line.strip_prefix("Anonymous:")
            && let Some((start, end)) = candidate.take()
        {
            if kb.trim().trim_end_matches("kB").trim() == "0" {
                out.push((start, end - start));
            } else {
                // Some pages were copied on write (relocations): keep exactly those.
                out.extend(file_page_runs(&pagemap, start, end));
            }
        }
    }
    out
}

/// Runs of resident pages in `start..end` that are still the file's own (pagemap bit 61:
/// file page or shared anonymous; a private copy has it clear).
fn file_page_runs(pagemap: &File, start: usize, end: usize) -> Vec<(usize, usize)> {
    const PRESENT: u64 = 1 << 63;
    const FILE_PAGE: u64 = 1 << 61;
    let pages = (end - start) / PAGE;
    let mut raw = vec![0u8; pages * 8];
    if pagemap
        .read_exact_at(&mut raw, (start / PAGE * 8) as u64)
        .is_err()
    {
        return Vec::new();
    }
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for (i, entry) in raw.chunks_exact(8).enumerate() {
        let entry = u64::from_ne_bytes(entry.try_into().expect("8 bytes"));
        if entry & PRESENT == 0 || entry & FILE_PAGE == 0 {
            continue;
        }
        let addr = start + i * PAGE;
        match runs.last_mut() {
            Some((s, len)) if *s + *len == addr => *len += PAGE,
            _ => runs.push((addr, PAGE)),
        }
    }
    runs
}

/// `("7f..-7f..", "r-xp 00000000 00:01 123 /path")` for a mapping's header line.
fn mapping_header(line: &str) -> Option<(&str, &str)> {
    let (range, rest) = line.split_once(' ')?;
    range.contains('-').then_some(())?;
    range
        .bytes()
        .all(|b| b.is_ascii_hexdigit() || b == b'-')
        .then_some((range, rest))
}

/// The address range of a header line if it is a read-only private mapping of a file.
fn clean_file_mapping(range: &str, rest: &str) -> Option<(usize, usize)> {
    let mut fields = rest.split_whitespace();
    let perms = fields.next()?;
    let path = fields.nth(3)?;
    let read_only_private = perms.len() == 4 && !perms.contains('w') && perms.ends_with('p');
    if !read_only_private || path.starts_with('[') {
        return None;
    }
    let (start, end) = range.split_once('-')?;
    Some((
        usize::from_str_radix(start, 16).ok()?,
        usize::from_str_radix(end, 16).ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_read_only_private_file_mappings_qualify() {
        let text = "00400000-0085c000 r-xp 00000000 00:01 5 /memfd:berth (deleted)";
        let (range, rest) = mapping_header(text).unwrap();
        assert_eq!(clean_file_mapping(range, rest), Some((0x400000, 0x85c000)));
        for line in [
            "7f00-7f10 rw-p 00000000 00:01 5 /usr/lib/libc.so.6",
            "7f00-7f10 r--s 00000000 00:01 5 /dev/shm/x",
            "7ffd-7ffe r-xp 00000000 00:00 0 [vdso]",
            "7f00-7f10 r--p 00000000 00:00 0 ",
        ] {
            let (range, rest) = mapping_header(line).unwrap();
            assert_eq!(clean_file_mapping(range, rest), None, "{line}");
        }
        assert!(mapping_header("Anonymous:             0 kB").is_none());
        assert!(mapping_header("VmFlags: rd ex mr mw me").is_none());
    }

    #[test]
    fn copied_pages_are_never_dropped() {
        // A private file mapping with one page written (copied) and one only read.
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, &[7u8; 2 * PAGE]).unwrap();
        use std::os::fd::AsRawFd;
        // SAFETY: a fresh private mapping of our own file, unmapped below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                2 * PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        } as *mut u8;
        assert_ne!(base as *mut libc::c_void, libc::MAP_FAILED);
        // SAFETY: both pages lie inside the mapping.
        unsafe {
            *base = 1; // copied on write
            assert_eq!(std::ptr::read_volatile(base.add(PAGE)), 7); // read: the file's page
        }
        let pagemap = File::open("/proc/self/pagemap").unwrap();
        let start = base as usize;
        let runs = file_page_runs(&pagemap, start, start + 2 * PAGE);
        assert_eq!(runs, vec![(start + PAGE, PAGE)]);
        // SAFETY: our own mapping.
        unsafe { libc::munmap(base.cast(), 2 * PAGE) };
    }

    #[test]
    fn releasing_pages_keeps_the_process_working() {
        release_clean_file_pages();
        // Code and constants fault back in.
        let v: Vec<String> = (0..100).map(|i| format!("{i}")).collect();
        assert_eq!(v.join(",").len(), 289);
    }
}
