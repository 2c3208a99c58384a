//! Why the publish step failed.

use kiln_core::classify::PublishClass;

/// Why the publish step failed: its class (what the worker makes of it)
/// and one line for a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishError {
    pub class: PublishClass,
    pub detail: String,
}

impl PublishError {
    pub fn new(class: PublishClass, detail: impl Into<String>) -> Self {
        Self {
            class,
            detail: detail.into(),
        }
    }

    pub fn invalid(detail: impl Into<String>) -> Self {
        Self::new(PublishClass::Invalid, detail)
    }

    /// The termination message: `kiln publish failed (<class>): <detail>`.
    pub fn line(&self) -> String {
        self.class.line(&self.detail)
    }
}

impl std::fmt::Display for PublishError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.line())
    }
}

impl std::error::Error for PublishError {}
