//! A small server-side SPDY/3.1: the frame codec, header compression, and a connection
//! that turns peer-opened streams into ordinary async byte streams.

mod conn;
mod frame;
mod headers;

pub use conn::{IDLE_TIMEOUT, INITIAL_WINDOW, MAX_STREAMS, SpdyConnection, SpdyStream};
pub use frame::{
    FLAG_FIN, FLAG_UNIDIRECTIONAL, Frame, FrameError, MAX_FRAME_LEN, Setting, goaway, rst,
};
pub use headers::{HeaderCompressor, HeaderDecompressor, Headers, MAX_HEADER_BLOCK, dictionary};

#[cfg(test)]
mod tests;
