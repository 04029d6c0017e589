//! Who may join, run from the room: the access level (`!visio accès`), identity codes
//! (`!visio entrer <code>` and the private ✅), the lobby (one notice per meeting,
//! decided with ✅ / ❌ or `!visio admettre|refuser <n>`), removals (`!visio exclure`,
//! members who leave or are banned from the room, a stricter level). Every decision is
//! stored with the notices and SFU effects it queues, in the inbox's transaction; what
//! it needs from the homeserver (power levels, memberships, the room's rule) was looked
//! up before ([`BridgeContext::prepare_access`]).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ruma::events::room::message::RoomMessageEventContent;
use ruma::{OwnedRoomId, OwnedUserId, UserId};
use tokio::sync::Notify;

use super::effects::{self, SfuEffect};
use super::{Bridge, BridgeContext, room_of};
use crate::auth::membership::RoomView;
use crate::clock::now_ms;
use crate::config::{Language, PermissionLevel};
use crate::i18n::{Text, html_escape};
use crate::matrix::bot::EventEnvelope;
use crate::matrix::commands;
use crate::matrix::queue::{self, OutboundRequest};
use crate::meeting::access::{AccessLevel, RoomRule, normalise_code};
use crate::meeting::{Meeting, MeetingState};
use crate::store::access::{self as stored, LobbyRequest, LobbyState, VerificationState};
use crate::store::{Connection, StoreError, meetings};

/// How long an identity code may wait to be sent and confirmed.
pub const CODE_LIFETIME_MS: i64 = 5 * 60 * 1000;
/// How long a confirmed identity may wait for its join.
pub const VERIFIED_LIFETIME_MS: i64 = 10 * 60 * 1000;
/// Wrong codes one Matrix user may send in [`CODE_FAILURE_WINDOW`] before codes from
/// them are refused unread.
pub const CODE_FAILURES_ALLOWED: usize = 10;
pub const CODE_FAILURE_WINDOW: Duration = Duration::from_secs(600);
/// How long a guest may wait in the lobby.
pub const LOBBY_WAIT_MS: i64 = 10 * 60 * 1000;
/// Most guests waiting at once in one meeting.
pub const LOBBY_CAPACITY: usize = 20;
/// How long a membership looked up before a batch is trusted within it.
const MEMBERSHIP_TTL: Duration = Duration::from_secs(30);

/// Why a participant's tokens were revoked; what `/rtc` and the page say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemovalReason {
    /// A moderator removed them.
    Removed,
    /// They left the meeting's room.
    LeftRoom,
    /// They were banned from the room.
    Banned,
    /// The meeting's access level no longer lets them in.
    AccessChanged,
}

impl RemovalReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Removed => "removed",
            Self::LeftRoom => "left_room",
            Self::Banned => "banned",
            Self::AccessChanged => "access_changed",
        }
    }
}

/// A membership looked up before a batch (`None`: never in the room), and when.
type LookedUp = (Option<String>, Instant);

/// What the access features keep between batches.
pub struct AccessRuntime {
    /// Level of new meetings (`meetings.default_access`).
    pub default_level: AccessLevel,
    /// The homeserver's view of rooms; shared with the join endpoint.
    pub view: Arc<RoomView>,
    /// Woken after every commit that may have decided a lobby request or a code, so that
    /// waiting pages answer at once.
    pub changed: Arc<Notify>,
    /// Checks the OpenID tokens of Element-based clients (no code needed there).
    pub openid: crate::auth::openid::OpenIdVerifier,
    /// Lifetime of the join tokens we issue (`meetings.join_token_ttl_secs`).
    pub join_token_ttl_secs: i64,
    code_failures: Mutex<HashMap<OwnedUserId, VecDeque<Instant>>>,
    memberships: Mutex<HashMap<(String, OwnedUserId), LookedUp>>,
    rules: Mutex<HashMap<String, RoomRule>>,
}

impl AccessRuntime {
    pub fn new(
        default_level: AccessLevel,
        view: Arc<RoomView>,
        openid: crate::auth::openid::OpenIdVerifier,
    ) -> Self {
        Self {
            default_level,
            view,
            openid,
            join_token_ttl_secs: crate::auth::token::JOIN_TOKEN_TTL_SECS,
            changed: Arc::new(Notify::new()),
            code_failures: Mutex::new(HashMap::new()),
            memberships: Mutex::new(HashMap::new()),
            rules: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `user` sent too many wrong codes lately (then their codes are not read).
    fn codes_refused(&self, user: &UserId) -> bool {
        let mut failures = self
            .code_failures
            .lock()
            .expect("no panic holding the lock");
        let Some(times) = failures.get_mut(user) else {
            return false;
        };
        while times
            .front()
            .is_some_and(|t| t.elapsed() >= CODE_FAILURE_WINDOW)
        {
            times.pop_front();
        }
        times.len() >= CODE_FAILURES_ALLOWED
    }

    fn code_failed(&self, user: &UserId) {
        let mut failures = self
            .code_failures
            .lock()
            .expect("no panic holding the lock");
        if failures.len() > 100_000 {
            failures.retain(|_, t| t.back().is_some_and(|t| t.elapsed() < CODE_FAILURE_WINDOW));
        }
        failures
            .entry(user.to_owned())
            .or_default()
            .push_back(Instant::now());
    }

    fn membership(&self, room: &str, user: &UserId) -> Option<Option<String>> {
        let cache = self.memberships.lock().ok()?;
        let (membership, at) = cache.get(&(room.to_owned(), user.to_owned()))?;
        (at.elapsed() < MEMBERSHIP_TTL).then(|| membership.clone())
    }

    pub(super) fn rule(&self, room: &str) -> RoomRule {
        self.rules
            .lock()
            .ok()
            .and_then(|r| r.get(room).copied())
            .or_else(|| self.view.cached_rule(room))
            .unwrap_or_default()
    }
}

impl BridgeContext {
    /// Before a batch's transaction: the memberships `!visio entrer` needs (the code's
    /// meeting's room) and the rules of rooms where a meeting starts or changes level.
    pub(super) async fn prepare_access(
        &self,
        enter: &[(String, OwnedUserId)],
        rule_rooms: &[OwnedRoomId],
    ) {
        for room in rule_rooms {
            if let Ok(rule) = self.access.view.rule(room.as_str()).await
                && let Ok(mut rules) = self.access.rules.lock()
            {
                rules.insert(room.to_string(), rule);
            }
        }
        let Some(store) = &self.store else {
            return;
        };
        for (typed, user) in enter {
            let Some(code) = normalise_code(typed) else {
                continue;
            };
            let Ok(mut conn) = store.pool().acquire().await else {
                continue;
            };
            let Ok(Some(verification)) = stored::pending_by_code(&mut conn, &code, now_ms()).await
            else {
                continue;
            };
            let Ok(Some(meeting)) = meetings::get_by_id(
                &mut conn,
                &match crate::ids::MeetingId::parse(&verification.meeting_id) {
                    Ok(id) => id,
                    Err(_) => continue,
                },
            )
            .await
            else {
                continue;
            };
            drop(conn);
            let Some(room) = meeting.matrix_room_id else {
                continue;
            };
            if let Ok(membership) = self.access.view.membership(&room, user.as_str()).await
                && let Ok(mut cache) = self.access.memberships.lock()
            {
                if cache.len() > 10_000 {
                    cache.clear();
                }
                cache.insert((room, user.clone()), (membership, Instant::now()));
            }
        }
    }

    /// Whether `user` may moderate `meeting` from `room`: its creator, a bot admin, or a
    /// member at the power level `meetings.end_power_level`.
    pub(super) async fn may_moderate(
        &self,
        conn: &mut Connection,
        room: &OwnedRoomId,
        user: &UserId,
        meeting: &Meeting,
    ) -> Result<bool, StoreError> {
        Ok(meeting.creator.as_deref() == Some(user.as_str())
            || commands::permitted(self.bot.level_for(user), PermissionLevel::Admin)
            || self.power_level(conn, room, user).await? >= self.end_power_level)
    }
}

const MODERATORS_ONLY: Text = Text::new(
    "Désolé, seule la personne qui a lancé la visio ou la modération du salon (niveau {level}) peut faire cela.",
    "Sorry, only whoever started the meeting or the room's moderators (power level {level}) can do that.",
);
const ACCESS_USAGE: Text = Text::new(
    "Précisez le niveau : !visio accès public, !visio accès confiance ou !visio accès membres.",
    "Name the level: !visio access public, !visio access trusted or !visio access members.",
);
const ACCESS_SET: Text = Text::new(
    "Accès à « {title} » : {level} — {explain}.",
    "Access to “{title}”: {level} — {explain}.",
);
const PUBLIC_REFUSED: Text = Text::new(
    "Ce salon est réservé aux agents : une visio ne peut pas y être publique. Accès inchangé : {level}.",
    "This room is restricted: its meetings cannot be public. Access unchanged: {level}.",
);
const CODE_UNKNOWN: Text = Text::new(
    "Ce code est inconnu ou a expiré. Demandez-en un nouveau sur la page de la visio.",
    "This code is unknown or has expired. Ask the meeting page for a new one.",
);
const CODES_REFUSED: Text = Text::new(
    "Trop de codes erronés : réessayez dans quelques minutes.",
    "Too many wrong codes: try again in a few minutes.",
);
const CODE_NOT_MEMBER: Text = Text::new(
    "Vous n’êtes pas membre du salon de cette visio : le code ne vous identifie pas.",
    "You are not a member of this meeting's room: the code does not identify you.",
);
const CODE_UNCHECKED: Text = Text::new(
    "Impossible de vérifier votre appartenance au salon pour l’instant : renvoyez le code dans un moment.",
    "Your membership of the room cannot be checked right now: send the code again in a moment.",
);
const CODE_SENT_PRIVATELY: Text = Text::new(
    "Code reçu. Confirmez dans notre conversation privée.",
    "Code received. Confirm in our private conversation.",
);
const CONFIRM_PROMPT: Text = Text::new(
    "Un navigateur va rejoindre « {title} » sous votre nom — ✅ pour confirmer. Si ce n’est pas vous qui avez demandé ce code, ne faites rien.",
    "A browser is about to join “{title}” under your name — ✅ to confirm. If you did not ask for this code, do nothing.",
);
const CONFIRMED: Text = Text::new(
    "C’est confirmé : votre navigateur entre dans « {title} ».",
    "Confirmed: your browser is joining “{title}”.",
);
const NOBODY_WITH_NUMBER: Text = Text::new(
    "Personne n’attend sous le numéro {number}.",
    "Nobody is waiting as number {number}.",
);
const NOBODY_NAMED: Text = Text::new(
    "Personne dans la visio ne s’appelle « {name} ».",
    "Nobody in the meeting is called “{name}”.",
);
const SEVERAL_NAMED: Text = Text::new(
    "Plusieurs personnes s’appellent « {name} » : précisez le nom.",
    "Several people are called “{name}”: give more of the name.",
);
const REMOVED: Text = Text::new(
    "{name} a été retiré·e de la visio.",
    "{name} was removed from the meeting.",
);

fn text(t: Text, lang: Language) -> (String, String) {
    let plain = t.get(lang).to_owned();
    let html = html_escape(&plain);
    (plain, html)
}

impl Bridge {
    async fn reply_text(
        &self,
        event: &EventEnvelope,
        message: &RoomMessageEventContent,
        (plain, html): (String, String),
        conn: &mut Connection,
    ) -> Result<(), StoreError> {
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
            .await
    }

    /// Refuses a moderator's action to someone else; true when the sender may go on.
    async fn moderator_or_refuse(
        &self,
        event: &EventEnvelope,
        message: &RoomMessageEventContent,
        meeting: &Meeting,
        conn: &mut Connection,
    ) -> Result<bool, StoreError> {
        let ctx = &self.ctx;
        if ctx
            .may_moderate(conn, &event.room_id, &event.sender, meeting)
            .await?
        {
            return Ok(true);
        }
        tracing::info!(meeting = %meeting.id, user = %event.sender, "moderator action refused");
        let plain = MODERATORS_ONLY
            .get(ctx.lang)
            .replace("{level}", &ctx.end_power_level.to_string());
        let html = html_escape(&plain);
        self.reply_text(event, message, (plain, html), conn).await?;
        Ok(false)
    }

    /// `!visio accès <niveau>`.
    pub(super) async fn on_access(
        &self,
        event: &EventEnvelope,
        message: &RoomMessageEventContent,
        args: &str,
        meeting: Meeting,
        conn: &mut Connection,
    ) -> Result<(), StoreError> {
        let ctx = &self.ctx;
        let lang = ctx.lang;
        if !self
            .moderator_or_refuse(event, message, &meeting, conn)
            .await?
        {
            return Ok(());
        }
        let Some(level) = AccessLevel::from_command(args) else {
            return self
                .reply_text(event, message, text(ACCESS_USAGE, lang), conn)
                .await;
        };
        let rule = ctx.access.rule(event.room_id.as_str());
        if rule.effective(level) != level {
            let plain = PUBLIC_REFUSED
                .get(lang)
                .replace("{level}", rule.effective(meeting.access).label(lang));
            let html = html_escape(&plain);
            return self.reply_text(event, message, (plain, html), conn).await;
        }
        stored::set_access(conn, meeting.id.as_str(), level).await?;
        tracing::info!(meeting = %meeting.id, level = level.as_str(), by = %event.sender, "access level set");
        let now = now_ms();
        // Those who no longer qualify leave at once; their tokens die with it.
        for grant in stored::live_grants(conn, meeting.id.as_str()).await? {
            if !grant.via.still_allowed(level) {
                remove_participant(
                    conn,
                    &meeting,
                    &grant.identity,
                    RemovalReason::AccessChanged,
                    now,
                )
                .await?;
            }
        }
        let mut meeting = meeting;
        meeting.access = level;
        if level == AccessLevel::Public {
            for waiting in waiting_guests(conn, &meeting, now).await? {
                stored::decide_lobby(conn, &waiting.id, LobbyState::Admitted, None, None, now)
                    .await?;
            }
        }
        refresh_lobby_notice(ctx, conn, &meeting).await?;
        let plain = ACCESS_SET
            .get(lang)
            .replace("{title}", &meeting.title)
            .replace("{level}", level.label(lang))
            .replace("{explain}", level.explain(lang));
        let html = html_escape(&plain);
        self.reply_text(event, message, (plain, html), conn).await
    }

    /// `!visio entrer <code>`: the sender claims a page; they confirm privately.
    pub(super) async fn on_enter(
        &self,
        event: &EventEnvelope,
        message: &RoomMessageEventContent,
        args: &str,
        conn: &mut Connection,
    ) -> Result<(), StoreError> {
        let ctx = &self.ctx;
        let lang = ctx.lang;
        let access = &ctx.access;
        if access.codes_refused(&event.sender) {
            metrics::counter!("tchap_visio_identity_codes_total", "outcome" => "throttled")
                .increment(1);
            return self
                .reply_text(event, message, text(CODES_REFUSED, lang), conn)
                .await;
        }
        let now = now_ms();
        let found = match normalise_code(args) {
            Some(code) => stored::pending_by_code(conn, &code, now).await?,
            None => None,
        };
        let meeting = match &found {
            Some(v) => match crate::ids::MeetingId::parse(&v.meeting_id) {
                Ok(id) => meetings::get_by_id(conn, &id)
                    .await?
                    .filter(Meeting::is_joinable),
                Err(_) => None,
            },
            None => None,
        };
        let (Some(verification), Some(meeting)) = (found, meeting) else {
            access.code_failed(&event.sender);
            metrics::counter!("tchap_visio_identity_codes_total", "outcome" => "unknown")
                .increment(1);
            return self
                .reply_text(event, message, text(CODE_UNKNOWN, lang), conn)
                .await;
        };
        let room = meeting.matrix_room_id.clone().unwrap_or_default();
        match access.membership(&room, &event.sender) {
            Some(Some(m)) if m == "join" => {}
            Some(_) => {
                metrics::counter!("tchap_visio_identity_codes_total", "outcome" => "not_member")
                    .increment(1);
                tracing::info!(meeting = %meeting.id, user = %event.sender, "identity code from a non-member");
                return self
                    .reply_text(event, message, text(CODE_NOT_MEMBER, lang), conn)
                    .await;
            }
            None => {
                return self
                    .reply_text(event, message, text(CODE_UNCHECKED, lang), conn)
                    .await;
            }
        }
        let prompt = CONFIRM_PROMPT.get(lang).replace("{title}", &meeting.title);
        let mut content =
            RoomMessageEventContent::notice_html(prompt.clone(), html_escape(&prompt));
        content.mentions = Some(ruma::events::Mentions::new());
        let prompt_id = queue::enqueue(
            conn,
            &OutboundRequest::SendDirect {
                user_id: event.sender.clone(),
                content: serde_json::to_value(&content).expect("message content serialises"),
            },
        )
        .await?;
        let moved = stored::move_verification(
            conn,
            &verification.id,
            VerificationState::Pending,
            VerificationState::Confirming,
            Some(event.sender.as_str()),
            Some(prompt_id),
        )
        .await?;
        if !moved {
            return Ok(());
        }
        metrics::counter!("tchap_visio_identity_codes_total", "outcome" => "claimed").increment(1);
        tracing::info!(meeting = %meeting.id, user = %event.sender, "identity code claimed; asking for confirmation");
        let in_direct_room = stored::direct_room(conn, event.sender.as_str())
            .await?
            .as_deref()
            == Some(event.room_id.as_str());
        if in_direct_room {
            return Ok(());
        }
        self.reply_text(event, message, text(CODE_SENT_PRIVATELY, lang), conn)
            .await
    }

    /// `!visio admettre <n>` / `!visio refuser <n>`.
    pub(super) async fn on_lobby_command(
        &self,
        event: &EventEnvelope,
        message: &RoomMessageEventContent,
        args: &str,
        admit: bool,
        meeting: Meeting,
        conn: &mut Connection,
    ) -> Result<(), StoreError> {
        if !self
            .moderator_or_refuse(event, message, &meeting, conn)
            .await?
        {
            return Ok(());
        }
        let number = args
            .trim()
            .trim_start_matches(['n', '°', '#', ' '])
            .parse::<i64>()
            .ok();
        let now = now_ms();
        let waiting = match number {
            Some(n) => stored::lobby_request_by_number(conn, meeting.id.as_str(), n)
                .await?
                .filter(|r| r.state == LobbyState::Waiting && !lobby_expired(r, now)),
            None => None,
        };
        let Some(request) = waiting else {
            let plain = NOBODY_WITH_NUMBER
                .get(self.ctx.lang)
                .replace("{number}", args.trim());
            let html = html_escape(&plain);
            return self.reply_text(event, message, (plain, html), conn).await;
        };
        decide(&self.ctx, conn, &meeting, &request, admit, &event.sender).await
    }

    /// `!visio exclure <nom>`: a participant by the name the meeting shows.
    pub(super) async fn on_remove(
        &self,
        event: &EventEnvelope,
        message: &RoomMessageEventContent,
        args: &str,
        meeting: Meeting,
        conn: &mut Connection,
    ) -> Result<(), StoreError> {
        if !self
            .moderator_or_refuse(event, message, &meeting, conn)
            .await?
        {
            return Ok(());
        }
        let lang = self.ctx.lang;
        let wanted = args.trim().to_lowercase();
        let present: Vec<String> = crate::store::sessions::list_for_meeting(conn, &meeting.id)
            .await?
            .into_iter()
            .filter(|s| s.left_at.is_none())
            .map(|s| s.identity.as_str().to_owned())
            .collect();
        let grants = stored::live_grants(conn, meeting.id.as_str()).await?;
        let connected = grants
            .iter()
            .filter(|g| present.contains(&g.identity))
            .collect::<Vec<_>>();
        let exact: Vec<_> = connected
            .iter()
            .filter(|g| {
                g.name.to_lowercase() == wanted || g.user_id.as_deref() == Some(args.trim())
            })
            .collect();
        let matching: Vec<_> = if exact.is_empty() {
            connected
                .iter()
                .filter(|g| !wanted.is_empty() && g.name.to_lowercase().starts_with(&wanted))
                .collect()
        } else {
            exact
        };
        let reply = match matching.as_slice() {
            [one] => {
                remove_participant(
                    conn,
                    &meeting,
                    &one.identity,
                    RemovalReason::Removed,
                    now_ms(),
                )
                .await?;
                tracing::info!(meeting = %meeting.id, identity = %one.identity, by = %event.sender, "participant removed by a moderator");
                REMOVED.get(lang).replace("{name}", &one.name)
            }
            [] => NOBODY_NAMED.get(lang).replace("{name}", args.trim()),
            _ => SEVERAL_NAMED.get(lang).replace("{name}", args.trim()),
        };
        let html = html_escape(&reply);
        self.reply_text(event, message, (reply, html), conn).await
    }

    /// ✅ / ❌ on a lobby notice (moderators) or ✅ on a private confirmation prompt.
    pub(super) async fn on_reaction(
        &self,
        event: &EventEnvelope,
        conn: &mut Connection,
    ) -> Result<(), StoreError> {
        let relation = event.content.get("m.relates_to");
        let (Some(target), Some(key)) = (
            relation
                .and_then(|r| r.get("event_id"))
                .and_then(|e| e.as_str()),
            relation.and_then(|r| r.get("key")).and_then(|k| k.as_str()),
        ) else {
            return Ok(());
        };
        let key = key.trim_end_matches('\u{fe0f}');
        let yes = matches!(key, "✅" | "✔" | "👍");
        let no = matches!(key, "❌" | "✖" | "👎");
        if !yes && !no {
            return Ok(());
        }
        if yes && let Some(verification) = stored::verification_by_prompt(conn, target).await? {
            return self.on_confirmation(event, verification, conn).await;
        }
        let Some(meeting_id) = stored::meeting_of_lobby_notice(conn, target).await? else {
            return Ok(());
        };
        let Ok(id) = crate::ids::MeetingId::parse(&meeting_id) else {
            return Ok(());
        };
        let Some(meeting) = meetings::get_by_id(conn, &id).await? else {
            return Ok(());
        };
        if meeting.state == MeetingState::Ended
            || !self
                .ctx
                .may_moderate(conn, &event.room_id, &event.sender, &meeting)
                .await?
        {
            tracing::debug!(meeting = %meeting.id, user = %event.sender, "lobby reaction ignored");
            return Ok(());
        }
        // One notice for the whole lobby: a reaction decides for whoever waits longest.
        let Some(first) = waiting_guests(conn, &meeting, now_ms())
            .await?
            .into_iter()
            .next()
        else {
            return Ok(());
        };
        decide(&self.ctx, conn, &meeting, &first, yes, &event.sender).await
    }

    async fn on_confirmation(
        &self,
        event: &EventEnvelope,
        verification: stored::Verification,
        conn: &mut Connection,
    ) -> Result<(), StoreError> {
        if verification.user_id.as_deref() != Some(event.sender.as_str())
            || verification.expired(now_ms())
        {
            return Ok(());
        }
        let moved = stored::move_verification(
            conn,
            &verification.id,
            VerificationState::Confirming,
            VerificationState::Verified,
            None,
            None,
        )
        .await?;
        if !moved {
            return Ok(());
        }
        metrics::counter!("tchap_visio_identity_codes_total", "outcome" => "confirmed")
            .increment(1);
        tracing::info!(meeting = %verification.meeting_id, user = %event.sender, "identity confirmed");
        let title = match crate::ids::MeetingId::parse(&verification.meeting_id) {
            Ok(id) => meetings::get_by_id(conn, &id).await?.map(|m| m.title),
            Err(_) => None,
        }
        .unwrap_or_default();
        let plain = CONFIRMED.get(self.ctx.lang).replace("{title}", &title);
        let html = html_escape(&plain);
        self.ctx
            .bot
            .send(
                &event.room_id,
                RoomMessageEventContent::notice_html(plain, html),
                conn,
            )
            .await
    }

    /// A member who leaves or is banned from a meeting's room leaves its meeting.
    pub(super) async fn on_membership(
        &self,
        event: &EventEnvelope,
        user: &UserId,
        membership: &str,
        conn: &mut Connection,
    ) -> Result<(), StoreError> {
        if membership == "leave" {
            stored::forget_direct_room(conn, user.as_str(), event.room_id.as_str()).await?;
        }
        let reason = match membership {
            "leave" => RemovalReason::LeftRoom,
            "ban" => RemovalReason::Banned,
            _ => return Ok(()),
        };
        let room = event.room_id.as_str();
        // The room's meeting and any Element Call call on our focus there.
        let mut followed = meetings::live_calls_for_room(conn, room).await?;
        followed.extend(meetings::active_for_room(conn, room).await?);
        let now = now_ms();
        for meeting in followed {
            for grant in stored::live_grants(conn, meeting.id.as_str()).await? {
                if grant.user_id.as_deref() == Some(user.as_str()) {
                    tracing::info!(meeting = %meeting.id, %user, membership, "member out of the room; out of the meeting too");
                    remove_participant(conn, &meeting, &grant.identity, reason, now).await?;
                }
            }
        }
        Ok(())
    }
}

/// Revokes an identity's tokens and queues its removal from the SFU room; the caller
/// wakes the effects worker after commit.
pub async fn remove_participant(
    conn: &mut Connection,
    meeting: &Meeting,
    identity: &str,
    reason: RemovalReason,
    now: i64,
) -> Result<(), StoreError> {
    stored::revoke(conn, meeting.id.as_str(), identity, reason.as_str(), now).await?;
    metrics::counter!("tchap_visio_participants_removed_total", "reason" => reason.as_str())
        .increment(1);
    effects::enqueue(
        conn,
        &SfuEffect::RemoveParticipant {
            meeting: meeting.sfu_room_name().to_owned(),
            identity: identity.to_owned(),
            why: reason.as_str().to_owned(),
        },
    )
    .await?;
    Ok(())
}

fn lobby_expired(request: &LobbyRequest, now: i64) -> bool {
    now - request.created_at >= LOBBY_WAIT_MS
}

/// Guests still waiting, longest first; those who waited too long are marked expired.
pub async fn waiting_guests(
    conn: &mut Connection,
    meeting: &Meeting,
    now: i64,
) -> Result<Vec<LobbyRequest>, StoreError> {
    let mut waiting = Vec::new();
    for request in stored::lobby_of(conn, meeting.id.as_str()).await? {
        if request.state != LobbyState::Waiting {
            continue;
        }
        if lobby_expired(&request, now) {
            stored::decide_lobby(conn, &request.id, LobbyState::Expired, None, None, now).await?;
        } else {
            waiting.push(request);
        }
    }
    Ok(waiting)
}

/// Admits or refuses one waiting guest and updates the notice.
pub async fn decide(
    ctx: &BridgeContext,
    conn: &mut Connection,
    meeting: &Meeting,
    request: &LobbyRequest,
    admit: bool,
    by: &UserId,
) -> Result<(), StoreError> {
    let state = if admit {
        LobbyState::Admitted
    } else {
        LobbyState::Refused
    };
    if stored::decide_lobby(conn, &request.id, state, Some(by.as_str()), None, now_ms()).await? {
        metrics::counter!("tchap_visio_lobby_decisions_total", "decision" => state.as_str())
            .increment(1);
        tracing::info!(meeting = %meeting.id, number = request.number, decision = state.as_str(), %by, "lobby decision");
        refresh_lobby_notice(ctx, conn, meeting).await?;
    }
    Ok(())
}

/// Posts the meeting's lobby notice in its thread, or edits the one posted: who waits,
/// with their numbers, and the latest decisions with who made them.
pub async fn refresh_lobby_notice(
    ctx: &BridgeContext,
    conn: &mut Connection,
    meeting: &Meeting,
) -> Result<(), StoreError> {
    let Some(room) = room_of(meeting) else {
        return Ok(());
    };
    let requests = stored::lobby_of(conn, meeting.id.as_str()).await?;
    if requests.is_empty() {
        return Ok(());
    }
    let names: HashMap<String, String> = requests
        .iter()
        .filter_map(|r| r.decided_by.as_deref())
        .filter_map(|user| {
            let id = UserId::parse(user).ok()?;
            Some((
                user.to_owned(),
                ctx.name_in_room(&room, &id)
                    .unwrap_or_else(|| user.to_owned()),
            ))
        })
        .collect();
    let restricted = ctx.access.rule(room.as_str()) == RoomRule::Restricted;
    let (plain, html) = lobby_notice(meeting, &requests, &names, restricted, now_ms(), ctx.lang);
    let mut content = RoomMessageEventContent::notice_html(plain, html);
    content.mentions = Some(ruma::events::Mentions::new());
    let content = serde_json::to_value(&content).expect("message content serialises");
    match meeting.lobby_notice_id {
        Some(of) => {
            queue::enqueue(
                conn,
                &OutboundRequest::Edit {
                    room_id: room,
                    of,
                    content,
                },
            )
            .await?;
        }
        None => {
            let id = queue::enqueue(
                conn,
                &OutboundRequest::Send {
                    room_id: room,
                    as_user: None,
                    event_type: "m.room.message".into(),
                    content,
                    in_thread_of: meeting.link_notice_id,
                    attribution: None,
                },
            )
            .await?;
            stored::set_lobby_notice(conn, meeting.id.as_str(), id).await?;
        }
    }
    Ok(())
}

/// Decisions the notice keeps showing.
const DECISIONS_SHOWN: usize = 5;

/// The lobby notice's text: `names` maps deciders' ids to their names in the room.
pub fn lobby_notice(
    meeting: &Meeting,
    requests: &[LobbyRequest],
    names: &HashMap<String, String>,
    restricted: bool,
    now: i64,
    lang: Language,
) -> (String, String) {
    let fr = lang == Language::Fr;
    let title = if fr {
        format!("🚪 Salle d’attente de « {} »", meeting.title)
    } else {
        format!("🚪 Lobby of “{}”", meeting.title)
    };
    let who = |r: &LobbyRequest| -> String {
        match (&r.user_id, restricted, fr) {
            (Some(user), _, true) => format!("{} ({user}, non membre)", r.name),
            (Some(user), _, false) => format!("{} ({user}, not a member)", r.name),
            (None, true, true) => format!("{} (non identifié·e)", r.name),
            (None, true, false) => format!("{} (not identified)", r.name),
            (None, false, true) => format!("{} (invité·e)", r.name),
            (None, false, false) => format!("{} (guest)", r.name),
        }
    };
    let waiting: Vec<&LobbyRequest> = requests
        .iter()
        .filter(|r| r.state == LobbyState::Waiting && !lobby_expired(r, now))
        .collect();
    let mut lines = Vec::new();
    for (i, r) in waiting.iter().enumerate() {
        let n = r.number;
        let how = match (i, fr) {
            (0, true) => {
                format!("réagissez ✅ / ❌, ou `!visio admettre {n}` / `!visio refuser {n}`")
            }
            (0, false) => format!("react ✅ / ❌, or `!visio admit {n}` / `!visio deny {n}`"),
            (_, true) => format!("`!visio admettre {n}` / `!visio refuser {n}`"),
            (_, false) => format!("`!visio admit {n}` / `!visio deny {n}`"),
        };
        let waits = if fr { "attend" } else { "is waiting" };
        lines.push(format!("{n}. {} {waits} — {how}", who(r)));
    }
    if waiting.is_empty() {
        lines.push(
            if fr {
                "Personne n’attend."
            } else {
                "Nobody is waiting."
            }
            .to_owned(),
        );
    } else if waiting.len() >= LOBBY_CAPACITY {
        lines.push(
            if fr {
                "Salle d’attente pleine."
            } else {
                "The lobby is full."
            }
            .to_owned(),
        );
    }
    let mut decided: Vec<&LobbyRequest> = requests
        .iter()
        .filter(|r| r.state != LobbyState::Waiting || lobby_expired(r, now))
        .collect();
    decided
        .sort_by_key(|r| std::cmp::Reverse(r.decided_at.unwrap_or(r.created_at + LOBBY_WAIT_MS)));
    for r in decided.into_iter().take(DECISIONS_SHOWN) {
        let by = r
            .decided_by
            .as_deref()
            .map(|u| names.get(u).cloned().unwrap_or_else(|| u.to_owned()));
        let what = match (r.state, by, fr) {
            (LobbyState::Admitted, Some(by), true) => format!("✅ admis·e par {by}"),
            (LobbyState::Admitted, Some(by), false) => format!("✅ admitted by {by}"),
            (LobbyState::Admitted, None, true) => "✅ entré·e (accès public)".to_owned(),
            (LobbyState::Admitted, None, false) => "✅ entered (public access)".to_owned(),
            (LobbyState::Refused, Some(by), true) => format!("❌ refusé·e par {by}"),
            (LobbyState::Refused, Some(by), false) => format!("❌ turned away by {by}"),
            (LobbyState::Refused, None, true) => "❌ refusé·e".to_owned(),
            (LobbyState::Refused, None, false) => "❌ turned away".to_owned(),
            (LobbyState::Left, _, true) => "🚪 est parti·e".to_owned(),
            (LobbyState::Left, _, false) => "🚪 left".to_owned(),
            (_, _, true) => "⌛ a attendu trop longtemps".to_owned(),
            (_, _, false) => "⌛ waited too long".to_owned(),
        };
        lines.push(format!("{}. {} — {what}", r.number, who(r)));
    }
    let plain = format!("{title}\n{}", lines.join("\n"));
    let html = format!(
        "<p><strong>{}</strong></p><ul>{}</ul>",
        html_escape(&title),
        lines
            .iter()
            .map(|l| format!("<li>{}</li>", code_spans(&html_escape(l))))
            .collect::<String>()
    );
    (plain, html)
}

/// `text` (already escaped) with its back-quoted parts as `<code>`.
fn code_spans(text: &str) -> String {
    let mut out = String::new();
    for (i, part) in text.split('`').enumerate() {
        if i % 2 == 1 {
            out.push_str(&format!("<code>{part}</code>"));
        } else {
            out.push_str(part);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(number: i64, name: &str, state: LobbyState, by: Option<&str>) -> LobbyRequest {
        LobbyRequest {
            id: format!("l{number}"),
            meeting_id: "m".into(),
            number,
            name: name.into(),
            user_id: None,
            browser: "b".into(),
            identity: format!("i{number}"),
            state,
            decided_by: by.map(str::to_owned),
            reason: None,
            created_at: 1_000 + number,
            decided_at: by.map(|_| 2_000 + number),
        }
    }

    #[test]
    fn the_lobby_notice_lists_who_waits_by_number_and_who_decided() {
        let meeting = Meeting::new("Point hebdo", None, None, 0).expect("meeting");
        let names = HashMap::from([("@alice:hs".to_owned(), "Alice".to_owned())]);
        let requests = vec![
            request(1, "Zoé", LobbyState::Admitted, Some("@alice:hs")),
            request(2, "Marc", LobbyState::Waiting, None),
            request(3, "Léa", LobbyState::Waiting, None),
        ];
        let (plain, html) = lobby_notice(&meeting, &requests, &names, false, 5_000, Language::Fr);
        assert!(plain.contains("« Point hebdo »"), "{plain}");
        assert!(
            plain.contains("2. Marc (invité·e) attend — réagissez ✅ / ❌, ou `!visio admettre 2` / `!visio refuser 2`"),
            "{plain}"
        );
        assert!(
            plain.contains("3. Léa (invité·e) attend — `!visio admettre 3`"),
            "{plain}"
        );
        assert!(
            plain.contains("1. Zoé (invité·e) — ✅ admis·e par Alice"),
            "{plain}"
        );
        assert!(html.contains("<code>!visio admettre 2</code>"), "{html}");

        let (plain, _) = lobby_notice(&meeting, &requests[..1], &names, true, 5_000, Language::En);
        assert!(plain.contains("Nobody is waiting."), "{plain}");
        assert!(
            plain.contains("Zoé (not identified) — ✅ admitted by Alice"),
            "{plain}"
        );
    }

    #[test]
    fn a_guest_who_waited_too_long_is_shown_as_such() {
        let meeting = Meeting::new("Point", None, None, 0).expect("meeting");
        let requests = vec![request(1, "Zoé", LobbyState::Waiting, None)];
        let (plain, _) = lobby_notice(
            &meeting,
            &requests,
            &HashMap::new(),
            false,
            1_001 + LOBBY_WAIT_MS,
            Language::Fr,
        );
        assert!(plain.contains("Personne n’attend."), "{plain}");
        assert!(plain.contains("⌛"), "{plain}");
    }

    #[test]
    fn wrong_codes_are_counted_per_user_and_forgotten_after_the_window() {
        let runtime = AccessRuntime::new(
            AccessLevel::Trusted,
            Arc::new(RoomView::new(None, Vec::new())),
            crate::auth::openid::OpenIdVerifier::new(
                ruma::ServerName::parse("hs").expect("name"),
                "http://127.0.0.1:1",
            ),
        );
        let mallory = UserId::parse("@mallory:hs").expect("user");
        let alice = UserId::parse("@alice:hs").expect("user");
        for _ in 0..CODE_FAILURES_ALLOWED {
            assert!(!runtime.codes_refused(&mallory));
            runtime.code_failed(&mallory);
        }
        assert!(runtime.codes_refused(&mallory));
        assert!(!runtime.codes_refused(&alice));
        if let Some(times) = runtime
            .code_failures
            .lock()
            .expect("lock")
            .get_mut(&mallory)
        {
            for t in times.iter_mut() {
                *t = t
                    .checked_sub(CODE_FAILURE_WINDOW)
                    .expect("the clock runs long enough");
            }
        }
        assert!(!runtime.codes_refused(&mallory));
    }
}
