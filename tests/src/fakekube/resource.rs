//! The resources and verbs the fake API server knows, with the names the real
//! API server uses for them (plural resource in URLs and `Status.details.kind`,
//! singular kind in objects and `Invalid` messages, `<Kind>List` for lists).

use std::fmt;

/// A resource type served by the fake API server (all in the core `v1` group).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resource {
    /// `pods`
    Pods,
    /// `configmaps`
    ConfigMaps,
    /// Any other path (discovery, `/version`, unknown resources).
    Other,
}

impl Resource {
    /// Parses the plural name used in URLs.
    pub(crate) fn from_plural(plural: &str) -> Option<Self> {
        match plural {
            "pods" => Some(Self::Pods),
            "configmaps" => Some(Self::ConfigMaps),
            _ => None,
        }
    }

    /// The plural name, as in URLs and in `Status.details.kind` of
    /// NotFound/AlreadyExists/Conflict errors (the real server puts the
    /// resource, not the kind, there).
    pub fn plural(self) -> &'static str {
        match self {
            Self::Pods => "pods",
            Self::ConfigMaps => "configmaps",
            Self::Other => "",
        }
    }

    /// The `kind` of one object.
    pub fn kind(self) -> &'static str {
        match self {
            Self::Pods => "Pod",
            Self::ConfigMaps => "ConfigMap",
            Self::Other => "",
        }
    }

    /// The `kind` of a list response.
    pub fn list_kind(self) -> &'static str {
        match self {
            Self::Pods => "PodList",
            Self::ConfigMaps => "ConfigMapList",
            Self::Other => "",
        }
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Other => "other",
            r => r.plural(),
        })
    }
}

/// What an API call did. `Logs` stands for `GET pods/{name}/log`, which the
/// real server authorizes as verb `get` on subresource `log`; it has its own
/// verb here so that faults and assertions can target it directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verb {
    Create,
    Get,
    List,
    Watch,
    Delete,
    Logs,
    /// A JSON merge patch of a pod's annotations (the cancel mark), the one
    /// patch Kiln sends.
    Patch,
    /// Discovery, `/version`, unknown paths, and the methods the fake
    /// does not serve (PUT, other PATCHes).
    Other,
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Create => "create",
            Self::Get => "get",
            Self::List => "list",
            Self::Watch => "watch",
            Self::Delete => "delete",
            Self::Logs => "logs",
            Self::Patch => "patch",
            Self::Other => "other",
        })
    }
}
