//! A connection pooler (PgBouncer) in front of a bench PostgreSQL, as a probe target: a fleet of 10,000 instances is 10,000 servers, each forking its own
//! backends, not one server forking 10,000 — through the pooler a probe's connect reuses a
//! server connection instead of forking a backend on the one machine the bench shares.
//! Each probe still connects (TCP + startup) and runs its query on a real PostgreSQL.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

/// What the instances probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Targets {
    /// Through a PgBouncer in transaction mode (needs `pgbouncer`); default probe settings.
    Pooled,
    /// The target cluster itself, a new connection per probe.
    Direct,
}

/// A running PgBouncer; stopped on drop.
pub struct Pooler {
    child: Child,
    port: u16,
    dir: PathBuf,
}

/// Where PgBouncer is installed (the Debian package puts it in /usr/sbin), if anywhere.
pub fn binary() -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .map(|d| d.join("pgbouncer"))
        .find(|p| p.is_file())
}

impl Pooler {
    /// Start PgBouncer on a free loopback port in front of `127.0.0.1:pg_port`, with at most
    /// `server_connections` backends. Every client is `toygres` (trust, as the bench's
    /// cluster). `transaction`: a client holds a backend only while it runs a statement
    /// (pool_mode transaction), so kept probe connections do not pin backends; otherwise
    /// for as long as it is connected (session).
    pub fn start(pg_port: u16, server_connections: u32, transaction: bool) -> Result<Pooler> {
        let mode = if transaction {
            "transaction"
        } else {
            "session"
        };
        let bin =
            binary().context("pgbouncer is not installed (Debian: apt-get install pgbouncer)")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let dir = std::env::temp_dir().join(format!("bench-pooler-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let ini = dir.join("pgbouncer.ini");
        std::fs::write(
            &ini,
            format!(
                "[databases]\n\
                 * = host=127.0.0.1 port={pg_port} user=toygres\n\
                 [pgbouncer]\n\
                 listen_addr = 127.0.0.1\n\
                 listen_port = {port}\n\
                 unix_socket_dir =\n\
                 auth_type = any\n\
                 pool_mode = {mode}\n\
                 max_client_conn = 20000\n\
                 default_pool_size = {server_connections}\n\
                 max_db_connections = {server_connections}\n\
                 ignore_startup_parameters = extra_float_digits,options\n\
                 log_connections = 0\n\
                 log_disconnections = 0\n\
                 logfile = {}\n",
                dir.join("pgbouncer.log").display()
            ),
        )?;
        let mut cmd = Command::new(bin);
        // PgBouncer refuses to run as root: as root, it switches to the cluster's user.
        if let Some((uid, _)) = toygres_actors::embedded_pg::cluster_user()? {
            let name = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))?
                .context("the cluster user has no name")?
                .name;
            std::os::unix::fs::chown(&dir, Some(uid), None)?;
            std::os::unix::fs::chown(&ini, Some(uid), None)?;
            cmd.arg("-u").arg(name);
        }
        let child = cmd
            .arg(&ini)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start pgbouncer")?;
        let mut pooler = Pooler { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = pooler.child.try_wait()? {
                bail!("pgbouncer exited at start ({status})");
            }
            if Instant::now() > deadline {
                bail!("pgbouncer did not listen within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(pooler)
    }

    /// PgBouncer's process id.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// A probe target through the pooler.
    pub fn target(&self) -> String {
        format!(
            "postgres://toygres:bench-pw@127.0.0.1:{}/postgres?sslmode=disable",
            self.port
        )
    }
}

impl Drop for Pooler {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
