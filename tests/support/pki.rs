//! A test PKI (two CAs, a server and a client certificate, made with the openssl command
//! line tool) and a private cluster with `ssl=on` that uses it.

use std::path::{Path, PathBuf};
use std::process::Command;

use toygres_actors::embedded_pg::{EmbeddedOptions, EmbeddedPostgres};

pub struct Pki {
    pub dir: PathBuf,
    /// The CA that signed the server's and the client's certificates.
    pub ca: PathBuf,
    /// A CA that signed nothing.
    pub other_ca: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// A private cluster with `ssl=on`, its certificate from [`make_pki`]; pg_hba lets role
/// `toygres` in over TLS only, and role `either` either way.
pub struct TlsServer {
    pub pki: Pki,
    pub port: u16,
    _pg: EmbeddedPostgres,
}

/// Run the openssl command line tool in `dir`; its standard output.
pub fn openssl(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl command line tool");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A CA, a second unrelated CA, a server certificate for `localhost` (and nothing else:
/// not 127.0.0.1) and a client certificate, both signed by the first CA, in `dir`.
pub fn make_pki(dir: &Path) -> Pki {
    use std::os::unix::fs::PermissionsExt;
    let dir = dir.to_path_buf();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    for (name, cn) in [("ca", "toygres test CA"), ("other-ca", "unrelated CA")] {
        let mut args = vec!["req", "-x509", "-new"];
        args.extend(ec);
        let (key, crt, subj) = (
            format!("{name}.key"),
            format!("{name}.crt"),
            format!("/CN={cn}"),
        );
        args.extend([
            "-keyout",
            &key,
            "-out",
            &crt,
            "-days",
            "3",
            "-subj",
            &subj,
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        openssl(&dir, &args);
    }
    for (name, cn, ext) in [
        (
            "server",
            "localhost",
            "subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n",
        ),
        (
            "client",
            "toygres-actors-client",
            "extendedKeyUsage=clientAuth\n",
        ),
    ] {
        let (key, csr, crt, extf, subj) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
            format!("{name}.ext"),
            format!("/CN={cn}"),
        );
        std::fs::write(dir.join(&extf), format!("basicConstraints=CA:FALSE\n{ext}")).unwrap();
        let mut args = vec!["req", "-new"];
        args.extend(ec);
        args.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
        openssl(&dir, &args);
        openssl(
            &dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &crt,
                "-days",
                "3",
                "-extfile",
                &extf,
            ],
        );
    }
    for f in ["ca.crt", "other-ca.crt", "server.crt", "client.crt"] {
        std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    // The keys 0600; everything owned by the user the cluster runs as (the server's key
    // must be; and the cluster's guardian removes the directory with the cluster).
    for key in ["server.key", "client.key"] {
        std::fs::set_permissions(dir.join(key), std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    if let Some((uid, gid)) = toygres_actors::embedded_pg::cluster_user().unwrap() {
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
        for f in std::fs::read_dir(&dir).unwrap() {
            std::os::unix::fs::chown(f.unwrap().path(), Some(uid), Some(gid)).unwrap();
        }
    }
    Pki {
        ca: dir.join("ca.crt"),
        other_ca: dir.join("other-ca.crt"),
        client_cert: dir.join("client.crt"),
        client_key: dir.join("client.key"),
        dir,
    }
}

impl TlsServer {
    /// Start one (`name` labels its temporary directory).
    pub fn start(name: &str) -> TlsServer {
        let mut opts = EmbeddedOptions::ephemeral_temp(name);
        // Inside the cluster's temporary root, which goes when the cluster does.
        let pki = make_pki(&opts.data_dir.join("pki"));
        let hba = pki.dir.join("pg_hba.conf");
        std::fs::write(
            &hba,
            "hostnossl all either 127.0.0.1/32 trust\n\
             hostssl   all all  127.0.0.1/32 trust\n",
        )
        .unwrap();
        let path = |p: &Path| p.display().to_string();
        opts.settings = vec![
            ("ssl".into(), "on".into()),
            ("ssl_cert_file".into(), path(&pki.dir.join("server.crt"))),
            ("ssl_key_file".into(), path(&pki.dir.join("server.key"))),
            ("ssl_ca_file".into(), path(&pki.ca)),
            ("hba_file".into(), path(&hba)),
        ];
        let pg = EmbeddedPostgres::start(&opts)
            .unwrap_or_else(|e| panic!("cannot start the TLS test cluster: {e}"));
        TlsServer {
            port: pg.port(),
            pki,
            _pg: pg,
        }
    }
}
