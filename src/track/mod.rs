//! The tracking commands: `deploy` records, the queries read records back, and the
//! registry/images overviews and prune compare a registry with them. They sit above
//! [`crate::records`] (storage) and [`crate::registry`], which import nothing from here.

pub mod deploy;
pub mod overview;
pub mod query;
