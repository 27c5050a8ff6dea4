//! The SPDY reader's view of untrusted bytes: frames decoded back to back, and every
//! header block through one connection-long zlib context, as `SpdyConnection` does.
//! Errors are expected; panics, hangs and unbounded allocation are bugs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use streaming::spdy::{Frame, HeaderDecompressor, Headers};

fuzz_target!(|data: &[u8]| {
    let _ = Headers::from_block(data);
    let mut headers = HeaderDecompressor::default();
    let mut at = 0;
    while let Ok(Some((frame, used))) = Frame::decode(&data[at..]) {
        assert!(used >= 8 && at + used <= data.len());
        at += used;
        match frame {
            Frame::SynStream { header_block, .. }
            | Frame::SynReply { header_block, .. }
            | Frame::Headers { header_block, .. } => {
                if headers.decompress(&header_block).is_err() {
                    break;
                }
            }
            _ => {}
        }
    }
});
