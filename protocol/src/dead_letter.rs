//! The `kiln-error` header of a dead-lettered message: why Kiln refused it.

use crate::bounded::bounded;
use crate::event::Reason;
use crate::limits::MAX_TEXT_BYTES;

/// The header a rejected or poison message carries on `kiln.dead`.
pub const ERROR_HEADER: &str = "kiln-error";

/// The value of [`ERROR_HEADER`]: `<reason>: <message>`, at most
/// [`MAX_TEXT_BYTES`] (AMQP content headers must fit one frame, and the
/// message quotes the refused request).
pub fn error_header(reason: Reason, message: &str) -> String {
    bounded(&format!("{reason}: {message}"), MAX_TEXT_BYTES).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_bounded() {
        assert_eq!(
            error_header(Reason::InvalidRequest, "id: must not be empty"),
            "InvalidRequest: id: must not be empty"
        );
        let long = error_header(Reason::InvalidRequest, &"x; ".repeat(100_000));
        assert!(long.len() <= MAX_TEXT_BYTES, "{}", long.len());
        assert!(long.starts_with("InvalidRequest: x; "));
        assert!(long.ends_with(" bytes cut)"), "{long}");
    }
}
