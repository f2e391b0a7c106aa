//! HTTP (axum, one port): health, readiness, metrics, and the actor API.
//!
//!     GET  /healthz                                 process alive
//!     GET  /readyz                                  database reachable; on the leader, listener connected
//!     GET  /metrics                                 Prometheus text (ours, Duroxide's, fleet gauges)
//!     GET  /api/actors[?verdict=V][&limit=N&after=ID]  every instance with its verdict (or a page)
//!     GET  /api/replicas                            replicas: epoch, heartbeat age, leases, leader
//!     GET  /api/instances/{name}/actor              one actor: status, verdict, id, last check
//!     POST /api/instances/{name}/actor/start|restart|cancel
//!
//! JSON everywhere; errors are `{"error": "..."}` with 400 (bad input), 401 (token), 404
//! (unknown name), 409 (the row calls for something else), 500, 503 (over the time limit).
//!
//! Tokens (compared in constant time): with `TOYGRES_ACTORS_API_TOKEN` set, POSTs need
//! `Authorization: Bearer <token>`. The reads that show the fleet (`/metrics` and every
//! `/api/*` GET) need a bearer token — the read token (`--api-read-token`) or the API token —
//! whenever [`ReadAccess::Token`] applies: on a non-loopback bind (unless
//! `--insecure-no-auth`), with a read token set, or with `--api-token-for-reads`.
//! `/healthz` and `/readyz` stay open for the orchestrator's probes.
//!
//! Bounds: every request answers within `--http-timeout` (503 past it); the API requests
//! (`/metrics`, `/api/*`) run at most `--http-concurrency` at once, once their token is
//! checked, so requests without one never take a slot. `/api/actors` is served from the
//! fleet poll's snapshot ([`crate::snapshot`]): no request reads the whole fleet from the
//! CMS. Responses never contain connection strings.

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
use tower::limit::GlobalConcurrencyLimitLayer;

use crate::listener::ListenerStatus;
use crate::metrics::FleetGauges;
use crate::ops::{self, OpsError};
use crate::reconcile::Reconciler;
use crate::settings::ReadAccess;
use crate::snapshot::{MAX_PAGE, Page, Snapshots};
use crate::verdict::Verdict;

/// What the HTTP handlers share.
#[derive(Clone)]
pub struct Shared {
    pub pool: PgPool,
    pub reconciler: Arc<Reconciler>,
    pub fleet: FleetGauges,
    /// The fleet poll's latest view, which `/api/actors` serves.
    pub snapshots: Snapshots,
    pub prometheus: PrometheusHandle,
    pub auth: ApiAuth,
    pub leading: watch::Receiver<Option<crate::identity::Term>>,
    pub liveness: watch::Receiver<crate::replica::Liveness>,
    pub listener: watch::Receiver<ListenerStatus>,
    pub worker_only: bool,
    /// Restarts run on the priority lane when there is one.
    pub lane: Option<Arc<crate::reconcile::PriorityLane>>,
}

/// The bearer tokens the API accepts, and for what. No `Debug`: it holds the tokens.
#[derive(Clone)]
pub struct ApiAuth {
    /// Needed by the POSTs (when set); accepted for the reads too.
    pub api_token: Option<String>,
    /// Accepted for the reads only.
    pub read_token: Option<String>,
    /// Whether the reads need one of the two.
    pub reads: ReadAccess,
}

/// Bounds on the HTTP server's work.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Every request answers within this (503 past it), the wait for a slot included.
    pub timeout: Duration,
    /// API requests (`/metrics`, `/api/*`) served at once.
    pub concurrency: usize,
}

pub fn router(shared: Shared, limits: HttpLimits) -> Router {
    // One semaphore for every API route (a per-route limit would multiply it), inside the
    // token checks, so requests without a token never wait for a slot or hold one.
    let slots = GlobalConcurrencyLimitLayer::new(limits.concurrency);
    let reads = Router::new()
        .route("/metrics", get(metrics))
        .route("/api/actors", get(list_actors))
        .route("/api/replicas", get(list_replicas))
        .route("/api/instances/{name}/actor", get(actor_status))
        .route_layer(slots.clone())
        .route_layer(middleware::from_fn_with_state(
            shared.clone(),
            reads_need_token,
        ));
    let writes = Router::new()
        .route("/api/instances/{name}/actor/{action}", post(actor_action))
        .route_layer(slots)
        .route_layer(middleware::from_fn_with_state(
            shared.clone(),
            writes_need_token,
        ));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(reads)
        .merge(writes)
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this endpoint",
            )
        })
        .layer(middleware::from_fn_with_state(limits.timeout, time_limit))
        .with_state(shared)
}

/// Answers 503 when the request (the wait for a slot included) takes longer than `limit`;
/// the handler's work is dropped with it.
async fn time_limit(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => {
            if crate::quiet::HTTP_TIMEOUTS.admit() {
                tracing::warn!(
                    path = ?path.chars().take(120).collect::<String>(),
                    limit_ms = limit.as_millis() as u64,
                    "HTTP request over its time limit: answered 503"
                );
            }
            let mut r = error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the request took longer than {} ms; try again",
                    limit.as_millis()
                ),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            r
        }
    }
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
    /// Page size: with it, one page in instance-id order and the `next` page's `after`.
    limit: Option<usize>,
    /// The previous page's `next`: instances whose id sorts after it.
    after: Option<uuid::Uuid>,
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
    let page = match (q.limit, q.after) {
        (None, None) => None,
        (Some(limit), after) if (1..=MAX_PAGE).contains(&limit) => Some(Page { after, limit }),
        (Some(_), _) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("limit must be 1 to {MAX_PAGE}"),
            );
        }
        (None, Some(_)) => {
            return error(StatusCode::BAD_REQUEST, "after needs a limit");
        }
    };
    // Before the first poll has finished this waits for it (within the time limit).
    let snapshot = s.snapshots.latest().await;
    let body = match page {
        None => snapshot.body(only).await,
        Some(page) => snapshot.page(only, page),
    };
    match body {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => OpsError::Internal(e.to_string()).into_response(),
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

/// Whether `headers` carry one of `accepted` as a bearer token.
fn bearer_matches(headers: &HeaderMap, accepted: &[&str]) -> bool {
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
    // Every accepted token is compared, so the time taken does not say which one matched.
    accepted.iter().fold(false, |found, token| {
        let same: bool = given.as_bytes().ct_eq(token.as_bytes()).into();
        found | same
    })
}

/// A read of the fleet needs the read token or the API token when [`ReadAccess::Token`].
async fn reads_need_token(State(s): State<Shared>, req: Request, next: Next) -> Response {
    if s.auth.reads == ReadAccess::Token {
        let accepted: Vec<&str> = [&s.auth.read_token, &s.auth.api_token]
            .into_iter()
            .flatten()
            .map(String::as_str)
            .collect();
        // Settings validation guarantees a token here; none set refuses every read.
        if !bearer_matches(req.headers(), &accepted) {
            return unauthorized();
        }
    }
    next.run(req).await
}

/// A POST needs the API token when one is set (the read token is never enough).
async fn writes_need_token(State(s): State<Shared>, req: Request, next: Next) -> Response {
    if let Some(token) = &s.auth.api_token
        && !bearer_matches(req.headers(), &[token.as_str()])
    {
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
    path: Result<Path<(String, String)>, PathRejection>,
) -> Response {
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
