//! Kiln test support.

pub mod binary;
pub mod chaos;
pub mod cluster;
pub mod fakekube;
pub mod harness;
pub mod platform_fates;
pub mod process;
pub mod registry;

/// `host:port` of a server URL such as `KILN_REDIS_URL` or `KILN_AMQP_URL`
/// (`default_port` when it names none): for the tests that must reach the
/// same server another way (a proxy in front of it, a wrong password), so
/// that they follow the configured address rather than assume 6379 or 5672.
pub fn host_port(url: &str, default_port: u16) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    // `[::1]:6379` and `host:6379` have a port after the last colon;
    // `[::1]` and `host` have none.
    match authority.rsplit_once(':') {
        Some((_, port)) if !port.contains(']') => authority.to_owned(),
        _ => format!("{authority}:{default_port}"),
    }
}

#[cfg(test)]
mod tests {
    use super::host_port;

    #[test]
    fn host_port_of_the_configured_urls() {
        assert_eq!(
            host_port("amqp://guest:guest@127.0.0.1:25672/%2f", 5672),
            "127.0.0.1:25672"
        );
        assert_eq!(host_port("redis://127.0.0.1:6380", 6379), "127.0.0.1:6380");
        assert_eq!(host_port("redis://:a/b@c@redis/0", 6379), "redis:6379");
        assert_eq!(host_port("redis://[::1]", 6379), "[::1]:6379");
        assert_eq!(host_port("redis://[::1]:7000/0", 6379), "[::1]:7000");
    }
}
