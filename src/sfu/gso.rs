//! Sending the engine's datagrams with as few syscalls as the kernel allows. Within
//! one turn of the driver, consecutive datagrams to the same address, all of one size
//! but the last, make one message that UDP GSO (generic segmentation offload) cuts into
//! datagrams; the messages of one datagram each (a publisher's packet to each of its
//! subscribers) go out together in one `sendmmsg`. A subscriber gets a video frame as a
//! run of packets, and one syscall per packet cost the driver 35–55 % on top of the
//! engine (docs/benchmarks.md); on loopback each return from a send is also where the
//! woken receiver preempts the sender. Messages leave in the order they were queued.
//! The datagrams are not copied on the way: each is one I/O vector of its message.
//! Where GSO is unavailable every message holds one datagram. `nix` makes the calls
//! (`sendmsg` with the GSO control message, `sendmmsg`), since the crate forbids
//! `unsafe`. Depends on nothing else in the crate.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;

use nix::errno::Errno;
use nix::sys::socket::{ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage};

/// What one `sendmsg` with GSO may carry: the kernel's limit is 64 KiB of payload.
const MAX_BATCH_BYTES: usize = 65_000;
/// Linux accepts at most 64 segments per call (`UDP_MAX_SEGMENTS`).
const MAX_SEGMENTS: usize = 64;
/// Messages queued before they are sent, whatever the turn still holds: one
/// `sendmmsg` each (the kernel takes up to 1024).
pub const MAX_MESSAGES: usize = 64;

/// One message: `count` datagrams from `first` in the queue, all `segment` bytes long
/// but the last, which may be shorter.
#[derive(Debug, Clone, Copy)]
struct Message {
    destination: SocketAddr,
    first: usize,
    count: usize,
    segment: usize,
    bytes: usize,
    /// A datagram shorter than the segment size ended the message.
    closed: bool,
}

/// The datagrams of one turn, waiting to be sent. They are kept as the engine made
/// them and handed to the kernel as they are (one I/O vector each): no copy here.
pub struct Outgoing {
    max_segments: usize,
    datagrams: Vec<Vec<u8>>,
    messages: Vec<Message>,
    headers: MultiHeaders<SockaddrStorage>,
    addresses: Vec<Option<SockaddrStorage>>,
    /// The socket is IPv6 (dual stack): IPv4 destinations are written IPv4-mapped.
    ipv6: bool,
}

impl std::fmt::Debug for Outgoing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outgoing")
            .field("max_segments", &self.max_segments)
            .field("messages", &self.messages.len())
            .finish_non_exhaustive()
    }
}

impl Outgoing {
    /// Datagrams for `socket`, up to `max_segments` per GSO message (what the
    /// kernel supports, as `quinn_udp::UdpSocketState::max_gso_segments` finds it;
    /// 1: no GSO).
    pub fn new(socket: &impl AsRawFd, max_segments: usize) -> Self {
        let ipv6 = nix::sys::socket::getsockname::<SockaddrStorage>(socket.as_raw_fd())
            .ok()
            .is_some_and(|a| a.as_sockaddr_in6().is_some());
        Self {
            max_segments: max_segments.clamp(1, MAX_SEGMENTS),
            datagrams: Vec::with_capacity(MAX_MESSAGES * 4),
            messages: Vec::with_capacity(MAX_MESSAGES),
            headers: MultiHeaders::preallocate(MAX_MESSAGES, None),
            addresses: Vec::with_capacity(MAX_MESSAGES),
            ipv6,
        }
    }

    /// Queues a datagram, sending what is queued first when it is full.
    pub fn push<S: AsRawFd>(&mut self, socket: &S, destination: SocketAddr, contents: Vec<u8>) {
        if contents.is_empty() {
            return;
        }
        let len = contents.len();
        if let Some(last) = self.messages.last_mut()
            && !last.closed
            && last.destination == destination
            && last.count < self.max_segments
            && len <= last.segment
            && last.bytes + len <= MAX_BATCH_BYTES
        {
            self.datagrams.push(contents);
            last.count += 1;
            last.bytes += len;
            // Only the last segment may be shorter.
            last.closed = len < last.segment;
            return;
        }
        if self.messages.len() >= MAX_MESSAGES {
            self.flush(socket);
        }
        self.messages.push(Message {
            destination,
            first: self.datagrams.len(),
            count: 1,
            segment: len,
            bytes: len,
            closed: false,
        });
        self.datagrams.push(contents);
    }

    /// How many messages wait.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Sends everything queued (non-blocking), in order. A full socket buffer drops
    /// what it has no room for, as the network would.
    pub fn flush<S: AsRawFd>(&mut self, socket: &S) {
        let messages = std::mem::take(&mut self.messages);
        let mut index = 0;
        while index < messages.len() {
            if messages[index].count > 1 {
                self.send_segmented(socket, &messages[index]);
                index += 1;
                continue;
            }
            // The run of one-datagram messages from here, in one `sendmmsg`.
            let run = messages[index..]
                .iter()
                .take_while(|m| m.count == 1)
                .count();
            self.send_singles(socket, &messages[index..index + run]);
            index += run;
        }
        self.messages = messages;
        self.messages.clear();
        self.datagrams.clear();
    }

    fn send_singles<S: AsRawFd>(&mut self, socket: &S, run: &[Message]) {
        let mut sent = 0;
        // Each round sends at least one message or skips the one refused.
        while sent < run.len() {
            let rest = &run[sent..];
            let ipv6 = self.ipv6;
            self.addresses.clear();
            self.addresses
                .extend(rest.iter().map(|m| Some(sockaddr(m.destination, ipv6))));
            let slices: Vec<[io::IoSlice<'_>; 1]> = rest
                .iter()
                .map(|m| [io::IoSlice::new(&self.datagrams[m.first])])
                .collect();
            let result = nix::sys::socket::sendmmsg(
                socket.as_raw_fd(),
                &mut self.headers,
                &slices,
                &self.addresses,
                [],
                MsgFlags::MSG_DONTWAIT,
            )
            .map(|results| results.count());
            match result {
                Ok(0) => return,
                Ok(count) => sent += count,
                Err(Errno::EAGAIN) => {
                    tracing::trace!(dropped = rest.len(), "media socket full: datagrams dropped");
                    return;
                }
                Err(e) => {
                    // The first message was refused (an unreachable address): the
                    // others may still go.
                    tracing::trace!(error = %e, destination = %rest[0].destination, "media send dropped");
                    sent += 1;
                }
            }
        }
    }

    /// One `sendmsg` that the kernel cuts into `count` datagrams of `segment` bytes.
    fn send_segmented<S: AsRawFd>(&mut self, socket: &S, message: &Message) {
        let datagrams = &self.datagrams[message.first..message.first + message.count];
        let slices: Vec<io::IoSlice<'_>> = datagrams.iter().map(|d| io::IoSlice::new(d)).collect();
        let address = sockaddr(message.destination, self.ipv6);
        let Ok(segment) = u16::try_from(message.segment) else {
            return;
        };
        let result = nix::sys::socket::sendmsg(
            socket.as_raw_fd(),
            &slices,
            &[ControlMessage::UdpGsoSegments(&segment)],
            MsgFlags::MSG_DONTWAIT,
            Some(&address),
        );
        match result {
            Ok(_) => {}
            Err(Errno::EAGAIN) => tracing::trace!("media socket full: datagrams dropped"),
            // The device refuses segmentation offload: every later message holds one
            // datagram, and this one goes one datagram at a time.
            Err(e @ (Errno::EIO | Errno::EINVAL | Errno::EOPNOTSUPP)) => {
                tracing::debug!(error = %e, "UDP GSO refused: one datagram per message from now on");
                self.max_segments = 1;
                for datagram in datagrams {
                    let sent = nix::sys::socket::sendmsg(
                        socket.as_raw_fd(),
                        &[io::IoSlice::new(datagram)],
                        &[],
                        MsgFlags::MSG_DONTWAIT,
                        Some(&address),
                    );
                    if let Err(e) = sent {
                        tracing::trace!(error = %e, "media send dropped");
                        break;
                    }
                }
            }
            Err(e) => tracing::trace!(error = %e, "media send dropped"),
        }
    }
}

/// `destination` as the socket takes it: IPv4-mapped on an IPv6 socket.
fn sockaddr(destination: SocketAddr, ipv6: bool) -> SockaddrStorage {
    let destination = match destination {
        SocketAddr::V4(v4) if ipv6 => {
            SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
        }
        other => other,
    };
    SockaddrStorage::from(destination)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn socket() -> std::net::UdpSocket {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        socket.set_nonblocking(true).expect("non-blocking");
        socket
    }

    /// (destination, bytes, segment size, segments) of each queued message.
    fn shape(outgoing: &Outgoing) -> Vec<(SocketAddr, usize, usize, usize)> {
        outgoing
            .messages
            .iter()
            .map(|m| (m.destination, m.bytes, m.segment, m.count))
            .collect()
    }

    fn gso_outgoing(socket: &std::net::UdpSocket, max_segments: usize) -> Outgoing {
        Outgoing::new(socket, max_segments)
    }

    #[test]
    fn a_run_of_equal_datagrams_to_one_address_makes_one_message() {
        let socket = socket();
        let mut outgoing = gso_outgoing(&socket, 64);
        outgoing.push(&socket, addr(1), vec![1; 100]);
        outgoing.push(&socket, addr(1), vec![2; 100]);
        outgoing.push(&socket, addr(1), vec![3; 60]); // shorter: the last of the message
        outgoing.push(&socket, addr(1), vec![4; 60]); // nothing after a shorter one
        assert_eq!(
            shape(&outgoing),
            vec![(addr(1), 260, 100, 3), (addr(1), 60, 60, 1)]
        );
    }

    #[test]
    fn a_new_address_a_longer_datagram_or_the_limit_ends_a_message() {
        let socket = socket();
        let mut outgoing = gso_outgoing(&socket, 3);
        outgoing.push(&socket, addr(1), vec![0; 100]);
        outgoing.push(&socket, addr(2), vec![0; 100]); // another address
        outgoing.push(&socket, addr(2), vec![0; 101]); // longer than the segment
        outgoing.push(&socket, addr(2), vec![0; 101]);
        outgoing.push(&socket, addr(2), vec![0; 101]);
        outgoing.push(&socket, addr(2), vec![0; 101]); // three segments at most
        assert_eq!(
            shape(&outgoing),
            vec![
                (addr(1), 100, 100, 1),
                (addr(2), 100, 100, 1),
                (addr(2), 303, 101, 3),
                (addr(2), 101, 101, 1),
            ]
        );
        // Without GSO every datagram is a message of its own.
        let mut single = gso_outgoing(&socket, 1);
        single.push(&socket, addr(1), vec![0; 10]);
        single.push(&socket, addr(1), vec![0; 10]);
        assert_eq!(single.len(), 2);
    }

    /// Runs of one datagram (`sendmmsg`) and GSO messages, to two receivers and
    /// past the queue's limit: every datagram arrives whole, in the order queued.
    #[test]
    fn every_datagram_arrives_whole_and_in_order() {
        let receivers: Vec<std::net::UdpSocket> = (0..2)
            .map(|_| {
                let r = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
                r.set_read_timeout(Some(std::time::Duration::from_secs(10)))
                    .expect("timeout");
                r
            })
            .collect();
        let sender = socket();
        let state = quinn_udp::UdpSocketState::new((&sender).into()).expect("socket state");
        let mut outgoing = Outgoing::new(&sender, state.max_gso_segments());
        let mut expected: Vec<Vec<Vec<u8>>> = vec![Vec::new(), Vec::new()];
        let mut counter = 0u8;
        for round in 0..(MAX_MESSAGES + 10) {
            // A frame of three packets to one, a lone packet to the other.
            let (frame_to, lone_to) = (round % 2, (round + 1) % 2);
            // Small: nobody reads until the end, and the receive buffers must hold it all.
            for size in [120, 120, 70] {
                counter = counter.wrapping_add(1);
                let datagram = vec![counter; size];
                outgoing.push(
                    &sender,
                    receivers[frame_to].local_addr().expect("addr"),
                    datagram.clone(),
                );
                expected[frame_to].push(datagram);
            }
            counter = counter.wrapping_add(1);
            let datagram = vec![counter; 30];
            outgoing.push(
                &sender,
                receivers[lone_to].local_addr().expect("addr"),
                datagram.clone(),
            );
            expected[lone_to].push(datagram);
            if round % 7 == 0 {
                outgoing.flush(&sender);
            }
        }
        outgoing.flush(&sender);
        assert!(outgoing.is_empty());
        let mut buf = [0u8; 2048];
        for (receiver, datagrams) in receivers.iter().zip(&expected) {
            for datagram in datagrams {
                let n = receiver.recv(&mut buf).expect("a datagram");
                assert_eq!(&buf[..n], datagram.as_slice());
            }
        }
    }

    /// A dual-stack socket takes IPv4 destinations as IPv4-mapped addresses.
    #[test]
    fn an_ipv6_socket_reaches_ipv4_destinations() {
        let Ok(sender) = std::net::UdpSocket::bind("[::]:0") else {
            return; // no IPv6 here
        };
        sender.set_nonblocking(true).expect("non-blocking");
        let receiver = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        receiver
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .expect("timeout");
        let mut outgoing = Outgoing::new(&sender, 1);
        assert!(outgoing.ipv6);
        outgoing.push(
            &sender,
            receiver.local_addr().expect("addr"),
            b"hello".to_vec(),
        );
        outgoing.flush(&sender);
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).expect("a datagram");
        assert_eq!(&buf[..n], b"hello".to_vec());
    }
}
