//! `BuildRequest`: what upstream publishes with routing key `build`.
//!
//! - `types`: the wire types and the schema attributes of each field;
//! - `patterns`: the regular expressions the schema and the validator share;
//! - `check`: [`BuildRequest::validate`], every rule of the contract;
//! - `urls`: git URLs and refs, S3 endpoints and tarball URLs, parsed with
//!   the `url` crate;
//! - `warnings`: [`BuildRequest::warnings`], what a valid request is told
//!   but not refused for (build args whose names look secret).

mod check;
mod patterns;
mod types;
mod urls;
mod warnings;

pub(crate) use patterns::ID_PATTERN;
pub use types::{
    BUILD_REQUEST_KIND, BuildContext, BuildRequest, ContextKind, DEFAULT_DOCKERFILE, GitContext,
    ImageSpec, RESERVED_LABEL_PREFIX, Resources, RetrySpec, S3Context, SecretRef,
};
pub use warnings::build_arg_looks_secret;
