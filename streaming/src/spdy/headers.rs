//! SPDY header blocks: name/value pairs, zlib-compressed with the SPDY/3 dictionary. Each
//! direction of a connection is one zlib stream (sync-flushed per block), so a
//! [`HeaderCompressor`] and a [`HeaderDecompressor`] live as long as the connection, and
//! every block must pass through them in order, even blocks of frames that are dropped.

use std::sync::OnceLock;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::FrameError;

/// Largest decompressed header block accepted (a zlib bomb stops here).
pub const MAX_HEADER_BLOCK: usize = 64 << 10;

/// The SPDY/3 header dictionary (draft-mbelshe-httpbis-spdy-00 §2.6.10.1): these words,
/// each prefixed by its 32-bit big-endian length, then [`DICTIONARY_TAIL`].
const DICTIONARY_WORDS: [&str; 65] = [
    "options",
    "head",
    "post",
    "put",
    "delete",
    "trace",
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "connection",
    "content-base",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-md5",
    "content-range",
    "content-type",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "location",
    "max-forwards",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "retry-after",
    "server",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "vary",
    "via",
    "warning",
    "www-authenticate",
    "method",
    "get",
    "status",
    "200 OK",
    "version",
    "HTTP/1.1",
    "url",
    "public",
    "set-cookie",
    "keep-alive",
    "origin",
];

const DICTIONARY_TAIL: &str = concat!(
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request",
    "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented",
    "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 ",
    "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,",
    "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=",
    "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
);

/// The dictionary bytes, built once.
pub fn dictionary() -> &'static [u8] {
    static DICT: OnceLock<Vec<u8>> = OnceLock::new();
    DICT.get_or_init(|| {
        let mut d = Vec::with_capacity(1423);
        for w in DICTIONARY_WORDS {
            d.extend_from_slice(&(w.len() as u32).to_be_bytes());
            d.extend_from_slice(w.as_bytes());
        }
        d.extend_from_slice(DICTIONARY_TAIL.as_bytes());
        d
    })
}

/// Header name/value pairs in wire order. Names are compared case-insensitively; SPDY
/// sends them lower-case.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(pub Vec<(String, String)>);

impl Headers {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The uncompressed block: a 32-bit pair count, then length-prefixed names and values.
    pub fn to_block(&self) -> Vec<u8> {
        let mut b = (self.0.len() as u32).to_be_bytes().to_vec();
        for (n, v) in &self.0 {
            for s in [n.to_ascii_lowercase().as_str(), v.as_str()] {
                b.extend_from_slice(&(s.len() as u32).to_be_bytes());
                b.extend_from_slice(s.as_bytes());
            }
        }
        b
    }

    pub fn from_block(b: &[u8]) -> Result<Headers, FrameError> {
        let bad = |m: &str| FrameError::HeaderBlock(m.to_string());
        let mut at = 0usize;
        let mut take = |n: usize| -> Result<&[u8], FrameError> {
            let end = at.checked_add(n).filter(|&e| e <= b.len());
            let end = end.ok_or_else(|| bad("truncated"))?;
            let s = &b[at..end];
            at = end;
            Ok(s)
        };
        let word = |s: &[u8]| u32::from_be_bytes([s[0], s[1], s[2], s[3]]) as usize;
        let count = word(take(4)?);
        // Each pair needs at least eight bytes, so a huge count is caught before allocating.
        if count > b.len() / 8 {
            return Err(bad("more pairs than bytes"));
        }
        let mut pairs = Vec::with_capacity(count);
        for _ in 0..count {
            let n = word(take(4)?);
            let name = take(n)?.to_vec();
            let v = word(take(4)?);
            let value = take(v)?.to_vec();
            if name.is_empty() {
                return Err(bad("empty header name"));
            }
            let name = String::from_utf8(name).map_err(|_| bad("header name is not UTF-8"))?;
            let value = String::from_utf8(value).map_err(|_| bad("header value is not UTF-8"))?;
            pairs.push((name, value));
        }
        if at != b.len() {
            return Err(bad("trailing bytes"));
        }
        Ok(Headers(pairs))
    }
}

impl<const N: usize> From<[(&str, &str); N]> for Headers {
    fn from(pairs: [(&str, &str); N]) -> Headers {
        Headers(
            pairs
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        )
    }
}

/// The sending side's zlib stream.
pub struct HeaderCompressor(Compress);

impl Default for HeaderCompressor {
    fn default() -> Self {
        let mut c = Compress::new(Compression::default(), true);
        c.set_dictionary(dictionary())
            .expect("a fresh deflate stream accepts a dictionary");
        HeaderCompressor(c)
    }
}

impl HeaderCompressor {
    pub fn compress(&mut self, headers: &Headers) -> Vec<u8> {
        let input = headers.to_block();
        let mut out = Vec::with_capacity(input.len() + 64);
        let start_in = self.0.total_in();
        loop {
            let consumed = (self.0.total_in() - start_in) as usize;
            out.reserve(256);
            self.0
                .compress_vec(&input[consumed..], &mut out, FlushCompress::Sync)
                .expect("deflate of an in-memory buffer cannot fail");
            let done = (self.0.total_in() - start_in) as usize == input.len();
            // A sync flush is complete once deflate stops filling the whole buffer.
            if done && out.len() < out.capacity() {
                return out;
            }
        }
    }
}

/// The receiving side's zlib stream.
pub struct HeaderDecompressor(Decompress);

impl Default for HeaderDecompressor {
    fn default() -> Self {
        HeaderDecompressor(Decompress::new(true))
    }
}

impl HeaderDecompressor {
    pub fn decompress(&mut self, block: &[u8]) -> Result<Headers, FrameError> {
        let bad = |m: String| FrameError::HeaderBlock(m);
        let mut out = Vec::with_capacity(256);
        let start_in = self.0.total_in();
        loop {
            let consumed = (self.0.total_in() - start_in) as usize;
            if out.capacity() - out.len() < 256 {
                out.reserve(1024);
            }
            let before_out = out.len();
            match self
                .0
                .decompress_vec(&block[consumed..], &mut out, FlushDecompress::Sync)
            {
                Ok(Status::StreamEnd) => return Err(bad("the zlib stream ended".into())),
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.0
                        .set_dictionary(dictionary())
                        .map_err(|e| bad(format!("setting the dictionary: {e}")))?;
                    continue;
                }
                Err(e) => return Err(bad(format!("zlib: {e}"))),
            }
            if out.len() > MAX_HEADER_BLOCK {
                return Err(bad(format!(
                    "decompresses to more than {MAX_HEADER_BLOCK} bytes"
                )));
            }
            let now_consumed = (self.0.total_in() - start_in) as usize;
            let progressed = out.len() > before_out || now_consumed > consumed;
            if now_consumed == block.len() && (out.len() < out.capacity() || !progressed) {
                break;
            }
            if !progressed {
                return Err(bad("the zlib stream stalled".into()));
            }
        }
        Headers::from_block(&out)
    }
}
