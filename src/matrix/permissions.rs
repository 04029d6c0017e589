//! Who may use the bot, from the `permissions` map: a user ID beats its server name,
//! which beats `*`; nobody listed means no permission.

use std::collections::BTreeMap;

use ruma::UserId;

use crate::config::PermissionLevel;

pub fn level_for(
    user: &UserId,
    permissions: &BTreeMap<String, PermissionLevel>,
) -> PermissionLevel {
    permissions
        .get(user.as_str())
        .or_else(|| permissions.get(user.server_name().as_str()))
        .or_else(|| permissions.get("*"))
        .copied()
        .unwrap_or(PermissionLevel::None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str) -> ruma::OwnedUserId {
        UserId::parse(id).expect("valid user id")
    }

    #[test]
    fn most_specific_entry_wins() {
        let map = BTreeMap::from([
            ("*".to_owned(), PermissionLevel::None),
            ("tchap.gouv.fr".to_owned(), PermissionLevel::User),
            ("@chef:tchap.gouv.fr".to_owned(), PermissionLevel::Admin),
            ("@exclu:tchap.gouv.fr".to_owned(), PermissionLevel::None),
        ]);
        assert_eq!(
            level_for(&user("@agent:tchap.gouv.fr"), &map),
            PermissionLevel::User
        );
        assert_eq!(
            level_for(&user("@chef:tchap.gouv.fr"), &map),
            PermissionLevel::Admin
        );
        assert_eq!(
            level_for(&user("@exclu:tchap.gouv.fr"), &map),
            PermissionLevel::None
        );
        assert_eq!(
            level_for(&user("@x:agent.externe.tchap.gouv.fr"), &map),
            PermissionLevel::None
        );
    }

    #[test]
    fn unlisted_users_have_no_permission() {
        let map = BTreeMap::from([("@alice:localhost".to_owned(), PermissionLevel::User)]);
        assert_eq!(
            level_for(&user("@bob:localhost"), &map),
            PermissionLevel::None
        );
    }
}
