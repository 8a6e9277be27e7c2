//! Standalone Mesos 1.11 emulator (same as `kaon mesos-emulator`).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    kaon_mesos_emulator::run_from_args(std::env::args_os()).await
}
