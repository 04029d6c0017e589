//! tchap-visio: sovereign video meetings for Matrix rooms, as one application service.
#![forbid(unsafe_code)]

pub mod app;
pub mod auth;
pub mod bridge;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod focus;
pub mod http;
pub mod i18n;
pub mod ids;
pub mod markdown;
pub mod matrix;
pub mod meeting;
pub mod names;
pub mod observability;
pub mod sfu;
pub mod signal;
pub mod store;
pub mod webhooks;
