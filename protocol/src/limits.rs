//! The contract's fixed limits and its version, in a module of their own so
//! that every other file can read them without importing the crate root
//! (which imports every file back).

/// The only `apiVersion` this crate reads and writes.
pub const API_VERSION: &str = "kiln/v1";
/// Largest request accepted, in bytes of the message body.
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;
/// Most images in one request (each is a pod; policy may lower it).
pub const MAX_IMAGES: usize = 32;
/// Most destinations per image.
pub const MAX_DESTINATIONS: usize = 8;
/// Fewest and most `platforms` of one image.
pub const MIN_PLATFORMS: usize = 2;
pub const MAX_PLATFORMS: usize = 8;
/// Longest build id.
pub const MAX_ID_LEN: usize = 128;
/// Highest `retry.maxAttempts` (policy may lower it).
pub const MAX_ATTEMPTS_LIMIT: u32 = 10;
/// Highest `timeoutSeconds`: one day. Kaniko builds that need longer are
/// better split; a day also bounds how long a lease-holding worker and a
/// pod can be tied to one request.
pub const MAX_TIMEOUT_SECONDS: u64 = 86_400;
/// Largest `logTail` in events.
pub const LOG_TAIL_MAX_BYTES: usize = 8 * 1024;
/// Most `labels` on a request (they are copied onto every pod and event).
pub const MAX_LABELS: usize = 64;
/// Most `buildArgs` per image.
pub const MAX_BUILD_ARGS: usize = 128;
/// Largest build-arg value: each becomes one argument of the Kaniko
/// container, and the pod spec as a whole must stay well below etcd's limit.
pub const MAX_BUILD_ARG_VALUE_BYTES: usize = 32 * 1024;
/// Most `secrets` per image (each is a file mount and an executor flag).
pub const MAX_BUILD_SECRETS: usize = 16;
/// Most `templateArgs` per image.
pub const MAX_TEMPLATE_ARGS: usize = 128;
/// Most problems one rejection lists; the rest are counted in one closing
/// line (`… and N more problems`). A request just under
/// [`MAX_REQUEST_BYTES`] can hold ~80,000 bad label keys: listing them all
/// made a 28 MB event and a dead-letter header no AMQP frame could carry.
pub const MAX_PROBLEMS: usize = 50;
/// Largest text Kiln derives from one message: an event `message`, the
/// `kiln-error` dead-letter header, a log line. AMQP content headers must
/// fit one frame (128 KiB by default), and an answer should never cost more
/// than the message it answers. [`crate::bounded`] applies it.
pub const MAX_TEXT_BYTES: usize = 4 * 1024;
/// Largest single problem reason (after masking): reasons quote the
/// request's values, which are shortened, but serde's messages quote
/// unknown field names whole.
pub const MAX_REASON_BYTES: usize = 1024;
