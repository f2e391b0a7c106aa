//! Keeping secrets out of logs, metrics, API responses and the CMS.
//!
//! Connection strings come in two forms — URLs (`postgres://user:secret@host/db`) and
//! key/value strings (`host=h password=secret`) — and error messages may quote either. Every
//! text that leaves the process and may have touched a connection string goes through here.

/// Replace the password of a connection string (either form) with `***`.
pub fn redact_conn_str(s: &str) -> String {
    redact_error(s)
}

/// Remove anything that looks like a password from free text: URL userinfo passwords and
/// `password=` / `sslpassword=` key/value pairs (quoted or not).
pub fn redact_error(s: &str) -> String {
    let mut out = redact_url_passwords(s);
    for key in ["password=", "sslpassword=", "PASSWORD="] {
        out = redact_kv(&out, key);
    }
    out
}

/// Additionally remove every occurrence of a known secret (the probe knows the password it
/// used, and an error may echo it in any shape).
pub fn redact_known(s: &str, secret: Option<&str>) -> String {
    let out = redact_error(s);
    match secret {
        Some(secret) if secret.len() >= 3 => out.replace(secret, "***"),
        _ => out,
    }
}

fn redact_url_passwords(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find("://") {
        let (head, tail) = rest.split_at(pos + 3);
        out.push_str(head);
        // userinfo ends at the last '@' before the next '/', '?', '#' or whitespace.
        let end = tail
            .find(|c: char| c == '/' || c == '?' || c == '#' || c.is_whitespace())
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        if let Some(at) = authority.rfind('@') {
            let userinfo = &authority[..at];
            match userinfo.find(':') {
                Some(colon) => {
                    out.push_str(&userinfo[..colon]);
                    out.push_str(":***");
                }
                None => out.push_str(userinfo),
            }
            out.push_str(&authority[at..]);
        } else {
            out.push_str(authority);
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

fn redact_kv(s: &str, key: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find(key) {
        let (head, tail) = rest.split_at(pos + key.len());
        out.push_str(head);
        out.push_str("***");
        let tail = tail.trim_start();
        let skip = if let Some(q) = tail.strip_prefix('\'') {
            // quoted value: up to the closing unescaped quote
            let mut i = 0;
            let bytes = q.as_bytes();
            while i < bytes.len() {
                if bytes[i] == b'\\' {
                    i += 2;
                    continue;
                }
                if bytes[i] == b'\'' {
                    break;
                }
                i += 1;
            }
            1 + (i + 1).min(q.len())
        } else {
            tail.find(|c: char| c.is_whitespace() || c == '&' || c == '"' || c == ',')
                .unwrap_or(tail.len())
        };
        rest = &tail[skip.min(tail.len())..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_password_is_hidden() {
        let s = redact_conn_str("postgres://alice:s3cr%40t@db.example:5432/app?sslmode=require");
        assert_eq!(
            s,
            "postgres://alice:***@db.example:5432/app?sslmode=require"
        );
        assert_eq!(
            redact_conn_str("postgres://alice@db/app"),
            "postgres://alice@db/app"
        );
        let e = redact_error("error connecting to postgresql://u:pw@h/db: refused");
        assert!(!e.contains("pw@"), "{e}");
    }

    #[test]
    fn kv_password_is_hidden() {
        let s = redact_conn_str("host=h user=u password=hunter2 dbname=d");
        assert_eq!(s, "host=h user=u password=*** dbname=d");
        let s = redact_conn_str("host=h password='a b\\'c' dbname=d");
        assert!(!s.contains("a b"), "{s}");
        assert!(s.contains("dbname=d"), "{s}");
        let s = redact_conn_str("postgres://h/db?password=topsecret&sslmode=disable");
        assert!(!s.contains("topsecret"), "{s}");
        assert!(s.contains("sslmode=disable"), "{s}");
    }

    #[test]
    fn known_secret_is_hidden_anywhere() {
        let s = redact_known("auth failed for hunter22 in text", Some("hunter22"));
        assert!(!s.contains("hunter22"));
    }
}
