//! Why a request or a cancel is refused: one type for every refusal, from
//! an unreadable body to an id held by another tenant.

use kiln_protocol::{Reason, ValidationError};

/// A refused request or cancel: what its `build.rejected` or
/// `request.rejected` says, with every problem at its path in the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The build id, when the message is readable enough to have one:
    /// `build.rejected` is published only then.
    pub id: Option<String>,
    pub reason: Reason,
    /// Every problem, in order, with its path (never empty).
    pub problems: Vec<ValidationError>,
}

impl Rejection {
    pub fn new(id: Option<&str>, reason: Reason, problems: Vec<ValidationError>) -> Self {
        Self {
            id: id.map(str::to_owned),
            reason,
            problems,
        }
    }

    /// A refusal of build `id` because of its id (held by someone else).
    pub fn of_id(id: &str, reason: Reason, message: String) -> Self {
        Self::new(Some(id), reason, vec![ValidationError::new("id", message)])
    }

    /// Every problem, in order, as one message (`path: reason; …`): the
    /// event's `message` and the dead letter's `kiln-error`.
    pub fn message(&self) -> String {
        self.problems
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    }
}
