//! kaon's pure core: workflow spec, validation, DAG, events, state and the
//! decider.
//!
//! Nothing in this crate reads a clock, randomness, the environment, the
//! network or the disk, and nothing iterates a `HashMap` (clippy's
//! `disallowed-types` in this crate's `clippy.toml` enforces what it can).
//! Time comes in as event fields and as the `now` argument of
//! [`decide::decide`].

pub mod expr;
pub mod limits;
pub mod plan;
pub mod spec;
pub mod validate;
pub mod whatif;

pub use limits::Limits;
pub use plan::Plan;
pub use validate::{SpecError, compile, compile_source};
pub mod events;
pub mod ids;
pub mod state;

pub use state::State;
pub mod audit;
pub mod decide;
pub mod display;
pub mod leader;
pub mod placement;
pub mod sim;
