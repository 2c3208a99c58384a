//! Issue 10: secrets that must never leave the worker (CLI output here;
//! events and reasons are covered by the protocol and machine tests).
#![allow(clippy::unwrap_used)]

use kiln_tests::binary::kiln_bin;
use std::process::Command;

/// `kiln worker --help` printed `[env: KILN_AMQP_URL=amqp://…:password@…]`.
#[test]
fn help_does_not_print_connection_urls() {
    let out = Command::new(kiln_bin())
        .args(["worker", "--help"])
        .env("KILN_AMQP_URL", "amqp://kiln:amqpPlantedPw@rabbit:5672/%2f")
        .env("KILN_REDIS_URL", "redis://:redisPlantedPw@redis:6379")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("KILN_AMQP_URL"), "{text}");
    assert!(!text.contains("amqpPlantedPw"), "{text}");
    assert!(!text.contains("redisPlantedPw"), "{text}");
}
