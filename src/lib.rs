//! chime: a durable store for delayed and scheduled messages.
//!
//! Layers, each knowing only the ones below it: `http` → `group`, `timer` → `store` → `clock`.
#![deny(unsafe_code)]

pub mod clock;
pub mod codec;
pub mod config;
#[doc(hidden)]
pub mod fuzzing;
pub mod group;
pub mod histogram;
pub mod http;
pub mod names;
pub mod retention;
pub mod schedule;
pub mod server;
pub mod service;
pub mod store;
pub mod timer;
