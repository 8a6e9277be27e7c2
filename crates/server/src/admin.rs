//! The admin HTTP port (`kaon server --admin-listen`): plain HTTP for load
//! balancers, orchestrators and probes that do not speak gRPC.
//!
//! - `GET /healthz`: 200 while the process runs (liveness: restart it if
//!   this fails).
//! - `GET /readyz`: 200 when this node can serve linearizable reads and
//!   writes, else 503 with the reason (readiness: send it no traffic). The
//!   same truth as gRPC health ([`crate::grpc::readiness`]).
//!
//! Metrics will join them here (issue 11).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use crate::log::EventLog;

/// The admin router over `log`.
pub fn router<L: EventLog>(log: Arc<L>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz::<L>))
        .with_state(log)
}

async fn readyz<L: EventLog>(State(log): State<Arc<L>>) -> (StatusCode, String) {
    match crate::grpc::readiness(&*log) {
        kaon_log::Readiness::Ready => (StatusCode::OK, "ready\n".into()),
        kaon_log::Readiness::NotReady(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

/// Serves the admin endpoints on `listener` until `shutdown` resolves.
pub async fn serve<L: EventLog>(
    log: Arc<L>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    axum::serve(listener, router(log))
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}
