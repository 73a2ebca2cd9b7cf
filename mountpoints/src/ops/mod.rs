//! The operations behind the choke point, one family per module.

pub(crate) mod attr;
pub(crate) mod checkpoint;
pub(crate) mod data;
pub(crate) mod episodes;
pub(crate) mod namespace;
pub(crate) mod working;
