//! The room–meeting bridge: call requests become meetings with a link notice (the root of
//! the meeting's thread); the SFU's joins, leaves and chat become attendance and thread
//! messages; thread replies become meeting chat; an ended meeting gets its summary.
//! The one module that knows both Matrix and the SFU (DESIGN §3). Everything it decides
//! is written in one database transaction together with the requests it queues (to the
//! homeserver through the outbound queue, to the SFU through [`effects`]), so a restart
//! neither loses nor repeats a link, a message or a summary. Nothing outside the
//! database happens inside that transaction: what it needs from the homeserver (names,
//! power levels) is looked up before it opens.

pub mod access;
pub mod effects;
pub mod ghosts;
mod names;
pub mod notices;
pub mod sfu_events;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use jiff::tz::TimeZone;
use ruma::events::room::message::{MessageType, Relation, RoomMessageEventContent};
use ruma::{OwnedRoomId, OwnedUserId, UserId};

use crate::clock::now_ms;
use crate::config::{Config, Language};
use crate::ids::ParticipantIdentity;
use crate::matrix::bot::{Bot, EventEnvelope};
use crate::matrix::client::MatrixClient;
use crate::matrix::commands::{self, CommandAction, Dispatch};
use crate::matrix::inbox::EventHandler;
use crate::matrix::queue::{self, Attribution, OutboundRequest};
use crate::meeting::{self, ChatMessage, ChatOrigin, Meeting, MeetingState};
use crate::sfu::SfuHandle;
use crate::sfu::bucket::TokenBucket;
use crate::store::inbox::InboxEvent;
use crate::store::{Connection, Store, StoreError, chat, meetings, sessions};
use crate::webhooks::{self, WebhookKind, Webhooks};
use effects::{SfuEffect, SfuEffectsWorker};
use ghosts::GhostNamer;

/// Meetings nobody ever joined are closed after this long.
const UNUSED_MEETING_LIFETIME_MS: i64 = 24 * 3600 * 1000;
/// A call record whose token nobody used: its token has expired by then.
const UNUSED_CALL_LIFETIME_MS: i64 = 6 * 3600 * 1000 + 60_000;
/// How long a looked-up display name is trusted.
const DISPLAY_NAME_TTL: Duration = Duration::from_secs(300);
/// Longest wait for the homeserver when the bridge must ask it something in passing.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);

/// Display names in rooms, from the member events we receive and the lookups made before
/// a batch's transaction, with when we learnt them; `None`: the member has none (or left).
type MemberNames = HashMap<(OwnedRoomId, OwnedUserId), (Option<String>, Instant)>;

/// What the bridge needs, built once from the configuration.
pub struct BridgeContext {
    pub bot: Bot,
    /// Names that count as mentioning the bot (its user id and display name).
    pub bot_names: Vec<String>,
    pub public_address: String,
    pub grace_ms: i64,
    pub end_power_level: i64,
    pub widget: bool,
    pub mirror_room_timeline: bool,
    pub timezone: TimeZone,
    pub lang: Language,
    pub ghosts: GhostNamer,
    /// `mode: bot`: no ghosts; the bot relays guests' and bots' words itself.
    pub relay_only: bool,
    /// The SFU, where the effects worker injects room messages into meetings and
    /// closes ended ones.
    pub sfu: Option<SfuHandle>,
    /// Wakes the effects worker once a transaction that queued effects committed.
    sfu_effects_wake: Arc<Notify>,
    /// Rooms' power levels (`m.room.power_levels` content) fetched before a batch's
    /// transaction, for rooms whose state the homeserver never sent us.
    fetched_power_levels: Mutex<HashMap<OwnedRoomId, (String, Instant)>>,
    /// For the rare lookups the bridge makes in passing (power levels, display names).
    pub client: Option<MatrixClient>,
    /// Receivers of meeting events; queued in the bridge's own transactions.
    pub webhooks: Webhooks,
    display_names: Mutex<HashMap<OwnedUserId, (String, Instant)>>,
    member_names: Mutex<MemberNames>,
    /// Per meeting, the pace at which its chat goes into the room: a burst freely, then
    /// one message a second, later ones queued (stored, never dropped).
    chat_mirror_pace: Mutex<HashMap<String, TokenBucket>>,
    /// Access levels, identity codes and the lobby.
    pub access: access::AccessRuntime,
    /// For what the lookups before a batch must read (an identity code's meeting).
    pub store: Option<Store>,
    /// In a cluster, this node (`cluster.node_id`): the sessions its SFU reports are
    /// its own. `None`: a single node.
    pub node_id: Option<String>,
}

/// Meeting chat mirrored into the room: messages per second, and how many go at once.
pub const CHAT_MIRROR_PER_SEC: f64 = 1.0;
pub const CHAT_MIRROR_BURST: f64 = 20.0;

impl BridgeContext {
    /// When the next chat message of `meeting` may go into the room (ms since the epoch).
    pub fn chat_mirror_slot(&self, meeting: &str, now_ms: i64) -> i64 {
        let now = Instant::now();
        let mut paces = self
            .chat_mirror_pace
            .lock()
            .expect("no panic while holding the lock");
        if paces.len() > 10_000 {
            // Meetings that ended long ago; their pace no longer matters.
            paces.retain(|_, bucket| bucket.wait_for(now, CHAT_MIRROR_BURST) > Duration::ZERO);
        }
        let wait = paces
            .entry(meeting.to_owned())
            .or_insert_with(|| TokenBucket::new(CHAT_MIRROR_PER_SEC, CHAT_MIRROR_BURST, now))
            .reserve(now, 1.0);
        now_ms + i64::try_from(wait.as_millis()).unwrap_or(i64::MAX / 2)
    }
}

impl BridgeContext {
    pub fn from_config(
        config: &Config,
        sfu: Option<SfuHandle>,
        client: Option<MatrixClient>,
    ) -> Self {
        let bot = Bot::from_config(config);
        let bot_user = bot.user_id.to_string();
        let mut bot_names = vec![bot.user_id.to_string()];
        if !config.appservice.bot.displayname.trim().is_empty() {
            bot_names.push(config.appservice.bot.displayname.trim().to_owned());
        }
        Self {
            bot,
            bot_names,
            public_address: config.appservice.public_address.to_string(),
            grace_ms: (config.meetings.grace_period_secs as i64).saturating_mul(1000),
            end_power_level: config.meetings.end_power_level,
            widget: config.meetings.widget,
            mirror_room_timeline: config.meetings.mirror_room_timeline,
            timezone: TimeZone::get(&config.meetings.timezone).unwrap_or(TimeZone::UTC),
            lang: config.language,
            ghosts: GhostNamer {
                template: config.appservice.username_template.clone(),
                domain: config.homeserver.domain.clone(),
            },
            relay_only: config.mode == crate::config::Mode::Bot,
            sfu,
            webhooks: Webhooks::none(),
            display_names: Mutex::new(HashMap::new()),
            sfu_effects_wake: Arc::new(Notify::new()),
            fetched_power_levels: Mutex::new(HashMap::new()),
            chat_mirror_pace: Mutex::new(HashMap::new()),
            member_names: Mutex::new(HashMap::new()),
            access: access::AccessRuntime::new(
                config.meetings.default_access,
                Arc::new(
                    crate::auth::membership::RoomView::new(
                        client.clone(),
                        config.meetings.external_servers.clone(),
                    )
                    .with_bot_user(&bot_user),
                ),
                crate::auth::openid::OpenIdVerifier::new(
                    config.homeserver.domain.clone(),
                    config.homeserver.address.as_str(),
                ),
            ),
            client,
            store: None,
            node_id: config.cluster.as_ref().map(|c| c.node_id.clone()),
        }
        .with_join_token_ttl(config.meetings.join_token_ttl_secs)
    }

    fn with_join_token_ttl(mut self, secs: i64) -> Self {
        self.access.join_token_ttl_secs = secs;
        self
    }

    pub fn with_store(mut self, store: Store) -> Self {
        self.store = Some(store);
        self
    }

    pub fn with_webhooks(mut self, webhooks: Webhooks) -> Self {
        self.webhooks = webhooks;
        self
    }

    pub fn link(&self, meeting: &Meeting) -> String {
        meeting.link(&self.public_address)
    }

    /// The worker that applies the SFU effects this bridge queues; `None` without an SFU.
    pub fn effects_worker(
        &self,
        store: Store,
        shutdown: CancellationToken,
    ) -> Option<SfuEffectsWorker<SfuHandle>> {
        let sfu = self.sfu.clone()?;
        Some(SfuEffectsWorker::new(
            store,
            sfu,
            self.sfu_effects_wake.clone(),
            shutdown,
        ))
    }

    /// Tells the effects worker that a transaction which may have queued effects
    /// committed; call it after the commit, never before.
    pub fn effects_committed(&self) {
        self.sfu_effects_wake.notify_one();
        self.access.changed.notify_waiters();
    }
}

/// The inbox's event handler: meeting commands, call requests and thread replies are
/// the bridge's; everything else goes to the bot.
pub struct Bridge {
    pub ctx: Arc<BridgeContext>,
}

impl EventHandler for Bridge {
    /// Looks up, before the transaction, what handling the batch may need from the
    /// homeserver: the room display names of those who send the bot a command (notices
    /// name them) where no member event told us already, the power levels of rooms where
    /// someone asks to end a meeting, and the display names of those whose messages may
    /// go into a meeting's chat.
    async fn prepare(&self, batch: &[InboxEvent]) {
        let mut wanted = Vec::new();
        let mut power_rooms: Vec<OwnedRoomId> = Vec::new();
        let mut authors: Vec<OwnedUserId> = Vec::new();
        let mut codes: Vec<(String, OwnedUserId)> = Vec::new();
        let mut rule_rooms: Vec<OwnedRoomId> = Vec::new();
        for event in batch {
            let Ok(envelope) = serde_json::from_str::<EventEnvelope>(&event.json) else {
                continue;
            };
            if self.ctx.bot.is_ours(&envelope.sender) {
                continue;
            }
            // A reaction may be a moderator's lobby decision.
            if envelope.kind == "m.reaction" && !power_rooms.contains(&envelope.room_id) {
                power_rooms.push(envelope.room_id.clone());
            }
            if envelope.kind != "m.room.message" {
                continue;
            }
            let Ok(message) =
                serde_json::from_value::<RoomMessageEventContent>(envelope.content.clone())
            else {
                continue;
            };
            let Some(body) = text_of(&message) else {
                continue;
            };
            let level = self.ctx.bot.level_for(&envelope.sender);
            let names: Vec<&str> = self.ctx.bot_names.iter().map(String::as_str).collect();
            let mention = self
                .mentions_bot(&message, &body)
                .then_some(names.as_slice());
            let dispatch = commands::process(&body, level, mention, self.ctx.lang);
            if let Dispatch::Run { spec, args } = &dispatch {
                let moderating = matches!(
                    spec.action,
                    CommandAction::End
                        | CommandAction::Access
                        | CommandAction::Admit
                        | CommandAction::Deny
                        | CommandAction::Remove
                );
                if moderating && !power_rooms.contains(&envelope.room_id) {
                    power_rooms.push(envelope.room_id.clone());
                }
                if matches!(spec.action, CommandAction::Start | CommandAction::Access)
                    && !rule_rooms.contains(&envelope.room_id)
                {
                    rule_rooms.push(envelope.room_id.clone());
                }
                if spec.action == CommandAction::Enter {
                    codes.push(((*args).to_owned(), envelope.sender.clone()));
                }
            }
            let for_the_bot = !matches!(dispatch, Dispatch::NotACommand);
            let may_be_mirrored = matches!(message.relates_to, Some(Relation::Thread(_)))
                || self.ctx.mirror_room_timeline;
            if !for_the_bot && may_be_mirrored && !authors.contains(&envelope.sender) {
                authors.push(envelope.sender.clone());
            }
            let key = (envelope.room_id, envelope.sender);
            if for_the_bot
                && self.ctx.member_name(&key.0, &key.1).is_none()
                && !wanted.contains(&key)
            {
                wanted.push(key);
            }
        }
        for (room, user) in wanted {
            self.ctx.look_up_member_name(&room, &user).await;
        }
        for room in power_rooms {
            self.ctx.look_up_power_levels(&room).await;
        }
        for author in authors {
            self.ctx.look_up_display_name(&author).await;
        }
        self.ctx.prepare_access(&codes, &rule_rooms).await;
    }

    fn committed(&self) {
        self.ctx.effects_committed();
    }

    async fn handle(&self, event: &InboxEvent, conn: &mut Connection) -> Result<(), StoreError> {
        let Some(envelope) = EventEnvelope::parse(event) else {
            return Ok(());
        };
        if envelope.kind == "m.room.member"
            && let Some(user) = envelope
                .state_key
                .as_deref()
                .and_then(|k| UserId::parse(k).ok())
        {
            let membership = envelope
                .content
                .get("membership")
                .and_then(|m| m.as_str())
                .unwrap_or_default();
            let name = envelope.content.get("displayname").and_then(|n| n.as_str());
            self.ctx.remember_member_name(
                &envelope.room_id,
                &user,
                name.filter(|_| membership == "join"),
            );
            if !self.ctx.bot.is_ours(&user) {
                self.on_membership(&envelope, &user, membership, conn)
                    .await?;
            }
        }
        if envelope.kind == "m.reaction" && !self.ctx.bot.is_ours(&envelope.sender) {
            return self.on_reaction(&envelope, conn).await;
        }
        if envelope.kind == "m.room.message"
            && !self.ctx.bot.is_ours(&envelope.sender)
            && self.on_message(&envelope, conn).await?
        {
            return Ok(());
        }
        self.ctx.bot.on_event(envelope, conn).await
    }
}

/// A message's text: the body of text, notices and emotes, without a reply's quote.
fn text_of(message: &RoomMessageEventContent) -> Option<String> {
    let body = match &message.msgtype {
        MessageType::Text(t) => &t.body,
        MessageType::Emote(e) => &e.body,
        MessageType::Notice(n) => &n.body,
        _ => return None,
    };
    let body: Vec<&str> = body
        .lines()
        .skip_while(|line| line.starts_with("> "))
        .collect();
    let body = body.join("\n").trim().to_owned();
    (!body.is_empty()).then_some(body)
}

impl Bridge {
    /// Returns whether the bridge took the message.
    async fn on_message(
        &self,
        event: &EventEnvelope,
        conn: &mut Connection,
    ) -> Result<bool, StoreError> {
        let Ok(message) = serde_json::from_value::<RoomMessageEventContent>(event.content.clone())
        else {
            return Ok(false);
        };
        // Edits are not new requests or new chat.
        if matches!(message.relates_to, Some(Relation::Replacement(_))) {
            return Ok(false);
        }
        let Some(body) = text_of(&message) else {
            return Ok(false);
        };
        let level = self.ctx.bot.level_for(&event.sender);
        let names: Vec<&str> = self.ctx.bot_names.iter().map(String::as_str).collect();
        let mention = self
            .mentions_bot(&message, &body)
            .then_some(names.as_slice());
        match commands::process(&body, level, mention, self.ctx.lang) {
            Dispatch::Run { spec, args } => {
                self.on_command(event, &message, spec.action, args, conn)
                    .await?;
                Ok(true)
            }
            // Help, hints and refusals answer typed text only, never other bots' notices.
            Dispatch::Answer(plain, html) if matches!(message.msgtype, MessageType::Text(_)) => {
                tracing::debug!(room = %event.room_id, sender = %event.sender, "answering a command");
                self.ctx
                    .bot
                    .reply(
                        &event.room_id,
                        &event.event_id,
                        message.relates_to.clone(),
                        plain,
                        html,
                        conn,
                    )
                    .await?;
                Ok(true)
            }
            Dispatch::Answer(..) => Ok(true),
            Dispatch::NotACommand => self.mirror_into_meeting(event, &message, body, conn).await,
        }
    }

    fn mentions_bot(&self, message: &RoomMessageEventContent, body: &str) -> bool {
        let bot = &self.ctx.bot.user_id;
        let in_mentions = message
            .mentions
            .as_ref()
            .is_some_and(|m| m.user_ids.contains(bot));
        let formatted = match &message.msgtype {
            MessageType::Text(t) => t.formatted.as_ref().map(|f| f.body.as_str()),
            _ => None,
        };
        in_mentions
            || body.contains(bot.as_str())
            || formatted.is_some_and(|html| html.contains(&format!("matrix.to/#/{bot}")))
    }

    async fn on_command(
        &self,
        event: &EventEnvelope,
        message: &RoomMessageEventContent,
        action: CommandAction,
        args: &str,
        conn: &mut Connection,
    ) -> Result<(), StoreError> {
        let ctx = &self.ctx;
        let lang = ctx.lang;
        let room = &event.room_id;
        let active = meetings::active_for_room(conn, room.as_str()).await?;
        let reply = match (action, active) {
            (CommandAction::Start, None) => {
                let title = if args.is_empty() {
                    notices::DEFAULT_TITLE.get(lang)
                } else {
                    args
                };
                match Meeting::new(
                    title,
                    Some(room.to_string()),
                    Some(event.sender.to_string()),
                    now_ms(),
                ) {
                    Ok(mut meeting) => {
                        meeting.access = ctx
                            .access
                            .rule(room.as_str())
                            .effective(ctx.access.default_level);
                        self.open_meeting(&meeting, conn).await?;
                        return Ok(());
                    }
                    Err(_) => notices::bad_title(lang),
                }
            }
            (CommandAction::Start | CommandAction::Link, Some(meeting)) => {
                notices::already_running(&meeting, &ctx.link(&meeting), lang)
            }
            (CommandAction::Status, Some(meeting)) => {
                let present: Vec<String> = sessions::list_for_meeting(conn, &meeting.id)
                    .await?
                    .into_iter()
                    .filter(|s| s.left_at.is_none())
                    .map(|s| s.display_name)
                    .collect();
                notices::status(&meeting, &present, &ctx.link(&meeting), &ctx.timezone, lang)
            }
            (CommandAction::End, Some(meeting)) => {
                if ctx
                    .may_moderate(conn, room, &event.sender, &meeting)
                    .await?
                {
                    let name = ctx.name_in_room(room, &event.sender);
                    let (plain, html) =
                        notices::ending(&meeting, event.sender.as_str(), name.as_deref(), lang);
                    ctx.bot
                        .reply(
                            room,
                            &event.event_id,
                            message.relates_to.clone(),
                            plain,
                            html,
                            conn,
                        )
                        .await?;
                    end_meeting(ctx, conn, &meeting, now_ms()).await?;
                    return Ok(());
                }
                tracing::info!(meeting = %meeting.id, user = %event.sender, "end refused: not creator nor moderator");
                notices::end_refused(ctx.end_power_level, lang)
            }
            (CommandAction::Enter, _) => {
                return self.on_enter(event, message, args, conn).await;
            }
            (CommandAction::Access, Some(meeting)) => {
                return self.on_access(event, message, args, meeting, conn).await;
            }
            (action @ (CommandAction::Admit | CommandAction::Deny), Some(meeting)) => {
                return self
                    .on_lobby_command(
                        event,
                        message,
                        args,
                        action == CommandAction::Admit,
                        meeting,
                        conn,
                    )
                    .await;
            }
            (CommandAction::Remove, Some(meeting)) => {
                return self.on_remove(event, message, args, meeting, conn).await;
            }
            (
                CommandAction::Status
                | CommandAction::Link
                | CommandAction::End
                | CommandAction::Access
                | CommandAction::Admit
                | CommandAction::Deny
                | CommandAction::Remove,
                None,
            ) => notices::no_meeting(lang),
            // The dispatcher answers it; kept for a complete match.
            (CommandAction::Help, _) => commands::help(lang),
        };
        ctx.bot
            .reply(
                room,
                &event.event_id,
                message.relates_to.clone(),
                reply.0,
                reply.1,
                conn,
            )
            .await
    }

    /// Stores a new meeting and queues its link notice (and widget).
    async fn open_meeting(
        &self,
        meeting: &Meeting,
        conn: &mut Connection,
    ) -> Result<(), StoreError> {
        let ctx = &self.ctx;
        let room: OwnedRoomId = meeting
            .matrix_room_id
            .as_deref()
            .and_then(|r| r.try_into().ok())
            .expect("meetings opened from a room carry its id");
        meetings::create(conn, meeting).await?;
        let link = ctx.link(meeting);
        let creator_name = meeting
            .creator
            .as_deref()
            .and_then(|c| UserId::parse(c).ok())
            .and_then(|c| ctx.name_in_room(&room, &c));
        let (plain, html) = notices::link_notice(meeting, creator_name.as_deref(), &link, ctx.lang);
        let mut content = RoomMessageEventContent::notice_html(plain, html);
        content.mentions = Some(ruma::events::Mentions::new());
        let link_notice = queue::enqueue(
            conn,
            &OutboundRequest::Send {
                room_id: room.clone(),
                as_user: None,
                event_type: "m.room.message".into(),
                content: serde_json::to_value(&content).expect("message content serialises"),
                in_thread_of: None,
                attribution: None,
            },
        )
        .await?;
        meetings::set_link_notice(conn, &meeting.id, link_notice).await?;
        if ctx.widget {
            let state_key = format!("tchap_visio_{}", meeting.id);
            queue::enqueue(
                conn,
                &widget_request(&room, &state_key, Some((meeting, &link))),
            )
            .await?;
            queue::enqueue(conn, &widget_layout_request(&room, Some(&state_key))).await?;
            meetings::set_widget(conn, &meeting.id, Some(&state_key)).await?;
        }
        metrics::counter!("tchap_visio_meetings_created_total").increment(1);
        tracing::info!(meeting = %meeting.id, room = %room, "meeting opened");
        Ok(())
    }

    /// A message in a meeting's thread (or, if configured, in the room while a meeting
    /// runs) goes into the meeting chat under its author's display name.
    async fn mirror_into_meeting(
        &self,
        event: &EventEnvelope,
        message: &RoomMessageEventContent,
        body: String,
        conn: &mut Connection,
    ) -> Result<bool, StoreError> {
        let ctx = &self.ctx;
        let room = event.room_id.as_str();
        let meeting = match &message.relates_to {
            Some(Relation::Thread(thread)) => {
                meetings::get_by_thread_root(conn, room, thread.event_id.as_str()).await?
            }
            _ if ctx.mirror_room_timeline => meetings::active_for_room(conn, room)
                .await?
                .filter(|m| m.state == MeetingState::Running),
            _ => None,
        };
        // A call's thread is not its chat: Element Call shows none from the SFU.
        let Some(meeting) = meeting.filter(|m| m.state != MeetingState::Ended && !m.is_call())
        else {
            return Ok(false);
        };
        let author = ctx.display_name(&event.sender);
        let message = ChatMessage {
            meeting_id: meeting.id.clone(),
            message_id: event.event_id.to_string(),
            origin: ChatOrigin::Matrix,
            sender_identity: None,
            sender_name: author.clone(),
            matrix_user_id: Some(event.sender.to_string()),
            body: body.clone(),
            sent_at: if event.origin_server_ts > 0 {
                event.origin_server_ts
            } else {
                now_ms()
            },
        };
        // Kept even while nobody is in the meeting (no SFU room then): whoever joins
        // later loads the stored chat. A message stored already was delivered before.
        if !record_chat(conn, ctx, &meeting, &message).await? {
            return Ok(true);
        }
        ctx.webhooks.wake();
        effects::enqueue(
            conn,
            &SfuEffect::InjectChat {
                meeting: meeting.id.to_string(),
                message_id: message.message_id,
                author,
                text: body,
            },
        )
        .await?;
        Ok(true)
    }
}

/// Stores a chat message and queues its webhook, in the caller's transaction. False
/// when it was stored already (delivered twice): nothing more to do for it.
async fn record_chat(
    conn: &mut Connection,
    ctx: &BridgeContext,
    meeting: &Meeting,
    message: &ChatMessage,
) -> Result<bool, StoreError> {
    if !chat::insert(conn, message).await? {
        return Ok(false);
    }
    ctx.webhooks
        .enqueue(
            conn,
            WebhookKind::ChatMessage,
            meeting,
            webhooks::chat_data(message),
        )
        .await?;
    Ok(true)
}

fn widget_request(
    room: &OwnedRoomId,
    state_key: &str,
    meeting: Option<(&Meeting, &str)>,
) -> OutboundRequest {
    let content = match meeting {
        Some((meeting, link)) => serde_json::json!({
            "type": "m.custom",
            "url": link,
            "name": meeting.title,
            "data": { "title": meeting.title },
            "id": state_key,
        }),
        None => serde_json::json!({}),
    };
    OutboundRequest::SetState {
        room_id: room.clone(),
        event_type: "im.vector.modular.widgets".into(),
        state_key: state_key.to_owned(),
        content,
    }
}

fn widget_layout_request(room: &OwnedRoomId, widget: Option<&str>) -> OutboundRequest {
    let content = match widget {
        Some(id) => serde_json::json!({
            "widgets": { id: { "container": "top", "index": 0, "width": 100, "height": 60 } }
        }),
        None => serde_json::json!({ "widgets": {} }),
    };
    OutboundRequest::SetState {
        room_id: room.clone(),
        event_type: "io.element.widgets.layout".into(),
        state_key: String::new(),
        content,
    }
}

fn room_of(meeting: &Meeting) -> Option<OwnedRoomId> {
    meeting
        .matrix_room_id
        .as_deref()
        .and_then(|r| r.try_into().ok())
}

/// Queues a notice (as the bot) or a message (as a ghost, named for the bot to say who
/// speaks should the ghost be refused) in the meeting's thread.
pub async fn post_in_thread(
    conn: &mut Connection,
    meeting: &Meeting,
    speaker: Option<(OwnedUserId, Attribution)>,
    content: RoomMessageEventContent,
) -> Result<(), StoreError> {
    post_in_thread_not_before(conn, meeting, speaker, content, crate::clock::now_ms()).await
}

/// [`post_in_thread`], not sent before `not_before_ms`.
pub async fn post_in_thread_not_before(
    conn: &mut Connection,
    meeting: &Meeting,
    speaker: Option<(OwnedUserId, Attribution)>,
    content: RoomMessageEventContent,
    not_before_ms: i64,
) -> Result<(), StoreError> {
    let (as_user, attribution) = speaker.unzip();
    let Some(room) = room_of(meeting) else {
        return Ok(());
    };
    let mut content = content;
    content.mentions = Some(ruma::events::Mentions::new());
    let request = OutboundRequest::Send {
        room_id: room,
        as_user,
        event_type: "m.room.message".into(),
        content: serde_json::to_value(&content).expect("message content serialises"),
        in_thread_of: meeting.link_notice_id,
        attribution,
    };
    queue::enqueue_not_before(conn, &request, not_before_ms).await?;
    Ok(())
}

/// A bot's summary (already sanitised HTML) in the meeting's thread, from the ghost of
/// this token and author, shown as a bot (« Compte-rendu (bot) »). Does nothing for a
/// meeting without a room.
pub async fn post_summary(
    conn: &mut Connection,
    ctx: &BridgeContext,
    meeting: &Meeting,
    token_id: &str,
    author: &str,
    plain: String,
    html: String,
) -> Result<(), StoreError> {
    let Some(room) = room_of(meeting) else {
        return Ok(());
    };
    let ghost = ctx.ghosts.author(token_id, author);
    let shown = notices::BOT_NAME.get(ctx.lang).replace("{name}", author);
    if !ctx.relay_only {
        ghosts::ensure_in_room(conn, &ghost, &shown, &room).await?;
    }
    post_in_thread(
        conn,
        meeting,
        Some((ghost, notices::attribution(ctx.lang, &shown))),
        RoomMessageEventContent::notice_html(plain, html),
    )
    .await
}

/// The « Appel en cours » notice that roots a call's thread, then the first-join line in
/// it; nothing for a call followed outside any room the bot is in.
pub async fn open_call_thread(
    conn: &mut Connection,
    ctx: &BridgeContext,
    call: &Meeting,
    first_name: &str,
) -> Result<(), StoreError> {
    let Some(room) = room_of(call) else {
        return Ok(());
    };
    let (plain, html) = notices::call_notice(ctx.lang);
    let mut content = RoomMessageEventContent::notice_html(plain, html);
    content.mentions = Some(ruma::events::Mentions::new());
    let notice = queue::enqueue(
        conn,
        &OutboundRequest::Send {
            room_id: room,
            as_user: None,
            event_type: "m.room.message".into(),
            content: serde_json::to_value(&content).expect("message content serialises"),
            in_thread_of: None,
            attribution: None,
        },
    )
    .await?;
    meetings::set_link_notice(conn, &call.id, notice).await?;
    let call = Meeting {
        link_notice_id: Some(notice),
        ..call.clone()
    };
    let (plain, html) = notices::first_join_call(first_name, ctx.lang);
    post_in_thread(
        conn,
        &call,
        None,
        RoomMessageEventContent::notice_html(plain, html),
    )
    .await
}

/// Ends a meeting once: closes its sessions, posts the summary in its thread and one
/// line in the room, removes its widget, and queues the closing of its SFU room (whose
/// participants see "meeting ended"); the caller wakes the effects worker
/// ([`BridgeContext::effects_committed`]) after committing. Returns false if it had
/// ended already.
pub async fn end_meeting(
    ctx: &BridgeContext,
    conn: &mut Connection,
    meeting: &Meeting,
    now: i64,
) -> Result<bool, StoreError> {
    // Read before the end forgets the room's placement.
    let host = crate::store::sfu_effects::host(conn, meeting.sfu_room_name()).await?;
    if !meetings::set_state(conn, &meeting.id, MeetingState::Ended, now).await? {
        return Ok(false);
    }
    sessions::close_all(conn, &meeting.id, now).await?;
    let meeting = meetings::get_by_id(conn, &meeting.id)
        .await?
        .unwrap_or_else(|| meeting.clone());
    let all_sessions = sessions::list_for_meeting(conn, &meeting.id).await?;
    let attendees = meeting::attendance(&all_sessions, now);
    let chat_messages = chat::count_for_meeting(conn, &meeting.id).await?;
    let last_left_at = last_left_at(&all_sessions, now);
    let facts = notices::SummaryFacts {
        meeting: &meeting,
        last_left_at,
        attendees: &attendees,
        chat_messages,
    };
    // A call nobody joined never had a thread: nothing to close in the room.
    let silent = meeting.is_call() && meeting.link_notice_id.is_none();
    if let Some(room) = room_of(&meeting).filter(|_| !silent) {
        let (plain, html) = notices::summary(&facts, &ctx.timezone, ctx.lang);
        post_in_thread(
            conn,
            &meeting,
            None,
            RoomMessageEventContent::notice_html(plain, html),
        )
        .await?;
        let (plain, html) = notices::summary_line(&facts, ctx.lang);
        ctx.bot
            .send(
                &room,
                RoomMessageEventContent::notice_html(plain, html),
                conn,
            )
            .await?;
        if let Some(state_key) = &meeting.widget_state_key {
            queue::enqueue(conn, &widget_request(&room, state_key, None)).await?;
            queue::enqueue(conn, &widget_layout_request(&room, None)).await?;
            meetings::set_widget(conn, &meeting.id, None).await?;
        }
    }
    ctx.webhooks
        .enqueue(
            conn,
            WebhookKind::MeetingEnded,
            &meeting,
            webhooks::ended_data(&meeting, last_left_at, &attendees, chat_messages),
        )
        .await?;
    ctx.webhooks.wake();
    effects::enqueue_on(
        conn,
        host.as_deref(),
        &SfuEffect::CloseRoom {
            meeting: meeting.sfu_room_name().to_owned(),
        },
    )
    .await?;
    metrics::counter!("tchap_visio_meetings_ended_total").increment(1);
    tracing::info!(meeting = %meeting.id, attendees = attendees.len(), chat_messages, "meeting ended");
    Ok(true)
}

/// When the last participant left, once every session is closed; `ended_at` where none
/// has a leave time (nobody came, or a clock went backwards).
fn last_left_at(sessions: &[meeting::Session], ended_at: i64) -> i64 {
    sessions
        .iter()
        .filter_map(|s| s.left_at)
        .max()
        .map_or(ended_at, |t| t.min(ended_at))
}

/// The part of a participant identity that stays the same across one browser's rejoins.
fn attendee_key(identity: &str) -> String {
    ParticipantIdentity::parse(identity)
        .map(|i| i.stable_part().to_owned())
        .unwrap_or_else(|_| identity.to_owned())
}

/// Meetings that should end now: empty for the grace period, or never joined for a day.
pub async fn due_for_end(
    conn: &mut Connection,
    ctx: &BridgeContext,
    now: i64,
) -> Result<Vec<Meeting>, StoreError> {
    Ok(meetings::list_not_ended(conn)
        .await?
        .into_iter()
        .filter(|m| match m.state {
            MeetingState::Running => m.empty_since.is_some_and(|t| now - t >= ctx.grace_ms),
            MeetingState::Scheduled if m.is_call() => now - m.created_at >= UNUSED_CALL_LIFETIME_MS,
            MeetingState::Scheduled => now - m.created_at >= UNUSED_MEETING_LIFETIME_MS,
            MeetingState::Ended => false,
        })
        .collect())
}

/// After a restart nobody is connected: open sessions end when last seen alive, and a
/// meeting the restart emptied gets a whole grace period from now, for its participants
/// to come back (their pages reconnect by themselves). A meeting that was already empty
/// keeps the grace period it was in.
pub async fn recover(conn: &mut Connection, now: i64) -> Result<(), StoreError> {
    let closed = sessions::close_stale_at_last_seen(conn).await?;
    for meeting in meetings::list_not_ended(conn).await? {
        if meeting.state == MeetingState::Running && meeting.empty_since.is_none() {
            meetings::set_empty_since(conn, &meeting.id, Some(now)).await?;
        }
    }
    if closed > 0 {
        tracing::info!(
            sessions = closed,
            "closed the sessions left open by the previous run"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests;
