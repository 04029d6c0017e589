//! Engine tests with virtual time and no sockets: str0m peers play the clients, and the
//! [`World`] of [`super::testing`] carries datagrams and signalling between them and the
//! engine.

use std::net::SocketAddr;
use std::time::Duration;

use livekit_protocol as lk;
use livekit_protocol::{signal_request, signal_response};
use prost::Message;
use str0m::media::Direction;

use super::EngineEvent;
use super::engine::{Engine, EngineConfig, JoinError, Output};
use super::testing::{Bottleneck, Client, SERVER, World, description, join_request};

fn config() -> EngineConfig {
    EngineConfig {
        candidates: vec![SERVER.parse().expect("addr")],
        max_participants_per_room: 3,
        max_participants: 100,
        ice_servers: vec![],
    }
}

#[test]
fn join_response_carries_what_clients_need() {
    let mut world = World::new(config());
    let alice = world.join("alice");
    world.exchange();
    let join = world.clients[alice]
        .signals
        .iter()
        .find_map(|m| match m {
            signal_response::Message::Join(join) => Some(join.clone()),
            _ => None,
        })
        .expect("a join response");
    let participant = join.participant.expect("participant");
    assert!(participant.sid.starts_with("PA_"), "{}", participant.sid);
    assert!(join.room.expect("room").sid.starts_with("RM_"));
    assert!(join.ping_interval > 0 && join.ping_timeout > join.ping_interval);
    assert!(join.subscriber_primary);
    assert!(
        join.ice_servers.is_empty(),
        "no ICE server unless configured"
    );
    let version = join.server_info.expect("server info").version;
    assert!(version.as_str() >= "1.9.0", "{version}");
    // The first subscriber offer follows the join, with the two data channels.
    assert!(world.clients[alice].signals.iter().any(
        |m| matches!(m, signal_response::Message::Offer(o) if o.sdp.contains("m=application"))
    ));
}

#[test]
fn media_and_data_flow_between_two_clients_in_virtual_time() {
    let mut world = World::new(config());
    let alice = world.join("alice");
    let bob = world.join("bob");
    world.exchange();
    world.publish(alice);
    let mut frame = 0;
    world.run(Duration::from_secs(3), |w| {
        if w.now.elapsed() >= Duration::ZERO {
            frame += 1;
            if frame % 30 == 0 {
                w.send_frame(alice, frame / 30);
            }
        }
    });
    let published = world.clients[alice]
        .signals
        .iter()
        .find_map(|m| match m {
            signal_response::Message::TrackPublished(p) => p.track.clone(),
            _ => None,
        })
        .expect("track published");
    assert!(published.sid.starts_with("TR_"));
    assert!(
        world.clients[bob].signals.iter().any(|m| matches!(m,
            signal_response::Message::Update(u) if u.participants.iter().any(|p| p.tracks.iter().any(|t| t.sid == published.sid)))),
        "bob was told about alice's track"
    );
    assert!(
        world.clients[bob].frames_received > 10,
        "bob received {} frames",
        world.clients[bob].frames_received
    );

    // Chat from alice, forging bob's identity, reaches bob stamped as alice, and the
    // engine emits it once even when the legacy twin follows.
    let chat = lk::DataPacket {
        participant_identity: "bob".into(),
        value: Some(lk::data_packet::Value::ChatMessage(lk::ChatMessage {
            id: "m1".into(),
            message: "bonjour".into(),
            timestamp: 1,
            ..Default::default()
        })),
        ..Default::default()
    }
    .encode_to_vec();
    let channel = world.clients[alice].channel.expect("channel");
    for _ in 0..2 {
        if let Some(mut ch) = world.clients[alice].publisher.channel(channel) {
            ch.write(true, &chat).expect("write");
        }
    }
    world.run(Duration::from_millis(500), |_| {});
    let received: Vec<_> = world.clients[bob]
        .data_received
        .iter()
        .filter(|p| matches!(p.value, Some(lk::data_packet::Value::ChatMessage(_))))
        .collect();
    assert!(!received.is_empty(), "bob received the chat");
    assert!(received.iter().all(|p| p.participant_identity == "alice"));
    let chats: Vec<_> = world
        .events
        .iter()
        .filter(|e| matches!(e, EngineEvent::Chat { .. }))
        .collect();
    assert_eq!(chats.len(), 1, "{chats:?}");
}

#[test]
fn a_silent_participant_is_removed_and_the_room_told() {
    let mut world = World::new(config());
    let alice = world.join("alice");
    let _bob = world.join("bob");
    world.exchange();
    // Nobody sends anything: after the silence limit both are gone.
    let start = world.now;
    let alice_key = world.clients[alice].key;
    world.clients.clear(); // the clients vanish: no more packets, no more signalling
    world.run(Duration::from_secs(10), |_| {});
    let left: Vec<_> = world
        .events
        .iter()
        .filter(|e| matches!(e, EngineEvent::ParticipantLeft { .. }))
        .collect();
    assert_eq!(left.len(), 2, "{:?}", world.events);
    assert_eq!(world.engine.participant_count(), 0);
    assert!(world.engine.sid_of(alice_key).is_none());
    assert!(world.now.duration_since(start) <= Duration::from_secs(10));
}

#[test]
fn rooms_have_a_limit_and_identities_are_unique() {
    let mut world = World::new(config());
    for name in ["a", "b", "c"] {
        world.join(name);
    }
    assert!(matches!(
        world.engine.join(world.now, join_request("d")),
        Err(super::JoinError::RoomFull(3))
    ));
    // Same identity again: replaces the first session instead of counting twice.
    let again = world
        .engine
        .join(world.now, join_request("a"))
        .expect("rejoin");
    assert_eq!(world.engine.participant_count(), 3);
    assert!(world.engine.sid_of(again).is_some());
    assert!(matches!(
        world
            .engine
            .join(world.now, join_request(super::engine::SERVER_IDENTITY)),
        Err(super::JoinError::ReservedIdentity(_))
    ));
}

#[test]
fn garbage_never_panics() {
    let mut world = World::new(config());
    let alice = world.join("alice");
    let key = world.clients[alice].key;
    let now = world.now;
    let source: SocketAddr = "10.9.9.9:1".parse().expect("addr");
    let server: SocketAddr = SERVER.parse().expect("addr");
    for packet in [
        &[][..],
        &[0u8; 1][..],
        &[0xff; 1500][..],
        b"GET / HTTP/1.1\r\n\r\n",
    ] {
        world.engine.handle_packet(now, source, server, packet);
    }
    // A STUN-looking packet with a known ufrag but garbage after it.
    let mut stun = vec![0x00, 0x01, 0x00, 0x08, 0x21, 0x12, 0xA4, 0x42];
    stun.extend([0u8; 12]);
    stun.extend([0x00, 0x06, 0x00, 0x04, b'a', b'b', b'c', b'd']);
    world.engine.handle_packet(now, source, server, &stun);
    for sdp in ["", "v=0", "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"] {
        world.engine.signal(
            now,
            key,
            signal_request::Message::Offer(description("offer", sdp, 0)),
        );
        world.engine.signal(
            now,
            key,
            signal_request::Message::Answer(description("answer", sdp, 0)),
        );
    }
    world.engine.signal(
        now,
        key,
        signal_request::Message::Trickle(lk::TrickleRequest {
            candidate_init: "{not json".into(),
            ..Default::default()
        }),
    );
    assert!(Engine::decode_request(&[0xff, 0x01, 0x02]).is_err());
    assert_eq!(world.engine.participant_count(), 1);
}

#[test]
fn an_unpublished_track_leaves_the_subscribers() {
    let mut world = World::new(config());
    let alice = world.join("alice");
    let bob = world.join("bob");
    world.exchange();
    world.publish(alice);
    let mut frame = 0;
    world.run(Duration::from_secs(2), |w| {
        frame += 1;
        if frame % 30 == 0 {
            w.send_frame(alice, frame / 30);
        }
    });
    assert!(world.clients[bob].frames_received > 0, "media flowed first");
    // Alice stops sending on the m-line (what a client does when it unpublishes).
    let mid = world.clients[alice].video_mid.expect("mid");
    let key = world.clients[alice].key;
    let mut api = world.clients[alice].publisher.sdp_api();
    api.set_direction(mid, Direction::Inactive);
    let (offer, pending) = api.apply().expect("a change to offer");
    world.clients[alice].pending = Some(pending);
    world.engine.signal(
        world.now,
        key,
        signal_request::Message::Offer(description("offer", offer.to_sdp_string(), 2)),
    );
    world.run(Duration::from_millis(500), |_| {});
    assert!(
        world.clients[alice]
            .signals
            .iter()
            .any(|m| matches!(m, signal_response::Message::TrackUnpublished(_))),
        "alice is told her track is unpublished"
    );
    let last_update = world.clients[bob]
        .signals
        .iter()
        .rev()
        .find_map(|m| match m {
            signal_response::Message::Update(u) => u
                .participants
                .iter()
                .find(|p| p.identity == "alice")
                .cloned(),
            _ => None,
        })
        .expect("an update about alice");
    assert!(
        last_update.tracks.is_empty(),
        "bob's view of alice lost the track: {last_update:?}"
    );
    let offers = world.clients[bob]
        .signals
        .iter()
        .filter(|m| matches!(m, signal_response::Message::Offer(_)))
        .count();
    assert!(
        offers >= 3,
        "bob got an offer stopping the m-line ({offers} offers)"
    );
}

/// Runs `duration` of a simulcast publisher sending all its layers at 15 frames/s.
fn run_simulcast(world: &mut World, publisher: usize, frame: &mut u32, duration: Duration) {
    let mut step = 0u32;
    world.run(duration, |w| {
        step += 1;
        if step.is_multiple_of(33) {
            *frame += 1;
            w.send_layers(publisher, *frame, &[0, 1, 2]);
        }
    });
}

fn track_setting(world: &mut World, index: usize, settings: lk::UpdateTrackSettings) {
    let key = world.clients[index].key;
    world.engine.signal(
        world.now,
        key,
        signal_request::Message::TrackSetting(settings),
    );
}

fn quality_updates(client: &Client) -> Vec<lk::SubscribedQualityUpdate> {
    client
        .signals
        .iter()
        .filter_map(|m| match m {
            signal_response::Message::SubscribedQualityUpdate(u) => Some(u.clone()),
            _ => None,
        })
        .collect()
}

/// The layer switch seen by a subscriber: the frame before and the first one after.
fn switch_to(
    video: &[(u8, u64, bool)],
    from: usize,
    layer: u8,
) -> ((u8, u64, bool), (u8, u64, bool)) {
    let at = video[from..]
        .iter()
        .position(|v| v.0 == layer)
        .map(|i| i + from)
        .unwrap_or_else(|| panic!("no frame of layer {layer} after frame {from}: {video:?}"));
    assert!(at > 0, "layer {layer} came first");
    (video[at - 1], video[at])
}

#[test]
fn each_subscriber_gets_the_layer_it_asks_for_switched_at_a_keyframe() {
    let mut world = World::new(config());
    let alice = world.join("alice");
    let bob = world.join("bob");
    world.exchange();
    world.publish_simulcast(alice);
    let mut frame = 0;
    run_simulcast(&mut world, alice, &mut frame, Duration::from_secs(2));

    let track = world.clients[alice]
        .signals
        .iter()
        .find_map(|m| match m {
            signal_response::Message::TrackPublished(p) => p.track.clone(),
            _ => None,
        })
        .expect("track published");
    #[allow(deprecated)]
    let simulcast = track.simulcast;
    assert!(simulcast, "the track is announced as simulcast");
    // Unasked, bob gets the best layer, starting on a keyframe, and nothing else.
    let video = world.clients[bob].video.clone();
    assert!(video.len() > 10, "bob received {} frames", video.len());
    assert!(video[0].2, "the first frame forwarded is a keyframe");
    assert!(video.iter().all(|v| v.0 == 2), "only layer f: {video:?}");

    // Bob asks for LOW (the Python SDK's set_video_quality): the next frames come from q,
    // from one of its keyframes, with timestamps continuing where f stopped.
    let before = world.clients[bob].video.len();
    track_setting(
        &mut world,
        bob,
        lk::UpdateTrackSettings {
            track_sids: vec![track.sid.clone()],
            quality: lk::VideoQuality::Low as i32,
            ..Default::default()
        },
    );
    run_simulcast(&mut world, alice, &mut frame, Duration::from_secs(3));
    let video = world.clients[bob].video.clone();
    let (last_f, first_q) = switch_to(&video, before, 0);
    assert_eq!(last_f.0, 2);
    assert!(
        first_q.2,
        "the switch happens at a keyframe of the new layer"
    );
    let step = first_q.1.wrapping_sub(last_f.1);
    assert!(
        (1..=90_000 / 5).contains(&step),
        "timestamps continue across the switch (step {step} ticks)"
    );
    assert!(
        video.windows(2).all(|w| w[1].1 > w[0].1),
        "timestamps always grow"
    );
    let after: Vec<u8> = video[before..].iter().map(|v| v.0).collect();
    let switched = after.iter().position(|&l| l == 0).expect("q frames");
    assert!(
        after[switched..].iter().all(|&l| l == 0),
        "only q after the switch: {after:?}"
    );

    // Dynacast: with bob wanting LOW only, alice is told to pause h and f.
    let updates = quality_updates(&world.clients[alice]);
    let last = updates.last().expect("a SubscribedQualityUpdate");
    assert_eq!(last.track_sid, track.sid);
    let enabled: Vec<bool> = last.subscribed_codecs[0]
        .qualities
        .iter()
        .map(|q| q.enabled)
        .collect();
    assert_eq!(enabled, [true, false, false]);
    assert_eq!(last.subscribed_codecs[0].codec, "vp8");

    // A large tile (adaptive stream's dimensions): back to f, announced at once.
    let before = world.clients[bob].video.len();
    let announced = quality_updates(&world.clients[alice]).len();
    track_setting(
        &mut world,
        bob,
        lk::UpdateTrackSettings {
            track_sids: vec![track.sid.clone()],
            width: 1200,
            height: 700,
            ..Default::default()
        },
    );
    world.exchange();
    let updates = quality_updates(&world.clients[alice]);
    assert_eq!(updates.len(), announced + 1, "raising is announced at once");
    #[allow(deprecated)]
    let flat: Vec<bool> = updates[announced]
        .subscribed_qualities
        .iter()
        .map(|q| q.enabled)
        .collect();
    assert_eq!(flat, [true, true, true]);
    run_simulcast(&mut world, alice, &mut frame, Duration::from_secs(2));
    let video = world.clients[bob].video.clone();
    let (last_q, first_f) = switch_to(&video, before, 2);
    assert_eq!(last_q.0, 0);
    assert!(first_f.2);
    assert!((1..=90_000 / 5).contains(&first_f.1.wrapping_sub(last_q.1)));

    // A small tile: 160x90 is served by q.
    track_setting(
        &mut world,
        bob,
        lk::UpdateTrackSettings {
            track_sids: vec![track.sid],
            width: 160,
            height: 90,
            ..Default::default()
        },
    );
    let before = world.clients[bob].video.len();
    run_simulcast(&mut world, alice, &mut frame, Duration::from_secs(1));
    let video = &world.clients[bob].video;
    assert_eq!(video.last().map(|v| v.0), Some(0), "{:?}", &video[before..]);
}

#[test]
fn two_subscribers_get_different_layers_of_one_track() {
    let mut world = World::new(config());
    let alice = world.join("alice");
    let bob = world.join("bob");
    let carol = world.join("carol");
    world.exchange();
    world.publish_simulcast(alice);
    let mut frame = 0;
    run_simulcast(&mut world, alice, &mut frame, Duration::from_secs(1));
    let sid = world.clients[alice]
        .signals
        .iter()
        .find_map(|m| match m {
            signal_response::Message::TrackPublished(p) => p.track.as_ref().map(|t| t.sid.clone()),
            _ => None,
        })
        .expect("track published");
    track_setting(
        &mut world,
        carol,
        lk::UpdateTrackSettings {
            track_sids: vec![sid],
            quality: lk::VideoQuality::Medium as i32,
            ..Default::default()
        },
    );
    let (b0, c0) = (
        world.clients[bob].video.len(),
        world.clients[carol].video.len(),
    );
    run_simulcast(&mut world, alice, &mut frame, Duration::from_secs(3));
    let tail =
        |c: &Client, from: usize| -> Vec<u8> { c.video[from..].iter().map(|v| v.0).collect() };
    let bob_layers = tail(&world.clients[bob], b0);
    let carol_layers = tail(&world.clients[carol], c0);
    assert!(
        bob_layers.len() > 20 && bob_layers.iter().all(|&l| l == 2),
        "{bob_layers:?}"
    );
    assert_eq!(carol_layers.last(), Some(&1), "{carol_layers:?}");
    // Someone still wants f: nothing is paused.
    assert!(
        quality_updates(&world.clients[alice]).iter().all(|u| u
            .subscribed_codecs
            .iter()
            .all(|c| c.qualities.iter().all(|q| q.enabled))),
        "no layer may be paused while bob watches f"
    );
}

#[test]
fn a_narrow_link_gets_a_lower_layer_from_the_bandwidth_estimate() {
    let mut world = World::new(config());
    let alice = world.join("alice");
    let bob = world.join("bob");
    world.exchange();
    world.publish_simulcast(alice);
    let mut frame = 0;
    run_simulcast(&mut world, alice, &mut frame, Duration::from_secs(3));
    let video = &world.clients[bob].video;
    assert_eq!(video.last().map(|v| v.0), Some(2), "a wide link carries f");

    // Bob's link narrows to 400 kb/s: f (720 kb/s) no longer fits, h (240 kb/s) does.
    // TWCC feedback shows the queueing; the estimate falls and bob moves to h, though he
    // still asks for the best layer.
    world.bottleneck = Some(Bottleneck {
        destination: world.clients[bob].subscriber_addr,
        bps: 400_000,
        free_at: world.now,
        queue: Default::default(),
    });
    let before = world.clients[bob].video.len();
    run_simulcast(&mut world, alice, &mut frame, Duration::from_secs(15));
    let layers: Vec<u8> = world.clients[bob].video[before..]
        .iter()
        .map(|v| v.0)
        .collect();
    let last_second = &layers[layers.len().saturating_sub(15)..];
    assert!(
        !last_second.is_empty() && last_second.iter().all(|&l| l == 1),
        "bob should settle on h: {layers:?}"
    );

    // The link widens again: probing finds the room and f comes back.
    world.bottleneck = None;
    let before = world.clients[bob].video.len();
    run_simulcast(&mut world, alice, &mut frame, Duration::from_secs(15));
    let video = &world.clients[bob].video[before..];
    assert_eq!(video.last().map(|v| v.0), Some(2), "f again on a wide link");
}

/// Runs `duration` of a simulcast publisher sending the `layers` given (0 = q, 1 = h,
/// 2 = f) at 15 frames/s, less those the last `SubscribedQualityUpdate` paused: as
/// LiveKit's SDKs do, by the quality each RID stands for (q LOW, h MEDIUM, f HIGH).
fn run_layers(
    world: &mut World,
    publisher: usize,
    frame: &mut u32,
    duration: Duration,
    layers: &[usize],
) {
    let mut step = 0u32;
    world.run(duration, |w| {
        step += 1;
        if step.is_multiple_of(33) {
            *frame += 1;
            #[allow(deprecated)]
            let paused: Vec<i32> = quality_updates(&w.clients[publisher])
                .last()
                .map(|u| {
                    u.subscribed_qualities
                        .iter()
                        .filter(|q| !q.enabled)
                        .map(|q| q.quality)
                        .collect()
                })
                .unwrap_or_default();
            let sent: Vec<usize> = layers
                .iter()
                .copied()
                .filter(|&l| !paused.contains(&(l as i32)))
                .collect();
            w.send_layers(publisher, *frame, &sent);
        }
    });
}

/// The sid of the first track `client` was told it published.
fn published_sid(client: &Client) -> String {
    client
        .signals
        .iter()
        .find_map(|m| match m {
            signal_response::Message::TrackPublished(p) => p.track.as_ref().map(|t| t.sid.clone()),
            _ => None,
        })
        .expect("track published")
}

/// The layers of the frames `client` received from the `from`th on (0 = q, 1 = h).
fn layers_since(client: &Client, from: usize) -> Vec<u8> {
    client.video[from..].iter().map(|v| v.0).collect()
}

/// Asks for `quality` of `sid` for `index` (the Python SDK's `set_video_quality`).
fn ask_quality(world: &mut World, index: usize, sid: &str, quality: lk::VideoQuality) {
    track_setting(
        world,
        index,
        lk::UpdateTrackSettings {
            track_sids: vec![sid.to_owned()],
            quality: quality as i32,
            ..Default::default()
        },
    );
}

/// Publishes a 640×360 camera with the simulcast `ladder` given (RID slot, quality
/// announced, size divisor), runs it (the publisher following dynacast) and checks the
/// layer bob receives: `best` unasked, then each quality asked with the layer expected.
fn check_ladder(
    ladder: &[(usize, lk::VideoQuality, u32)],
    best: u8,
    asks: &[(lk::VideoQuality, u8)],
) {
    use super::testing::{Camera, Layer};
    let mut world = World::new(config());
    let alice = world.join("alice");
    let bob = world.join("bob");
    world.exchange();
    let camera = Camera {
        cid: "camera-cid",
        width: 640,
        height: 360,
        simulcast: None,
        channel: false,
    };
    let layers: Vec<Layer> = ladder
        .iter()
        .map(|&(slot, quality, divisor)| Layer {
            rid: ["q", "h", "f"][slot],
            quality,
            divisor,
            bitrate: 0,
        })
        .collect();
    let sent: Vec<usize> = ladder.iter().map(|l| l.0).collect();
    world.publish_layers(alice, camera, &layers);
    let mut frame = 0;
    run_layers(&mut world, alice, &mut frame, Duration::from_secs(2), &sent);
    let sid = published_sid(&world.clients[alice]);
    let video = layers_since(&world.clients[bob], 0);
    assert!(
        video.len() > 10,
        "{ladder:?}: bob received {} frames",
        video.len()
    );
    // (Once the bandwidth estimate has seen what the best layer costs.)
    assert!(
        video[video.len() - 10..].iter().all(|&l| l == best),
        "{ladder:?}: unasked, the best layer: {video:?}"
    );
    for &(quality, expected) in asks {
        let before = world.clients[bob].video.len();
        ask_quality(&mut world, bob, &sid, quality);
        // Long enough for dynacast to pause what nobody wants (2 s) and for the
        // publisher to follow.
        run_layers(&mut world, alice, &mut frame, Duration::from_secs(4), &sent);
        let after = layers_since(&world.clients[bob], before);
        let tail = &after[after.len().saturating_sub(15)..];
        assert!(
            tail.len() == 15 && tail.iter().all(|&l| l == expected),
            "{ladder:?}: asked {quality:?}: {after:?}"
        );
    }
}

#[test]
fn a_two_layer_publisher_serves_its_low_layer_and_its_best() {
    use lk::VideoQuality::{High, Low, Medium};
    // What LiveKit's SDKs publish from 480 to 959 pixels: q and h, announced LOW and
    // MEDIUM, no f. HIGH and MEDIUM both mean h, the best there is.
    check_ladder(
        &[(0, Low, 2), (1, Medium, 1)],
        1,
        &[(Low, 0), (High, 1), (Low, 0), (Medium, 1)],
    );
    // A publisher without q (h and f): LOW gets the lowest layer sent.
    check_ladder(
        &[(1, Medium, 2), (2, High, 1)],
        2,
        &[(Low, 1), (High, 2), (Medium, 1)],
    );
    // One RID only: whatever is asked, that layer.
    check_ladder(&[(0, High, 1)], 0, &[(Low, 0), (High, 0)]);
}

#[test]
fn hostile_track_settings_never_panic_and_media_goes_on() {
    let mut world = World::new(config());
    let alice = world.join("alice");
    let bob = world.join("bob");
    world.exchange();
    world.publish_simulcast(alice);
    let mut frame = 0;
    run_simulcast(&mut world, alice, &mut frame, Duration::from_secs(1));
    let sid = world.clients[alice]
        .signals
        .iter()
        .find_map(|m| match m {
            signal_response::Message::TrackPublished(p) => p.track.as_ref().map(|t| t.sid.clone()),
            _ => None,
        })
        .expect("track published");
    for (width, height, quality) in [
        (u32::MAX, u32::MAX, i32::MAX),
        (1, 0, -1),
        (0, 0, i32::MIN),
        (0, u32::MAX, 3),
    ] {
        for track_sids in [vec![sid.clone()], vec!["TR_nope".into()], vec![]] {
            track_setting(
                &mut world,
                bob,
                lk::UpdateTrackSettings {
                    track_sids,
                    width,
                    height,
                    quality,
                    fps: u32::MAX,
                    priority: u32::MAX,
                    ..Default::default()
                },
            );
        }
    }
    // Back to a sane wish: media flows again.
    track_setting(
        &mut world,
        bob,
        lk::UpdateTrackSettings {
            track_sids: vec![sid],
            quality: lk::VideoQuality::Medium as i32,
            ..Default::default()
        },
    );
    let before = world.clients[bob].video.len();
    run_simulcast(&mut world, alice, &mut frame, Duration::from_secs(2));
    let video = &world.clients[bob].video[before..];
    assert!(video.len() > 10, "media goes on: {} frames", video.len());
    assert_eq!(video.last().map(|v| v.0), Some(1));
}

#[test]
fn a_closed_room_tells_everyone_it_ended_and_stays_closed() {
    let mut world = World::new(config());
    let alice = world.join("alice");
    let bob = world.join("bob");
    world.exchange();
    assert_eq!(world.engine.close_room(world.now, "room"), 2);
    world.exchange();
    for index in [alice, bob] {
        let told = world.clients[index].signals.iter().any(|s| {
            matches!(s, signal_response::Message::Leave(leave)
                if leave.reason == lk::DisconnectReason::RoomDeleted as i32)
        });
        assert!(told, "client {index} was not told the room ended");
    }
    let left = world
        .events
        .iter()
        .filter(|e| matches!(e, EngineEvent::ParticipantLeft { .. }))
        .count();
    assert_eq!(left, 2, "{:?}", world.events);
    assert!(world.events.contains(&EngineEvent::RoomEmpty {
        room: "room".into()
    }));
    assert_eq!(world.engine.participant_count(), 0);
    assert!(matches!(
        world.engine.join(world.now, join_request("carol")),
        Err(super::JoinError::RoomClosed)
    ));
    assert_eq!(world.engine.close_room(world.now, "never-opened"), 0);
}

#[test]
fn closing_more_rooms_than_kept_forgets_only_the_oldest() {
    let mut world = World::new(config());
    for i in 0..10_001 {
        world.engine.close_room(world.now, &format!("closed-{i}"));
    }
    // The set is bounded by forgetting the oldest entry, not by clearing it: every room
    // closed after the first is still refused.
    for i in [1, 2, 5_000, 9_999, 10_000] {
        assert_eq!(
            world.engine.admit(&format!("closed-{i}"), "alice"),
            Err(super::JoinError::RoomClosed),
            "closed-{i}"
        );
    }
    assert_eq!(world.engine.admit("closed-0", "alice"), Ok(None));
}

#[test]
fn a_single_pc_client_receives_on_the_slots_it_offers() {
    let mut world = World::new(config());
    let alice = world.join("alice");
    let carol = world.join_single("carol");
    world.exchange();
    world.publish(alice);
    let mut frame = 0;
    world.run(Duration::from_secs(3), |w| {
        frame += 1;
        if frame % 30 == 0 {
            w.send_frame(alice, frame / 30);
        }
    });
    let signals = &world.clients[carol].signals;
    let join = signals
        .iter()
        .find_map(|m| match m {
            signal_response::Message::Join(join) => Some(join.clone()),
            _ => None,
        })
        .expect("a join response");
    assert!(
        !join.subscriber_primary,
        "a single-PC client negotiates first"
    );
    assert!(
        !signals
            .iter()
            .any(|m| matches!(m, signal_response::Message::Offer(_))),
        "the server never offers to a single-PC client"
    );
    // The first answer leaves the audio slot unused (inactive), then alice's video asks
    // for one video m-line, which the next answer sends on with LiveKit's msid.
    let answers: Vec<&lk::SessionDescription> = signals
        .iter()
        .filter_map(|m| match m {
            signal_response::Message::Answer(a) => Some(a),
            _ => None,
        })
        .collect();
    assert_eq!(answers.len(), 2, "{answers:?}");
    assert!(answers[0].sdp.contains("a=inactive") && !answers[0].sdp.contains("a=sendonly"));
    assert!(answers[0].mid_to_track_id.is_empty());
    assert!(signals.iter().any(|m| matches!(m,
        signal_response::Message::MediaSectionsRequirement(r) if r.num_videos == 1 && r.num_audios == 0)));
    let alice_sid = world
        .engine
        .sid_of(world.clients[alice].key)
        .expect("alice")
        .to_owned();
    let (mid, track) = answers[1]
        .mid_to_track_id
        .iter()
        .next()
        .expect("one mapped mid");
    assert!(track.starts_with("TR_"));
    assert!(
        answers[1]
            .sdp
            .contains(&format!("a=msid:{alice_sid}|{track} {track}")),
        "{}",
        answers[1].sdp
    );
    assert!(answers[1].sdp.contains(&format!("a=mid:{mid}")));
    assert!(
        world.clients[carol].frames_received > 10,
        "carol received {} frames",
        world.clients[carol].frames_received
    );

    // Data reaches carol on the channel she opened herself.
    let chat = lk::DataPacket {
        value: Some(lk::data_packet::Value::ChatMessage(lk::ChatMessage {
            id: "m1".into(),
            message: "une seule connexion".into(),
            timestamp: 1,
            ..Default::default()
        })),
        ..Default::default()
    }
    .encode_to_vec();
    let channel = world.clients[alice].channel.expect("channel");
    if let Some(mut ch) = world.clients[alice].publisher.channel(channel) {
        ch.write(true, &chat).expect("write");
    }
    world.run(Duration::from_millis(500), |_| {});
    assert!(
        world.clients[carol]
            .data_received
            .iter()
            .any(|p| p.participant_identity == "alice"),
        "carol received alice's chat"
    );
}

#[test]
fn offers_carry_a_passive_tcp_candidate_below_the_udp_one() {
    let mut world = World::new(config());
    world.engine.enable_tcp(7881);
    let alice = world.join("alice");
    world.exchange();
    let sdp = world.clients[alice]
        .signals
        .iter()
        .find_map(|m| match m {
            signal_response::Message::Offer(o) => Some(o.sdp.clone()),
            _ => None,
        })
        .expect("a subscriber offer");
    let priority = |proto: &str| -> u32 {
        let line = sdp
            .lines()
            .find(|l| l.starts_with("a=candidate:") && l.contains(&format!(" {proto} ")))
            .unwrap_or_else(|| panic!("no {proto} candidate in {sdp}"));
        line.split_whitespace()
            .nth(3)
            .and_then(|p| p.parse().ok())
            .expect("a priority")
    };
    let tcp_line = sdp
        .lines()
        .find(|l| l.contains(" tcp "))
        .expect("a TCP candidate");
    assert!(tcp_line.contains("10.0.0.1 7881 typ host"), "{tcp_line}");
    assert!(tcp_line.contains("tcptype passive"), "{tcp_line}");
    assert!(priority("tcp") < priority("udp"), "{sdp}");
    assert_eq!(
        world
            .engine
            .tcp_destination_for("10.0.0.9:40000".parse().expect("addr")),
        Some("10.0.0.1:7881".parse().expect("addr"))
    );
}

#[test]
fn a_layer_costs_at_least_the_bit_rate_its_publisher_announced() {
    // f measures about 720 kb/s here but is announced at 3 Mb/s, as an encoder still
    // ramping up would look: on a 1.5 Mb/s link it must not be chosen, h must.
    let mut world = World::new(config());
    let alice = world.join("alice");
    let bob = world.join("bob");
    world.exchange();
    world.bottleneck = Some(Bottleneck {
        destination: world.clients[bob].subscriber_addr,
        bps: 1_500_000,
        free_at: world.now,
        queue: Default::default(),
    });
    world.publish_simulcast_announcing(alice, [100_000, 300_000, 3_000_000]);
    let mut frame = 0;
    run_simulcast(&mut world, alice, &mut frame, Duration::from_secs(10));
    let layers: Vec<u8> = world.clients[bob].video.iter().map(|v| v.0).collect();
    let last_second = &layers[layers.len().saturating_sub(15)..];
    assert!(
        !last_second.is_empty() && last_second.iter().all(|&l| l == 1),
        "bob should get h: {layers:?}"
    );
}

#[test]
fn a_single_pc_slot_whose_track_left_is_retired_not_reused() {
    let mut world = World::new(config());
    let alice = world.join("alice");
    let carol = world.join_single("carol");
    world.exchange();
    world.publish(alice);
    world.run(Duration::from_secs(1), |_| {});
    let answers = |w: &World| -> Vec<lk::SessionDescription> {
        w.clients[carol]
            .signals
            .iter()
            .filter_map(|m| match m {
                signal_response::Message::Answer(a) => Some(a.clone()),
                _ => None,
            })
            .collect()
    };
    let (first_mid, _) = answers(&world)
        .last()
        .and_then(|a| {
            a.mid_to_track_id
                .iter()
                .next()
                .map(|(m, t)| (m.clone(), t.clone()))
        })
        .expect("alice's video on a slot");

    // Alice leaves: carol is asked to offer again, and the slot is answered inactive.
    let alice_key = world.clients[alice].key;
    let now = world.now;
    world.engine.signal(
        now,
        alice_key,
        signal_request::Message::Leave(lk::LeaveRequest::default()),
    );
    // The engine reuses her key for the next participant: her client stops listening.
    world.clients[alice].key = usize::MAX;
    world.run(Duration::from_millis(500), |_| {});
    let last = answers(&world).last().cloned().expect("an answer");
    assert!(
        last.mid_to_track_id.is_empty(),
        "{:?}",
        last.mid_to_track_id
    );
    let section = last
        .sdp
        .split("m=")
        .find(|s| s.contains(&format!("a=mid:{first_mid}\r\n")))
        .expect("the slot is still there");
    assert!(
        section.contains("a=inactive") && !section.contains("msid"),
        "{section}"
    );

    // Bob publishes: the retired slot is not reused, a new video m-line is asked for.
    let bob = world.join("bob");
    world.exchange();
    world.publish(bob);
    let before = world.clients[carol].frames_received;
    let mut frame = 0;
    world.run(Duration::from_secs(3), |w| {
        frame += 1;
        if frame % 30 == 0 {
            w.send_frame(bob, frame / 30);
        }
    });
    let last = answers(&world).last().cloned().expect("an answer");
    let (mid, _) = last
        .mid_to_track_id
        .iter()
        .next()
        .expect("bob's video on a slot");
    assert_ne!(*mid, first_mid, "a retired slot was reused");
    assert!(
        world.clients[carol]
            .signals
            .iter()
            .filter(|m| matches!(m,
            signal_response::Message::MediaSectionsRequirement(r) if r.num_videos == 1))
            .count()
            == 2,
        "one video m-line asked for alice, one for bob"
    );
    assert!(
        world.clients[carol].frames_received > before + 10,
        "carol received {} frames from bob",
        world.clients[carol].frames_received - before
    );
}

/// Writes raw data packets from `from` on its reliable channel, then lets them travel.
fn send_data(world: &mut World, from: usize, packets: &[lk::DataPacket]) {
    let channel = world.clients[from].channel.expect("channel");
    // The data channel opens once DTLS and SCTP are up, a little after publishing.
    for _ in 0..50 {
        if world.clients[from].publisher.channel(channel).is_some() {
            break;
        }
        world.run(Duration::from_millis(100), |_| {});
    }
    for packet in packets {
        let mut ch = world.clients[from]
            .publisher
            .channel(channel)
            .expect("the data channel is open");
        ch.write(true, &packet.encode_to_vec()).expect("write");
    }
    world.run(Duration::from_secs(3), |_| {});
}

fn chat_packet(id: &str, text: &str) -> lk::DataPacket {
    lk::DataPacket {
        value: Some(lk::data_packet::Value::ChatMessage(lk::ChatMessage {
            id: id.into(),
            message: text.into(),
            timestamp: 1,
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn chats_emitted(world: &World) -> Vec<String> {
    world
        .events
        .iter()
        .filter_map(|e| match e {
            EngineEvent::Chat { text, .. } => Some(text.clone()),
            _ => None,
        })
        .collect()
}

fn user_payloads(client: &Client) -> Vec<Vec<u8>> {
    client
        .data_received
        .iter()
        .filter_map(|p| match &p.value {
            Some(lk::data_packet::Value::User(u)) => Some(u.payload.clone()),
            Some(lk::data_packet::Value::ChatMessage(c)) => Some(c.message.clone().into_bytes()),
            _ => None,
        })
        .collect()
}

#[test]
#[allow(deprecated)] // the legacy UserPacket fields are the point
fn private_messages_reach_their_recipients_only_and_are_never_events() {
    let mut world = World::new(config());
    let alice = world.join("alice");
    let bob = world.join("bob");
    let carol = world.join("carol");
    world.exchange();
    world.publish(alice);
    let bob_sid = world
        .engine
        .sid_of(world.clients[bob].key)
        .expect("sid")
        .to_owned();

    let mut to_bob = chat_packet("p1", "secret for bob");
    to_bob.destination_identities = vec!["bob".into()];
    // The legacy chat topic with the destinations in the deprecated UserPacket fields,
    // by identity and by sid: private all the same.
    let legacy = |id: &str, identities: Vec<String>, sids: Vec<String>| lk::DataPacket {
        value: Some(lk::data_packet::Value::User(lk::UserPacket {
            payload: format!(r#"{{"id":"{id}","message":"legacy {id}","timestamp":1}}"#)
                .into_bytes(),
            topic: Some(crate::sfu::data::LEGACY_CHAT_TOPIC.into()),
            destination_identities: identities,
            destination_sids: sids,
            ..Default::default()
        })),
        ..Default::default()
    };
    let public = chat_packet("p4", "hello all");
    send_data(
        &mut world,
        alice,
        &[
            to_bob,
            legacy("p2", vec!["bob".into()], vec![]),
            legacy("p3", vec![], vec![bob_sid]),
            public,
        ],
    );
    let bob_got = user_payloads(&world.clients[bob]);
    let carol_got = user_payloads(&world.clients[carol]);
    for id in ["p2", "p3"] {
        let text = format!("legacy {id}");
        assert!(
            bob_got
                .iter()
                .any(|p| String::from_utf8_lossy(p).contains(&text)),
            "bob gets {text}"
        );
        assert!(
            !carol_got
                .iter()
                .any(|p| String::from_utf8_lossy(p).contains(&text)),
            "carol never gets {text}"
        );
    }
    assert!(bob_got.iter().any(|p| p == b"secret for bob"));
    assert!(!carol_got.iter().any(|p| p == b"secret for bob"));
    assert!(carol_got.iter().any(|p| p == b"hello all"));
    // Only the public message is an event: nothing else is stored, mirrored or published.
    assert_eq!(chats_emitted(&world), vec!["hello all".to_owned()]);
}

#[test]
fn floods_of_chat_and_oversize_streams_are_cut_off() {
    use lk::data_stream;
    let mut world = World::new(config());
    let alice = world.join("alice");
    let bob = world.join("bob");
    world.exchange();
    world.publish(alice);

    // 50 chat messages at once: the burst passes, the rest is dropped.
    let flood: Vec<_> = (0..50)
        .map(|i| chat_packet(&format!("c{i}"), &format!("spam {i}")))
        .collect();
    send_data(&mut world, alice, &flood);
    let emitted = chats_emitted(&world).len();
    assert_eq!(
        emitted,
        crate::sfu::engine::CHAT_BURST as usize,
        "chat burst"
    );
    assert!(user_payloads(&world.clients[bob]).len() <= emitted + 1);

    // A stream growing past the relay limit: its chunks stop, its trailer never comes.
    let header = lk::DataPacket {
        value: Some(lk::data_packet::Value::StreamHeader(data_stream::Header {
            stream_id: "big".into(),
            topic: "files".into(),
            ..Default::default()
        })),
        ..Default::default()
    };
    let chunk = |i: u64| lk::DataPacket {
        value: Some(lk::data_packet::Value::StreamChunk(data_stream::Chunk {
            stream_id: "big".into(),
            chunk_index: i,
            content: vec![b'x'; 15_000],
            ..Default::default()
        })),
        ..Default::default()
    };
    let trailer = lk::DataPacket {
        value: Some(lk::data_packet::Value::StreamTrailer(
            data_stream::Trailer {
                stream_id: "big".into(),
                ..Default::default()
            },
        )),
        ..Default::default()
    };
    let mut packets = vec![header];
    packets.extend((0..8).map(chunk));
    packets.push(trailer);
    send_data(&mut world, alice, &packets);
    let chunks = world.clients[bob]
        .data_received
        .iter()
        .filter(|p| matches!(&p.value, Some(lk::data_packet::Value::StreamChunk(c)) if c.stream_id == "big"))
        .count();
    assert_eq!(chunks, crate::sfu::data::MAX_RELAYED_STREAM_BYTES / 15_000);
    assert!(
        !world.clients[bob]
            .data_received
            .iter()
            .any(|p| matches!(&p.value, Some(lk::data_packet::Value::StreamTrailer(t)) if t.stream_id == "big"))
    );
}

#[test]
fn clients_change_their_name_and_attributes_only_within_the_rules() {
    let mut world = World::new(config());
    let alice = world.join("alice");
    let bob = world.join("bob");
    world.exchange();
    let update = |name: &str, metadata: &str, attributes: &[(&str, &str)], id: u32| {
        signal_request::Message::UpdateMetadata(lk::UpdateParticipantMetadata {
            name: name.into(),
            metadata: metadata.into(),
            attributes: attributes
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            request_id: id,
        })
    };
    let long = "x".repeat(2000);
    let cases: [(signal_request::Message, lk::request_response::Reason); 5] = [
        (
            update("Ministre\u{202e}", "", &[], 1),
            lk::request_response::Reason::InvalidName,
        ),
        (
            update("", "{\"verified\":true}", &[], 2),
            lk::request_response::Reason::NotAllowed,
        ),
        (
            update("", "", &[("tchap.matrix_user_id", "@ministre:gouv.fr")], 3),
            lk::request_response::Reason::NotAllowed,
        ),
        (
            update("", "", &[("a", &long)], 4),
            lk::request_response::Reason::LimitExceeded,
        ),
        (
            update(
                "",
                "",
                &[
                    ("a", "1"),
                    ("b", "1"),
                    ("c", "1"),
                    ("d", "1"),
                    ("e", "1"),
                    ("f", "1"),
                    ("g", "1"),
                    ("h", "1"),
                    ("i", "1"),
                    ("j", "1"),
                    ("k", "1"),
                    ("l", "1"),
                    ("m", "1"),
                    ("n", "1"),
                    ("o", "1"),
                    ("p", "1"),
                    ("q", "1"),
                ],
                5,
            ),
            lk::request_response::Reason::LimitExceeded,
        ),
    ];
    let key = world.clients[alice].key;
    for (message, _) in &cases {
        world.engine.signal(world.now, key, message.clone());
    }
    world
        .engine
        .signal(world.now, key, update("Alice B.", "", &[("hand", "up")], 6));
    world.run(Duration::from_millis(200), |_| {});
    let refusals: Vec<(u32, i32)> = world.clients[alice]
        .signals
        .iter()
        .filter_map(|m| match m {
            signal_response::Message::RequestResponse(r) => Some((r.request_id, r.reason)),
            _ => None,
        })
        .collect();
    let expected: Vec<(u32, i32)> = cases
        .iter()
        .enumerate()
        .map(|(i, (_, reason))| (i as u32 + 1, *reason as i32))
        .collect();
    assert_eq!(refusals, expected);
    // Bob sees the allowed change, and never a refused one.
    let seen: Vec<lk::ParticipantInfo> = world.clients[bob]
        .signals
        .iter()
        .filter_map(|m| match m {
            signal_response::Message::Update(u) => Some(u.participants.clone()),
            _ => None,
        })
        .flatten()
        .filter(|p| p.identity == "alice")
        .collect();
    let last = seen.last().expect("updates about alice");
    assert_eq!(last.name, "Alice B.");
    assert_eq!(last.metadata, "");
    assert_eq!(last.attributes.len(), 1);
    assert!(seen.iter().all(
        |p| !p.name.contains('\u{202e}') && !p.attributes.contains_key("tchap.matrix_user_id")
    ));

    // Without the grant, nothing changes; past the rate, nothing either.
    let mut request = join_request("carol");
    request.can_update_own_metadata = false;
    let carol = world.engine.join(world.now, request).expect("join");
    world
        .engine
        .signal(world.now, carol, update("Carole", "", &[], 7));
    while world.engine.poll_output().is_some() {}
    for i in 0..20 {
        world.engine.signal(
            world.now,
            key,
            update(
                "",
                "",
                &[("hand", if i % 2 == 0 { "" } else { "up" })],
                100 + i,
            ),
        );
    }
    let limited = std::iter::from_fn(|| world.engine.poll_output())
        .filter(|o| matches!(o, Output::Signal { message, .. } if matches!(**message, signal_response::Message::RequestResponse(ref r) if r.reason == lk::request_response::Reason::LimitExceeded as i32)))
        .count();
    assert!(limited >= 10, "{limited} updates refused for the rate");
}

#[test]
fn sources_the_token_does_not_grant_and_resumes_in_another_room_are_refused() {
    let mut world = World::new(config());
    let mut request = join_request("cam-only");
    request.can_publish_sources = vec![lk::TrackSource::Camera as i32];
    let key = world.engine.join(world.now, request).expect("join");
    let add = |cid: &str, source: lk::TrackSource| {
        signal_request::Message::AddTrack(lk::AddTrackRequest {
            cid: cid.into(),
            r#type: lk::TrackType::Video as i32,
            source: source as i32,
            ..Default::default()
        })
    };
    world
        .engine
        .signal(world.now, key, add("screen", lk::TrackSource::ScreenShare));
    world
        .engine
        .signal(world.now, key, add("cam", lk::TrackSource::Camera));
    let published: Vec<String> = std::iter::from_fn(|| world.engine.poll_output())
        .filter_map(|o| match o {
            Output::Signal { message, .. } => match *message {
                signal_response::Message::TrackPublished(p) => Some(p.cid),
                _ => None,
            },
            _ => None,
        })
        .collect();
    assert_eq!(published, vec!["cam".to_owned()]);

    let sid = world.engine.sid_of(key).expect("sid").to_owned();
    assert_eq!(
        world
            .engine
            .resume(world.now, "another-room", &sid, "cam-only"),
        Err(JoinError::UnknownSession)
    );
    assert_eq!(
        world.engine.resume(world.now, "room", &sid, "cam-only"),
        Ok(key)
    );
}

// ----- pacing ------------------------------------------------------------------------

/// Counts the RTP packets, and their bytes, that the engine sends subscriber connections
/// (the pacing tests have one subscriber).
#[derive(Default)]
struct RtpSent {
    packets: usize,
    bytes: usize,
}

/// RTP, not RTCP, DTLS or STUN (RFC 7983 demultiplexing, RFC 5761 for RTCP).
fn is_rtp(packet: &[u8]) -> bool {
    packet.len() >= 12 && (128..=191).contains(&packet[0]) && !(192..=223).contains(&packet[1])
}

impl super::testing::Probe for RtpSent {
    fn transmit(&mut self, _destination: SocketAddr, subscriber: bool, contents: &[u8]) {
        if subscriber && is_rtp(contents) {
            self.packets += 1;
            self.bytes += contents.len();
        }
    }
}

/// Alice publishes a 320×180 camera and bob receives it; returns them and the next
/// frame number of alice's camera.
fn paced_world() -> (World<RtpSent>, usize, usize, u32) {
    let mut world = World::with_probe(config(), RtpSent::default());
    let alice = world.join("alice");
    let bob = world.join("bob");
    world.exchange();
    world.publish(alice);
    let mut frame = 0;
    let mut step = 0u32;
    let connected = world.run_until(
        Duration::from_secs(5),
        |w| {
            step += 1;
            if step.is_multiple_of(33) {
                frame += 1;
                w.send_frame(alice, frame);
            }
        },
        |w| w.clients[bob].frames_received >= 3,
    );
    assert!(connected, "bob receives alice's camera");
    (world, alice, bob, frame + 1)
}

/// Sets the bandwidth estimate of what `index` receives, as if TWCC had just measured it.
fn set_estimate<P: super::testing::Probe>(world: &mut World<P>, index: usize, bps: u64) {
    let key = world.clients[index].key;
    world
        .engine
        .rtc_mut(key, super::Pc::Subscriber)
        .expect("the subscriber connection")
        .bwe()
        .reset(str0m::bwe::Bitrate::bps(bps));
}

/// Writes a keyframe of `bytes` on alice's camera and runs until bob has all of it:
/// returns how many RTP packets the engine sent bob at each engine tick (step) until
/// then (the first is the harness's own: alice's connection sends what it was given at
/// its next timeout).
fn packets_per_tick(
    world: &mut World<RtpSent>,
    alice: usize,
    bob: usize,
    frame: u32,
    bytes: usize,
) -> Vec<usize> {
    let before = world.clients[bob].frames_received;
    let data = super::testing::vp8_frame(true, 320, 180, bytes, (frame % 251) as u8);
    let time = str0m::media::MediaTime::from_90khz(u64::from(frame) * 6000);
    assert!(
        world.write_video(alice, None, time, data),
        "alice's camera sends"
    );
    let mut ticks = Vec::new();
    while world.clients[bob].frames_received == before {
        assert!(
            ticks.len() < 2000,
            "bob never received the {bytes}-byte frame"
        );
        let sent = world.probe.packets;
        world.step();
        ticks.push(world.probe.packets - sent);
    }
    ticks
}

#[test]
fn the_pacer_runs_its_burst_in_one_engine_tick() {
    // Bob's estimate is what TWCC measured (about 1.7 Mb/s): the pacer lets out about
    // 40 ms of 1.1 times that at once (about 9 kB), then waits for it to be paid for.
    // When the engine fed each connection the tick's `now`, str0m let one packet out per
    // tick instead, however large its budget.
    let (mut world, alice, bob, frame) = paced_world();
    assert!(
        world
            .engine
            .bandwidth_estimate(world.clients[bob].key)
            .is_some_and(|e| e > 1_200_000),
        "an estimate whose burst holds 6 kB"
    );
    // A frame within one burst (6 packets) leaves whole at one tick.
    let ticks = packets_per_tick(&mut world, alice, bob, frame, 6_000);
    let packets: usize = ticks.iter().sum();
    assert!(packets >= 5, "{ticks:?}");
    assert_eq!(ticks.iter().filter(|&&n| n > 0).count(), 1, "{ticks:?}");

    // A frame of about 40 packets leaves in whole bursts, not a packet per tick.
    let ticks = packets_per_tick(&mut world, alice, bob, frame + 1, 45_000);
    let packets: usize = ticks.iter().sum();
    let sending = ticks.iter().filter(|&&n| n > 0).count();
    assert!(packets >= 38, "{ticks:?}");
    assert!(
        ticks.iter().max() >= Some(&8) && sending * 4 <= packets,
        "{packets} packets in {sending} ticks: {ticks:?}"
    );
}

#[test]
fn below_the_estimate_the_pacer_still_holds_the_rate() {
    let (mut world, alice, bob, frame) = paced_world();
    let key = world.clients[bob].key;
    // Bob's link carries 2 Mb/s, a little more than his estimate (as TWCC measured it,
    // about 1.7 Mb/s), so that probing cannot raise the estimate far. 400 kB of
    // keyframes at once: the half second measured holds far more than the pacer may let
    // out, and str0m's own rule (what waits must leave within 2 s, faster than the
    // pacing rate if need be) stays out of the way.
    world.bottleneck = Some(Bottleneck {
        destination: world.clients[bob].subscriber_addr,
        bps: 2_000_000,
        free_at: world.now,
        queue: Default::default(),
    });
    let mut highest = world
        .engine
        .bandwidth_estimate(key)
        .expect("an estimate by now");
    let total = 400_000;
    for i in 0..4 {
        let data = super::testing::vp8_frame(true, 320, 180, total / 4, i as u8);
        let time = str0m::media::MediaTime::from_90khz(u64::from(frame + i) * 6000);
        assert!(world.write_video(alice, None, time, data));
    }
    let before = world.probe.bytes;
    let mut ticks = 0;
    while world.probe.bytes == before {
        world.step();
        ticks += 1;
        assert!(ticks < 100, "nothing sent to bob");
    }
    // Half a second from the tick that sent the first packet.
    let window = Duration::from_millis(500);
    world.run(window - world.tick, |w| {
        if let Some(e) = w.engine.bandwidth_estimate(key) {
            highest = highest.max(e);
        }
    });
    let sent = (world.probe.bytes - before) as u64;
    // A leaky bucket at 1.1 times the estimate, over the window, plus its largest burst
    // (63 kB) and 5 % for what str0m does not count (SRTP's tag). Probing runs on top:
    // the engine asks str0m for the bit rate bob's video now seems to cost, and str0m
    // probes for it with the queued media at up to twice the estimate. Hence twice.
    let rate = highest * 2;
    let allowed = (rate * window.as_millis() as u64 / 1000 / 8 + 63_000) * 105 / 100;
    assert!(
        sent <= allowed,
        "{sent} bytes in {window:?} at an estimate of {highest} b/s (allowed {allowed})"
    );
    assert!(sent < total as u64, "paced, not sent at once: {sent} bytes");
}

#[test]
fn probing_still_finds_bandwidth_above_a_low_estimate() {
    let (mut world, alice, bob, mut frame) = paced_world();
    let key = world.clients[bob].key;
    // 300 kb/s estimated while the engine wants at least 1.875 Mb/s: str0m probes (with
    // padding, since the camera sends about 100 kb/s) and the estimate climbs, which only
    // probes can show on a link this idle.
    set_estimate(&mut world, bob, 300_000);
    let mut step = 0u32;
    let rose = world.run_until(
        Duration::from_secs(10),
        |w| {
            step += 1;
            if step.is_multiple_of(33) {
                frame += 1;
                w.send_frame(alice, frame);
            }
        },
        |w| {
            w.engine
                .bandwidth_estimate(key)
                .is_some_and(|e| e > 1_000_000)
        },
    );
    assert!(
        rose,
        "the estimate stayed at {:?} b/s",
        world.engine.bandwidth_estimate(key)
    );
}

/// The engine's pacer loop ([`super::engine`]'s `poll_peer`) relies on what str0m 0.25
/// says after a paced packet: "time, please", for one microsecond later. `Reason` is not
/// str0m's stable API; if an upgrade changes this, the loop stops draining bursts (the
/// pacing tests above fail too, less plainly) and must be revisited.
#[test]
fn str0m_asks_for_an_immediate_timeout_after_a_paced_packet() {
    use str0m::{Input, Output as RtcOutput, PacerReason, Reason};
    let (mut world, alice, bob, frame) = paced_world();
    let key = world.clients[bob].key;
    // The frame reaches the engine and waits in bob's subscriber connection.
    let data = super::testing::vp8_frame(true, 320, 180, 20_000, 1);
    let time = str0m::media::MediaTime::from_90khz(u64::from(frame) * 6000);
    assert!(world.write_video(alice, None, time, data));
    world.step();
    world.exchange();
    let now = world.now;
    let rtc = world
        .engine
        .rtc_mut(key, super::Pc::Subscriber)
        .expect("bob's subscriber connection");
    rtc.handle_input(Input::Timeout(now)).expect("timeout");
    let mut sent = 0;
    let timeout = loop {
        match rtc.poll_output().expect("output") {
            RtcOutput::Transmit(t) => sent += usize::from(is_rtp(&t.contents)),
            RtcOutput::Event(_) => {}
            RtcOutput::Timeout(t) => break t,
        }
    };
    assert_eq!(sent, 1, "one packet per timeout (str0m's pacer gate)");
    assert_eq!(
        rtc.last_timeout_reason(),
        Reason::Pacer(PacerReason::Immediate)
    );
    assert_eq!(timeout, now + Duration::from_micros(1));
}
