//! The private channel to the warm controller: frames of a 4-byte
//! big-endian length and that many bytes of JSON, both ways (issue 15).
//! A run's frame carries its three pipe ends as one `SCM_RIGHTS` message
//! on the `sendmsg` of its first byte. The messages themselves are typed here ([`ToController`],
//! [`FromController`]); nothing else knows their spelling.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, Interest};
use tokio::net::UnixStream;

/// The longest frame either side accepts: a run's environment and argv
/// are a few KiB; anything near this is not ours.
pub(crate) const MAX_FRAME: usize = 4 << 20;

/// The length prefix.
const HEADER: usize = 4;

/// What the worker sends.
#[derive(Debug, Serialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub(crate) enum ToController<'a> {
    /// Fork one run; its stdout, stderr and status pipes travel with it.
    Run {
        id: &'a str,
        argv: &'a [String],
        env: &'a BTreeMap<String, String>,
        cwd: &'a str,
    },
    /// Liveness; answered by a pong with the same `seq`.
    Ping { seq: u64 },
}

/// What the controller sends.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub(crate) enum FromController {
    /// Its self-check passed: it takes runs from now on.
    Ready {
        pid: u32,
        ansible_version: String,
        python: String,
        preloaded: u64,
    },
    /// Its self-check failed; it exits next.
    Failed { error: String },
    /// The answer to a ping, with the controller's resident memory.
    Pong { seq: u64, rss_kb: u64 },
}

/// Why a frame could not be read: every variant means the channel is
/// broken and the controller is to be replaced.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FrameError {
    #[error("reading the controller's channel: {0}")]
    Io(#[from] io::Error),
    #[error("the controller announced a frame of {0} bytes (at most {MAX_FRAME})")]
    TooLong(usize),
    #[error("the channel closed in the middle of a frame")]
    Truncated,
    #[error("the controller sent a frame that is not one of ours: {0}")]
    Json(#[from] serde_json::Error),
}

/// `message` as one frame: length, then JSON.
pub(crate) fn encode(message: &ToController<'_>) -> Vec<u8> {
    let body = serde_json::to_vec(message).expect("our messages always serialize");
    let mut frame = Vec::with_capacity(HEADER + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    frame
}

/// Writes the whole `frame` on `stream`, `fds` attached to its first byte.
/// The caller serializes writers: two frames must not interleave.
pub(crate) async fn send(
    stream: &UnixStream,
    frame: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let mut sent = 0;
    while sent < frame.len() {
        // The fds go with the first sendmsg only; the kernel attaches them
        // to the first byte it takes.
        let attach = if sent == 0 { raw.as_slice() } else { &[] };
        sent += stream
            .async_io(Interest::WRITABLE, || {
                sendmsg(stream.as_raw_fd(), &frame[sent..], attach)
            })
            .await?;
    }
    Ok(())
}

/// One `sendmsg(2)` of `bytes` with `fds` as `SCM_RIGHTS`; how many bytes
/// the kernel took.
fn sendmsg(socket: RawFd, bytes: &[u8], fds: &[RawFd]) -> io::Result<usize> {
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    let fds_len = std::mem::size_of_val(fds) as u32;
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(fds_len) } as usize;
    // u64 words keep the control buffer aligned for `cmsghdr`.
    let mut control = vec![0u64; space.div_ceil(8)];
    // SAFETY: an all-zero msghdr is a valid empty message.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: the control buffer holds CMSG_SPACE(fds_len) bytes, room
        // for one header and `fds`; CMSG_FIRSTHDR/CMSG_DATA point into it.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(fds_len) as _;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr().cast::<u8>(),
                libc::CMSG_DATA(cmsg),
                fds_len as usize,
            );
        }
    }
    // SAFETY: `msg` points at `iov` and `control`, both alive for the call.
    // MSG_NOSIGNAL: a dead controller is an error here, not a SIGPIPE.
    let sent = unsafe { libc::sendmsg(socket, &msg, libc::MSG_NOSIGNAL) };
    if sent < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(sent as usize)
    }
}

/// Reads frames from the controller. [`FrameReader::next`] is cancel-safe:
/// bytes read are kept in the reader, never in the future.
pub(crate) struct FrameReader<R> {
    reader: R,
    buf: Vec<u8>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub(crate) fn new(reader: R) -> FrameReader<R> {
        FrameReader {
            reader,
            buf: Vec::new(),
        }
    }

    /// The next message; `None` when the channel closed between frames.
    pub(crate) async fn next(&mut self) -> Result<Option<FromController>, FrameError> {
        loop {
            if let Some(body) = self.complete_frame()? {
                return Ok(Some(serde_json::from_slice(&body)?));
            }
            let mut chunk = [0u8; 8192];
            let n = self.reader.read(&mut chunk).await?;
            if n == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(FrameError::Truncated)
                };
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Takes one whole frame's body off the buffer, if there is one.
    fn complete_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        let Some(header) = self.buf.first_chunk::<HEADER>() else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(*header) as usize;
        if len > MAX_FRAME {
            return Err(FrameError::TooLong(len));
        }
        if self.buf.len() < HEADER + len {
            return Ok(None);
        }
        let body = self.buf[HEADER..HEADER + len].to_vec();
        self.buf.drain(..HEADER + len);
        Ok(Some(body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::{AsFd, FromRawFd, OwnedFd};

    use tokio::io::AsyncWriteExt;

    fn raw(frame: &[u8]) -> serde_json::Value {
        let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
        assert_eq!(len, frame.len() - 4);
        serde_json::from_slice(&frame[4..]).unwrap()
    }

    #[test]
    fn a_run_frame_is_the_length_then_the_designs_json() {
        let argv = vec!["ansible-playbook".to_owned(), "site.yml".to_owned()];
        let env = BTreeMap::from([("PATH".to_owned(), "/usr/bin".to_owned())]);
        let frame = encode(&ToController::Run {
            id: "r1",
            argv: &argv,
            env: &env,
            cwd: "/srv/ansible",
        });
        assert_eq!(
            raw(&frame),
            serde_json::json!({"op": "run", "id": "r1", "argv": ["ansible-playbook", "site.yml"],
                "env": {"PATH": "/usr/bin"}, "cwd": "/srv/ansible"})
        );
        assert_eq!(
            raw(&encode(&ToController::Ping { seq: 7 })),
            serde_json::json!({"op": "ping", "seq": 7})
        );
    }

    #[tokio::test]
    async fn frames_split_anywhere_are_read_back_whole_and_in_order() {
        let (mut tx, rx) = tokio::io::duplex(64);
        let frames = [
            r#"{"op":"ready","pid":42,"ansible_version":"2.19.14","python":"3.11.7","preloaded":30}"#,
            r#"{"op":"pong","seq":1,"rss_kb":51200}"#,
            r#"{"op":"failed","error":"no ansible"}"#,
        ];
        let mut bytes = Vec::new();
        for body in frames {
            bytes.extend_from_slice(&(body.len() as u32).to_be_bytes());
            bytes.extend_from_slice(body.as_bytes());
        }
        let writer = tokio::spawn(async move {
            // Three bytes at a time: every boundary falls mid-header somewhere.
            for piece in bytes.chunks(3) {
                tx.write_all(piece).await.unwrap();
            }
        });
        let mut reader = FrameReader::new(rx);

        let mut seen = Vec::new();
        while let Some(message) = reader.next().await.unwrap() {
            seen.push(message);
        }
        writer.await.unwrap();

        assert_eq!(
            seen,
            [
                FromController::Ready {
                    pid: 42,
                    ansible_version: "2.19.14".into(),
                    python: "3.11.7".into(),
                    preloaded: 30
                },
                FromController::Pong {
                    seq: 1,
                    rss_kb: 51200
                },
                FromController::Failed {
                    error: "no ansible".into()
                },
            ]
        );
    }

    #[tokio::test]
    async fn an_oversized_or_truncated_frame_breaks_the_channel() {
        let (mut tx, rx) = tokio::io::duplex(64);
        tx.write_all(&(MAX_FRAME as u32 + 1).to_be_bytes())
            .await
            .unwrap();
        let err = FrameReader::new(rx).next().await.unwrap_err();
        assert!(matches!(err, FrameError::TooLong(_)), "{err}");

        let (mut tx, rx) = tokio::io::duplex(64);
        tx.write_all(&[0, 0, 0, 9, b'{']).await.unwrap();
        drop(tx);
        let err = FrameReader::new(rx).next().await.unwrap_err();
        assert!(matches!(err, FrameError::Truncated), "{err}");
    }

    /// The fds arrive with the frame's first byte, as the receiving side's
    /// `recvmsg` of the 4-byte header sees them.
    #[tokio::test]
    async fn a_frames_fds_arrive_with_its_header() {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let ours = UnixStream::from_std(ours).unwrap();
        let (pipe_rx, pipe_tx) = std::io::pipe().unwrap();
        let frame = encode(&ToController::Ping { seq: 1 });

        send(&ours, &frame, &[pipe_tx.as_fd()]).await.unwrap();
        drop(pipe_tx);

        let (header, fds) = recv_with_fds(&theirs, HEADER);
        assert_eq!(header, frame[..HEADER]);
        assert_eq!(fds.len(), 1);
        let mut body = vec![0u8; frame.len() - HEADER];
        (&theirs).read_exact(&mut body).unwrap();
        assert_eq!(body, frame[HEADER..]);
        // The received end writes into our pipe.
        let mut received = std::fs::File::from(fds.into_iter().next().unwrap());
        std::io::Write::write_all(&mut received, b"through").unwrap();
        drop(received);
        let mut text = String::new();
        std::io::BufReader::new(pipe_rx)
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "through");
    }

    /// `recvmsg(2)` of `len` bytes and the fds attached to them.
    fn recv_with_fds(
        socket: &std::os::unix::net::UnixStream,
        len: usize,
    ) -> (Vec<u8>, Vec<OwnedFd>) {
        let mut bytes = vec![0u8; len];
        let mut iov = libc::iovec {
            iov_base: bytes.as_mut_ptr().cast(),
            iov_len: len,
        };
        let mut control = [0u64; 16];
        // SAFETY: a zeroed msghdr pointing at live buffers; recvmsg writes
        // only into them, and the cmsg walk stays inside `control`.
        unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = std::mem::size_of_val(&control) as _;
            let n = libc::recvmsg(socket.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC);
            assert_eq!(n as usize, len);
            let mut fds = Vec::new();
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            if !cmsg.is_null() && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let count = ((*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / 4;
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            (bytes, fds)
        }
    }
}
