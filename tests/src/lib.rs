//! Kiln test support.

pub mod binary;
pub mod chaos;
pub mod fakekube;
pub mod harness;
pub mod process;
