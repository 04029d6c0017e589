//! Room membership and rules as the homeserver sees them, never as a page claims: the
//! one place the join endpoint, identity codes and (later) Element Call's token service
//! ask who is in a meeting's room. Lookups are made as the bot, which is in every
//! meeting's room; rules (which change rarely) are kept briefly, memberships never.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::matrix::client::{CallError, MatrixClient, url_component};
use crate::meeting::access::{Person, RoomRule, is_external};

/// How long a room's Tchap rule and power levels are reused.
const RULE_TTL: Duration = Duration::from_secs(30);
/// Longest wait for one lookup: a join must answer, homeserver or not.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the homeserver's view could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the room's membership from the homeserver: {0}")]
pub struct LookupError(#[from] CallError);

/// Whether a user is joined to a room, and who could tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Joined {
    /// Joined; `bot_in_room` when the bot's own view said so (it is in the room), with
    /// the user's display name there.
    Yes {
        bot_in_room: bool,
        display_name: Option<String>,
    },
    /// Not joined (never was, left, banned, invited), or no such room.
    No,
    /// Nobody could tell: the bot is not in the room and the homeserver does not answer
    /// MSC4502's `is_joined` to us (an ordinary account, or the flag is off). The text
    /// says which.
    Unknown(&'static str),
}

/// The homeserver's view of meeting rooms.
#[derive(Debug)]
pub struct RoomView {
    client: Option<MatrixClient>,
    external_servers: Vec<String>,
    rules: Mutex<HashMap<String, (RoomRule, Instant)>>,
    /// The bot's user id, whose own membership says whether its view of a room is
    /// current (a room it left answers with the state at its departure).
    bot_user: Option<String>,
    bot_in: Mutex<HashMap<String, (bool, Instant)>>,
}

impl RoomView {
    pub fn new(client: Option<MatrixClient>, external_servers: Vec<String>) -> Self {
        Self {
            client,
            external_servers,
            rules: Mutex::new(HashMap::new()),
            bot_user: None,
            bot_in: Mutex::new(HashMap::new()),
        }
    }

    /// Names the bot, so that [`RoomView::joined`] uses its view only of rooms it is in.
    pub fn with_bot_user(mut self, bot: &str) -> Self {
        self.bot_user = Some(bot.to_owned());
        self
    }

    /// Whether the bot is joined to `room` (kept [`RULE_TTL`]); true when it is not named.
    async fn bot_is_in(&self, room: &str) -> Result<bool, LookupError> {
        let Some(bot) = &self.bot_user else {
            return Ok(true);
        };
        if let Some((inside, at)) = self.bot_in.lock().ok().and_then(|c| c.get(room).copied())
            && at.elapsed() < RULE_TTL
        {
            return Ok(inside);
        }
        let inside = match self.state(room, "m.room.member", bot).await {
            Ok(content) => {
                content.and_then(|c| c.get("membership")?.as_str().map(str::to_owned))
                    == Some("join".into())
            }
            Err(LookupError(CallError::Matrix { status: 403, .. })) => false,
            Err(e) => return Err(e),
        };
        if let Ok(mut cache) = self.bot_in.lock() {
            if cache.len() > 10_000 {
                cache.clear();
            }
            cache.insert(room.to_owned(), (inside, Instant::now()));
        }
        Ok(inside)
    }

    async fn state(
        &self,
        room: &str,
        event_type: &str,
        state_key: &str,
    ) -> Result<Option<serde_json::Value>, LookupError> {
        let Some(client) = &self.client else {
            return Ok(None);
        };
        let path = format!(
            "/_matrix/client/v3/rooms/{}/state/{}/{}",
            url_component(room),
            url_component(event_type),
            url_component(state_key)
        );
        let call = client.call_json("GET", &path, None, None, None);
        match tokio::time::timeout(LOOKUP_TIMEOUT, call).await {
            Ok(Ok(content)) => Ok(Some(content)),
            Ok(Err(CallError::Matrix { status: 404, .. })) => Ok(None),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(CallError::Unreachable("the lookup timed out".into()).into()),
        }
    }

    /// `user`'s membership of `room` (`join`, `invite`, `leave`, `ban`, `knock`), `None`
    /// when they never were in it.
    pub async fn membership(&self, room: &str, user: &str) -> Result<Option<String>, LookupError> {
        Ok(self
            .state(room, "m.room.member", user)
            .await?
            .and_then(|c| c.get("membership")?.as_str().map(str::to_owned)))
    }

    /// Whether `user` is joined to `room`: the bot's view where the bot is in the room,
    /// else MSC4502's `is_joined`, asked with the appservice's token (rooms the bot is not
    /// in; the registration's `io.element.msc4502.scopes`).
    pub async fn joined(&self, room: &str, user: &str) -> Result<Joined, LookupError> {
        let Some(client) = &self.client else {
            return Ok(Joined::Unknown("no homeserver client"));
        };
        let path = format!(
            "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
            url_component(room),
            url_component(user)
        );
        let bot_in = self.bot_is_in(room).await?;
        let call = async {
            if bot_in {
                client.call_json("GET", &path, None, None, None).await
            } else {
                Err(CallError::Matrix {
                    status: 403,
                    errcode: "M_FORBIDDEN".into(),
                    error: "the bot is not in the room".into(),
                    retry_after: None,
                })
            }
        };
        match tokio::time::timeout(LOOKUP_TIMEOUT, call).await {
            Ok(Ok(content)) => {
                let field = |name: &str| content.get(name).and_then(|v| v.as_str());
                return Ok(if field("membership") == Some("join") {
                    Joined::Yes {
                        bot_in_room: true,
                        display_name: field("displayname")
                            .and_then(|n| crate::meeting::validate_display_name(n).ok()),
                    }
                } else {
                    Joined::No
                });
            }
            // The bot is in the room, the user never was.
            Ok(Err(CallError::Matrix { status: 404, .. })) => return Ok(Joined::No),
            // The bot is not in the room (or there is no such room): ask MSC4502.
            Ok(Err(CallError::Matrix { status: 403, .. })) => {}
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Err(CallError::Unreachable("the lookup timed out".into()).into()),
        }
        if client.is_ordinary_account() {
            return Ok(Joined::Unknown(
                "the bot is not in this room (an ordinary account cannot ask the homeserver otherwise)",
            ));
        }
        let path = format!(
            "/_matrix/client/unstable/io.element.msc4502/rooms/{}/is_joined?mxid={}",
            url_component(room),
            url_component(user)
        );
        let call = client.call_json("GET", &path, None, None, None);
        match tokio::time::timeout(LOOKUP_TIMEOUT, call).await {
            Ok(Ok(answer)) => Ok(match answer.get("joined").and_then(|j| j.as_bool()) {
                Some(true) => Joined::Yes {
                    bot_in_room: false,
                    display_name: None,
                },
                Some(false) => Joined::No,
                None => Joined::Unknown("the homeserver's is_joined answer holds no `joined`"),
            }),
            Ok(Err(CallError::Matrix {
                status: 400 | 403 | 404 | 405,
                ..
            })) => Ok(Joined::Unknown(
                "the bot is not in this room and the homeserver does not answer MSC4502's is_joined \
                 (experimental_features.msc4502_enabled, and the registration's io.element.msc4502.scopes)",
            )),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(CallError::Unreachable("the lookup timed out".into()).into()),
        }
    }

    /// The room's Tchap rule as last looked up, if recently: for texts that must not wait
    /// on the homeserver (a lobby notice written inside a transaction).
    pub fn cached_rule(&self, room: &str) -> Option<RoomRule> {
        let (rule, at) = self.rules.lock().ok()?.get(room).copied()?;
        (at.elapsed() < RULE_TTL).then_some(rule)
    }

    /// The room's Tchap access rule.
    pub async fn rule(&self, room: &str) -> Result<RoomRule, LookupError> {
        if let Some((rule, at)) = self.rules.lock().ok().and_then(|c| c.get(room).copied())
            && at.elapsed() < RULE_TTL
        {
            return Ok(rule);
        }
        let content = self.state(room, "im.vector.room.access_rules", "").await?;
        let rule = RoomRule::from_rule(
            content
                .as_ref()
                .and_then(|c| c.get("rule"))
                .and_then(|r| r.as_str()),
        );
        if let Ok(mut cache) = self.rules.lock() {
            if cache.len() > 10_000 {
                cache.clear();
            }
            cache.insert(room.to_owned(), (rule, Instant::now()));
        }
        Ok(rule)
    }

    /// The room's power levels content (empty when it has none).
    pub async fn power_levels(&self, room: &str) -> Result<serde_json::Value, LookupError> {
        Ok(self
            .state(room, "m.room.power_levels", "")
            .await?
            .unwrap_or_default())
    }

    /// `user`'s power level in `room`.
    pub async fn power_level(&self, room: &str, user: &str) -> Result<i64, LookupError> {
        Ok(power_level_in(&self.power_levels(room).await?, user))
    }

    /// Whether `user` is of an external server.
    pub fn is_external(&self, user: &str) -> bool {
        is_external(user, &self.external_servers)
    }

    /// `user` as the admission rule sees them in `room`, and their display name there.
    pub async fn person(
        &self,
        room: &str,
        user: &str,
    ) -> Result<(Person, Option<String>), LookupError> {
        let content = self.state(room, "m.room.member", user).await?;
        let field = |name: &str| {
            content
                .as_ref()
                .and_then(|c| c.get(name))
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        let membership = field("membership");
        let name = field("displayname")
            .filter(|_| membership.as_deref() == Some("join"))
            .and_then(|n| crate::meeting::validate_display_name(&n).ok());
        Ok((
            Person::Identified {
                membership,
                external: self.is_external(user),
            },
            name,
        ))
    }
}

/// A user's level in `m.room.power_levels` content (`users`, else `users_default`).
pub fn power_level_in(levels: &serde_json::Value, user: &str) -> i64 {
    let as_int = |v: &serde_json::Value| {
        v.as_i64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
    };
    levels
        .get("users")
        .and_then(|u| u.get(user))
        .and_then(as_int)
        .or_else(|| levels.get("users_default").and_then(as_int))
        .unwrap_or(0)
}
