//! Keeping secrets out of logs, metrics, API responses and the CMS, and outside text out of
//! the log's structure.
//!
//! Connection strings come in two forms — URLs (`postgres://user:secret@host/db`) and
//! key/value strings (`host=h password=secret`) — and error messages may quote either. Every
//! text that leaves the process and may have touched a connection string goes through here.
//! Where a text is ambiguous (an unencoded `@` in a URL's query as well as in its password),
//! more is hidden rather than less.
//!
//! Text that comes from outside (a notification payload) is logged through [`for_log`]:
//! redacted, escaped and cut, so it cannot start a log line of its own.

/// Replace the password of a connection string (either form) with `***`.
pub fn redact_conn_str(s: &str) -> String {
    redact_error(s)
}

/// Remove anything that looks like a password from free text: URL userinfo passwords (any
/// number of URLs, any characters in the password) and `password=` pairs (any case, spaces
/// around `=`, `sslpassword=` and `PGPASSWORD=` included, values quoted or not).
pub fn redact_error(s: &str) -> String {
    redact_kv(&redact_url_passwords(s))
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

/// Outside text made safe for one log field: passwords redacted ([`redact_error`]), control
/// characters, quotes and backslashes escaped (`\n`, `\u{1b}`, `\"`, as `escape_debug`
/// does), and at most `max` characters of the escaped text kept (`…` marks a cut). The
/// result holds no line break, so a payload cannot forge a log line.
pub fn for_log(s: &str, max: usize) -> String {
    let redacted = redact_error(s);
    let mut out = String::with_capacity(redacted.len().min(max) + 3);
    let mut used = 0;
    for c in redacted.chars() {
        let escaped = c.escape_debug();
        if used + escaped.len() > max {
            out.push('…');
            return out;
        }
        used += escaped.len();
        out.extend(escaped);
    }
    out
}

fn redact_url_passwords(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find("://") {
        let (head, tail) = rest.split_at(pos + 3);
        out.push_str(head);
        let end = url_end(tail);
        redact_userinfo(&tail[..end], &mut out);
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// Where the URL whose text starts at `tail` (just after `://`) ends: at whitespace, or where
/// the next URL's scheme begins (`a://…,b://…`).
fn url_end(tail: &str) -> usize {
    let ws = tail
        .find(|c: char| c.is_ascii_whitespace())
        .unwrap_or(tail.len());
    match tail[..ws].find("://") {
        Some(next) => {
            let b = tail.as_bytes();
            let mut i = next;
            while i > 0
                && (b[i - 1].is_ascii_alphanumeric() || matches!(b[i - 1], b'+' | b'-' | b'.'))
            {
                i -= 1;
            }
            i
        }
        None => ws,
    }
}

/// `user:password@host…` → `user:***@host…`. The userinfo ends at the *last* `@` of the URL:
/// a host never holds one, while a password may hold unencoded `@`, `/`, `?` and `#` — so the
/// first `/`, `?` or `#` cannot be taken as the end of the authority. The password runs from
/// the first `:` of the userinfo to that `@`.
fn redact_userinfo(url: &str, out: &mut String) {
    if let Some(at) = url.rfind('@')
        && let Some(colon) = url[..at].find(':')
    {
        out.push_str(&url[..colon]);
        out.push_str(":***");
        out.push_str(&url[at..]);
    } else {
        out.push_str(url);
    }
}

/// Every `…password = value` (the key in any case, optionally spaced around `=`) with its
/// value replaced by `***`. A value is quoted (`'…'` or `"…"`, backslash escapes, to the end
/// of the text when the quote is never closed) or bare: a bare value ends at whitespace, and
/// inside a URL query (the key follows `?` or `&`) also at `&` or `#`.
fn redact_kv(s: &str) -> String {
    const KEY: &str = "password";
    let lower = s.to_ascii_lowercase();
    let b = s.as_bytes();
    let blank = |i: usize| i < b.len() && (b[i] == b' ' || b[i] == b'\t');
    let mut out = String::with_capacity(s.len());
    let mut copied = 0;
    let mut from = 0;
    while let Some(found) = lower[from..].find(KEY) {
        let key = from + found;
        from = key + KEY.len();
        let mut i = from;
        while blank(i) {
            i += 1;
        }
        if b.get(i) != Some(&b'=') {
            continue;
        }
        i += 1;
        while blank(i) {
            i += 1;
        }
        let value = i;
        let end = match b.get(value) {
            Some(&q) if q == b'\'' || q == b'"' => {
                let mut j = value + 1;
                let close = loop {
                    match b.get(j) {
                        None => break b.len(),
                        Some(b'\\') => j += 2,
                        Some(&c) if c == q => break j + 1,
                        Some(_) => j += 1,
                    }
                };
                close.min(b.len())
            }
            _ => {
                // The key word (`sslpassword`, `PGPASSWORD`) and what comes before it.
                let mut start = key;
                while start > 0 && (b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_') {
                    start -= 1;
                }
                let in_query = start > 0 && matches!(b[start - 1], b'?' | b'&');
                let mut j = value;
                while j < b.len()
                    && !b[j].is_ascii_whitespace()
                    && !(in_query && matches!(b[j], b'&' | b'#'))
                {
                    j += 1;
                }
                j
            }
        };
        if end == value {
            continue;
        }
        out.push_str(&s[copied..value]);
        out.push_str("***");
        copied = end;
        from = end;
    }
    out.push_str(&s[copied..]);
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
        assert_eq!(e, "error connecting to postgresql://u:***@h/db: refused");
    }

    #[test]
    fn url_without_userinfo_is_left_alone() {
        for s in [
            "postgres://db.example:5432/app?sslmode=require",
            "postgres://h/db",
            "see https://example.com/a?b#c for more",
            "postgres:// nothing",
        ] {
            assert_eq!(redact_error(s), s);
        }
    }

    #[test]
    fn url_password_may_hold_any_character() {
        // An unencoded `/`, `?`, `#` or `@` does not end the userinfo: the last `@` does.
        assert_eq!(
            redact_conn_str("postgres://u:p/a?b#c@host:5432/db"),
            "postgres://u:***@host:5432/db"
        );
        assert_eq!(
            redact_conn_str("postgres://u:p@ss@host/db?sslmode=require"),
            "postgres://u:***@host/db?sslmode=require"
        );
        assert_eq!(
            redact_conn_str("postgresql://u:a:b'\"c@[::1]:5432/db"),
            "postgresql://u:***@[::1]:5432/db"
        );
        assert_eq!(
            redact_conn_str("postgres://u:p@h1:5432,h2:5433/db"),
            "postgres://u:***@h1:5432,h2:5433/db"
        );
        assert_eq!(
            redact_conn_str("postgres://u:pw@/db?host=/var/run/postgresql"),
            "postgres://u:***@/db?host=/var/run/postgresql"
        );
        // Quoted in a message, followed by punctuation.
        assert_eq!(
            redact_error("bad url 'postgres://u:x/y@h/db': no"),
            "bad url 'postgres://u:***@h/db': no"
        );
        // Ambiguous (an `@` in the query too): more is hidden, never less.
        let s = redact_error("postgres://u:pw@h/db?application_name=a@b");
        assert!(!s.contains("pw"), "{s}");
    }

    #[test]
    fn several_urls_in_one_text() {
        assert_eq!(
            redact_error("from postgres://a:x1@h1/db to postgresql://b:y/2@h2/db failed"),
            "from postgres://a:***@h1/db to postgresql://b:***@h2/db failed"
        );
        assert_eq!(
            redact_error("postgres://a:x1@h1/db,postgres://b:y2@h2/db"),
            "postgres://a:***@h1/db,postgres://b:***@h2/db"
        );
        assert_eq!(
            redact_error("x://a:1@h\ny://b:2@h y://c@h"),
            "x://a:***@h\ny://b:***@h y://c@h"
        );
    }

    #[test]
    fn kv_password_is_hidden() {
        let s = redact_conn_str("host=h user=u password=hunter2 dbname=d");
        assert_eq!(s, "host=h user=u password=*** dbname=d");
        let s = redact_conn_str("postgres://h/db?password=topsecret&sslmode=disable");
        assert_eq!(s, "postgres://h/db?password=***&sslmode=disable");
        assert_eq!(
            redact_conn_str("host=h password=a&b#c dbname=d"),
            "host=h password=*** dbname=d"
        );
    }

    #[test]
    fn kv_key_in_any_case_and_spaced() {
        assert_eq!(
            redact_error("PASSWORD=a1 Password = b2 sslPassword\t=\tc3 PGPASSWORD=d4 user=u"),
            "PASSWORD=*** Password = *** sslPassword\t=\t*** PGPASSWORD=*** user=u"
        );
        assert_eq!(
            redact_error("postgres://h/db?sslmode=require&PassWord=s3&x=1"),
            "postgres://h/db?sslmode=require&PassWord=***&x=1"
        );
        // Not a pair: nothing to hide, nothing changed.
        let s = "password authentication failed for user \"u\"; passwordfile=/x";
        assert_eq!(redact_error(s), s);
    }

    #[test]
    fn kv_quoted_values_with_escaped_quotes() {
        assert_eq!(
            redact_conn_str(r"host=h password='a b\'c' dbname=d"),
            "host=h password=*** dbname=d"
        );
        assert_eq!(
            redact_conn_str(r#"host=h password = "x \" y" dbname=d"#),
            "host=h password = *** dbname=d"
        );
        assert_eq!(
            redact_conn_str(r"password='a\\' dbname=d"),
            "password=*** dbname=d"
        );
        // Never closed: hidden to the end.
        assert_eq!(
            redact_conn_str("host=h password='never closed dbname=d"),
            "host=h password=***"
        );
    }

    #[test]
    fn known_secret_is_hidden_anywhere() {
        let s = redact_known("auth failed for hunter22 in text", Some("hunter22"));
        assert!(!s.contains("hunter22"));
    }

    #[test]
    fn for_log_escapes_and_cuts() {
        let forged = "x\n2026-01-01T00:00:00Z  INFO forged\r\u{1b}[2K\"q'\\\u{2028}";
        let s = for_log(forged, 200);
        assert_eq!(
            s,
            r#"x\n2026-01-01T00:00:00Z  INFO forged\r\u{1b}[2K\"q\'\\\u{2028}"#
        );
        assert!(!s.chars().any(|c| c.is_control()), "{s:?}");
        // The cut counts escaped characters, and never splits an escape.
        assert_eq!(for_log("ab\ncd", 3), "ab…");
        assert_eq!(for_log("ab\ncd", 4), "ab\\n…");
        assert_eq!(for_log("abcd", 4), "abcd");
        assert_eq!(for_log(&"é".repeat(10), 5), format!("{}…", "é".repeat(5)));
        // Passwords are hidden before the cut, so a cut never leaves half a password.
        assert_eq!(for_log("postgres://u:secret@h/db", 14), "postgres://u:*…");
        assert_eq!(for_log("password=hunter2", 100), "password=***");
    }
}
