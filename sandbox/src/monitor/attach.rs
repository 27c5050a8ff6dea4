//! Attach: clients connect to the `attach` socket in the container's state dir. The monitor
//! sends them the container's output as frames `[stream: u8][length: u32 BE][bytes]`
//! (stream 1 = stdout, 2 = stderr) and writes what they send into the container's stdin
//! (when it has one). A client that shuts down its writing side is done with stdin; with
//! `stdin_once` that closes the container's stdin. When the container has exited and its
//! output is drained, the monitor closes every connection.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use super::cri_log::Stream;

pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
const HEADER: usize = 5;
/// Input waiting for the container to read: beyond this, clients are not read from.
const MAX_PENDING_STDIN: usize = 1 << 20;

pub fn encode_frame(stream: u8, data: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(HEADER + data.len());
    frame.push(stream);
    frame.extend_from_slice(&(data.len() as u32).to_be_bytes());
    frame.extend_from_slice(data);
    frame
}

/// The first complete frame in `buf`: (stream, payload, bytes consumed).
pub fn decode_frame(buf: &[u8]) -> Option<(u8, &[u8], usize)> {
    let header = buf.get(..HEADER)?;
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    let payload = buf.get(HEADER..HEADER + len)?;
    Some((header[0], payload, HEADER + len))
}

struct Client {
    conn: UnixStream,
    /// Still sending us stdin.
    reading: bool,
}

pub(super) struct Attachments {
    listener: UnixListener,
    clients: Vec<Client>,
    stdin: Option<File>,
    stdin_once: bool,
    /// A client finished with stdin under `stdin_once`: close it once `pending` is written.
    close_when_flushed: bool,
    pending: Vec<u8>,
}

impl Attachments {
    pub(super) fn new(listener: UnixListener, stdin: Option<File>, stdin_once: bool) -> Self {
        if let Some(f) = &stdin {
            super::set_nonblocking(f.as_raw_fd());
        }
        Self {
            listener,
            clients: Vec::new(),
            stdin,
            stdin_once,
            close_when_flushed: false,
            pending: Vec::new(),
        }
    }

    /// The fds to poll, with the events wanted.
    pub(super) fn poll_fds(&self) -> Vec<libc::pollfd> {
        let fd = |fd: i32, events: i16| libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        let mut fds = vec![fd(self.listener.as_raw_fd(), libc::POLLIN)];
        if self.pending.len() < MAX_PENDING_STDIN {
            for c in self.clients.iter().filter(|c| c.reading) {
                fds.push(fd(c.conn.as_raw_fd(), libc::POLLIN));
            }
        }
        if let Some(stdin) = &self.stdin
            && !self.pending.is_empty()
        {
            fds.push(fd(stdin.as_raw_fd(), libc::POLLOUT));
        }
        fds
    }

    /// Handles whatever `ready` says is ready.
    pub(super) fn handle(&mut self, ready: impl Fn(i32) -> bool) {
        if ready(self.listener.as_raw_fd())
            && let Ok((conn, _)) = self.listener.accept()
        {
            let _ = conn.set_write_timeout(Some(Duration::from_secs(2)));
            self.clients.push(Client {
                reading: self.stdin.is_some(),
                conn,
            });
        }
        let mut buf = [0u8; 16 * 1024];
        for i in 0..self.clients.len() {
            let client = &mut self.clients[i];
            if !client.reading || !ready(client.conn.as_raw_fd()) {
                continue;
            }
            match client.conn.read(&mut buf) {
                Ok(0) | Err(_) => {
                    client.reading = false;
                    if self.stdin_once {
                        self.close_when_flushed = true;
                    }
                }
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
            }
        }
        self.flush_stdin();
    }

    fn flush_stdin(&mut self) {
        let Some(stdin) = &mut self.stdin else {
            self.pending.clear();
            return;
        };
        while !self.pending.is_empty() {
            match stdin.write(&self.pending) {
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // The container closed its stdin: nothing more will be read.
                Err(_) => {
                    self.pending.clear();
                    self.stdin = None;
                    return;
                }
            }
        }
        if self.close_when_flushed {
            self.stdin = None;
        }
    }

    /// Sends output to every client; a client that cannot keep up is dropped.
    pub(super) fn broadcast(&mut self, stream: Stream, data: &[u8]) {
        if self.clients.is_empty() {
            return;
        }
        let id = match stream {
            Stream::Stdout => STDOUT,
            Stream::Stderr => STDERR,
        };
        let frame = encode_frame(id, data);
        self.clients
            .retain_mut(|c| c.conn.write_all(&frame).is_ok());
    }

    /// The container is gone: stop accepting and end every session.
    pub(super) fn close(self) {
        for c in &self.clients {
            let _ = c.conn.shutdown(std::net::Shutdown::Both);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_need_all_their_bytes() {
        let mut buf = encode_frame(STDOUT, b"hello");
        buf.extend(encode_frame(STDERR, b""));
        let (stream, payload, used) = decode_frame(&buf).unwrap();
        assert_eq!((stream, payload, used), (STDOUT, &b"hello"[..], 10));
        assert_eq!(decode_frame(&buf[used..]), Some((STDERR, &b""[..], 5)));
        assert_eq!(decode_frame(&buf[..9]), None);
        assert_eq!(decode_frame(&buf[..3]), None);
    }
}
