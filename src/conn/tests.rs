//! Unit tests of the connection configuration.
use super::*;

#[test]
fn unknown_and_unsupported_keywords_are_named() {
    let e = ConnConfig::parse("postgres://u:hunter22@h/db?sslmod=require").unwrap_err();
    assert!(e.to_string().contains("unknown parameter `sslmod`"), "{e}");
    assert!(!e.to_string().contains("hunter22"));
    let e = ConnConfig::parse("host=h password=hunter22 sslcrl=/x").unwrap_err();
    assert!(e.to_string().contains("`sslcrl` is not supported"), "{e}");
    let e = ConnConfig::parse("host=h sslmode=verify-everything").unwrap_err();
    assert!(e.to_string().contains("sslmode"), "{e}");
}

#[test]
fn both_forms_give_one_config() {
    let a = ConnConfig::parse(
        "postgres://u:p%20w@db:6432/app?sslmode=verify-full&sslrootcert=/ca.crt&connect_timeout=3",
    )
    .unwrap();
    let b = ConnConfig::parse(
        "host=db port=6432 user=u password='p w' dbname=app sslmode=verify-full sslrootcert=/ca.crt connect_timeout=3",
    )
    .unwrap();
    assert_eq!(a, b);
    assert_eq!(a.sslmode, SslMode::VerifyFull);
    assert_eq!(a.sslrootcert, Some(RootCert::File("/ca.crt".into())));
    assert_eq!(a.connect_timeout, Some(Duration::from_secs(3)));
    assert!(!format!("{a:?}").contains("p w"));
}

#[test]
fn sslrootcert_system_means_verify_full() {
    let c = ConnConfig::parse("host=h sslrootcert=system").unwrap();
    assert_eq!(c.sslmode, SslMode::VerifyFull);
    assert!(ConnConfig::parse("host=h sslrootcert=system sslmode=require").is_err());
}

#[test]
fn sqlx_url_keeps_the_session_settings_and_verifying_modes_go_through_the_bridge() {
    let c = ConnConfig::parse(
        "host=db user=u password=p/w dbname=app sslmode=require sslrootcert=/ca.crt sslcert=/c.crt sslkey=/c.key options='-c x=1'",
    )
    .unwrap();
    let url = c.sqlx_url("app-x", "-c y=2").unwrap();
    assert!(url.starts_with("postgres://u:p%2Fw@localhost:"), "{url}");
    // libpq: require with a root certificate verifies the chain, which sqlx cannot do with
    // the file alone: sqlx talks plaintext to the bridge, which does the TLS.
    assert!(url.contains("sslmode=disable"), "{url}");
    assert!(
        !url.contains("sslrootcert") && !url.contains("sslcert"),
        "{url}"
    );
    assert!(url.contains("options=-c%20x%3D1%20-c%20y%3D2"), "{url}");
    let parsed: sqlx::postgres::PgConnectOptions = url.parse().unwrap();
    let socket = parsed.get_socket().expect("a Unix socket").to_path_buf();
    assert!(
        socket
            .join(format!(".s.PGSQL.{}", parsed.get_port()))
            .exists()
    );
    assert_eq!(parsed.get_application_name(), Some("app-x"));
    // The same server and TLS settings, another user: the same socket.
    let other = ConnConfig::parse(
        "host=db user=v dbname=x sslmode=verify-ca sslrootcert=/ca.crt sslcert=/c.crt sslkey=/c.key",
    )
    .unwrap();
    let mut same = c.clone();
    same.user = other.user.clone();
    same.dbname = other.dbname.clone();
    let again: sqlx::postgres::PgConnectOptions = same.sqlx_url("y", "").unwrap().parse().unwrap();
    assert_eq!(again.get_port(), parsed.get_port());
    // Modes that verify nothing keep sqlx's own TLS.
    let plain = ConnConfig::parse("host=db sslmode=require").unwrap();
    let url = plain.sqlx_url("x", "").unwrap();
    assert!(
        url.contains("@db:5432/") && url.contains("sslmode=require"),
        "{url}"
    );
    let multi = ConnConfig::parse("host=a,b").unwrap();
    assert!(multi.sqlx_url("x", "").is_err());
    let half = ConnConfig::parse("host=db sslcert=/c.crt").unwrap();
    assert!(half.sqlx_url("x", "").is_err());
}

#[test]
fn probe_default_root_cert_applies_only_when_none_is_given() {
    let mut c = ConnConfig::parse("host=h sslmode=verify-full sslrootcert=/own.crt").unwrap();
    c.default_root_cert(Some(&RootCert::File("/default.crt".into())));
    assert_eq!(c.sslrootcert, Some(RootCert::File("/own.crt".into())));
    let mut c = ConnConfig::parse("host=h sslmode=verify-full").unwrap();
    c.default_root_cert(Some(&RootCert::File("/default.crt".into())));
    assert_eq!(c.sslrootcert, Some(RootCert::File("/default.crt".into())));
}
