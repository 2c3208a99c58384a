//! Kiln test support.

pub mod fakekube;
