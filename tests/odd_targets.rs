//! A probe target that speaks PostgreSQL's protocol but answers the probe with fewer columns
//! than it asks for (a proxy, a look-alike): the probe must read what came, not panic, and
//! the instance must go on being checked at every interval.

mod support;

use std::time::Duration;

use support::{ServiceProc, TestDb, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// Answer one client: trust auth, then every simple query with one text column.
async fn serve(mut sock: tokio::net::TcpStream) -> std::io::Result<()> {
    // Startup (an SSLRequest first, answered "no", then the startup message).
    loop {
        let len = sock.read_i32().await? as usize;
        let mut body = vec![0; len.saturating_sub(4)];
        sock.read_exact(&mut body).await?;
        if body.get(..4) == Some(&80877103_i32.to_be_bytes()[..]) {
            sock.write_all(b"N").await?;
            continue;
        }
        break;
    }
    let mut hello = message(b'R', &0_i32.to_be_bytes());
    hello.extend(message(b'S', b"server_version\x0016.0\x00"));
    hello.extend(message(b'Z', b"I"));
    sock.write_all(&hello).await?;
    loop {
        let tag = sock.read_u8().await?;
        let len = sock.read_i32().await? as usize;
        let mut body = vec![0; len.saturating_sub(4)];
        sock.read_exact(&mut body).await?;
        match tag {
            b'Q' => {
                let mut field = b"version\x00".to_vec();
                field.extend_from_slice(&0_i32.to_be_bytes()); // table oid
                field.extend_from_slice(&0_i16.to_be_bytes()); // column number
                field.extend_from_slice(&25_i32.to_be_bytes()); // text
                field.extend_from_slice(&(-1_i16).to_be_bytes());
                field.extend_from_slice(&(-1_i32).to_be_bytes());
                field.extend_from_slice(&0_i16.to_be_bytes());
                let mut desc = 1_i16.to_be_bytes().to_vec();
                desc.extend(field);
                let value = b"PostgreSQL 16.0 (look-alike)";
                let mut row = 1_i16.to_be_bytes().to_vec();
                row.extend_from_slice(&(value.len() as i32).to_be_bytes());
                row.extend_from_slice(value);
                let mut reply = message(b'T', &desc);
                reply.extend(message(b'D', &row));
                reply.extend(message(b'C', b"SELECT 1\x00"));
                reply.extend(message(b'Z', b"I"));
                sock.write_all(&reply).await?;
            }
            b'X' => return Ok(()),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_target_answering_with_one_column_is_checked_at_every_interval() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            tokio::spawn(serve(sock));
        }
    });
    let db = TestDb::new().await;
    db.insert_instance(
        "pg-one-column",
        "running",
        Some(&format!("postgres://toygres@127.0.0.1:{port}/postgres")),
    )
    .await;
    let svc = ServiceProc::start(&db, &[]).await;
    // FAST_ARGS: a check every second. Three of them: the instance is checked again and
    // again (a panic in the first would have left it unchecked for good).
    wait_until(
        "pg-one-column checked three times",
        Duration::from_secs(30),
        || async { (db.checks_of("pg-one-column").await >= 3).then_some(()) },
    )
    .await;
    assert_eq!(
        support::metric(
            &svc,
            "toygres_actors_task_panics_total",
            &["task=\"check\""]
        )
        .await,
        0.0,
        "the probe panicked"
    );
    server.abort();
}
