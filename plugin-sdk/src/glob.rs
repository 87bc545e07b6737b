//! Globs over method names, as ovsb matches them (see [`Methods`](crate::Methods)).

/// Whether `text` matches the glob `pattern` as a whole: `*` matches any run of characters
/// (also none), `?` exactly one character; every other character matches itself,
/// case-sensitively. ovsb uses this same function for [`Plugin::methods`](crate::Plugin::methods),
/// so a plugin's native tests and the host agree on what a pattern takes.
///
/// On a mismatch after a `*`, only the latest `*` is retried one character further: enough for
/// globs without character classes, and O(pattern × text) at worst.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let next = |s: &str, at: usize| s[at..].chars().next();
    let (mut p, mut t) = (0, 0);
    let mut retry: Option<(usize, usize)> = None;
    while let Some(c) = next(text, t) {
        match next(pattern, p) {
            Some('*') => {
                retry = Some((p, t));
                p += 1;
            }
            Some(q) if q == '?' || q == c => {
                p += q.len_utf8();
                t += c.len_utf8();
            }
            _ => match retry {
                Some((star, from)) => {
                    let from = from + next(text, from).map_or(1, char::len_utf8);
                    p = star + 1;
                    t = from;
                    retry = Some((star, from));
                }
                None => return false,
            },
        }
    }
    pattern[p..].chars().all(|c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::glob_matches as glob;

    #[test]
    fn globs_match_the_whole_name() {
        assert!(glob("eth_*", "eth_call"));
        assert!(glob("eth_*", "eth_"));
        assert!(!glob("eth_*", "net_version"));
        assert!(glob("eth_get?lock*", "eth_getBlockByNumber"));
        assert!(!glob("eth_get?lock*", "eth_getBalance"));
        assert!(glob("*Number", "eth_blockNumber"));
        assert!(!glob("*Number", "eth_blockNumbers"));
        assert!(glob("a*b*c", "axxbyybzc"));
        assert!(!glob("a*b*c", "axxbyyb"));
        assert!(glob("exact", "exact"));
        assert!(!glob("exact", "Exact"), "case-sensitive, as nodes match method names");
        assert!(!glob("exact", "exactly"));
        assert!(glob("*", ""));
        assert!(!glob("?", ""));
        assert!(glob("eth_?", "eth_é"), "? is one character, however many bytes");
        assert!(glob("*é*", "aébc"));
        assert!(!glob("eth_??", "eth_é"));
    }
}
