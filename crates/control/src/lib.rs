//! berth's brain: the store, the instance state machine, the controller that reconciles
//! desired with actual state, and the routing table it publishes.
//!
//! **Boundary:** no HTTP server, no CLI, no signals: the berth binary owns those edges
//! and talks to the controller through [`controller::Handle`].
#![forbid(unsafe_code)]

pub mod backoff;
pub mod clock;
pub mod controller;
pub mod deploy;
pub mod health;
pub mod instance;
pub mod listen;
pub mod ports;
pub mod routes;
pub mod store;

pub use controller::{ControlError, Controller, ControllerConfig, Handle, Request};
pub use routes::DataPlane;
