//! Frame-by-frame tests of the codec, the header compression and the connection's flow
//! control, plus a randomized decoder test (cargo-fuzz needs nightly, which this machine
//! lacks; `fuzz/` holds the same target for machines that have it).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::frame::SETTINGS_INITIAL_WINDOW_SIZE;
use super::*;

fn round_trip(f: Frame) {
    let mut wire = Vec::new();
    f.encode(&mut wire);
    let (back, used) = Frame::decode(&wire).unwrap().unwrap();
    assert_eq!(back, f);
    assert_eq!(used, wire.len());
    // Every strict prefix asks for more bytes.
    for cut in 0..wire.len() {
        assert_eq!(
            Frame::decode(&wire[..cut]).unwrap(),
            None,
            "prefix {cut} of {f:?}"
        );
    }
}

#[test]
fn every_frame_type_round_trips() {
    round_trip(Frame::Data {
        stream_id: 1,
        fin: false,
        data: b"hello".to_vec(),
    });
    round_trip(Frame::Data {
        stream_id: 0x7fff_ffff,
        fin: true,
        data: vec![],
    });
    round_trip(Frame::SynStream {
        stream_id: 3,
        associated_id: 0,
        priority: 7,
        flags: FLAG_FIN | FLAG_UNIDIRECTIONAL,
        header_block: vec![1, 2, 3],
    });
    round_trip(Frame::SynReply {
        stream_id: 5,
        fin: true,
        header_block: vec![9; 40],
    });
    round_trip(Frame::RstStream {
        stream_id: 7,
        status: rst::CANCEL,
    });
    round_trip(Frame::Settings {
        clear: true,
        entries: vec![Setting {
            flags: 1,
            id: SETTINGS_INITIAL_WINDOW_SIZE,
            value: 1 << 20,
        }],
    });
    round_trip(Frame::Settings {
        clear: false,
        entries: vec![],
    });
    round_trip(Frame::Ping { id: 0xffff_fffe });
    round_trip(Frame::GoAway {
        last_good_stream_id: 9,
        status: goaway::PROTOCOL_ERROR,
    });
    round_trip(Frame::Headers {
        stream_id: 11,
        fin: false,
        header_block: vec![],
    });
    round_trip(Frame::WindowUpdate {
        stream_id: 0,
        delta: 0x7fff_ffff,
    });
}

#[test]
fn wire_layout_matches_the_spec() {
    let mut wire = Vec::new();
    Frame::Ping { id: 1 }.encode(&mut wire);
    assert_eq!(wire, [0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1]);
    wire.clear();
    Frame::Data {
        stream_id: 3,
        fin: true,
        data: b"ab".to_vec(),
    }
    .encode(&mut wire);
    assert_eq!(wire, [0, 0, 0, 3, 1, 0, 0, 2, b'a', b'b']);
}

fn control(kind: u16, flags: u8, body: &[u8]) -> Vec<u8> {
    let mut w = vec![0x80, 3];
    w.extend_from_slice(&kind.to_be_bytes());
    w.push(flags);
    w.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    w.extend_from_slice(body);
    w
}

#[test]
fn bad_frames_are_errors() {
    let bad_len = |kind, len: usize| {
        let e = Frame::decode(&control(kind, 0, &vec![0; len])).unwrap_err();
        assert!(
            matches!(e, FrameError::BadLength { .. }),
            "{kind}/{len}: {e:?}"
        );
    };
    bad_len(3, 7); // RST_STREAM is 8
    bad_len(3, 9);
    bad_len(6, 5); // PING is 4
    bad_len(7, 4); // GOAWAY is 8
    bad_len(9, 7); // WINDOW_UPDATE is 8
    bad_len(1, 9); // SYN_STREAM needs 10
    bad_len(2, 3);
    bad_len(8, 0);
    // SETTINGS whose count disagrees with its length, or overflows.
    let e = Frame::decode(&control(4, 0, &[0, 0, 0, 2, 0, 0, 0, 7, 0, 0, 0, 1]));
    assert!(matches!(e, Err(FrameError::BadLength { .. })));
    let e = Frame::decode(&control(4, 0, &[0xff, 0xff, 0xff, 0xff]));
    assert!(matches!(e, Err(FrameError::BadLength { .. })));

    let mut v2 = control(6, 0, &[0, 0, 0, 1]);
    v2[1] = 2;
    assert_eq!(Frame::decode(&v2), Err(FrameError::UnsupportedVersion(2)));
    let huge = [0, 0, 0, 1, 0, 0xff, 0xff, 0xff];
    assert!(matches!(Frame::decode(&huge), Err(FrameError::TooLarge(_))));
    let zero = [0, 0, 0, 0, 0, 0, 0, 0];
    assert_eq!(Frame::decode(&zero), Err(FrameError::StreamZero("DATA")));
    let e = Frame::decode(&control(3, 0, &[0, 0, 0, 0, 0, 0, 0, 1]));
    assert_eq!(e, Err(FrameError::StreamZero("RST_STREAM")));
    let e = Frame::decode(&control(9, 0, &[0, 0, 0, 1, 0, 0, 0, 0]));
    assert_eq!(e, Err(FrameError::ZeroWindowDelta));
}

#[test]
fn unknown_control_frames_are_skipped_whole() {
    let mut wire = control(10, 0, b"credential");
    Frame::Ping { id: 3 }.encode(&mut wire);
    let (f, used) = Frame::decode(&wire).unwrap().unwrap();
    assert_eq!(f, Frame::Unknown { kind: 10 });
    let (f, _) = Frame::decode(&wire[used..]).unwrap().unwrap();
    assert_eq!(f, Frame::Ping { id: 3 });
}

#[test]
fn the_dictionary_is_the_spdy3_one() {
    let d = dictionary();
    assert_eq!(d.len(), 1423);
    // zlib identifies a preset dictionary by its Adler-32; peers check it.
    let (mut a, mut b) = (1u32, 0u32);
    for &x in d {
        a = (a + u32::from(x)) % 65521;
        b = (b + a) % 65521;
    }
    assert_eq!((b << 16) | a, 0xe3c6_a7c2);
    assert!(d.starts_with(b"\0\0\0\x07options\0\0\0\x04head"));
    assert!(d.ends_with(b"enq=0."));
}

#[test]
fn header_blocks_share_one_zlib_stream_per_direction() {
    let mut c = HeaderCompressor::default();
    let mut d = HeaderDecompressor::default();
    let blocks = [
        Headers::from([("streamtype", "error")]),
        Headers::from([("streamtype", "stdout"), ("port", "80"), ("requestid", "0")]),
        Headers::default(),
        Headers(vec![("x-big".into(), "v".repeat(20_000))]),
    ];
    for h in &blocks {
        let wire = c.compress(h);
        assert_eq!(&d.decompress(&wire).unwrap(), h);
    }
    // The second block alone means nothing to a fresh decompressor.
    let mut c = HeaderCompressor::default();
    c.compress(&blocks[0]);
    let second = c.compress(&blocks[1]);
    assert!(HeaderDecompressor::default().decompress(&second).is_err());
}

#[test]
fn header_names_are_sent_lower_case_and_read_case_insensitively() {
    let h = Headers::from([("StreamType", "stdin")]);
    let back = Headers::from_block(&h.to_block()).unwrap();
    assert_eq!(back.0[0].0, "streamtype");
    assert_eq!(back.get("STREAMTYPE"), Some("stdin"));
}

#[test]
fn bad_header_blocks_are_errors() {
    for b in [
        &[0u8, 0, 0][..],
        &[0, 0, 0, 1],
        &[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0],
        &[0, 0, 0, 1, 0, 0, 0, 9, b'a'],
        &[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0], // empty name
        &[0, 0, 0, 0, 1],                      // trailing
    ] {
        assert!(Headers::from_block(b).is_err(), "{b:?}");
    }
    assert!(
        HeaderDecompressor::default()
            .decompress(b"not zlib at all")
            .is_err()
    );
    assert!(HeaderDecompressor::default().decompress(&[]).is_err());
}

#[test]
fn a_header_bomb_is_refused() {
    let mut c = HeaderCompressor::default();
    let bomb = c.compress(&Headers(vec![(
        "x".into(),
        "a".repeat(MAX_HEADER_BLOCK + 1),
    )]));
    assert!(bomb.len() < 2048);
    let e = HeaderDecompressor::default().decompress(&bomb).unwrap_err();
    assert!(e.to_string().contains("more than"), "{e}");
}

/// A tiny deterministic generator, so failures reproduce.
struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// The decoders on random and on mutated valid input: errors are fine, panics and
/// reading past the buffer are not.
#[test]
fn randomized_decoding_never_panics() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut valid = Vec::new();
    let mut c = HeaderCompressor::default();
    let block = c.compress(&Headers::from([("streamtype", "data"), ("port", "80")]));
    Frame::SynStream {
        stream_id: 1,
        associated_id: 0,
        priority: 0,
        flags: 0,
        header_block: block.clone(),
    }
    .encode(&mut valid);
    Frame::Settings {
        clear: false,
        entries: vec![Setting {
            flags: 0,
            id: 7,
            value: 9,
        }],
    }
    .encode(&mut valid);
    Frame::WindowUpdate {
        stream_id: 1,
        delta: 5,
    }
    .encode(&mut valid);
    for round in 0..20_000 {
        let mut buf = if round % 2 == 0 {
            let len = (rng.next() % 64) as usize;
            (0..len).map(|_| rng.next() as u8).collect::<Vec<u8>>()
        } else {
            let mut b = valid.clone();
            for _ in 0..1 + rng.next() % 4 {
                let i = (rng.next() as usize) % b.len();
                b[i] = rng.next() as u8;
            }
            b.truncate((rng.next() as usize) % (b.len() + 1));
            b
        };
        let mut at = 0;
        while let Ok(Some((_, used))) = Frame::decode(&buf[at..]) {
            assert!(used >= 8 && at + used <= buf.len());
            at += used;
        }
        let _ = Headers::from_block(&buf);
        let mut d = HeaderDecompressor::default();
        if round % 3 == 0 {
            buf = block.clone();
            let i = (rng.next() as usize) % buf.len();
            buf[i] ^= 1 << (rng.next() % 8);
        }
        let _ = d.decompress(&buf);
    }
}

/// The peer side of a connection, speaking through our own codec.
struct Peer {
    io: DuplexStream,
    buf: Vec<u8>,
    c: HeaderCompressor,
    d: HeaderDecompressor,
}

impl Peer {
    fn new(io: DuplexStream) -> Peer {
        Peer {
            io,
            buf: Vec::new(),
            c: HeaderCompressor::default(),
            d: HeaderDecompressor::default(),
        }
    }

    async fn send(&mut self, f: Frame) {
        let mut w = Vec::new();
        f.encode(&mut w);
        self.io.write_all(&w).await.unwrap();
    }

    async fn open(&mut self, id: u32, headers: Headers) {
        let header_block = self.c.compress(&headers);
        self.send(Frame::SynStream {
            stream_id: id,
            associated_id: 0,
            priority: 0,
            flags: 0,
            header_block,
        })
        .await;
    }

    async fn recv(&mut self) -> Option<Frame> {
        let read = async {
            loop {
                if let Some((f, used)) = Frame::decode(&self.buf).unwrap() {
                    self.buf.drain(..used);
                    if let Frame::SynReply { header_block, .. } = &f {
                        self.d.decompress(header_block).unwrap();
                    }
                    return Some(f);
                }
                let mut chunk = [0u8; 4096];
                let n = self.io.read(&mut chunk).await.unwrap();
                if n == 0 {
                    return None;
                }
                self.buf.extend_from_slice(&chunk[..n]);
            }
        };
        tokio::time::timeout(Duration::from_millis(500), read)
            .await
            .unwrap_or(None)
    }
}

#[tokio::test]
async fn streams_are_replied_pings_answered_and_data_flows_with_fin() {
    let (ours, theirs) = tokio::io::duplex(1 << 20);
    let mut conn = SpdyConnection::start(ours);
    let mut peer = Peer::new(theirs);
    peer.open(1, Headers::from([("streamtype", "stdin")])).await;
    let mut s = conn.accept().await.unwrap();
    assert_eq!(s.headers.get("streamtype"), Some("stdin"));
    assert!(matches!(
        peer.recv().await,
        Some(Frame::SynReply { stream_id: 1, .. })
    ));

    peer.send(Frame::Ping { id: 5 }).await;
    assert_eq!(peer.recv().await, Some(Frame::Ping { id: 5 }));

    peer.send(Frame::Data {
        stream_id: 1,
        fin: true,
        data: b"in".to_vec(),
    })
    .await;
    let mut got = Vec::new();
    s.io.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"in");
    // What the consumer read is acknowledged, per stream and for the connection.
    assert_eq!(
        peer.recv().await,
        Some(Frame::WindowUpdate {
            stream_id: 1,
            delta: 2
        })
    );
    assert_eq!(
        peer.recv().await,
        Some(Frame::WindowUpdate {
            stream_id: 0,
            delta: 2
        })
    );
    s.io.write_all(b"out").await.unwrap();
    s.io.shutdown().await.unwrap();
    assert_eq!(
        peer.recv().await,
        Some(Frame::Data {
            stream_id: 1,
            fin: false,
            data: b"out".to_vec()
        })
    );
    assert_eq!(
        peer.recv().await,
        Some(Frame::Data {
            stream_id: 1,
            fin: true,
            data: vec![]
        })
    );
    conn.close().await;
    assert!(matches!(peer.recv().await, Some(Frame::GoAway { .. })));
    assert_eq!(peer.recv().await, None);
}

#[tokio::test]
async fn a_flow_controlling_peer_gets_no_more_than_its_window() {
    let (ours, theirs) = tokio::io::duplex(1 << 20);
    let mut conn = SpdyConnection::start(ours);
    let mut peer = Peer::new(theirs);
    peer.send(Frame::Settings {
        clear: false,
        entries: vec![Setting {
            flags: 0,
            id: SETTINGS_INITIAL_WINDOW_SIZE,
            value: 10,
        }],
    })
    .await;
    peer.open(1, Headers::from([("streamtype", "stdout")]))
        .await;
    let mut s = conn.accept().await.unwrap();
    assert!(matches!(peer.recv().await, Some(Frame::SynReply { .. })));
    s.io.write_all(&[7u8; 25]).await.unwrap();
    let data = |n| {
        Some(Frame::Data {
            stream_id: 1,
            fin: false,
            data: vec![7u8; n],
        })
    };
    assert_eq!(peer.recv().await, data(10));
    // The window is spent: nothing more until the peer opens it.
    assert_eq!(peer.recv().await, None);
    peer.send(Frame::WindowUpdate {
        stream_id: 1,
        delta: 12,
    })
    .await;
    assert_eq!(peer.recv().await, data(12));
    peer.send(Frame::WindowUpdate {
        stream_id: 1,
        delta: 100,
    })
    .await;
    assert_eq!(peer.recv().await, data(3));
}

#[tokio::test]
async fn a_peer_without_flow_control_is_not_throttled() {
    // moby/spdystream never sends WINDOW_UPDATE; output past 64 KiB must still flow.
    let (ours, theirs) = tokio::io::duplex(1 << 20);
    let mut conn = SpdyConnection::start(ours);
    let mut peer = Peer::new(theirs);
    peer.open(1, Headers::from([("streamtype", "stdout")]))
        .await;
    let mut s = conn.accept().await.unwrap();
    let writer = tokio::spawn(async move {
        s.io.write_all(&vec![1u8; 200 << 10]).await.unwrap();
        s.io.shutdown().await.unwrap();
    });
    let mut total = 0;
    loop {
        match peer.recv().await {
            Some(Frame::Data { fin: true, .. }) => break,
            Some(Frame::Data { data, .. }) => total += data.len(),
            Some(_) => {}
            None => panic!("stalled after {total} bytes"),
        }
    }
    assert_eq!(total, 200 << 10);
    writer.await.unwrap();
}

#[tokio::test]
async fn protocol_violations_reset_streams_or_end_the_connection() {
    let (ours, theirs) = tokio::io::duplex(1 << 20);
    let mut conn = SpdyConnection::start(ours);
    let mut peer = Peer::new(theirs);
    // An even (server-side) id is refused.
    peer.open(2, Headers::default()).await;
    assert_eq!(
        peer.recv().await,
        Some(Frame::RstStream {
            stream_id: 2,
            status: rst::PROTOCOL_ERROR
        })
    );
    // DATA for a stream never opened.
    peer.send(Frame::Data {
        stream_id: 9,
        fin: false,
        data: b"x".to_vec(),
    })
    .await;
    assert_eq!(
        peer.recv().await,
        Some(Frame::RstStream {
            stream_id: 9,
            status: rst::INVALID_STREAM
        })
    );
    // A malformed frame ends the connection with GOAWAY(PROTOCOL_ERROR).
    peer.io.write_all(&control(6, 0, &[0, 0])).await.unwrap();
    assert_eq!(
        peer.recv().await,
        Some(Frame::GoAway {
            last_good_stream_id: 0,
            status: goaway::PROTOCOL_ERROR
        })
    );
    assert!(conn.accept().await.is_none());
}

#[tokio::test]
async fn the_peers_reset_ends_the_stream_for_the_consumer() {
    let (ours, theirs) = tokio::io::duplex(1 << 20);
    let mut conn = SpdyConnection::start(ours);
    let mut peer = Peer::new(theirs);
    peer.open(1, Headers::default()).await;
    let mut s = conn.accept().await.unwrap();
    assert!(matches!(peer.recv().await, Some(Frame::SynReply { .. })));
    peer.send(Frame::RstStream {
        stream_id: 1,
        status: rst::CANCEL,
    })
    .await;
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), s.io.read_to_end(&mut got))
        .await
        .expect("EOF after RST")
        .unwrap();
    assert!(got.is_empty());
}

#[tokio::test]
async fn a_silent_peer_is_dropped_after_the_idle_timeout() {
    let (ours, theirs) = tokio::io::duplex(1 << 20);
    let mut conn = SpdyConnection::start_with_idle_timeout(ours, Duration::from_millis(100));
    let mut peer = Peer::new(theirs);
    // Pings are activity.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(60)).await;
        peer.send(Frame::Ping { id: 1 }).await;
        assert_eq!(peer.recv().await, Some(Frame::Ping { id: 1 }));
    }
    assert!(matches!(
        peer.recv().await,
        Some(Frame::GoAway {
            status: goaway::OK,
            ..
        })
    ));
    assert!(conn.accept().await.is_none());
}
