//! Janus's HTTP API (`/janus`) and its VideoRoom plugin, for the same load on Janus: one
//! Janus session for the whole run, long-polled for events; a handle per publisher
//! (`joinandconfigure` with an offer: simulcast VP8 and Opus) and per subscriber (`join`
//! as `subscriber` to every feed in one multistream connection, answer Janus's offer with
//! `start`, then `configure` each video stream's substream).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use serde_json::{Value, json};
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::media::{Direction, MediaKind, Simulcast, SimulcastLayer};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::Role;
use crate::media::LAYERS;
use crate::peer::Peer;

/// A Janus session and the task that long-polls its events.
pub struct Janus {
    http: reqwest::Client,
    /// `http://host:port/janus/<session>`.
    session_url: String,
    next: AtomicU64,
    /// The address clients bind to: Janus gathers no loopback candidates, so this
    /// machine's primary address (traffic to it never leaves the machine either).
    pub ip: IpAddr,
    waiters: Mutex<HashMap<String, oneshot::Sender<Value>>>,
}

impl Janus {
    /// Creates a session at `base` (`http://127.0.0.1:8088/janus`) and polls its events
    /// until `stop`.
    pub async fn connect(base: &str, stop: CancellationToken) -> anyhow::Result<Arc<Janus>> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            .build()?;
        let base = base.trim_end_matches('/');
        let created: Value = http
            .post(base)
            .json(&json!({"janus": "create", "transaction": "create"}))
            .send()
            .await
            .with_context(|| format!("Janus at {base}"))?
            .json()
            .await?;
        let session = created["data"]["id"]
            .as_u64()
            .ok_or_else(|| anyhow!("Janus did not create a session: {created}"))?;
        let janus = Arc::new(Janus {
            http,
            session_url: format!("{base}/{session}"),
            next: AtomicU64::new(1),
            ip: crate::primary_ipv4().unwrap_or(IpAddr::from([127, 0, 0, 1])),
            waiters: Mutex::new(HashMap::new()),
        });
        tokio::spawn(poll(janus.clone(), stop));
        Ok(janus)
    }

    fn transaction(&self) -> String {
        format!("t{}", self.next.fetch_add(1, Ordering::Relaxed))
    }

    /// Posts `body` (with a fresh transaction) to the session or a handle; a
    /// synchronous answer is returned as is, an `ack` waits for the event of the same
    /// transaction.
    async fn call(&self, handle: Option<u64>, mut body: Value) -> anyhow::Result<Value> {
        let transaction = self.transaction();
        body["transaction"] = json!(transaction);
        let (tx, rx) = oneshot::channel();
        self.waiters
            .lock()
            .expect("never poisoned")
            .insert(transaction.clone(), tx);
        let url = match handle {
            Some(h) => format!("{}/{h}", self.session_url),
            None => self.session_url.clone(),
        };
        let answer: Value = self
            .http
            .post(&url)
            .json(&body)
            .send()
            .await?
            .json()
            .await?;
        // Plugin messages are acknowledged, then answered by an event; trickles are done
        // once acknowledged.
        let wait = body["janus"] == "message";
        let answer = match answer["janus"].as_str() {
            Some("ack") if wait => tokio::time::timeout(Duration::from_secs(30), rx)
                .await
                .map_err(|_| anyhow!("no event from Janus for {}", body["body"]))??,
            _ => {
                self.waiters
                    .lock()
                    .expect("never poisoned")
                    .remove(&transaction);
                answer
            }
        };
        if answer["janus"] == "error" {
            bail!("Janus: {}", answer["error"]);
        }
        if let Some(code) = answer["plugindata"]["data"]["error_code"].as_i64() {
            bail!(
                "VideoRoom error {code}: {}",
                answer["plugindata"]["data"]["error"]
            );
        }
        Ok(answer)
    }

    pub async fn attach(&self) -> anyhow::Result<u64> {
        let answer = self
            .call(
                None,
                json!({"janus": "attach", "plugin": "janus.plugin.videoroom"}),
            )
            .await?;
        answer["data"]["id"]
            .as_u64()
            .ok_or_else(|| anyhow!("attach: {answer}"))
    }

    /// A VideoRoom request on `handle` (with a JSEP, if any).
    pub async fn message(
        &self,
        handle: u64,
        body: Value,
        jsep: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut message = json!({"janus": "message", "body": body});
        if let Some(jsep) = jsep {
            message["jsep"] = jsep;
        }
        self.call(Some(handle), message).await
    }

    /// Tells Janus the client's candidates are all in its description.
    async fn candidates_done(&self, handle: u64) -> anyhow::Result<()> {
        self.call(
            Some(handle),
            json!({"janus": "trickle", "candidate": {"completed": true}}),
        )
        .await?;
        Ok(())
    }

    /// Creates room `room` for `publishers` publishers: VP8 and Opus, no bit rate cap.
    pub async fn create_room(&self, room: u64, publishers: usize) -> anyhow::Result<()> {
        let handle = self.attach().await?;
        self.message(
            handle,
            json!({
                "request": "create",
                "room": room,
                "publishers": publishers,
                "bitrate": 0,
                "fir_freq": 0,
                "audiocodec": "opus",
                "videocodec": "vp8",
                "notify_joining": false,
                "permanent": false,
            }),
            None,
        )
        .await?;
        Ok(())
    }

    /// Publishers in `room` (their feed ids).
    pub async fn publishers(&self, room: u64) -> anyhow::Result<Vec<u64>> {
        let handle = self.attach().await?;
        let answer = self
            .message(
                handle,
                json!({"request": "listparticipants", "room": room}),
                None,
            )
            .await?;
        Ok(answer["plugindata"]["data"]["participants"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .filter(|p| p["publisher"] == true)
                    .filter_map(|p| p["id"].as_u64())
                    .collect()
            })
            .unwrap_or_default())
    }
}

/// Long-polls the session's events and hands each to the request of its transaction.
async fn poll(janus: Arc<Janus>, stop: CancellationToken) {
    loop {
        let request = janus
            .http
            .get(format!("{}?maxev=50", janus.session_url))
            .send();
        let events = tokio::select! {
            _ = stop.cancelled() => return,
            r = request => r,
        };
        let events: Value = match events {
            Ok(r) => match r.json().await {
                Ok(v) => v,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            Err(e) => {
                if stop.is_cancelled() {
                    return;
                }
                eprintln!("load: Janus long poll: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let events = match events {
            Value::Array(events) => events,
            one => vec![one],
        };
        for event in events {
            let Some(transaction) = event["transaction"].as_str() else {
                continue;
            };
            let waiter = janus
                .waiters
                .lock()
                .expect("never poisoned")
                .remove(transaction);
            if let Some(waiter) = waiter {
                let _ = waiter.send(event);
            }
        }
    }
}

/// A publisher: joins `room` and publishes simulcast VP8 (rids f, h, q: Janus reads
/// them high to low) and Opus; returns the connection and its feed id.
pub async fn publish(
    janus: &Janus,
    room: u64,
    name: &str,
    role: Role,
    stop: CancellationToken,
) -> anyhow::Result<(Peer, u64)> {
    let handle = janus.attach().await?;
    let peer = Peer::start(janus.ip, stop).await?;
    let (offer, pending, video_mid, audio_mid) = peer.with(|st| {
        let mut api = st.rtc.sdp_api();
        let video_mid = role.video.then(|| {
            let mut simulcast = Simulcast::new();
            for layer in LAYERS.iter().rev() {
                simulcast.add_send_layer(SimulcastLayer::new(layer.rid));
            }
            api.add_media(
                MediaKind::Video,
                Direction::SendOnly,
                Some("load-stream".into()),
                Some("load-camera".into()),
                Some(simulcast),
            )
        });
        let audio_mid = role.audio.then(|| {
            api.add_media(
                MediaKind::Audio,
                Direction::SendOnly,
                Some("load-stream".into()),
                Some("load-microphone".into()),
                None,
            )
        });
        let (offer, pending) = api.apply().expect("media to offer");
        (offer, pending, video_mid, audio_mid)
    });
    let answer = janus
        .message(
            handle,
            json!({"request": "joinandconfigure", "room": room, "ptype": "publisher",
                   "display": name, "audio": role.audio, "video": role.video}),
            Some(json!({"type": "offer", "sdp": offer.to_sdp_string(), "rid_order": "hml"})),
        )
        .await
        .with_context(|| format!("{name}: joinandconfigure"))?;
    let feed = answer["plugindata"]["data"]["id"]
        .as_u64()
        .ok_or_else(|| anyhow!("{name}: no feed id in {answer}"))?;
    let sdp = answer["jsep"]["sdp"]
        .as_str()
        .ok_or_else(|| anyhow!("{name}: no answer in {answer}"))?;
    if std::env::var_os("TCHAP_VISIO_LOAD_DEBUG").is_some() {
        eprintln!("offer:\n{}\nanswer:\n{sdp}", offer.to_sdp_string());
    }
    let answer = SdpAnswer::from_sdp_string(sdp)?;
    peer.with(|st| st.accept_publisher_answer(pending, answer, video_mid, audio_mid, role.source))?;
    janus.candidates_done(handle).await?;
    Ok((peer, feed))
}

/// A subscriber to every one of `feeds`, in one connection, on `substream` (0 the
/// lowest layer, 2 the highest).
pub async fn subscribe(
    janus: &Janus,
    room: u64,
    feeds: &[u64],
    substream: u8,
    stop: CancellationToken,
) -> anyhow::Result<Peer> {
    let handle = janus.attach().await?;
    let streams: Vec<Value> = feeds.iter().map(|f| json!({"feed": f})).collect();
    let attached = janus
        .message(
            handle,
            json!({"request": "join", "room": room, "ptype": "subscriber", "streams": streams}),
            None,
        )
        .await
        .context("subscriber join")?;
    let sdp = attached["jsep"]["sdp"]
        .as_str()
        .ok_or_else(|| anyhow!("no offer in {attached}"))?;
    let offer = SdpOffer::from_sdp_string(sdp)?;
    let peer = Peer::start(janus.ip, stop).await?;
    let answer = peer.with(|st| st.rtc.sdp_api().accept_offer(offer))?;
    janus
        .message(
            handle,
            json!({"request": "start"}),
            Some(json!({"type": "answer", "sdp": answer.to_sdp_string()})),
        )
        .await
        .context("subscriber start")?;
    janus.candidates_done(handle).await?;
    let videos: Vec<Value> = attached["plugindata"]["data"]["streams"]
        .as_array()
        .map(|s| {
            s.iter()
                .filter(|s| s["type"] == "video")
                .filter_map(|s| s["mid"].as_str())
                .map(|mid| json!({"mid": mid, "substream": substream, "temporal": 2}))
                .collect()
        })
        .unwrap_or_default();
    if !videos.is_empty() {
        janus
            .message(
                handle,
                json!({"request": "configure", "streams": videos}),
                None,
            )
            .await
            .context("subscriber configure")?;
    }
    Ok(peer)
}
