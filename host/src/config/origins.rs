//! The syntax of an allowed origin: what a plan's `allowed_origins` (and a binding's, by the
//! same rule) may hold.
//!
//! Owns: [`valid_origin_pattern`], checked when the configuration is validated, and the
//! authority split ([`split_port`]) that the gateway's origin matching shares with it.
//! Must not: match a request's `Origin` (the gateway's allowlist does that), or depend on any
//! module of the crate.

/// An origin's (or a pattern's) authority split into host and port: `a.b:8443` → (`a.b`,
/// `Some("8443")`); `[::1]:80` → (`[::1]`, `Some("80")`); `a.b` → (`a.b`, `None`).
pub fn split_port(authority: &str) -> (&str, Option<&str>) {
    match authority.rsplit_once(':') {
        Some((host, port))
            if !host.is_empty() && !host.ends_with(':') && (host.starts_with('[') == host.ends_with(']')) =>
        {
            (host, Some(port))
        }
        _ => (authority, None),
    }
}

fn port_ok(port: &str) -> bool {
    port == "*" || port.parse::<u16>().is_ok_and(|p| p > 0) && !port.starts_with('0')
}

/// Whether `text` is an allowed origin entry: `*`, an origin (`https://app.example.com`,
/// `http://127.0.0.1:8080`) or a subdomain pattern (`*.example.com`, `https://*.example.com`),
/// each optionally with a port: an explicit port (`:8443`) matches that port only, `:*` any port,
/// and no port matches only origins without one (the scheme's default port, which browsers leave
/// out of `Origin`). The binding schema in the catalog says the same.
pub fn valid_origin_pattern(text: &str) -> bool {
    let host_ok = |host: &str| {
        !host.is_empty()
            && host.len() <= 253
            && host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
    };
    let scheme_ok = |scheme: &str| {
        scheme.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
            && scheme.bytes().all(|b| b.is_ascii_alphanumeric() || b"+.-".contains(&b))
    };
    if text == "*" {
        return true;
    }
    let (scheme, rest) = match text.split_once("://") {
        Some((scheme, rest)) if scheme_ok(scheme) => (Some(scheme), rest),
        Some(_) => return false,
        None => (None, text),
    };
    let (host, port) = split_port(rest);
    if port.is_some_and(|p| !port_ok(p)) {
        return false;
    }
    match host.strip_prefix("*.") {
        Some(suffix) => host_ok(suffix) && !suffix.contains(':'),
        None => scheme.is_some() && host_ok(host) && (host.starts_with('[') || !host.contains(':')),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_entries_are_origins_or_subdomain_patterns_with_optional_ports() {
        for good in [
            "*",
            "https://app.example.com",
            "http://127.0.0.1:8080",
            "*.example.com",
            "https://*.example.com",
            "https://*.example.com:*",
            "https://*.example.com:8443",
            "https://app.example.com:*",
            "http://[::1]:8080",
        ] {
            assert!(valid_origin_pattern(good), "{good}");
        }
        for bad in [
            "",
            "not an origin",
            "example.com",
            "https://",
            "https://a.com/path",
            "https://*",
            "1http://a.b",
            "*example.com",
            "https://a.com:0",
            "https://a.com:99999",
            "https://a.com:x",
            "https://a.com:",
        ] {
            assert!(!valid_origin_pattern(bad), "{bad}");
        }
    }
}
