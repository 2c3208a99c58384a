//! Tenant policy: the types and checks live in `kiln-core`; reading the
//! file is IO and so happens here.

use std::path::Path;

pub use kiln_core::policy::*;

/// Loads a policy file; the extension (`.toml`, `.yaml`, `.yml`) picks
/// the format.
pub fn load(path: &Path) -> Result<Policy, PolicyError> {
    Policy::from_file(path, || std::fs::read_to_string(path))
}
