//! The homeserver side: transaction intake and the inbox worker, outbound calls and their
//! persistent queue, the bot and its commands, registration files. Never imports `sfu`.

pub mod account;
pub mod bot;
pub mod client;
pub mod commands;
pub mod crypto;
pub mod inbox;
pub mod intake;
pub mod permissions;
pub mod queue;
pub mod registration;
