//! ICE over TCP, passive side (RFC 6544), for networks that block UDP: one listener on
//! `sfu.tcp_port`, one task per connection that cuts the byte stream into RFC 4571
//! frames (a 2-byte big-endian length, then the packet) and writes the engine's packets
//! back the same way. The [`super::driver`] owns the engine; connections only talk to it
//! through [`TcpEvent`]s and a bounded queue per connection, so a slow or hostile peer
//! never blocks the driver: its frames are dropped, and it is closed when it stops
//! reading, sends too little, or sends too much. Depends on tokio and [`super::stun`].

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

/// Bounds on what TCP peers may cost.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections open at once; more are closed as soon as accepted.
    pub max_connections: usize,
    /// Largest frame accepted. WebRTC packets fit a UDP datagram (str0m sends at most
    /// ~1200 bytes), so anything near the 64 KiB the length field allows is hostile.
    pub max_frame: usize,
    /// The first frame (a STUN binding request naming one of our peers) must arrive
    /// within this; a connection that says nothing useful is closed.
    pub first_frame_timeout: Duration,
    /// A connection without a complete frame for this long is closed (ICE consent
    /// checks alone arrive every few seconds). A byte now and then does not count, so a
    /// slowloris peer that never finishes a frame is closed too.
    pub idle_timeout: Duration,
    /// A write that the peer does not drain within this closes the connection.
    pub write_timeout: Duration,
    /// Frames queued for one connection; beyond it they are dropped, as UDP would.
    /// With buffers, a connection holds at most about this × 1.2 kB + 24 kB.
    pub send_queue: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_frame: 4096,
            first_frame_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(5),
            // A keyframe burst to one subscriber fits; 1024 full queues stay near 300 MB.
            send_queue: 256,
        }
    }
}

/// What connections tell the driver, in order for each connection.
#[derive(Debug)]
pub enum TcpEvent {
    /// A connection opened; frames for `remote` go into `writer`.
    Opened {
        id: u64,
        remote: SocketAddr,
        writer: mpsc::Sender<Vec<u8>>,
    },
    /// A complete frame arrived from `remote`.
    Frame { remote: SocketAddr, frame: Vec<u8> },
    /// The connection `id` from `remote` is gone.
    Closed { id: u64, remote: SocketAddr },
}

/// Why a connection was closed (the metric's `reason` label).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CloseReason {
    #[error("the peer closed the connection")]
    Eof,
    #[error("a frame of {0} bytes is over the limit")]
    Oversize(usize),
    #[error("the first frame is not a STUN request naming a peer")]
    NotStun,
    #[error("no complete frame within the timeout")]
    Idle,
    #[error("the peer does not read what is sent")]
    WriteStalled,
    #[error("connection error: {0}")]
    Io(io::ErrorKind),
    #[error("shutting down")]
    Shutdown,
}

impl CloseReason {
    fn label(&self) -> &'static str {
        match self {
            Self::Eof => "eof",
            Self::Oversize(_) => "oversize",
            Self::NotStun => "not_stun",
            Self::Idle => "idle",
            Self::WriteStalled => "write_stalled",
            Self::Io(_) => "io",
            Self::Shutdown => "shutdown",
        }
    }
}

/// Reads one RFC 4571 frame: `Ok(None)` at a clean end of stream (between frames).
/// Zero-length frames carry nothing and are skipped.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    max_frame: usize,
) -> Result<Option<Vec<u8>>, CloseReason> {
    loop {
        let mut header = [0u8; 2];
        match reader.read(&mut header[..1]).await {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(e) => return Err(CloseReason::Io(e.kind())),
        }
        reader
            .read_exact(&mut header[1..])
            .await
            .map_err(|e| CloseReason::Io(e.kind()))?;
        let len = usize::from(u16::from_be_bytes(header));
        if len == 0 {
            continue;
        }
        if len > max_frame {
            return Err(CloseReason::Oversize(len));
        }
        let mut frame = vec![0u8; len];
        reader
            .read_exact(&mut frame)
            .await
            .map_err(|e| CloseReason::Io(e.kind()))?;
        return Ok(Some(frame));
    }
}

/// Writes one frame with its length prefix (`frame` is at most `u16::MAX` bytes).
async fn write_frame<W: AsyncWrite + Unpin>(writer: &mut W, frame: &[u8]) -> io::Result<()> {
    let len = u16::try_from(frame.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame over 64 KiB"))?;
    writer.write_all(&len.to_be_bytes()).await?;
    writer.write_all(frame).await
}

/// Accepts connections until `shutdown`, each served by a task of its own.
pub async fn serve(
    listener: TcpListener,
    events: mpsc::Sender<TcpEvent>,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut next_id = 0u64;
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, remote) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, say: back off instead of spinning on the error.
                tracing::debug!(error = %e, "TCP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            metrics::counter!("tchap_visio_sfu_tcp_closed_total", "reason" => "too_many")
                .increment(1);
            continue; // dropping the stream closes it
        };
        next_id += 1;
        let (id, events, token) = (next_id, events.clone(), shutdown.child_token());
        tokio::spawn(async move {
            let _slot = slot;
            connection(id, stream, remote, events, limits, token).await;
        });
    }
}

async fn connection(
    id: u64,
    stream: TcpStream,
    remote: SocketAddr,
    events: mpsc::Sender<TcpEvent>,
    limits: Limits,
    token: CancellationToken,
) {
    // Media: no Nagle delay on small packets.
    let _ = stream.set_nodelay(true);
    let (read, write) = stream.into_split();
    let (writer, queue) = mpsc::channel(limits.send_queue);
    if events
        .send(TcpEvent::Opened { id, remote, writer })
        .await
        .is_err()
    {
        return; // the driver is gone
    }
    metrics::gauge!("tchap_visio_sfu_tcp_connections").increment(1.0);
    let writing = tokio::spawn(write_frames(write, queue, limits, token.clone()));
    let reason = read_frames(read, remote, &events, limits, &token).await;
    token.cancel();
    let reason = match writing.await {
        Ok(Err(write_reason)) if reason == CloseReason::Shutdown => write_reason,
        _ => reason,
    };
    tracing::debug!(%remote, %reason, "ICE-TCP connection closed");
    metrics::counter!("tchap_visio_sfu_tcp_closed_total", "reason" => reason.label()).increment(1);
    metrics::gauge!("tchap_visio_sfu_tcp_connections").decrement(1.0);
    let _ = events.send(TcpEvent::Closed { id, remote }).await;
}

/// Passes frames to the driver until the connection ends; returns why it ended.
async fn read_frames<R: AsyncRead + Unpin>(
    read: R,
    remote: SocketAddr,
    events: &mpsc::Sender<TcpEvent>,
    limits: Limits,
    token: &CancellationToken,
) -> CloseReason {
    let mut reader = BufReader::with_capacity(8192, read);
    let mut first = true;
    loop {
        let wait = if first {
            limits.first_frame_timeout
        } else {
            limits.idle_timeout
        };
        let frame = tokio::select! {
            _ = token.cancelled() => return CloseReason::Shutdown,
            frame = tokio::time::timeout(wait, read_frame(&mut reader, limits.max_frame)) => frame,
        };
        let frame = match frame {
            Err(_elapsed) => return CloseReason::Idle,
            Ok(Err(reason)) => return reason,
            Ok(Ok(None)) => return CloseReason::Eof,
            Ok(Ok(Some(frame))) => frame,
        };
        // RFC 6544: a connection starts with the client's connectivity check. Anything
        // else is not ICE, and would only cost the engine a lookup per frame.
        if first && super::stun::local_ufrag(&frame).is_none() {
            return CloseReason::NotStun;
        }
        first = false;
        metrics::counter!("tchap_visio_sfu_tcp_bytes_total", "direction" => "in")
            .increment(frame.len() as u64 + 2);
        // Waits when the driver is busy: back-pressure on this connection only.
        tokio::select! {
            _ = token.cancelled() => return CloseReason::Shutdown,
            sent = events.send(TcpEvent::Frame { remote, frame }) => {
                if sent.is_err() {
                    return CloseReason::Shutdown;
                }
            }
        }
    }
}

/// Writes queued frames, flushing once the queue is empty; a stalled peer closes the
/// connection (through `token`).
async fn write_frames<W: AsyncWrite + Unpin>(
    write: W,
    mut queue: mpsc::Receiver<Vec<u8>>,
    limits: Limits,
    token: CancellationToken,
) -> Result<(), CloseReason> {
    let mut writer = BufWriter::with_capacity(16 * 1024, write);
    let result = async {
        loop {
            let frame = tokio::select! {
                _ = token.cancelled() => return Ok(()),
                frame = queue.recv() => frame,
            };
            let Some(frame) = frame else {
                return Ok(()); // the driver dropped the connection
            };
            let batch = async {
                let mut bytes = 0;
                let mut next = Some(frame);
                while let Some(frame) = next {
                    write_frame(&mut writer, &frame).await?;
                    bytes += frame.len() as u64 + 2;
                    next = queue.try_recv().ok();
                }
                writer.flush().await?;
                Ok::<u64, io::Error>(bytes)
            };
            match tokio::time::timeout(limits.write_timeout, batch).await {
                Err(_elapsed) => return Err(CloseReason::WriteStalled),
                Ok(Err(e)) => return Err(CloseReason::Io(e.kind())),
                Ok(Ok(bytes)) => {
                    metrics::counter!("tchap_visio_sfu_tcp_bytes_total", "direction" => "out")
                        .increment(bytes);
                }
            }
        }
    }
    .await;
    token.cancel();
    result
}

/// The driver's side: the open connections by remote address.
#[derive(Debug, Default)]
pub struct Connections {
    writers: HashMap<SocketAddr, (u64, mpsc::Sender<Vec<u8>>)>,
}

impl Connections {
    pub fn opened(&mut self, id: u64, remote: SocketAddr, writer: mpsc::Sender<Vec<u8>>) {
        self.writers.insert(remote, (id, writer));
    }

    /// Forgets connection `id`, unless `remote` already belongs to a newer one.
    pub fn closed(&mut self, id: u64, remote: SocketAddr) {
        if self
            .writers
            .get(&remote)
            .is_some_and(|(open, _)| *open == id)
        {
            self.writers.remove(&remote);
        }
    }

    /// Queues a frame for `remote` without waiting: a full queue drops it.
    pub fn send(&mut self, remote: SocketAddr, contents: Vec<u8>) {
        let Some((_, writer)) = self.writers.get(&remote) else {
            metrics::counter!("tchap_visio_sfu_tcp_dropped_total", "reason" => "no_connection")
                .increment(1);
            return;
        };
        match writer.try_send(contents) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics::counter!("tchap_visio_sfu_tcp_dropped_total", "reason" => "queue_full")
                    .increment(1);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.writers.remove(&remote);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.writers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.writers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(parts: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for part in parts {
            out.extend_from_slice(&(part.len() as u16).to_be_bytes());
            out.extend_from_slice(part);
        }
        out
    }

    #[tokio::test]
    async fn frames_are_cut_at_their_length_prefix() {
        let bytes = framed(&[b"abc", b"", b"defgh"]);
        let mut reader = bytes.as_slice();
        assert_eq!(
            read_frame(&mut reader, 100).await,
            Ok(Some(b"abc".to_vec()))
        );
        // The empty frame is skipped.
        assert_eq!(
            read_frame(&mut reader, 100).await,
            Ok(Some(b"defgh".to_vec()))
        );
        assert_eq!(read_frame(&mut reader, 100).await, Ok(None));
    }

    #[tokio::test]
    async fn oversize_and_truncated_frames_are_errors() {
        let bytes = [0xff, 0xff, 1, 2, 3];
        assert_eq!(
            read_frame(&mut &bytes[..], 4096).await,
            Err(CloseReason::Oversize(65535))
        );
        let mut truncated = framed(&[b"abcdef"]);
        truncated.truncate(5);
        assert_eq!(
            read_frame(&mut truncated.as_slice(), 4096).await,
            Err(CloseReason::Io(io::ErrorKind::UnexpectedEof))
        );
        assert_eq!(
            read_frame(&mut &[7u8][..], 4096).await,
            Err(CloseReason::Io(io::ErrorKind::UnexpectedEof))
        );
    }

    #[tokio::test]
    async fn written_frames_read_back() {
        let mut out = Vec::new();
        write_frame(&mut out, b"hello").await.expect("write");
        write_frame(&mut out, &[9u8; 1500]).await.expect("write");
        assert!(write_frame(&mut out, &vec![0u8; 70_000]).await.is_err());
        let mut reader = out.as_slice();
        assert_eq!(
            read_frame(&mut reader, 4096).await,
            Ok(Some(b"hello".to_vec()))
        );
        assert_eq!(
            read_frame(&mut reader, 4096).await,
            Ok(Some(vec![9u8; 1500]))
        );
        assert_eq!(read_frame(&mut reader, 4096).await, Ok(None));
    }

    /// A STUN binding request with a USERNAME, as a client's first check.
    fn binding_request() -> Vec<u8> {
        let username = b"abcd:wxyz";
        let mut packet = vec![0x00, 0x01, 0x00, 0x10, 0x21, 0x12, 0xA4, 0x42];
        packet.extend_from_slice(&[7; 12]);
        packet.extend_from_slice(&[0x00, 0x06, 0x00, 0x09]);
        packet.extend_from_slice(username);
        packet.extend_from_slice(&[0, 0, 0]);
        packet
    }

    async fn listener(limits: Limits) -> (SocketAddr, mpsc::Receiver<TcpEvent>, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (events, rx) = mpsc::channel(64);
        let shutdown = CancellationToken::new();
        tokio::spawn(serve(listener, events, limits, shutdown.clone()));
        (addr, rx, shutdown)
    }

    async fn next(rx: &mut mpsc::Receiver<TcpEvent>) -> TcpEvent {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("an event within the deadline")
            .expect("the listener is running")
    }

    /// Reads until the server closes the connection (EOF or reset) within the deadline.
    async fn closed_by_server(stream: &mut TcpStream) {
        let mut buf = [0u8; 256];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
                Err(_) => panic!("the server did not close the connection"),
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(_)) => {}
            }
        }
    }

    #[tokio::test]
    async fn frames_go_both_ways_and_hostile_peers_are_closed() {
        let limits = Limits {
            max_connections: 4,
            first_frame_timeout: Duration::from_millis(300),
            idle_timeout: Duration::from_secs(3),
            ..Limits::default()
        };
        let (addr, mut rx, shutdown) = listener(limits).await;
        let mut connections = Connections::default();

        // A well-behaved client: a STUN request first, then anything; frames come back.
        let mut good = TcpStream::connect(addr).await.expect("connect");
        let TcpEvent::Opened { id, remote, writer } = next(&mut rx).await else {
            panic!("expected Opened");
        };
        assert_eq!(remote, good.local_addr().expect("addr"));
        connections.opened(id, remote, writer);
        good.write_all(&framed(&[&binding_request(), b"media"]))
            .await
            .expect("write");
        for expected in [binding_request(), b"media".to_vec()] {
            match next(&mut rx).await {
                TcpEvent::Frame {
                    remote: from,
                    frame,
                } => {
                    assert_eq!(from, remote);
                    assert_eq!(frame, expected);
                }
                other => panic!("expected a frame, got {other:?}"),
            }
        }
        connections.send(remote, b"reply".to_vec());
        let mut reply = [0u8; 7];
        tokio::time::timeout(Duration::from_secs(10), good.read_exact(&mut reply))
            .await
            .expect("a reply within the deadline")
            .expect("read");
        assert_eq!(&reply, b"\x00\x05reply");

        // Garbage first: closed without reaching the driver as a frame.
        let mut garbage = TcpStream::connect(addr).await.expect("connect");
        garbage
            .write_all(&framed(&[b"GET / HTTP/1.1"]))
            .await
            .expect("write");
        closed_by_server(&mut garbage).await;
        // An oversize length: closed.
        let mut oversize = TcpStream::connect(addr).await.expect("connect");
        oversize
            .write_all(&[0xff, 0xff, 0, 0])
            .await
            .expect("write");
        closed_by_server(&mut oversize).await;
        // Slowloris: half a frame and then nothing: closed at the first-frame deadline.
        let mut slow = TcpStream::connect(addr).await.expect("connect");
        slow.write_all(&[0x00, 0x20, 0x00]).await.expect("write");
        closed_by_server(&mut slow).await;

        let mut kinds = Vec::new();
        while kinds.iter().filter(|k| **k == "closed").count() < 3 {
            match next(&mut rx).await {
                TcpEvent::Opened { .. } => kinds.push("opened"),
                TcpEvent::Closed { id, remote } => {
                    connections.closed(id, remote);
                    kinds.push("closed");
                }
                TcpEvent::Frame { frame, .. } => {
                    panic!("a hostile frame reached the driver: {frame:?}")
                }
            }
        }
        assert_eq!(kinds.iter().filter(|k| **k == "opened").count(), 3);
        assert_eq!(connections.len(), 1, "the good connection is still open");

        // The good connection goes silent too: the idle timeout closes it.
        closed_by_server(&mut good).await;
        match next(&mut rx).await {
            TcpEvent::Closed { id, remote } => connections.closed(id, remote),
            other => panic!("expected Closed, got {other:?}"),
        }
        assert!(connections.is_empty());
        shutdown.cancel();
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_are_refused() {
        let limits = Limits {
            max_connections: 2,
            ..Limits::default()
        };
        let (addr, mut rx, shutdown) = listener(limits).await;
        // The driver holds each connection's writer: dropping it would close it.
        let mut open = Vec::new();
        let mut writers = Vec::new();
        for _ in 0..2 {
            open.push(TcpStream::connect(addr).await.expect("connect"));
            let TcpEvent::Opened { writer, .. } = next(&mut rx).await else {
                panic!("expected Opened");
            };
            writers.push(writer);
        }
        let mut third = TcpStream::connect(addr).await.expect("connect");
        closed_by_server(&mut third).await;
        // One leaves: a slot is free again.
        drop(open.pop());
        assert!(matches!(next(&mut rx).await, TcpEvent::Closed { .. }));
        let _fourth = TcpStream::connect(addr).await.expect("connect");
        assert!(matches!(next(&mut rx).await, TcpEvent::Opened { .. }));
        drop(writers);
        shutdown.cancel();
    }

    #[tokio::test]
    async fn a_peer_that_never_reads_is_dropped_then_closed() {
        let limits = Limits {
            send_queue: 4,
            write_timeout: Duration::from_millis(300),
            first_frame_timeout: Duration::from_secs(600),
            ..Limits::default()
        };
        let (addr, mut rx, shutdown) = listener(limits).await;
        let mut stalled = TcpStream::connect(addr).await.expect("connect");
        let TcpEvent::Opened { id, remote, writer } = next(&mut rx).await else {
            panic!("expected Opened");
        };
        let mut connections = Connections::default();
        connections.opened(id, remote, writer);
        // Keep sending until the peer's buffers are full and the write times out; `send`
        // itself never waits (it is not async), it drops what the queue cannot take.
        let mut closed = None;
        for _ in 0..100_000 {
            connections.send(remote, vec![0u8; 1200]);
            tokio::task::yield_now().await;
            if let Ok(event) = rx.try_recv() {
                closed = Some(event);
                break;
            }
        }
        let event = match closed {
            Some(event) => event,
            None => next(&mut rx).await,
        };
        match event {
            TcpEvent::Closed { id: closed, .. } => assert_eq!(closed, id),
            other => panic!("expected Closed, got {other:?}"),
        }
        closed_by_server(&mut stalled).await;
        shutdown.cancel();
    }
}
