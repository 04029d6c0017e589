//! Element Call's focus: the same binary as a homeserver's MatrixRTC SFU, answering
//! lk-jwt-service's endpoints (`/sfu/get`, `/get_token`, `/delegate_delayed_leave`,
//! `/healthz`) and MSC4195's `rtc/livekit/get_token` (through Synapse's MSC4512 proxy).
//! Unlike lk-jwt-service it checks that the caller is joined to the room (the bot's view,
//! or MSC4502's `is_joined`), lets only users of `element_call.publish_servers` publish,
//! and follows each call like a meeting (attendance, a notice and a summary in the room,
//! a member who leaves the room taken out of the call). docs/element-call.md.

pub mod delayed;
pub mod endpoints;
pub mod names;
pub mod sweep;

use std::sync::Arc;

use crate::config::Config;

/// What the focus endpoints need besides the service's shared state.
pub struct Focus {
    /// Servers whose users may publish.
    pub publish_servers: Vec<String>,
    pub token_ttl_secs: i64,
    /// Post the call's notice and summary in rooms the bot is in.
    pub thread: bool,
    /// This homeserver's name (MSC4195's `server_name`, when given, must be it).
    pub own_server: String,
    pub delayed: Arc<delayed::DelayedLeaves>,
}

impl Focus {
    pub fn from_config(config: &Config, delayed: Arc<delayed::DelayedLeaves>) -> Self {
        let own_server = config.homeserver.domain.to_string();
        Self {
            publish_servers: config.element_call.publishers(&own_server),
            token_ttl_secs: config.element_call.token_ttl_secs,
            thread: config.element_call.thread,
            own_server,
            delayed,
        }
    }

    /// Whether `user` may publish: a user of one of `publish_servers`.
    pub fn may_publish(&self, user: &str) -> bool {
        may_publish(&self.publish_servers, user)
    }
}

fn may_publish(servers: &[String], user: &str) -> bool {
    let server = user.split_once(':').map_or("", |(_, s)| s);
    servers.iter().any(|s| s == server)
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_users_of_the_publish_servers_publish() {
        let servers = [
            "agent.tchap.gouv.fr".to_owned(),
            "localhost:8448".to_owned(),
        ];
        let may = |user| super::may_publish(&servers, user);
        assert!(may("@alice:agent.tchap.gouv.fr"));
        assert!(may("@bob:localhost:8448"));
        assert!(!may("@eve:agent.externe.tchap.gouv.fr"));
        assert!(!may("@eve:tchap.gouv.fr"));
        assert!(!may("not a user id"));
    }
}
