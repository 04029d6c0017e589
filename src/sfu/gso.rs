//! Sending the engine's datagrams in batches with UDP GSO (generic segmentation
//! offload): consecutive datagrams to the same address, all of one size but the last,
//! go out in one `sendmsg` that the kernel cuts into datagrams. A subscriber gets a
//! video frame as a run of such packets, and one syscall per packet cost the driver
//! 35–55 % on top of the engine (docs/benchmarks.md). Where GSO is unavailable the
//! socket state reports one segment and every datagram goes alone, as before.
//! `quinn-udp` makes the `sendmsg` with its control message, since the crate forbids
//! `unsafe`. Depends on nothing else in the crate.

use std::io;
use std::net::SocketAddr;

use std::os::fd::AsFd;

use quinn_udp::{Transmit, UdpSocketState};

/// What one `sendmsg` with GSO may carry: the kernel's limit is 64 KiB of payload.
const MAX_BATCH_BYTES: usize = 65_000;
/// Linux accepts at most 64 segments per call (`UDP_MAX_SEGMENTS`).
const MAX_SEGMENTS: usize = 64;

/// Datagrams waiting to go out together.
#[derive(Debug)]
pub struct Batch {
    buf: Vec<u8>,
    destination: Option<SocketAddr>,
    segment: usize,
    segments: usize,
    max_segments: usize,
    /// A datagram shorter than the segment size ended the batch.
    closed: bool,
}

impl Batch {
    /// A batch of at most `max_segments` datagrams (1: no batching).
    pub fn new(max_segments: usize) -> Self {
        Self {
            buf: Vec::with_capacity(MAX_BATCH_BYTES),
            destination: None,
            segment: 0,
            segments: 0,
            max_segments: max_segments.clamp(1, MAX_SEGMENTS),
            closed: false,
        }
    }

    /// Adds a datagram if it can join the batch; `false` means: flush, then push again
    /// (an empty batch always takes it).
    pub fn push(&mut self, destination: SocketAddr, contents: &[u8]) -> bool {
        if self.segments == 0 {
            self.buf.clear();
            self.buf.extend_from_slice(contents);
            self.destination = Some(destination);
            self.segment = contents.len();
            self.segments = 1;
            self.closed = false;
            return true;
        }
        if self.closed
            || self.destination != Some(destination)
            || self.segments >= self.max_segments
            || contents.len() > self.segment
            || contents.is_empty()
            || self.buf.len() + contents.len() > MAX_BATCH_BYTES
        {
            return false;
        }
        self.buf.extend_from_slice(contents);
        self.segments += 1;
        // Only the last segment may be shorter.
        self.closed = contents.len() < self.segment;
        true
    }

    /// The batch as one transmit, leaving the batch empty; `None` if it was empty.
    pub fn take(&mut self) -> Option<(SocketAddr, &[u8], Option<usize>)> {
        let destination = self.destination.take()?;
        let segments = std::mem::take(&mut self.segments);
        let segment_size = (segments > 1).then_some(self.segment);
        Some((destination, &self.buf, segment_size))
    }

    /// Sends what is batched on `socket` (non-blocking). A full socket buffer drops the
    /// batch, as the network would; if the kernel refuses GSO, `state` falls back to
    /// one segment and the datagrams are sent again one by one.
    pub fn flush<S: AsFd>(&mut self, state: &UdpSocketState, socket: &S) -> io::Result<()> {
        let Some((destination, contents, segment_size)) = self.take() else {
            return Ok(());
        };
        let transmit = Transmit {
            destination,
            ecn: None,
            contents,
            segment_size,
            src_ip: None,
        };
        match state.try_send(socket.into(), &transmit) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(e),
            Err(e) => match segment_size {
                Some(size) if state.max_gso_segments() == 1 => {
                    for datagram in contents.chunks(size) {
                        let single = Transmit {
                            destination,
                            ecn: None,
                            contents: datagram,
                            segment_size: None,
                            src_ip: None,
                        };
                        state.try_send(socket.into(), &single)?;
                    }
                    self.max_segments = 1;
                    Ok(())
                }
                _ => Err(e),
            },
        }
    }

    pub fn is_empty(&self) -> bool {
        self.segments == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn a_run_of_equal_datagrams_to_one_address_makes_one_batch() {
        let mut batch = Batch::new(64);
        assert!(batch.push(addr(1), &[1; 100]));
        assert!(batch.push(addr(1), &[2; 100]));
        assert!(batch.push(addr(1), &[3; 60])); // shorter: the last of the batch
        assert!(
            !batch.push(addr(1), &[4; 60]),
            "nothing after a shorter one"
        );
        let (destination, contents, segment) = batch.take().expect("a batch");
        assert_eq!(
            (destination, contents.len(), segment),
            (addr(1), 260, Some(100))
        );
        assert!(batch.is_empty());
        assert!(batch.take().is_none());
    }

    #[test]
    fn a_new_address_a_longer_datagram_or_the_limit_ends_a_batch() {
        let mut batch = Batch::new(3);
        assert!(batch.push(addr(1), &[0; 100]));
        assert!(!batch.push(addr(2), &[0; 100]), "another address");
        assert!(!batch.push(addr(1), &[0; 101]), "longer than the segment");
        assert!(batch.push(addr(1), &[0; 100]));
        assert!(batch.push(addr(1), &[0; 100]));
        assert!(!batch.push(addr(1), &[0; 100]), "three segments at most");
        let (_, contents, segment) = batch.take().expect("a batch");
        assert_eq!((contents.len(), segment), (300, Some(100)));
        // A lone datagram goes without a segment size.
        assert!(batch.push(addr(2), &[0; 50]));
        let (destination, contents, segment) = batch.take().expect("a batch");
        assert_eq!((destination, contents.len(), segment), (addr(2), 50, None));
        // Without GSO every datagram is a batch of its own.
        let mut single = Batch::new(1);
        assert!(single.push(addr(1), &[0; 10]));
        assert!(!single.push(addr(1), &[0; 10]));
    }

    #[test]
    fn batches_arrive_as_separate_datagrams() {
        let receiver = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        receiver
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .expect("timeout");
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        sender.set_nonblocking(true).expect("non-blocking");
        let state = UdpSocketState::new((&sender).into()).expect("socket state");
        let mut batch = Batch::new(state.max_gso_segments());
        let to = receiver.local_addr().expect("addr");
        let sent: Vec<Vec<u8>> = vec![vec![1; 1200], vec![2; 1200], vec![3; 1200], vec![4; 700]];
        for datagram in &sent {
            if !batch.push(to, datagram) {
                batch.flush(&state, &sender).expect("send");
                assert!(batch.push(to, datagram));
            }
        }
        batch.flush(&state, &sender).expect("send");
        let mut buf = [0u8; 2048];
        for datagram in &sent {
            let n = receiver.recv(&mut buf).expect("a datagram");
            assert_eq!(&buf[..n], datagram.as_slice());
        }
    }
}
