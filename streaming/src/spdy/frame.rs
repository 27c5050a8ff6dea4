//! SPDY/3.1 framing: one [`Frame`] per wire frame, decoded from and encoded to bytes.
//! Header blocks stay compressed here; [`super::headers`] owns the zlib contexts, which
//! span the whole connection and so cannot live in a per-frame codec.

/// The only SPDY version spoken.
pub const VERSION: u16 = 3;
/// Control and data frame headers are both eight bytes.
pub const HEADER_LEN: usize = 8;
/// Largest frame accepted. SPDY allows 16 MiB; nothing in remotecommand or port-forward
/// sends frames near that, and each accepted frame may sit in memory until consumed.
pub const MAX_FRAME_LEN: usize = 256 << 10;

const TYPE_SYN_STREAM: u16 = 1;
const TYPE_SYN_REPLY: u16 = 2;
const TYPE_RST_STREAM: u16 = 3;
const TYPE_SETTINGS: u16 = 4;
const TYPE_PING: u16 = 6;
const TYPE_GOAWAY: u16 = 7;
const TYPE_HEADERS: u16 = 8;
const TYPE_WINDOW_UPDATE: u16 = 9;

pub const FLAG_FIN: u8 = 0x01;
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;
const FLAG_SETTINGS_CLEAR: u8 = 0x01;

/// RST_STREAM status codes used here.
pub mod rst {
    pub const PROTOCOL_ERROR: u32 = 1;
    pub const INVALID_STREAM: u32 = 2;
    pub const REFUSED_STREAM: u32 = 3;
    pub const CANCEL: u32 = 5;
    pub const FLOW_CONTROL_ERROR: u32 = 7;
    pub const STREAM_IN_USE: u32 = 8;
}

/// GOAWAY status codes.
pub mod goaway {
    pub const OK: u32 = 0;
    pub const PROTOCOL_ERROR: u32 = 1;
}

/// SETTINGS ids used here.
pub const SETTINGS_INITIAL_WINDOW_SIZE: u32 = 7;

const STREAM_ID_MASK: u32 = 0x7fff_ffff;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub flags: u8,
    pub id: u32,
    pub value: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Data {
        stream_id: u32,
        fin: bool,
        data: Vec<u8>,
    },
    SynStream {
        stream_id: u32,
        associated_id: u32,
        priority: u8,
        flags: u8,
        header_block: Vec<u8>,
    },
    SynReply {
        stream_id: u32,
        fin: bool,
        header_block: Vec<u8>,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    Settings {
        clear: bool,
        entries: Vec<Setting>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good_stream_id: u32,
        status: u32,
    },
    Headers {
        stream_id: u32,
        fin: bool,
        header_block: Vec<u8>,
    },
    WindowUpdate {
        stream_id: u32,
        delta: u32,
    },
    /// A control frame of a type SPDY/3.1 does not define; the spec says to ignore it.
    Unknown {
        kind: u16,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("unsupported SPDY version {0} (only 3 is spoken)")]
    UnsupportedVersion(u16),
    #[error("frame of {0} bytes exceeds the {MAX_FRAME_LEN}-byte limit")]
    TooLarge(usize),
    #[error("{kind} frame with a bad length {len}")]
    BadLength { kind: &'static str, len: usize },
    #[error("{0} frame for stream 0")]
    StreamZero(&'static str),
    #[error("WINDOW_UPDATE with a delta of 0")]
    ZeroWindowDelta,
    #[error("header block: {0}")]
    HeaderBlock(String),
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn stream_id_at(b: &[u8], at: usize) -> u32 {
    u32_at(b, at) & STREAM_ID_MASK
}

impl Frame {
    /// Decodes the first frame in `buf`: `Ok(None)` if more bytes are needed, otherwise
    /// the frame and how many bytes it used. Never panics, whatever `buf` holds.
    pub fn decode(buf: &[u8]) -> Result<Option<(Frame, usize)>, FrameError> {
        if buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let len = (u32_at(buf, 4) & 0x00ff_ffff) as usize;
        if len > MAX_FRAME_LEN {
            return Err(FrameError::TooLarge(len));
        }
        let flags = buf[4];
        let control = buf[0] & 0x80 != 0;
        if !control && stream_id_at(buf, 0) == 0 {
            return Err(FrameError::StreamZero("DATA"));
        }
        if control {
            let version = u16::from_be_bytes([buf[0], buf[1]]) & 0x7fff;
            if version != VERSION {
                return Err(FrameError::UnsupportedVersion(version));
            }
        }
        let total = HEADER_LEN + len;
        if buf.len() < total {
            return Ok(None);
        }
        let body = &buf[HEADER_LEN..total];
        let frame = if control {
            let kind = u16::from_be_bytes([buf[2], buf[3]]);
            Self::decode_control(kind, flags, body)?
        } else {
            Frame::Data {
                stream_id: stream_id_at(buf, 0),
                fin: flags & FLAG_FIN != 0,
                data: body.to_vec(),
            }
        };
        Ok(Some((frame, total)))
    }

    fn decode_control(kind: u16, flags: u8, b: &[u8]) -> Result<Frame, FrameError> {
        let need = |name: &'static str, ok: bool| {
            if ok {
                Ok(())
            } else {
                Err(FrameError::BadLength {
                    kind: name,
                    len: b.len(),
                })
            }
        };
        let nonzero = |name: &'static str, id: u32| {
            if id == 0 {
                Err(FrameError::StreamZero(name))
            } else {
                Ok(id)
            }
        };
        Ok(match kind {
            TYPE_SYN_STREAM => {
                need("SYN_STREAM", b.len() >= 10)?;
                Frame::SynStream {
                    stream_id: nonzero("SYN_STREAM", stream_id_at(b, 0))?,
                    associated_id: stream_id_at(b, 4),
                    priority: b[8] >> 5,
                    flags,
                    header_block: b[10..].to_vec(),
                }
            }
            TYPE_SYN_REPLY => {
                need("SYN_REPLY", b.len() >= 4)?;
                Frame::SynReply {
                    stream_id: nonzero("SYN_REPLY", stream_id_at(b, 0))?,
                    fin: flags & FLAG_FIN != 0,
                    header_block: b[4..].to_vec(),
                }
            }
            TYPE_RST_STREAM => {
                need("RST_STREAM", b.len() == 8)?;
                Frame::RstStream {
                    stream_id: nonzero("RST_STREAM", stream_id_at(b, 0))?,
                    status: u32_at(b, 4),
                }
            }
            TYPE_SETTINGS => {
                need("SETTINGS", b.len() >= 4)?;
                let n = u32_at(b, 0) as usize;
                need("SETTINGS", n.checked_mul(8).map(|l| l + 4) == Some(b.len()))?;
                let entries = b[4..]
                    .chunks_exact(8)
                    .map(|e| Setting {
                        flags: e[0],
                        id: u32_at(e, 0) & 0x00ff_ffff,
                        value: u32_at(e, 4),
                    })
                    .collect();
                Frame::Settings {
                    clear: flags & FLAG_SETTINGS_CLEAR != 0,
                    entries,
                }
            }
            TYPE_PING => {
                need("PING", b.len() == 4)?;
                Frame::Ping { id: u32_at(b, 0) }
            }
            TYPE_GOAWAY => {
                need("GOAWAY", b.len() == 8)?;
                Frame::GoAway {
                    last_good_stream_id: stream_id_at(b, 0),
                    status: u32_at(b, 4),
                }
            }
            TYPE_HEADERS => {
                need("HEADERS", b.len() >= 4)?;
                Frame::Headers {
                    stream_id: nonzero("HEADERS", stream_id_at(b, 0))?,
                    fin: flags & FLAG_FIN != 0,
                    header_block: b[4..].to_vec(),
                }
            }
            TYPE_WINDOW_UPDATE => {
                need("WINDOW_UPDATE", b.len() == 8)?;
                let delta = u32_at(b, 4) & STREAM_ID_MASK;
                if delta == 0 {
                    return Err(FrameError::ZeroWindowDelta);
                }
                Frame::WindowUpdate {
                    stream_id: stream_id_at(b, 0),
                    delta,
                }
            }
            kind => Frame::Unknown { kind },
        })
    }

    /// Appends the wire form of the frame to `out`.
    ///
    /// # Panics
    /// If a payload exceeds the 24-bit length field; callers chunk data to
    /// [`MAX_FRAME_LEN`], so that is a bug, not bad input.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let control = |out: &mut Vec<u8>, kind: u16, flags: u8, body: &[&[u8]]| {
            let len: usize = body.iter().map(|p| p.len()).sum();
            assert!(len < 1 << 24, "SPDY frame body too long");
            out.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
            out.extend_from_slice(&kind.to_be_bytes());
            out.extend_from_slice(&((u32::from(flags) << 24) | len as u32).to_be_bytes());
            for p in body {
                out.extend_from_slice(p);
            }
        };
        let fin = |f: bool| if f { FLAG_FIN } else { 0 };
        match self {
            Frame::Data {
                stream_id,
                fin: f,
                data,
            } => {
                assert!(data.len() < 1 << 24, "SPDY DATA frame too long");
                out.extend_from_slice(&(stream_id & STREAM_ID_MASK).to_be_bytes());
                out.extend_from_slice(
                    &((u32::from(fin(*f)) << 24) | data.len() as u32).to_be_bytes(),
                );
                out.extend_from_slice(data);
            }
            Frame::SynStream {
                stream_id,
                associated_id,
                priority,
                flags,
                header_block,
            } => control(
                out,
                TYPE_SYN_STREAM,
                *flags,
                &[
                    &stream_id.to_be_bytes(),
                    &associated_id.to_be_bytes(),
                    &[priority << 5, 0],
                    header_block,
                ],
            ),
            Frame::SynReply {
                stream_id,
                fin: f,
                header_block,
            } => control(
                out,
                TYPE_SYN_REPLY,
                fin(*f),
                &[&stream_id.to_be_bytes(), header_block],
            ),
            Frame::RstStream { stream_id, status } => control(
                out,
                TYPE_RST_STREAM,
                0,
                &[&stream_id.to_be_bytes(), &status.to_be_bytes()],
            ),
            Frame::Settings { clear, entries } => {
                let mut body = (entries.len() as u32).to_be_bytes().to_vec();
                for e in entries {
                    body.extend_from_slice(
                        &((u32::from(e.flags) << 24) | (e.id & 0x00ff_ffff)).to_be_bytes(),
                    );
                    body.extend_from_slice(&e.value.to_be_bytes());
                }
                let flags = if *clear { FLAG_SETTINGS_CLEAR } else { 0 };
                control(out, TYPE_SETTINGS, flags, &[&body]);
            }
            Frame::Ping { id } => control(out, TYPE_PING, 0, &[&id.to_be_bytes()]),
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => control(
                out,
                TYPE_GOAWAY,
                0,
                &[&last_good_stream_id.to_be_bytes(), &status.to_be_bytes()],
            ),
            Frame::Headers {
                stream_id,
                fin: f,
                header_block,
            } => control(
                out,
                TYPE_HEADERS,
                fin(*f),
                &[&stream_id.to_be_bytes(), header_block],
            ),
            Frame::WindowUpdate { stream_id, delta } => control(
                out,
                TYPE_WINDOW_UPDATE,
                0,
                &[&stream_id.to_be_bytes(), &delta.to_be_bytes()],
            ),
            Frame::Unknown { kind } => control(out, *kind, 0, &[]),
        }
    }
}
