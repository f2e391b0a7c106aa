//! Connection strings in libpq's two forms, reduced to `(keyword, value)` pairs.
//!
//! - URL: `postgres[ql]://[user[:password]@][host[:port][,host[:port]…]][/dbname][?key=value&…]`,
//!   every part percent-decoded; hosts may be `[IPv6]` literals.
//! - Key/value: `key=value key = 'quoted \' value' …` (backslash escapes, spaces around `=`).
//!
//! Values are never echoed in errors: only keywords and positions are.

/// Why a connection string does not parse: keywords and positions, never values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Malformed(pub String);

impl From<String> for Malformed {
    fn from(s: String) -> Self {
        Malformed(s)
    }
}

impl From<&str> for Malformed {
    fn from(s: &str) -> Self {
        Malformed(s.to_string())
    }
}

/// The pairs of a connection string, in order (a later pair wins over an earlier one).
pub fn pairs(s: &str) -> Result<Vec<(String, String)>, Malformed> {
    let t = s.trim();
    if let Some(rest) = t
        .strip_prefix("postgresql://")
        .or_else(|| t.strip_prefix("postgres://"))
    {
        url_pairs(rest)
    } else if t.contains("://") {
        Err("a URL must start with postgres:// or postgresql://".into())
    } else {
        kv_pairs(t)
    }
}

fn url_pairs(rest: &str) -> Result<Vec<(String, String)>, Malformed> {
    let mut out = Vec::new();
    // As in libpq, the user info ends at an '@' before the first '/'; a raw '?', '#' or
    // '@' in the password is tolerated (the last '@' that is followed by a host list).
    let head_end = rest.find('/').unwrap_or(rest.len());
    let head = &rest[..head_end];
    let at = head.match_indices('@').map(|(i, _)| i).rfind(|&i| {
        let after = &head[i + 1..];
        let host = &after[..after.find('?').unwrap_or(after.len())];
        !host.contains(['=', '&', '@'])
    });
    let after_userinfo = match at {
        Some(at) => {
            let userinfo = &rest[..at];
            let (user, password) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            if !user.is_empty() {
                out.push(("user".into(), decode(user, "the user name")?));
            }
            if let Some(p) = password {
                out.push(("password".into(), decode(p, "the password")?));
            }
            &rest[at + 1..]
        }
        None => rest,
    };
    let (main, query) = match after_userinfo.split_once('?') {
        Some((m, q)) => (m, Some(q)),
        None => (after_userinfo, None),
    };
    let (hostspec, path) = match main.split_once('/') {
        Some((h, p)) => (h, Some(p)),
        None => (main, None),
    };
    if !hostspec.is_empty() {
        let mut hosts = Vec::new();
        let mut ports = Vec::new();
        for spec in hostspec.split(',') {
            let (host, port) = if let Some(v6) = spec.strip_prefix('[') {
                let (h, tail) = v6
                    .split_once(']')
                    .ok_or("an IPv6 host is missing its closing `]`")?;
                let port = match tail {
                    "" => "",
                    t => t.strip_prefix(':').ok_or("unexpected text after `]`")?,
                };
                (h.to_string(), port)
            } else {
                match spec.rsplit_once(':') {
                    Some((h, p)) => (decode(h, "a host name")?, p),
                    None => (decode(spec, "a host name")?, ""),
                }
            };
            hosts.push(host);
            ports.push(port.to_string());
        }
        if hosts.iter().any(|h| !h.is_empty()) {
            out.push(("host".into(), hosts.join(",")));
        }
        if ports.iter().any(|p| !p.is_empty()) {
            out.push(("port".into(), ports.join(",")));
        }
    }
    if let Some(path) = path.filter(|p| !p.is_empty()) {
        out.push(("dbname".into(), decode(path, "the database name")?));
    }
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').ok_or("a URL query item has no `=`")?;
        let key = decode(k, "a parameter name")?;
        let value = decode(v, &format!("the value of `{key}`"))?;
        out.push((key, value));
    }
    Ok(out)
}

fn kv_pairs(s: &str) -> Result<Vec<(String, String)>, Malformed> {
    let mut out = Vec::new();
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while *i < chars.len() && chars[*i].is_whitespace() {
            *i += 1;
        }
    };
    loop {
        skip_ws(&mut i);
        if i >= chars.len() {
            return Ok(out);
        }
        let start = i;
        while i < chars.len() && chars[i] != '=' && !chars[i].is_whitespace() {
            i += 1;
        }
        let key: String = chars[start..i].iter().collect();
        skip_ws(&mut i);
        if i >= chars.len() || chars[i] != '=' {
            return Err(format!("missing `=` after `{key}`").into());
        }
        i += 1;
        skip_ws(&mut i);
        let mut value = String::new();
        if i < chars.len() && chars[i] == '\'' {
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err(format!("unterminated quoted value of `{key}`").into()),
                    Some('\\') if i + 1 < chars.len() => {
                        value.push(chars[i + 1]);
                        i += 2;
                    }
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some(c) => {
                        value.push(*c);
                        i += 1;
                    }
                }
            }
        } else {
            while i < chars.len() && !chars[i].is_whitespace() {
                if chars[i] == '\\' && i + 1 < chars.len() {
                    i += 1;
                }
                value.push(chars[i]);
                i += 1;
            }
        }
        out.push((key, value));
    }
}

/// Percent-decode one URL component (UTF-8), naming `what` — never the text — on error.
fn decode(s: &str, what: &str) -> Result<String, Malformed> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("invalid percent-encoding in {what}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| Malformed(format!("{what} is not UTF-8 after percent-decoding")))
}

/// Percent-encode a URL component (everything but RFC 3986's unreserved characters).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(p: &'a [(String, String)], k: &str) -> Option<&'a str> {
        p.iter()
            .rev()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn url_form() {
        let p = pairs("postgresql://al%40ice:p%2Fw@db.example:6432/app%20db?sslmode=verify-full&sslrootcert=%2Ftmp%2Fca.crt").unwrap();
        assert_eq!(get(&p, "user"), Some("al@ice"));
        assert_eq!(get(&p, "password"), Some("p/w"));
        assert_eq!(get(&p, "host"), Some("db.example"));
        assert_eq!(get(&p, "port"), Some("6432"));
        assert_eq!(get(&p, "dbname"), Some("app db"));
        assert_eq!(get(&p, "sslmode"), Some("verify-full"));
        assert_eq!(get(&p, "sslrootcert"), Some("/tmp/ca.crt"));
        let p = pairs("postgres://[::1]:5433,h2/db").unwrap();
        assert_eq!(get(&p, "host"), Some("::1,h2"));
        assert_eq!(get(&p, "port"), Some("5433,"));
        let p = pairs("postgres:///db?host=/var/run/postgresql").unwrap();
        assert_eq!(get(&p, "host"), Some("/var/run/postgresql"));
        assert_eq!(get(&p, "dbname"), Some("db"));
        // Raw '?', '#' and '@' in a password are tolerated; an '@' in the query is not user info.
        let p = pairs("postgres://u:a?b#c@d@h:1/db?application_name=x@y").unwrap();
        assert_eq!(get(&p, "password"), Some("a?b#c@d"));
        assert_eq!(get(&p, "host"), Some("h"));
        assert_eq!(get(&p, "application_name"), Some("x@y"));
        let p = pairs("postgres://h/db?application_name=x@y").unwrap();
        assert_eq!(get(&p, "user"), None);
        assert_eq!(get(&p, "host"), Some("h"));
        assert!(pairs("mysql://h/db").is_err());
    }

    #[test]
    fn key_value_form() {
        let p = pairs(r"host = h  port=5 password='a b\'c' user=u\ x dbname=").unwrap();
        assert_eq!(get(&p, "host"), Some("h"));
        assert_eq!(get(&p, "port"), Some("5"));
        assert_eq!(get(&p, "password"), Some("a b'c"));
        assert_eq!(get(&p, "user"), Some("u x"));
        assert_eq!(get(&p, "dbname"), Some(""));
        let e = pairs("host=h password='secret").unwrap_err();
        assert!(!e.0.contains("secret"), "{e}");
        assert!(pairs("host h").is_err());
    }

    #[test]
    fn encoding_round_trips() {
        let s = "a b/c?d#e@f:g%h";
        assert_eq!(decode(&encode(s), "x").unwrap(), s);
    }
}
