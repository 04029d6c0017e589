//! What the engine's tests and the forwarding bench share to play clients: str0m peers
//! on made-up addresses, LiveKit session descriptions as clients send them, and the
//! datagrams between the engine and a client in virtual time. Not part of the service:
//! public (and hidden from the documentation) only so that `benches/` can use it.

use std::net::SocketAddr;
use std::time::Instant;

use livekit_protocol as lk;
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Input, Rtc};

/// The engine's one host candidate.
pub const SERVER: &str = "10.0.0.1:7882";

/// The engine's address, [`SERVER`].
pub fn server() -> SocketAddr {
    SERVER.parse().expect("a socket address")
}

/// A client's peer connection with one host candidate at `addr`.
pub fn client_rtc(addr: SocketAddr, now: Instant) -> Rtc {
    let mut rtc = Rtc::builder().build(now);
    rtc.add_local_candidate(Candidate::host(addr, "udp").expect("candidate"));
    rtc
}

/// A LiveKit session description as a client sends it.
pub fn description(kind: &str, sdp: impl Into<String>, id: u32) -> lk::SessionDescription {
    lk::SessionDescription {
        r#type: kind.into(),
        sdp: sdp.into(),
        id,
        ..Default::default()
    }
}

/// A client's subscriber connection accepts the engine's offer: the answer to send back.
pub fn answer_offer(rtc: &mut Rtc, offer: &lk::SessionDescription) -> lk::SessionDescription {
    let offer = SdpOffer::from_sdp_string(&offer.sdp).expect("engine offers valid SDP");
    let answer = rtc.sdp_api().accept_offer(offer).expect("accept offer");
    description("answer", answer.to_sdp_string(), 0)
}

/// A client's publisher connection accepts the engine's answer to its pending offer.
pub fn accept_answer(rtc: &mut Rtc, pending: SdpPendingOffer, answer: &lk::SessionDescription) {
    let answer = SdpAnswer::from_sdp_string(&answer.sdp).expect("engine answers valid SDP");
    rtc.sdp_api()
        .accept_answer(pending, answer)
        .expect("accept answer");
}

/// A datagram from the engine arriving at a client's `destination` at `now`.
pub fn from_server(now: Instant, destination: SocketAddr, contents: &[u8]) -> Input<'_> {
    Input::Receive(
        now,
        Receive {
            proto: Protocol::Udp,
            source: server(),
            destination,
            contents: contents.try_into().expect("a datagram"),
        },
    )
}
