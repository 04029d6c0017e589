//! Who may join, as stored: meetings' access levels, identity codes, the lobby, join
//! grants (every identity a token was issued for, and its revocation) and the bot's
//! one-to-one rooms. State changes are conditional updates, so two deciders (a reaction
//! and a command, two pages) never both win.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Connection, StoreError};
use crate::meeting::AccessLevel;
use crate::meeting::access::Via;

macro_rules! verification_columns {
    () => {
        "v.id, v.meeting_id, v.code, v.browser, v.state, v.user_id, v.prompt_outbound_id, \
         v.created_at, v.expires_at"
    };
}
macro_rules! lobby_columns {
    () => {
        "id, meeting_id, number, name, user_id, browser, identity, state, decided_by, reason, \
         created_at, decided_at"
    };
}
macro_rules! grant_columns {
    () => {
        "meeting_id, identity, user_id, name, via, issued_at, revoked_at"
    };
}

pub async fn set_access(
    conn: &mut Connection,
    meeting_id: &str,
    level: AccessLevel,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE meetings SET access = $2 WHERE id = $1")
        .bind(meeting_id)
        .bind(level.as_str())
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn set_lobby_notice(
    conn: &mut Connection,
    meeting_id: &str,
    outbound_id: i64,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE meetings SET lobby_notice_id = $2 WHERE id = $1")
        .bind(meeting_id)
        .bind(outbound_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// The meeting whose lobby notice became `event_id`.
pub async fn meeting_of_lobby_notice(
    conn: &mut Connection,
    event_id: &str,
) -> Result<Option<String>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT m.id FROM meetings m JOIN outbound o ON o.id = m.lobby_notice_id \
         WHERE o.event_id = $1",
    )
    .bind(event_id)
    .fetch_optional(conn)
    .await?)
}

// ----- identity codes ----------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerificationState {
    /// Waiting for someone to send the code.
    Pending,
    /// Sent by `user_id`, who has not confirmed yet.
    Confirming,
    /// Confirmed: the page is `user_id`'s.
    Verified,
    /// Used for a join.
    Used,
}

impl VerificationState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Confirming => "confirming",
            Self::Verified => "verified",
            Self::Used => "used",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(Self::Pending),
            "confirming" => Some(Self::Confirming),
            "verified" => Some(Self::Verified),
            "used" => Some(Self::Used),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    pub id: String,
    pub meeting_id: String,
    pub code: String,
    /// Pseudonym of the browser that asked; only it may use the result.
    pub browser: String,
    pub state: VerificationState,
    pub user_id: Option<String>,
    pub prompt_outbound_id: Option<i64>,
    pub created_at: i64,
    pub expires_at: i64,
}

impl Verification {
    pub fn expired(&self, now_ms: i64) -> bool {
        now_ms >= self.expires_at
    }
}

fn verification(row: &AnyRow) -> Result<Verification, StoreError> {
    let state: String = row.try_get("state")?;
    Ok(Verification {
        id: row.try_get("id")?,
        meeting_id: row.try_get("meeting_id")?,
        code: row.try_get("code")?,
        browser: row.try_get("browser")?,
        state: VerificationState::parse(&state).ok_or_else(|| StoreError::Corrupt {
            table: "verifications",
            detail: format!("state `{state}`"),
        })?,
        user_id: row.try_get("user_id")?,
        prompt_outbound_id: row.try_get("prompt_outbound_id")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
    })
}

pub async fn create_verification(
    conn: &mut Connection,
    v: &Verification,
) -> Result<(), StoreError> {
    // Expired codes are of no use to anyone; each new one sweeps them.
    sqlx::query("DELETE FROM verifications WHERE expires_at < $1")
        .bind(v.created_at - 3_600_000)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "INSERT INTO verifications (id, meeting_id, code, browser, state, user_id, \
         prompt_outbound_id, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(&v.id)
    .bind(&v.meeting_id)
    .bind(&v.code)
    .bind(&v.browser)
    .bind(v.state.as_str())
    .bind(v.user_id.as_deref())
    .bind(v.prompt_outbound_id)
    .bind(v.created_at)
    .bind(v.expires_at)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn verification_by_id(
    conn: &mut Connection,
    id: &str,
) -> Result<Option<Verification>, StoreError> {
    let sql = concat!(
        "SELECT ",
        verification_columns!(),
        " FROM verifications v WHERE v.id = $1"
    );
    sqlx::query(sql)
        .bind(id)
        .fetch_optional(conn)
        .await?
        .as_ref()
        .map(verification)
        .transpose()
}

/// The live, not yet used code `code` (at most one: codes are random, 40 bits).
pub async fn pending_by_code(
    conn: &mut Connection,
    code: &str,
    now_ms: i64,
) -> Result<Option<Verification>, StoreError> {
    let sql = concat!(
        "SELECT ",
        verification_columns!(),
        " FROM verifications v \
         WHERE v.code = $1 AND v.state = 'pending' AND v.expires_at > $2 LIMIT 1"
    );
    sqlx::query(sql)
        .bind(code)
        .bind(now_ms)
        .fetch_optional(conn)
        .await?
        .as_ref()
        .map(verification)
        .transpose()
}

/// The verification whose private confirmation prompt became `event_id`.
pub async fn verification_by_prompt(
    conn: &mut Connection,
    event_id: &str,
) -> Result<Option<Verification>, StoreError> {
    let sql = concat!(
        "SELECT ",
        verification_columns!(),
        " FROM verifications v \
         JOIN outbound o ON o.id = v.prompt_outbound_id WHERE o.event_id = $1"
    );
    sqlx::query(sql)
        .bind(event_id)
        .fetch_optional(conn)
        .await?
        .as_ref()
        .map(verification)
        .transpose()
}

/// Moves a verification from `from` to `to` (with its user and prompt when given);
/// false when it was not in `from` any more.
pub async fn move_verification(
    conn: &mut Connection,
    id: &str,
    from: VerificationState,
    to: VerificationState,
    user_id: Option<&str>,
    prompt_outbound_id: Option<i64>,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE verifications SET state = $3, user_id = COALESCE($4, user_id), \
         prompt_outbound_id = COALESCE($5, prompt_outbound_id) WHERE id = $1 AND state = $2",
    )
    .bind(id)
    .bind(from.as_str())
    .bind(to.as_str())
    .bind(user_id)
    .bind(prompt_outbound_id)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

// ----- the lobby ---------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LobbyState {
    Waiting,
    Admitted,
    Refused,
    Expired,
    /// The guest gave up waiting (closed or cancelled their page).
    Left,
}

impl LobbyState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Waiting => "waiting",
            Self::Admitted => "admitted",
            Self::Refused => "refused",
            Self::Expired => "expired",
            Self::Left => "left",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "waiting" => Some(Self::Waiting),
            "admitted" => Some(Self::Admitted),
            "refused" => Some(Self::Refused),
            "expired" => Some(Self::Expired),
            "left" => Some(Self::Left),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LobbyRequest {
    pub id: String,
    pub meeting_id: String,
    /// Stable within the meeting: what `!visio admettre <n>` names.
    pub number: i64,
    pub name: String,
    /// A Matrix user who identified but is not a member of the room.
    pub user_id: Option<String>,
    pub browser: String,
    pub identity: String,
    pub state: LobbyState,
    pub decided_by: Option<String>,
    pub reason: Option<String>,
    pub created_at: i64,
    pub decided_at: Option<i64>,
}

fn lobby_request(row: &AnyRow) -> Result<LobbyRequest, StoreError> {
    let state: String = row.try_get("state")?;
    Ok(LobbyRequest {
        id: row.try_get("id")?,
        meeting_id: row.try_get("meeting_id")?,
        number: row.try_get("number")?,
        name: row.try_get("name")?,
        user_id: row.try_get("user_id")?,
        browser: row.try_get("browser")?,
        identity: row.try_get("identity")?,
        state: LobbyState::parse(&state).ok_or_else(|| StoreError::Corrupt {
            table: "lobby_requests",
            detail: format!("state `{state}`"),
        })?,
        decided_by: row.try_get("decided_by")?,
        reason: row.try_get("reason")?,
        created_at: row.try_get("created_at")?,
        decided_at: row.try_get("decided_at")?,
    })
}

/// Adds a guest to the lobby with the meeting's next number; returns that number.
pub async fn enter_lobby(conn: &mut Connection, r: &LobbyRequest) -> Result<i64, StoreError> {
    let number: i64 = sqlx::query_scalar(
        "SELECT COALESCE(MAX(number), 0) + 1 FROM lobby_requests WHERE meeting_id = $1",
    )
    .bind(&r.meeting_id)
    .fetch_one(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO lobby_requests (id, meeting_id, number, name, user_id, browser, identity, \
         state, decided_by, reason, created_at, decided_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'waiting', NULL, NULL, $8, NULL)",
    )
    .bind(&r.id)
    .bind(&r.meeting_id)
    .bind(number)
    .bind(&r.name)
    .bind(r.user_id.as_deref())
    .bind(&r.browser)
    .bind(&r.identity)
    .bind(r.created_at)
    .execute(conn)
    .await?;
    Ok(number)
}

pub async fn lobby_request_by_id(
    conn: &mut Connection,
    id: &str,
) -> Result<Option<LobbyRequest>, StoreError> {
    let sql = concat!(
        "SELECT ",
        lobby_columns!(),
        " FROM lobby_requests WHERE id = $1"
    );
    sqlx::query(sql)
        .bind(id)
        .fetch_optional(conn)
        .await?
        .as_ref()
        .map(lobby_request)
        .transpose()
}

pub async fn lobby_request_by_number(
    conn: &mut Connection,
    meeting_id: &str,
    number: i64,
) -> Result<Option<LobbyRequest>, StoreError> {
    let sql = concat!(
        "SELECT ",
        lobby_columns!(),
        " FROM lobby_requests WHERE meeting_id = $1 AND number = $2"
    );
    sqlx::query(sql)
        .bind(meeting_id)
        .bind(number)
        .fetch_optional(conn)
        .await?
        .as_ref()
        .map(lobby_request)
        .transpose()
}

/// A meeting's lobby requests, oldest first: those waiting, and the last `decided`
/// decisions (what the notice shows).
pub async fn lobby_of(
    conn: &mut Connection,
    meeting_id: &str,
) -> Result<Vec<LobbyRequest>, StoreError> {
    let sql = concat!(
        "SELECT ",
        lobby_columns!(),
        " FROM lobby_requests WHERE meeting_id = $1 ORDER BY number"
    );
    sqlx::query(sql)
        .bind(meeting_id)
        .fetch_all(conn)
        .await?
        .iter()
        .map(lobby_request)
        .collect()
}

/// Decides a waiting request; false when it was no longer waiting.
pub async fn decide_lobby(
    conn: &mut Connection,
    id: &str,
    state: LobbyState,
    decided_by: Option<&str>,
    reason: Option<&str>,
    now_ms: i64,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE lobby_requests SET state = $2, decided_by = $3, reason = $4, decided_at = $5 \
         WHERE id = $1 AND state = 'waiting'",
    )
    .bind(id)
    .bind(state.as_str())
    .bind(decided_by)
    .bind(reason)
    .bind(now_ms)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

// ----- join grants -------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub meeting_id: String,
    pub identity: String,
    pub user_id: Option<String>,
    pub name: String,
    pub via: Via,
    pub issued_at: i64,
    pub revoked_at: Option<i64>,
}

fn grant(row: &AnyRow) -> Result<Grant, StoreError> {
    let via: String = row.try_get("via")?;
    Ok(Grant {
        meeting_id: row.try_get("meeting_id")?,
        identity: row.try_get("identity")?,
        user_id: row.try_get("user_id")?,
        name: row.try_get("name")?,
        via: Via::parse(&via).ok_or_else(|| StoreError::Corrupt {
            table: "join_grants",
            detail: format!("via `{via}`"),
        })?,
        issued_at: row.try_get("issued_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

/// Records that a token was issued for an identity; a revoked identity stays revoked.
pub async fn record_grant(conn: &mut Connection, g: &Grant) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO join_grants (meeting_id, identity, user_id, name, via, issued_at) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (meeting_id, identity) DO UPDATE SET user_id = $3, name = $4, via = $5, \
         issued_at = $6",
    )
    .bind(&g.meeting_id)
    .bind(&g.identity)
    .bind(g.user_id.as_deref())
    .bind(&g.name)
    .bind(g.via.as_str())
    .bind(g.issued_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// The Matrix user a token for `identity` was issued to in a meeting, if one was.
pub async fn grant_user(
    conn: &mut Connection,
    meeting_id: &str,
    identity: &str,
) -> Result<Option<String>, StoreError> {
    let row: Option<(Option<String>,)> =
        sqlx::query_as("SELECT user_id FROM join_grants WHERE meeting_id = $1 AND identity = $2")
            .bind(meeting_id)
            .bind(identity)
            .fetch_optional(conn)
            .await?;
    Ok(row.and_then(|(user,)| user))
}

/// Lets an identity's tokens in again (a call's member back in its room).
pub async fn lift_revocation(
    conn: &mut Connection,
    meeting_id: &str,
    identity: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE join_grants SET revoked_at = NULL, revoke_reason = NULL \
         WHERE meeting_id = $1 AND identity = $2",
    )
    .bind(meeting_id)
    .bind(identity)
    .execute(conn)
    .await?;
    Ok(())
}

/// Why an identity's tokens are refused in a meeting, if they are.
pub async fn revocation(
    conn: &mut Connection,
    meeting_id: &str,
    identity: &str,
) -> Result<Option<String>, StoreError> {
    let reason: Option<Option<String>> = sqlx::query_scalar(
        "SELECT COALESCE(revoke_reason, '') FROM join_grants \
         WHERE meeting_id = $1 AND identity = $2 AND revoked_at IS NOT NULL",
    )
    .bind(meeting_id)
    .bind(identity)
    .fetch_optional(conn)
    .await?;
    Ok(reason.flatten())
}

/// Refuses an identity's tokens for good, whoever issued them (a token minted with an
/// API key has no grant yet: one is recorded, revoked); false when it was revoked
/// already.
pub async fn revoke(
    conn: &mut Connection,
    meeting_id: &str,
    identity: &str,
    reason: &str,
    now_ms: i64,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "INSERT INTO join_grants (meeting_id, identity, user_id, name, via, issued_at, \
         revoked_at, revoke_reason) VALUES ($1, $2, NULL, '', 'public', $3, $3, $4) \
         ON CONFLICT (meeting_id, identity) DO UPDATE SET revoked_at = $3, revoke_reason = $4 \
         WHERE join_grants.revoked_at IS NULL",
    )
    .bind(meeting_id)
    .bind(identity)
    .bind(now_ms)
    .bind(reason)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Whether a moderator removed this Matrix user, or anyone from this browser (grants'
/// identities start with the browser's pseudonym), from the meeting: they stay out.
pub async fn removed_by_moderator(
    conn: &mut Connection,
    meeting_id: &str,
    user_id: Option<&str>,
    browser: &str,
) -> Result<bool, StoreError> {
    let prefix = format!("{browser}-%");
    let found: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM join_grants WHERE meeting_id = $1 AND revoke_reason = 'removed' \
         AND (user_id = $2 OR identity LIKE $3) LIMIT 1",
    )
    .bind(meeting_id)
    .bind(user_id)
    .bind(prefix)
    .fetch_optional(conn)
    .await?;
    Ok(found.is_some())
}

/// Senders of the events a room sent us since `since_ms` (the most recent thousand).
pub async fn recent_senders(
    conn: &mut Connection,
    room_id: &str,
    since_ms: i64,
) -> Result<Vec<String>, StoreError> {
    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT event_json FROM inbox WHERE room_id = $1 AND received_at >= $2 \
         ORDER BY seq DESC LIMIT 1000",
    )
    .bind(room_id)
    .bind(since_ms)
    .fetch_all(conn)
    .await?;
    let mut senders: Vec<String> = rows
        .iter()
        .filter_map(|json| serde_json::from_str::<serde_json::Value>(json).ok())
        .filter_map(|event| event.get("sender")?.as_str().map(str::to_owned))
        .collect();
    senders.sort();
    senders.dedup();
    Ok(senders)
}

/// A meeting's grants not revoked, oldest first.
pub async fn live_grants(
    conn: &mut Connection,
    meeting_id: &str,
) -> Result<Vec<Grant>, StoreError> {
    let sql = concat!(
        "SELECT ",
        grant_columns!(),
        " FROM join_grants WHERE meeting_id = $1 AND revoked_at IS NULL \
         ORDER BY issued_at"
    );
    sqlx::query(sql)
        .bind(meeting_id)
        .fetch_all(conn)
        .await?
        .iter()
        .map(grant)
        .collect()
}

// ----- the bot's one-to-one rooms ----------------------------------------------------

pub async fn direct_room(
    conn: &mut Connection,
    user_id: &str,
) -> Result<Option<String>, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT room_id FROM direct_rooms WHERE user_id = $1")
            .bind(user_id)
            .fetch_optional(conn)
            .await?,
    )
}

pub async fn set_direct_room(
    conn: &mut Connection,
    user_id: &str,
    room_id: &str,
    now_ms: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO direct_rooms (user_id, room_id, created_at) VALUES ($1, $2, $3) \
         ON CONFLICT (user_id) DO UPDATE SET room_id = $2, created_at = $3",
    )
    .bind(user_id)
    .bind(room_id)
    .bind(now_ms)
    .execute(conn)
    .await?;
    Ok(())
}

/// Forgets a one-to-one room the user left (the next confirmation makes a new one).
pub async fn forget_direct_room(
    conn: &mut Connection,
    user_id: &str,
    room_id: &str,
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM direct_rooms WHERE user_id = $1 AND room_id = $2")
        .bind(user_id)
        .bind(room_id)
        .execute(conn)
        .await?;
    Ok(())
}
