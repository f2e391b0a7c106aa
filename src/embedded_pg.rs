//! A private PostgreSQL cluster, for when no `DATABASE_URL` is given.
//!
//! `run`, `demo` and the test harness use the machine's PostgreSQL server binaries (found on
//! `PATH`, through `pg_config --bindir`, or under `/usr/lib/postgresql/*/bin`) to `initdb` a
//! cluster in a data directory of their choosing and start it on a free loopback port. Unix
//! sockets are switched off so the cluster needs no writable `/var/run/postgresql`.
//!
//! PostgreSQL refuses to run as root. When we are root, the cluster is initialised and run as
//! an unprivileged user (`postgres` when it exists, else `nobody`) who owns the data
//! directory. If that user cannot reach the requested directory (e.g. it lies under a `0700`
//! home), the cluster goes to a directory under the system temp dir instead, and the log says so.
//!
//! A *guardian* child process holds the read end of a pipe whose write end only this process
//! holds: when this process exits for any reason, `kill -9` included, the guardian sees EOF
//! and stops the cluster (and removes a temporary data directory). No cluster outlives us.

use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};

use nix::unistd::{Gid, Uid, User};

/// What can go wrong while finding, creating or starting the private cluster.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedPgError {
    #[error(
        "no PostgreSQL server binaries found (looked for initdb, pg_ctl and postgres on PATH, via \
         `pg_config --bindir` and in /usr/lib/postgresql/*/bin); install them, e.g. \
         `apt-get install -y postgresql` on Debian, or set DATABASE_URL to use an existing server"
    )]
    BinariesNotFound,
    #[error(
        "running as root, but neither user `postgres` nor `nobody` exists to run PostgreSQL as"
    )]
    NoUnprivilegedUser,
    #[error("{what} failed: {detail}")]
    Command { what: String, detail: String },
    #[error("i/o error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> EmbeddedPgError + '_ {
    move |source| EmbeddedPgError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// How to set up the private cluster.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// Data directory. Created (and initdb'd) when missing; reused when it holds a cluster.
    pub data_dir: PathBuf,
    /// Remove the data directory when the cluster stops (tests), or keep it (`run`, `demo`).
    pub ephemeral: bool,
    /// Trade durability for speed (`fsync=off` etc.): right for tests and benchmarks only.
    pub fast_unsafe: bool,
    /// `max_connections` of the cluster.
    pub max_connections: u32,
    /// Extra `-c name=value` settings.
    pub settings: Vec<(String, String)>,
}

impl EmbeddedOptions {
    /// The `run`/`demo` default: a persistent cluster under `.toygres-actors/pg`.
    pub fn persistent(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            ephemeral: false,
            fast_unsafe: false,
            max_connections: 200,
            settings: Vec::new(),
        }
    }

    /// A throw-away cluster in a fresh temp directory (tests, benchmarks).
    pub fn ephemeral_temp(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "toygres-actors-{tag}-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        Self {
            data_dir: dir,
            ephemeral: true,
            fast_unsafe: true,
            max_connections: 400,
            settings: Vec::new(),
        }
    }
}

/// A running private cluster. Dropping it stops the cluster.
pub struct EmbeddedPostgres {
    bindir: PathBuf,
    /// The directory holding `data/` (the cluster) and `postgres.log`.
    root: PathBuf,
    port: u16,
    superuser: String,
    run_as: Option<(Uid, Gid)>,
    ephemeral: bool,
    /// The write end of the guardian's pipe; dropped only when we stop the cluster ourselves.
    guardian: Option<ChildStdin>,
    stopped: bool,
}

/// The superuser initdb creates; trust authentication on loopback only.
const SUPERUSER: &str = "toygres";

impl EmbeddedPostgres {
    /// Find the binaries, initdb when needed, start the server and wait until it accepts
    /// connections.
    pub fn start(opts: &EmbeddedOptions) -> Result<Self, EmbeddedPgError> {
        let bindir = find_bindir()?;
        let run_as = unprivileged_user()?;
        let root = usable_root(&opts.data_dir, run_as)?;
        fs::create_dir_all(&root).map_err(io_err(&root))?;
        if let Some((uid, gid)) = run_as {
            nix::unistd::chown(&root, Some(uid), Some(gid)).map_err(|e| EmbeddedPgError::Io {
                path: root.clone(),
                source: e.into(),
            })?;
        }
        let data = root.join("data");
        let log = root.join("postgres.log");

        if !data.join("PG_VERSION").exists() {
            let mut cmd = Command::new(bindir.join("initdb"));
            cmd.arg("-D").arg(&data).args([
                "-U",
                SUPERUSER,
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
            ]);
            if opts.fast_unsafe {
                cmd.arg("--no-sync");
            }
            run(cmd, run_as, "initdb")?;
        }

        // A cluster left running by an earlier process of ours (e.g. killed before its
        // guardian noticed) is stopped first, so we always own what we start.
        let pid_file = data.join("postmaster.pid");
        if pid_file.exists() {
            let mut cmd = Command::new(bindir.join("pg_ctl"));
            cmd.arg("-D").arg(&data).args(["-m", "fast", "-w", "stop"]);
            let _ = run(cmd, run_as, "pg_ctl stop (stale cluster)");
        }

        let port = free_port().map_err(io_err(&root))?;
        let mut options = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories= -c max_connections={}",
            opts.max_connections
        );
        if opts.fast_unsafe {
            options.push_str(" -c fsync=off -c synchronous_commit=off -c full_page_writes=off");
        }
        for (k, v) in &opts.settings {
            options.push_str(&format!(" -c {k}={v}"));
        }
        let mut cmd = Command::new(bindir.join("pg_ctl"));
        cmd.arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "60", "-o", &options, "start"]);
        if let Err(e) = run(cmd, run_as, "pg_ctl start") {
            let tail = fs::read_to_string(&log).unwrap_or_default();
            let tail: String = tail.lines().rev().take(15).collect::<Vec<_>>().join("\n");
            return Err(EmbeddedPgError::Command {
                what: "pg_ctl start".into(),
                detail: format!("{e}; server log (last lines, newest first):\n{tail}"),
            });
        }

        let guardian = spawn_guardian(&bindir, &data, &root, opts.ephemeral, run_as)?;
        tracing::info!(data_dir = %data.display(), port, bindir = %bindir.display(), "private PostgreSQL started");
        Ok(Self {
            bindir,
            root,
            port,
            superuser: SUPERUSER.to_string(),
            run_as,
            ephemeral: opts.ephemeral,
            guardian: Some(guardian),
            stopped: false,
        })
    }

    /// Connection URL for a database of this cluster.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{}@127.0.0.1:{}/{}",
            self.superuser, self.port, database
        )
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    /// `pg_ctl restart -m <mode>` (`fast` or `immediate`): for fault tests.
    pub fn restart(&self, mode: &str) -> Result<(), EmbeddedPgError> {
        // With -l, so the restarted server's output does not hold our pipe open.
        let mut cmd = Command::new(self.bindir.join("pg_ctl"));
        cmd.arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.root.join("postgres.log"))
            .args(["-m", mode, "-w", "-t", "60", "restart"]);
        run(cmd, self.run_as, "pg_ctl restart")
    }

    /// Stop the cluster now (idempotent).
    pub fn stop(&mut self) -> Result<(), EmbeddedPgError> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        let mut cmd = Command::new(self.bindir.join("pg_ctl"));
        cmd.arg("-D")
            .arg(self.data_dir())
            .args(["-m", "fast", "-w", "stop"]);
        let result = run(cmd, self.run_as, "pg_ctl stop");
        // Closing the pipe lets the guardian exit (it finds the cluster already stopped).
        self.guardian.take();
        if self.ephemeral {
            let _ = fs::remove_dir_all(&self.root);
        }
        result
    }
}

impl Drop for EmbeddedPostgres {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::warn!(error = %e, "stopping the private PostgreSQL failed");
        }
    }
}

/// Run a command (as the unprivileged user when we are root) and turn failure into an error
/// that carries its output.
fn run(mut cmd: Command, run_as: Option<(Uid, Gid)>, what: &str) -> Result<(), EmbeddedPgError> {
    if let Some((uid, gid)) = run_as {
        cmd.uid(uid.as_raw()).gid(gid.as_raw());
        // Some PostgreSQL tools chdir-check the cwd; give them one they can read.
        cmd.current_dir("/");
    }
    cmd.stdin(Stdio::null());
    let out = cmd.output().map_err(|e| EmbeddedPgError::Command {
        what: what.to_string(),
        detail: e.to_string(),
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(EmbeddedPgError::Command {
            what: what.to_string(),
            detail: format!(
                "{}; {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        })
    }
}

/// The directory holding `initdb`, `pg_ctl` and `postgres`.
pub fn find_bindir() -> Result<PathBuf, EmbeddedPgError> {
    let complete = |dir: &Path| {
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|b| dir.join(b).is_file())
    };
    if let Some(dir) = std::env::var_os("TOYGRES_ACTORS_PG_BINDIR") {
        let dir = PathBuf::from(dir);
        if complete(&dir) {
            return Ok(dir);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let initdb = dir.join("initdb");
            if initdb.is_file() {
                // /usr/local/bin/initdb may be a link into the real bindir.
                let real = fs::canonicalize(&initdb).unwrap_or(initdb);
                if let Some(parent) = real.parent()
                    && complete(parent)
                {
                    return Ok(parent.to_path_buf());
                }
                if complete(&dir) {
                    return Ok(dir);
                }
            }
        }
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if complete(&dir) {
            return Ok(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            Some((v, e.path().join("bin")))
        })
        .filter(|(_, dir)| complete(dir))
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, dir)| dir)
        .ok_or(EmbeddedPgError::BinariesNotFound)
}

/// The (uid, gid) a private cluster runs as when we are root, `None` otherwise: files the
/// server must own (a TLS key, say) belong to this user.
pub fn cluster_user() -> Result<Option<(u32, u32)>, EmbeddedPgError> {
    Ok(unprivileged_user()?.map(|(u, g)| (u.as_raw(), g.as_raw())))
}

/// `None` when we are not root; otherwise the user to run PostgreSQL as.
fn unprivileged_user() -> Result<Option<(Uid, Gid)>, EmbeddedPgError> {
    if !Uid::effective().is_root() {
        return Ok(None);
    }
    for name in ["postgres", "nobody"] {
        if let Ok(Some(user)) = User::from_name(name) {
            return Ok(Some((user.uid, user.gid)));
        }
    }
    Err(EmbeddedPgError::NoUnprivilegedUser)
}

/// The requested directory, or — when we are root and the unprivileged user could not reach
/// it — a directory under the system temp dir.
fn usable_root(wanted: &Path, run_as: Option<(Uid, Gid)>) -> Result<PathBuf, EmbeddedPgError> {
    let Some((uid, gid)) = run_as else {
        return Ok(wanted.to_path_buf());
    };
    let abs = if wanted.is_absolute() {
        wanted.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(io_err(wanted))?
            .join(wanted)
    };
    let reachable = abs.ancestors().skip(1).all(|dir| match fs::metadata(dir) {
        Ok(m) => {
            let mode = m.permissions().mode();
            mode & 0o001 != 0
                || (m.uid() == uid.as_raw() && mode & 0o100 != 0)
                || (m.gid() == gid.as_raw() && mode & 0o010 != 0)
        }
        // Not created yet: we create it, world-traversable by default umask.
        Err(_) => true,
    });
    if reachable {
        return Ok(abs);
    }
    let name = abs
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect::<String>();
    let fallback = std::env::temp_dir().join(format!("toygres-actors-pg{name}"));
    tracing::warn!(
        wanted = %abs.display(),
        using = %fallback.display(),
        "the unprivileged PostgreSQL user cannot reach the data directory; using a temp directory"
    );
    Ok(fallback)
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Spawn the guardian: it blocks reading its stdin (our pipe) and stops the cluster on EOF.
fn spawn_guardian(
    bindir: &Path,
    data: &Path,
    root: &Path,
    ephemeral: bool,
    run_as: Option<(Uid, Gid)>,
) -> Result<ChildStdin, EmbeddedPgError> {
    let mut script = String::from(
        "cat >/dev/null; \"$PG_CTL\" -D \"$PG_DATA\" -m fast -w -t 30 stop >/dev/null 2>&1 || \
         \"$PG_CTL\" -D \"$PG_DATA\" -m immediate stop >/dev/null 2>&1;",
    );
    if ephemeral {
        script.push_str(" rm -rf \"$PG_ROOT\";");
    }
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(script)
        .env("PG_CTL", bindir.join("pg_ctl"))
        .env("PG_DATA", data)
        .env("PG_ROOT", root)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .current_dir("/")
        // Its own process group: a Ctrl-C to our group must not stop it before we do.
        .process_group(0);
    if let Some((uid, gid)) = run_as {
        cmd.uid(uid.as_raw()).gid(gid.as_raw());
    }
    let mut child = cmd.spawn().map_err(|e| EmbeddedPgError::Command {
        what: "spawning the cluster guardian".into(),
        detail: e.to_string(),
    })?;
    let mut stdin = child.stdin.take().ok_or_else(|| EmbeddedPgError::Command {
        what: "spawning the cluster guardian".into(),
        detail: "no stdin pipe".into(),
    })?;
    // Nothing is ever written but this check that the pipe works.
    stdin.flush().map_err(io_err(root))?;
    // The child is reaped by init once we exit; we never wait on it.
    std::mem::forget(child);
    Ok(stdin)
}

/// The URL of a private cluster that another process of ours (a running `run` or `demo`)
/// started under `data_dir`, if it is running.
pub fn running_url(data_dir: &Path, database: &str) -> Option<String> {
    let run_as = unprivileged_user().ok()?;
    let root = usable_root(data_dir, run_as).ok()?;
    let pid_file = fs::read_to_string(root.join("data").join("postmaster.pid")).ok()?;
    let mut lines = pid_file.lines();
    let pid: i32 = lines.next()?.trim().parse().ok()?;
    let port: u16 = lines.nth(2)?.trim().parse().ok()?;
    // Signal 0: is the postmaster alive?
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).ok()?;
    Some(format!(
        "postgres://{SUPERUSER}@127.0.0.1:{port}/{database}"
    ))
}
