//! The homeserver side: transaction intake and the inbox worker, outbound calls and their
//! persistent queue, the bot and its commands, registration files. Never imports `sfu`.

pub mod client;
pub mod queue;
pub mod bot;
pub mod commands;
pub mod inbox;
pub mod permissions;
