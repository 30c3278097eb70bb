//! berth's desired-state language.
//!
//! `berth.toml` text → [`parse`] → a validated [`Spec`] (or every error at once, each
//! with `FILE:LINE:COL`), [`diff`] between two specs, and the [`api`] types that the
//! server and the CLI share. Pure: no tokio, no I/O besides reading the config file.
#![forbid(unsafe_code)]

pub mod api;
mod diff;
mod model;
mod parse;
mod units;

pub use diff::{Diff, diff};
pub use model::*;
pub use parse::{SpecError, SpecErrors, load, parse};
pub use units::{format_duration, parse_duration, parse_size};
