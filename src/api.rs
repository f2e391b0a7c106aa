//! HTTP (axum, one port): health, readiness, metrics, and the actor API.
//!
//!     GET  /healthz                                 process alive
//!     GET  /readyz                                  database reachable; on the leader, listener connected
//!     GET  /metrics                                 Prometheus text (ours, Duroxide's, fleet gauges)
//!     GET  /api/actors[?verdict=V]                  every instance with its verdict
//!     GET  /api/instances/{name}/actor              one actor: status, verdict, id, last check
//!     POST /api/instances/{name}/actor/start|restart|cancel
//!
//! JSON everywhere; errors are `{"error": "..."}` with 400 (bad input), 401 (token), 404
//! (unknown name), 409 (the row calls for something else), 500. With
//! `TOYGRES_ACTORS_API_TOKEN` set, POSTs need `Authorization: Bearer <token>` (compared in
//! constant time). Responses never contain connection strings.

use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::ops::{self, OpsError};
use crate::service::Shared;
use crate::verdict::Verdict;

pub fn router(shared: Shared) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/actors", get(list_actors))
        .route("/api/instances/{name}/actor", get(actor_status))
        .route("/api/instances/{name}/actor/{action}", post(actor_action))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") })
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
    let leader = *s.leading.borrow();
    let listener = s.listener.borrow().connected;
    if leader && !listener {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "not ready", "reason": "leader, but the listener is not connected" })),
        )
            .into_response();
    }
    Json(json!({
        "status": "ready",
        "leader": leader,
        "listener_connected": listener,
        "worker_only": s.worker_only,
    }))
    .into_response()
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

async fn list_actors(State(s): State<Shared>, Query(q): Query<ListQuery>) -> Response {
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

async fn actor_status(State(s): State<Shared>, Path(name): Path<String>) -> Response {
    match ops::status(&s.reconciler, &name).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

fn authorized(s: &Shared, headers: &HeaderMap) -> bool {
    let Some(token) = &s.api_token else {
        return true;
    };
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    given.as_bytes().ct_eq(token.as_bytes()).into()
}

async fn actor_action(
    State(s): State<Shared>,
    Path((name, action)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if !authorized(&s, &headers) {
        return error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
    }
    let result = match action.as_str() {
        "start" => ops::start(&s.reconciler, &name, "api").await,
        "restart" => ops::restart(&s.reconciler, &name, "api").await,
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
