//! The log of API calls the server answered, for assertions such as "exactly
//! one successful create of pod X".

use std::sync::{Mutex, PoisonError};

use super::resource::{Resource, Verb};

/// One API call and the HTTP status it got (for a watch, the status the
/// stream started with).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRecord {
    pub verb: Verb,
    pub resource: Resource,
    /// `status` or `log` for subresources.
    pub subresource: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub status: u16,
}

impl CallRecord {
    /// 2xx?
    pub fn succeeded(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// Is this `verb` on `resource` named `name`?
    pub fn is(&self, verb: Verb, resource: Resource, name: &str) -> bool {
        self.verb == verb && self.resource == resource && self.name.as_deref() == Some(name)
    }
}

/// Bounded so that a long benchmark does not grow without limit; the oldest
/// records go first.
#[derive(Debug)]
pub(crate) struct CallLog {
    records: Mutex<std::collections::VecDeque<CallRecord>>,
    cap: usize,
}

impl CallLog {
    pub fn new(cap: usize) -> Self {
        Self {
            records: Mutex::new(std::collections::VecDeque::new()),
            cap,
        }
    }

    pub fn push(&self, r: CallRecord) {
        let mut v = self.records.lock().unwrap_or_else(PoisonError::into_inner);
        if v.len() >= self.cap {
            v.pop_front();
        }
        v.push_back(r);
    }

    pub fn all(&self) -> Vec<CallRecord> {
        self.records
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }

    pub fn clear(&self) {
        self.records
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}
