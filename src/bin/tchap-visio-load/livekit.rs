//! A participant speaking LiveKit's signalling (`/rtc`, dual peer connections, protobuf
//! frames over WebSocket) to tchap-visio's SFU, as livekit-client does: it announces its
//! tracks (`AddTrack`) and offers them on its publisher connection, answers the server's
//! offers on its subscriber connection, and asks for one simulcast quality of every
//! video track it is subscribed to (`UpdateTrackSettings`).

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use livekit_protocol as lk;
use livekit_protocol::{signal_request, signal_response};
use prost::Message as _;
use serde::Serialize;
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::media::{Direction, MediaKind, Simulcast, SimulcastLayer};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::media::LAYERS;
use crate::peer::Peer;
use crate::{Role, now_ms};

/// What every LiveKit participant needs.
#[derive(Clone)]
pub struct Config {
    /// `ws://host:port` (the SDKs' URL; `/rtc` is appended).
    pub url: String,
    pub key: String,
    pub secret: String,
    pub room: String,
    /// The quality asked for every video track subscribed to.
    pub quality: lk::VideoQuality,
    /// Publishers send only the layers the server says someone watches
    /// (`SubscribedQualityUpdate`), as LiveKit's SDKs do with dynacast on.
    pub dynacast: bool,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    name: &'a str,
    nbf: i64,
    exp: i64,
    video: Grant<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Grant<'a> {
    room_join: bool,
    room: &'a str,
    can_publish: bool,
    can_subscribe: bool,
}

/// A LiveKit access token (HS256, 10 minutes) for `identity` in the room.
pub fn token(config: &Config, identity: &str, role: &Role) -> anyhow::Result<String> {
    let now = now_ms() / 1000;
    let claims = Claims {
        iss: &config.key,
        sub: identity,
        name: identity,
        nbf: now - 5,
        exp: now + 600,
        video: Grant {
            room_join: true,
            room: &config.room,
            can_publish: role.video || role.audio,
            can_subscribe: role.subscribe,
        },
    };
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(config.secret.as_bytes()),
    )?)
}

fn frame(message: signal_request::Message) -> Message {
    let request = lk::SignalRequest {
        message: Some(message),
    };
    Message::Binary(request.encode_to_vec().into())
}

fn description(kind: &str, sdp: String, id: u32) -> lk::SessionDescription {
    lk::SessionDescription {
        r#type: kind.into(),
        sdp,
        id,
        ..Default::default()
    }
}

/// Clients bind here: the server's candidates in the bench are on loopback.
const LOOPBACK: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

const VIDEO_CID: &str = "load-camera";
const AUDIO_CID: &str = "load-microphone";

/// Joins the room as `identity` and plays `role` until `stop`: returns the publisher and
/// subscriber connections (the latter counts what arrives) once joined; signalling goes
/// on in a task.
pub async fn join(
    config: &Config,
    identity: &str,
    role: Role,
    stop: CancellationToken,
) -> anyhow::Result<(Option<Peer>, Peer)> {
    let token = token(config, identity, &role)?;
    let url = format!(
        "{}/rtc?access_token={token}&auto_subscribe={}&protocol=16&sdk=rust",
        config.url.trim_end_matches('/'),
        u8::from(role.subscribe)
    );
    let (ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .with_context(|| format!("{identity}: the signalling WebSocket"))?;
    let (mut tx, mut rx) = ws.split();
    let subscriber = Peer::start(LOOPBACK, stop.clone()).await?;
    let mut publisher = None;
    let mut pending: Option<SdpPendingOffer> = None;
    let (mut video_mid, mut audio_mid) = (None, None);
    if role.video || role.audio {
        let peer = Peer::start(LOOPBACK, stop.clone()).await?;
        if role.video {
            let layers = LAYERS
                .iter()
                .zip([
                    lk::VideoQuality::Low,
                    lk::VideoQuality::Medium,
                    lk::VideoQuality::High,
                ])
                .map(|(l, quality)| lk::VideoLayer {
                    quality: quality as i32,
                    width: u32::from(l.width),
                    height: u32::from(l.height),
                    bitrate: l.bitrate,
                    ..Default::default()
                })
                .collect();
            tx.send(frame(signal_request::Message::AddTrack(
                lk::AddTrackRequest {
                    cid: VIDEO_CID.into(),
                    name: "camera".into(),
                    r#type: lk::TrackType::Video as i32,
                    source: lk::TrackSource::Camera as i32,
                    width: 1280,
                    height: 720,
                    layers,
                    ..Default::default()
                },
            )))
            .await?;
        }
        if role.audio {
            tx.send(frame(signal_request::Message::AddTrack(
                lk::AddTrackRequest {
                    cid: AUDIO_CID.into(),
                    name: "microphone".into(),
                    r#type: lk::TrackType::Audio as i32,
                    source: lk::TrackSource::Microphone as i32,
                    ..Default::default()
                },
            )))
            .await?;
        }
        let offer = peer.with(|st| {
            let mut api = st.rtc.sdp_api();
            if role.video {
                // q, h, f: livekit-client's order.
                let mut simulcast = Simulcast::new();
                for layer in &LAYERS {
                    simulcast.add_send_layer(SimulcastLayer::new(layer.rid));
                }
                video_mid = Some(api.add_media(
                    MediaKind::Video,
                    Direction::SendOnly,
                    Some("load-stream".into()),
                    Some(VIDEO_CID.into()),
                    Some(simulcast),
                ));
            }
            if role.audio {
                audio_mid = Some(api.add_media(
                    MediaKind::Audio,
                    Direction::SendOnly,
                    Some("load-stream".into()),
                    Some(AUDIO_CID.into()),
                    None,
                ));
            }
            api.apply()
        });
        let (offer, p) = offer.context("an offer with the tracks")?;
        pending = Some(p);
        tx.send(frame(signal_request::Message::Offer(description(
            "offer",
            offer.to_sdp_string(),
            1,
        ))))
        .await?;
        publisher = Some(peer);
    }

    let quality = config.quality;
    let dynacast = config.dynacast;
    let identity = identity.to_owned();
    let sub = subscriber.clone();
    let publ = publisher.clone();
    tokio::spawn(async move {
        let mut own_sid = String::new();
        let mut videos: HashSet<String> = HashSet::new();
        let mut ping = tokio::time::interval(Duration::from_secs(5));
        let result: anyhow::Result<()> = async {
            loop {
                let message = tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = ping.tick() => {
                        tx.send(frame(signal_request::Message::Ping(now_ms()))).await?;
                        continue;
                    }
                    message = rx.next() => message,
                };
                let bytes = match message {
                    Some(Ok(Message::Binary(bytes))) => bytes,
                    Some(Ok(Message::Close(_))) | None => bail!("the server closed the signalling"),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(e.into()),
                };
                let Ok(response) = lk::SignalResponse::decode(bytes) else {
                    continue;
                };
                let Some(message) = response.message else {
                    continue;
                };
                let mut new_videos = Vec::new();
                let mut learn = |participants: &[lk::ParticipantInfo], own: &str| {
                    for p in participants.iter().filter(|p| p.sid != own) {
                        for t in &p.tracks {
                            if t.r#type == lk::TrackType::Video as i32
                                && videos.insert(t.sid.clone())
                            {
                                new_videos.push(t.sid.clone());
                            }
                        }
                    }
                };
                match message {
                    signal_response::Message::Join(join) => {
                        own_sid = join.participant.map(|p| p.sid).unwrap_or_default();
                        learn(&join.other_participants, &own_sid);
                    }
                    signal_response::Message::Update(update) => {
                        learn(&update.participants, &own_sid);
                    }
                    signal_response::Message::Offer(offer) => {
                        let answer = sub.with(|st| {
                            let offer = SdpOffer::from_sdp_string(&offer.sdp)?;
                            st.rtc.sdp_api().accept_offer(offer)
                        });
                        let answer = answer.context("answering the subscriber offer")?;
                        tx.send(frame(signal_request::Message::Answer(description(
                            "answer",
                            answer.to_sdp_string(),
                            offer.id,
                        ))))
                        .await?;
                        // A track's wish only holds once it is subscribed: say it again.
                        new_videos.extend(videos.iter().cloned());
                    }
                    signal_response::Message::Answer(answer) => {
                        let (Some(peer), Some(p)) = (&publ, pending.take()) else {
                            continue;
                        };
                        let answer = SdpAnswer::from_sdp_string(&answer.sdp)?;
                        peer.with(|st| {
                            st.accept_publisher_answer(p, answer, video_mid, audio_mid, role.source)
                        })
                        .context("accepting the publisher answer")?;
                    }
                    signal_response::Message::Trickle(trickle) => {
                        add_trickle(&sub, publ.as_ref(), &trickle);
                    }
                    signal_response::Message::SubscribedQualityUpdate(update) if dynacast => {
                        if let Some(peer) = &publ {
                            peer.with(|st| {
                                if let Some(video) = &mut st.video {
                                    for q in subscribed_qualities(&update) {
                                        video.set_enabled(q.quality as usize, q.enabled);
                                    }
                                }
                            });
                        }
                    }
                    signal_response::Message::Leave(_) => bail!("the server asked to leave"),
                    _ => {}
                }
                if !new_videos.is_empty() {
                    tx.send(frame(signal_request::Message::TrackSetting(
                        lk::UpdateTrackSettings {
                            track_sids: new_videos,
                            disabled: false,
                            quality: quality as i32,
                            ..Default::default()
                        },
                    )))
                    .await?;
                }
            }
            let _ = tx
                .send(frame(signal_request::Message::Leave(
                    lk::LeaveRequest::default(),
                )))
                .await;
            let _ = tx.close().await;
            Ok(())
        }
        .await;
        if let Err(e) = result
            && !stop.is_cancelled()
        {
            eprintln!("load: {identity}: {e:#}");
        }
    });
    Ok((publisher, subscriber))
}

/// The layers a `SubscribedQualityUpdate` asks for: per codec (VP8, the only one sent),
/// else the deprecated codec-less list older servers fill.
#[allow(deprecated)]
fn subscribed_qualities(update: &lk::SubscribedQualityUpdate) -> &[lk::SubscribedQuality] {
    update
        .subscribed_codecs
        .first()
        .map(|c| c.qualities.as_slice())
        .unwrap_or(&update.subscribed_qualities)
}

fn add_trickle(subscriber: &Peer, publisher: Option<&Peer>, trickle: &lk::TrickleRequest) {
    #[derive(serde::Deserialize)]
    struct Init {
        candidate: String,
    }
    let Ok(init) = serde_json::from_str::<Init>(&trickle.candidate_init) else {
        return;
    };
    let line = init.candidate.strip_prefix("a=").unwrap_or(&init.candidate);
    let Ok(candidate) = str0m::Candidate::from_sdp_string(line) else {
        return;
    };
    let peer = if trickle.target == lk::SignalTarget::Subscriber as i32 {
        Some(subscriber)
    } else {
        publisher
    };
    if let Some(peer) = peer {
        peer.with(|st| st.rtc.add_remote_candidate(candidate));
    }
}
