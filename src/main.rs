//! `toygres-actors`: parse the command line and hand over to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = toygres_actors::cli::Cli::parse();
    // duroxide-pg sizes its pool from DUROXIDE_PG_POOL_MAX when it connects; set it from
    // --duroxide-pool-max here, while the process has a single thread (setting the
    // environment is only sound then).
    if let Some(n) = toygres_actors::cli::duroxide_pool_max(&cli) {
        // SAFETY: no other thread exists yet: the async runtime is built below.
        unsafe { std::env::set_var("DUROXIDE_PG_POOL_MAX", n.to_string()) };
    }
    toygres_actors::cli::init_tracing(&cli.global);
    toygres_actors::failpoint::arm();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(toygres_actors::cli::execute(cli));
    toygres_actors::conn::remove_tls_bridge_sockets();
    match result {
        Ok(code) => std::process::ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!(
                "error: {}",
                toygres_actors::redact::redact_error(&format!("{e:#}"))
            );
            // Exit 1 is `status`'s "something needs healing"; a failed command is 2.
            std::process::ExitCode::from(2)
        }
    }
}
