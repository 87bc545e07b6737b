"""Globs over method names, as ovsb matches them (see :class:`ovsb_plugin.Methods`)."""


def glob_matches(pattern: str, text: str) -> bool:
    """Whether `text` matches the glob `pattern` as a whole: ``*`` matches any run of characters
    (also none), ``?`` exactly one character; every other character matches itself,
    case-sensitively. The same algorithm as the host's (and the Rust SDK's ``glob_matches``), so
    native tests and ovsb agree on what a pattern takes."""
    p = t = 0
    retry = None  # (index of the latest `*` in pattern, index in text it was tried from)
    while t < len(text):
        q = pattern[p] if p < len(pattern) else None
        if q == "*":
            retry = (p, t)
            p += 1
        elif q is not None and (q == "?" or q == text[t]):
            p += 1
            t += 1
        elif retry is not None:
            star, start = retry
            start += 1
            p, t = star + 1, start
            retry = (star, start)
        else:
            return False
    return all(c == "*" for c in pattern[p:])
