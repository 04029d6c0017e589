//! LiveKit room names and participant identities as Element Call's other foci derive
//! them (lk-jwt-service, MSC4195), so that clients of a call spread over several foci
//! agree on who is who: unpadded standard base64 of SHA-256 of a compact JSON array.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use sha2::{Digest, Sha256};

/// The slot of a room's one call (MSC4143).
pub const ROOM_CALL_SLOT: &str = "m.call#ROOM";

fn hashed(parts: &[&str]) -> String {
    // serde_json, like Go's encoder, writes compact arrays; it leaves `<`, `>` and `&`
    // unescaped where Go escapes them, which room ids, user ids and device ids never hold
    // in practice (matrix-js-sdk's JSON.stringify leaves them unescaped too).
    let json = serde_json::to_vec(parts).expect("strings serialise");
    STANDARD_NO_PAD.encode(Sha256::digest(&json))
}

/// The LiveKit room of a MatrixRTC slot (`[room_id, slot_id]`).
pub fn room_name(room_id: &str, slot_id: &str) -> String {
    hashed(&[room_id, slot_id])
}

/// `/get_token`'s identity (`[user_id, device_id, member_id]`, lk-jwt-service).
pub fn member_identity(user_id: &str, device_id: &str, member_id: &str) -> String {
    hashed(&[user_id, device_id, member_id])
}

/// MSC4195's identity (`[sender, member_id]`).
pub fn msc4195_identity(user_id: &str, member_id: &str) -> String {
    hashed(&[user_id, member_id])
}

/// `/sfu/get`'s (legacy) identity: `user_id:device_id`, not hashed.
pub fn legacy_identity(user_id: &str, device_id: &str) -> String {
    format!("{user_id}:{device_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    // The vectors of lk-jwt-service's own tests and MSC4195's text.
    #[test]
    fn names_match_the_other_foci() {
        assert_eq!(
            room_name("!roomid:example.com", "slot1234"),
            "O8437W3+jmzMVjoIP3tNwbm+XxHQk2iKpOA7aqw3qSc"
        );
        assert_eq!(
            member_identity("@alice:example.com", "DEVICE123", "memberABC"),
            "J+T45tGruxc+HrUOqJJlyQSV33m728Cme4+vt8/SWrU"
        );
        assert_eq!(
            msc4195_identity("@alice:example.com", "memberABC"),
            "M3VnsLXrkbxIDINXO64u8PZzFyD9ZYFiQULR2dshWYs"
        );
        assert_eq!(
            room_name("!room:example.com", ROOM_CALL_SLOT),
            "krj2dgxw2K6EOm9he4GfQJ6JsSVWfJ8a7BkyjZcSmxs"
        );
        assert_eq!(
            legacy_identity("@alice:example.com", "DEV"),
            "@alice:example.com:DEV"
        );
    }
}
