//! HTTP (axum, one port): health, readiness, metrics, and the actor API.
//!
//!     GET  /healthz                                 process alive
//!     GET  /readyz                                  database reachable; on the leader, listener connected
//!     GET  /metrics                                 Prometheus text (ours, Duroxide's, fleet gauges)
//!     GET  /api/actors[?verdict=V]                  every instance with its verdict
//!     GET  /api/replicas                            replicas: epoch, heartbeat age, leases, leader
//!     GET  /api/instances/{name}/actor              one actor: status, verdict, id, last check
//!     POST /api/instances/{name}/actor/start|restart|cancel
//!
//! JSON everywhere; errors are `{"error": "..."}` with 400 (bad input), 401 (token), 404
//! (unknown name), 409 (the row calls for something else), 500. With
//! `TOYGRES_ACTORS_API_TOKEN` set, POSTs need `Authorization: Bearer <token>` (compared in
//! constant time); with `--api-token-for-reads` as well, so do the reads that show the fleet
//! (`/metrics` and every `/api/*` GET), while `/healthz` and `/readyz` stay open for the
//! orchestrator's probes. Responses never contain connection strings.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use serde_json::json;
use sqlx::PgPool;
use subtle::ConstantTimeEq;
use tokio::sync::watch;

use crate::listener::ListenerStatus;
use crate::metrics::FleetGauges;
use crate::ops::{self, OpsError};
use crate::reconcile::Reconciler;
use crate::verdict::Verdict;

/// What the HTTP handlers share.
#[derive(Clone)]
pub struct Shared {
    pub pool: PgPool,
    pub reconciler: Arc<Reconciler>,
    pub fleet: FleetGauges,
    pub prometheus: PrometheusHandle,
    pub api_token: Option<String>,
    /// The fleet's reads (`/metrics`, `/api/*` GETs) need the token too.
    pub api_token_for_reads: bool,
    pub leading: watch::Receiver<Option<crate::identity::Term>>,
    pub liveness: watch::Receiver<crate::replica::Liveness>,
    pub listener: watch::Receiver<ListenerStatus>,
    pub worker_only: bool,
    /// Restarts run on the priority lane when there is one.
    pub lane: Option<Arc<crate::reconcile::PriorityLane>>,
}

pub fn router(shared: Shared) -> Router {
    let reads = Router::new()
        .route("/metrics", get(metrics))
        .route("/api/actors", get(list_actors))
        .route("/api/replicas", get(list_replicas))
        .route("/api/instances/{name}/actor", get(actor_status))
        .route_layer(middleware::from_fn_with_state(
            shared.clone(),
            reads_need_token,
        ));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/instances/{name}/actor/{action}", post(actor_action))
        .merge(reads)
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this endpoint",
            )
        })
        .with_state(shared)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

impl IntoResponse for OpsError {
    fn into_response(self) -> Response {
        let status = match &self {
            OpsError::BadRequest(_) => StatusCode::BAD_REQUEST,
            OpsError::NotFound(_) => StatusCode::NOT_FOUND,
            OpsError::Conflict(_) => StatusCode::CONFLICT,
            OpsError::Internal(e) => {
                tracing::warn!(error = %e, "API request failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        error(status, self.to_string())
    }
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

async fn readyz(State(s): State<Shared>) -> Response {
    let db = tokio::time::timeout(
        Duration::from_secs(2),
        sqlx::query(crate::sql::PING).execute(&s.pool),
    )
    .await;
    if !matches!(db, Ok(Ok(_))) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "not ready", "reason": "database unreachable" })),
        )
            .into_response();
    }
    // A leader session that cannot connect (a certificate that fails verification, say)
    // would otherwise leave the replica leaderless and "ready".
    if !s.worker_only
        && let Some(why) = crate::db::session_fault("toygres-actors-leader")
    {
        let reason = format!("the leader election session cannot connect: {why}");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "not ready", "reason": reason })),
        )
            .into_response();
    }
    let term = s.leading.borrow().as_ref().map(|t| t.term);
    let leader = term.is_some();
    let liveness = *s.liveness.borrow();
    let listener = s.listener.borrow().connected;
    if leader && !listener {
        let reason = match crate::db::session_fault("toygres-actors-listener") {
            Some(why) => format!("leader, but the listener is not connected: {why}"),
            None => "leader, but the listener is not connected".to_string(),
        };
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "not ready", "reason": reason })),
        )
            .into_response();
    }
    Json(json!({
        "status": "ready",
        "leader": leader,
        "term": term,
        "replica": liveness,
        "listener_connected": listener,
        "worker_only": s.worker_only,
    }))
    .into_response()
}

/// Every replica: name, epoch, heartbeat age, leases held, leader or not.
async fn list_replicas(State(s): State<Shared>) -> Response {
    match crate::replica::list(&s.pool).await {
        Ok(list) => Json(list).into_response(),
        Err(e) => OpsError::Internal(e.to_string()).into_response(),
    }
}

async fn metrics(State(s): State<Shared>) -> Response {
    let mut body = s.prometheus.render();
    body.push_str(&s.fleet.render());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

#[derive(Deserialize)]
struct ListQuery {
    verdict: Option<String>,
}

/// A path or query string axum cannot decode (e.g. percent-encoded bytes that are not
/// UTF-8): a JSON 400 like every other bad input, not axum's plain-text rejection.
fn bad_input(what: &str, e: impl std::fmt::Display) -> Response {
    let detail: String = e.to_string().chars().take(200).collect();
    error(StatusCode::BAD_REQUEST, format!("invalid {what}: {detail}"))
}

async fn list_actors(
    State(s): State<Shared>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Response {
    let q = match q {
        Ok(Query(q)) => q,
        Err(e) => return bad_input("query string", e),
    };
    let only = match q.verdict.as_deref() {
        None | Some("") => None,
        Some(v) => match Verdict::parse(v) {
            Some(v) => Some(v),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "unknown verdict `{v}` (ok, stale, missing, zombie, orphan, unhealthy, idle)"
                    ),
                );
            }
        },
    };
    match ops::list(&s.reconciler, only).await {
        Ok(list) => Json(json!({ "actors": list })).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn actor_status(
    State(s): State<Shared>,
    name: Result<Path<String>, PathRejection>,
) -> Response {
    let name = match name {
        Ok(Path(name)) => name,
        Err(e) => return bad_input("instance name", e),
    };
    match ops::status(&s.reconciler, &name).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

fn authorized(s: &Shared, headers: &HeaderMap) -> bool {
    let Some(token) = &s.api_token else {
        return true;
    };
    // The auth scheme is case-insensitive (RFC 9110 §11.1); the token is not.
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
    else {
        return false;
    };
    given.as_bytes().ct_eq(token.as_bytes()).into()
}

/// With `--api-token-for-reads`, a read of the fleet needs the token like a POST does.
async fn reads_need_token(State(s): State<Shared>, req: Request, next: Next) -> Response {
    if s.api_token_for_reads && !authorized(&s, req.headers()) {
        return unauthorized();
    }
    next.run(req).await
}

fn unauthorized() -> Response {
    let mut r = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer realm=\"toygres-actors\""),
    );
    r
}

async fn actor_action(
    State(s): State<Shared>,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Response {
    if !authorized(&s, &headers) {
        return unauthorized();
    }
    let (name, action) = match path {
        Ok(Path(p)) => p,
        Err(e) => return bad_input("instance name or action", e),
    };
    let result = match action.as_str() {
        "start" => ops::start(&s.reconciler, &name, "api").await,
        "restart" => match &s.lane {
            Some(lane) => lane
                .call(move |lane| async move { ops::restart(&lane, &name, "api").await })
                .await
                .unwrap_or_else(|| Err(ops::OpsError::Internal("shutting down".into()))),
            None => ops::restart(&s.reconciler, &name, "api").await,
        },
        "cancel" => ops::cancel(&s.reconciler, &name, "api").await,
        other => {
            return error(
                StatusCode::NOT_FOUND,
                format!(
                    "unknown action `{}` (start, restart, cancel)",
                    other.chars().take(40).collect::<String>()
                ),
            );
        }
    };
    match result {
        Ok(r) => Json(r).into_response(),
        Err(e) => e.into_response(),
    }
}
