//! The HTTP endpoint: `/metrics` (Prometheus text format), `/healthz` (the process is up),
//! `/readyz` (ready: for `labelqc run`, the outputs of the input present at start are published
//! and committed and the brokers are reachable), and the query API where it is served
//! ([`crate::api`]). Runs on its own thread with a small tokio runtime,
//! so that no async code touches the dataflow threads.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::sync::oneshot;

use crate::api::{self, Api};
use crate::telemetry::Telemetry;

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot listen on {addr}: {source}; choose another address with --http")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("cannot start the HTTP thread: {0}")]
    Start(std::io::Error),
}

#[derive(Clone)]
struct AppState {
    telemetry: Arc<Telemetry>,
    ready: Arc<AtomicBool>,
}

/// A running HTTP endpoint; stops when dropped.
pub struct HttpServer {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl HttpServer {
    /// Binds `addr` (port 0 picks a free port) and serves until dropped; `/readyz` answers 200
    /// while `ready` is set.
    pub fn start(
        addr: SocketAddr,
        telemetry: Arc<Telemetry>,
        ready: Arc<AtomicBool>,
    ) -> Result<HttpServer, HttpError> {
        HttpServer::start_with_api(addr, telemetry, ready, None)
    }

    /// [`HttpServer::start`], also serving the query API ([`crate::api`]) from `api`'s store.
    pub fn start_with_api(
        addr: SocketAddr,
        telemetry: Arc<Telemetry>,
        ready: Arc<AtomicBool>,
        api: Option<Api>,
    ) -> Result<HttpServer, HttpError> {
        let listener = TcpListener::bind(addr).map_err(|source| HttpError::Bind { addr, source })?;
        listener.set_nonblocking(true).map_err(|source| HttpError::Bind { addr, source })?;
        let local = listener.local_addr().map_err(|source| HttpError::Bind { addr, source })?;
        let (shutdown, stop) = oneshot::channel::<()>();
        let mut app = Router::new()
            .route("/metrics", get(metrics))
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .with_state(AppState { telemetry, ready });
        if let Some(state) = api {
            let routes = Router::new()
                .route("/openapi.json", get(api::openapi))
                .route("/v1/scopes", get(api::scopes))
                .route("/v1/scopes/{project}/{task}", get(api::scope))
                .route("/v1/gates/{project}/{annotator_id}", get(api::gate))
                .route("/v1/annotators/{project}/{task}/{annotator_id}", get(api::annotator))
                .route("/v1/items/{project}/{task}/{item_id}", get(api::item))
                .route("/v1/leaderboard/{project}/{task}", get(api::leaderboard))
                .with_state(state);
            app = app.merge(routes);
        }
        let thread = std::thread::Builder::new()
            .name("labelqc-http".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a current-thread runtime builds");
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => listener,
                        Err(error) => {
                            tracing::error!(%error, "cannot serve HTTP");
                            return;
                        }
                    };
                    let served = axum::serve(listener, app).with_graceful_shutdown(async move {
                        let _ = stop.await;
                    });
                    if let Err(error) = served.await {
                        tracing::error!(%error, "HTTP endpoint failed");
                    }
                });
            })
            .map_err(HttpError::Start)?;
        Ok(HttpServer { addr: local, shutdown: Some(shutdown), thread: Some(thread) })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.telemetry.render())
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    if state.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "catching up\n")
    }
}
