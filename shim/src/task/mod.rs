//! The parts the task service ([`crate::service`]) is made of.

pub mod errors;
pub mod events;
pub mod guest;
pub mod registry;
