//! Kiln test support.

pub mod chaos;
pub mod fakekube;
pub mod harness;
