//! The few things DR asks of the core: the core defines the trait (its side of the seam,
//! `bunker_core::DrCore`, implemented for its `Core`), so neither side names the other's
//! types. Everything else of the core is out of DR's reach.

pub use bunker_core::DrCore;
