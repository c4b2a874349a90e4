//! The parts the task service ([`crate::service`]) is made of.

pub mod control;
pub mod create;
pub mod errors;
pub mod events;
pub mod exits;
pub mod guest;
pub mod inspect;
pub mod process;
pub mod registry;
