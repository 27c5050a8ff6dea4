//! Letting go of start-up pages. A monitor spends its life in a poll loop that touches a
//! few pages of code, but setting up a container (reading the spec, forking, the
//! handshake) maps in a couple of MiB of berth's and libc's text. Those pages are clean
//! and shared (the sealed binary and libc stay in the page cache), so unmapping them frees
//! nothing but this process's page-table references, and they fault back in if ever needed.
//! It is what memory reclaim would do to an idle monitor anyway; doing it up front keeps
//! each monitor's resident set to what it really uses.

use std::io::{BufRead, BufReader};

/// Drops this process's mappings of clean, read-only, private file pages (program and
/// library text and constants). Mappings holding any anonymous (copy-on-write) page are
/// left alone: those pages hold relocated data the file does not.
pub(crate) fn release_clean_file_pages() {
    let Ok(smaps) = std::fs::File::open("/proc/self/smaps") else {
        return;
    };
    let mut candidate: Option<(usize, usize)> = None;
    for line in BufReader::new(smaps).lines().map_while(Result::ok) {
        if let Some((range, rest)) = mapping_header(&line) {
            candidate = clean_file_mapping(range, rest);
        } else if let Some(kb) = line.strip_prefix("Anonymous:")
            && let Some((start, end)) = candidate.take()
            && kb.trim().trim_end_matches("kB").trim() == "0"
        {
            // SAFETY: the range is a private, read-only file mapping with no anonymous
            // pages: dropping its page-table entries only makes the next access fault the
            // same file contents back in.
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
        }
    }
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
    fn releasing_pages_keeps_the_process_working() {
        release_clean_file_pages();
        // Code and constants fault back in.
        let v: Vec<String> = (0..100).map(|i| format!("{i}")).collect();
        assert_eq!(v.join(",").len(), 289);
    }
}
