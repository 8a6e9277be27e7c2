//! The admin HTTP port (`kaon server --admin-listen`): plain HTTP for load
//! balancers, orchestrators and probes that do not speak gRPC.
//!
//! - `GET /healthz`: 200 while the process runs (liveness: restart it if
//!   this fails).
//! - `GET /readyz`: 200 when this node can serve linearizable reads and
//!   writes, else 503 with the reason (readiness: send it no traffic). The
//!   same truth as gRPC health ([`crate::grpc::readiness`]).
//!
//! - `GET /metrics`: Prometheus' text format (version 0.0.4), every metric
//!   in [`crate::metrics`] (the table is `docs/metrics.md`).
//! - `/ui/`: the web UI ([`crate::ui`]), when the node's API address is
//!   known.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::log::EventLog;
use crate::metrics::Metrics;

/// What the admin handlers read.
struct Admin<L> {
    log: Arc<L>,
    metrics: Arc<Metrics>,
    clock: Arc<dyn kaon_log::Clock>,
}

/// The admin router over `log`, exporting `metrics`, with the web UI
/// when `ui` is given.
pub fn router<L: EventLog>(
    log: Arc<L>,
    metrics: Arc<Metrics>,
    clock: Arc<dyn kaon_log::Clock>,
    ui: Option<crate::ui::Ui>,
) -> Router {
    let base = match ui {
        Some(ui) => crate::ui::router(ui),
        None => Router::new(),
    };
    let admin = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz::<L>))
        .route("/metrics", get(metrics_text::<L>))
        .with_state(Arc::new(Admin {
            log,
            metrics,
            clock,
        }));
    base.merge(admin)
}

async fn metrics_text<L: EventLog>(State(a): State<Arc<Admin<L>>>) -> impl IntoResponse {
    let text = a.metrics.render(&*a.log, a.clock.now_unix_ms());
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text)
}

async fn readyz<L: EventLog>(State(a): State<Arc<Admin<L>>>) -> (StatusCode, String) {
    match crate::grpc::readiness(&*a.log) {
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
    metrics: Arc<Metrics>,
    clock: Arc<dyn kaon_log::Clock>,
    ui: Option<crate::ui::Ui>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    axum::serve(listener, router(log, metrics, clock, ui))
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}
