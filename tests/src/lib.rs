//! Kiln test support.

pub mod fakekube;
pub mod harness;
