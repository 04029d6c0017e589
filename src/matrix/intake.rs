//! Reads an appservice transaction body with ruma's `push_events` request type and turns
//! its events into inbox rows. Storing is the caller's job.

use ruma::api::IncomingRequestExt;
use ruma::api::appservice::event::push_events;

use crate::store::inbox::NewInboxEvent;

/// Why a transaction body was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IntakeError {
    /// The body is not JSON at all.
    #[error("the body is not valid JSON")]
    NotJson,
    /// The body is JSON but not a transaction (missing `events`, an event without id, ...).
    #[error("not a valid transaction: {0}")]
    BadJson(String),
}

/// Parses a `PUT /_matrix/app/v1/transactions/{txnId}` body into inbox rows.
pub fn parse_transaction(txn_id: &str, body: &[u8]) -> Result<Vec<NewInboxEvent>, IntakeError> {
    if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_err() {
        return Err(IntakeError::NotJson);
    }
    let request = http::Request::builder()
        .method(http::Method::PUT)
        .uri("/_matrix/app/v1/transactions/_")
        .body(body)
        .map_err(|e| IntakeError::BadJson(e.to_string()))?;
    let parsed = push_events::v1::Request::try_from_http_request(request, &[txn_id])
        .map_err(|e| IntakeError::BadJson(e.to_string()))?;
    parsed
        .events
        .iter()
        .map(|raw| {
            let event_id: String = raw
                .get_field("event_id")
                .ok()
                .flatten()
                .ok_or_else(|| IntakeError::BadJson("an event has no event_id".into()))?;
            let room_id: Option<String> = raw.get_field("room_id").ok().flatten();
            Ok(NewInboxEvent {
                event_id,
                room_id,
                json: raw.json().get().to_owned(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_events_and_refuses_bad_bodies() {
        let body = br#"{"events":[{"type":"m.room.message","event_id":"$1","room_id":"!r:x","sender":"@a:x","origin_server_ts":1,"content":{}}],"ephemeral":[]}"#;
        let events = parse_transaction("t", body).expect("valid");
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].event_id, "$1");
        assert_eq!(events[0].room_id.as_deref(), Some("!r:x"));
        assert!(events[0].json.contains("m.room.message"));

        assert_eq!(
            parse_transaction("t", b"{not json"),
            Err(IntakeError::NotJson)
        );
        assert!(matches!(
            parse_transaction("t", br#"{"evnts":[]}"#),
            Err(IntakeError::BadJson(_))
        ));
        assert!(matches!(
            parse_transaction("t", br#"[1,2]"#),
            Err(IntakeError::BadJson(_))
        ));
        assert!(matches!(
            parse_transaction("t", br#"{"events":[{"type":"m.room.message"}]}"#),
            Err(IntakeError::BadJson(_))
        ));
        assert_eq!(
            parse_transaction("t", br#"{"events":[]}"#).expect("empty"),
            vec![]
        );
    }
}
