//! Kiln test support.
