//! tchap-visio: sovereign video meetings for Matrix rooms, as one application service.
#![forbid(unsafe_code)]

pub mod config;
pub mod i18n;
pub mod store;
pub mod matrix;
