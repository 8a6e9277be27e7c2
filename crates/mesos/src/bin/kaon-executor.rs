//! kaon's custom Mesos executor; started by a Mesos agent (or the emulator)
//! with the Mesos executor environment.

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    // Single-threaded on purpose: steps get PR_SET_PDEATHSIG, which fires when
    // the spawning *thread* exits, so spawning must happen on the main thread.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kaon-executor: cannot start runtime: {e}");
            std::process::exit(2);
        }
    };
    let code = runtime.block_on(async {
        let env = kaon_mesos::executor::ExecutorEnv::from_env()?;
        kaon_mesos::executor::run(env).await
    });
    match code {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            tracing::error!(error = %e, "kaon-executor failed");
            std::process::exit(1);
        }
    }
}
