//! The submission endpoint: applications POST a message as JSON and mailroom
//! sends it through a named OutgoingEmailServer or the namespace's primary.
//!
//! - `POST /v1/namespaces/{namespace}/outgoingemailservers/{name}/messages`
//! - `POST /v1/namespaces/{namespace}/messages` (the primary)
//!
//! Answers: 200 with the Message-ID and each recipient's outcome when at least
//! one recipient was sent; 422 when none was (all blocked or refused); 503 when
//! no server could take it now; 400 for bad input, naming the field; 401
//! without a valid bearer token; 403 for a token not allowed in the namespace;
//! 404 for an unknown server. Tokens come from a file; in a cluster a
//! ServiceAccount token is reviewed by the API server (`auth`).

pub(crate) mod auth;
pub mod tls;
pub(crate) mod tokens;

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Serialize;

pub use auth::Authenticator;
use mailroom_core::outgoing::message::MAX_MESSAGE_BYTES;
use mailroom_core::outgoing::{Outbox, Outcome, OutgoingMessage, SendError, SendReport};
pub use tokens::{Denied, SubmissionTokens, TokenError};

/// Where the endpoint listens unless told otherwise: this machine only.
pub const DEFAULT_BIND: &str = "127.0.0.1:8025";

#[derive(Clone, Debug)]
struct AppState {
    outbox: Arc<Outbox>,
    auth: Arc<dyn Authenticator>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ErrorBody {
    error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<String>,
}

fn error(status: StatusCode, message: impl Into<String>, field: Option<String>) -> Response {
    let body = axum::Json(ErrorBody {
        error: message.into(),
        field,
    });
    if status == StatusCode::UNAUTHORIZED {
        return (status, [(header::WWW_AUTHENTICATE, "Bearer")], body).into_response();
    }
    (status, body).into_response()
}

/// The endpoint's routes.
pub fn router(outbox: Arc<Outbox>, auth: Arc<dyn Authenticator>) -> Router {
    // base64 makes attachments a third larger; leave room for the JSON around them.
    let limit = MAX_MESSAGE_BYTES / 3 * 4 + 1024 * 1024;
    Router::new()
        .route(
            "/v1/namespaces/{namespace}/outgoingemailservers/{name}/messages",
            post(send_named),
        )
        .route("/v1/namespaces/{namespace}/messages", post(send_primary))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(AppState { outbox, auth })
}

async fn send_named(
    State(state): State<AppState>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    submit(&state, &namespace, Some(&name), &headers, &body).await
}

async fn send_primary(
    State(state): State<AppState>,
    Path(namespace): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    submit(&state, &namespace, None, &headers, &body).await
}

async fn submit(
    state: &AppState,
    namespace: &str,
    name: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match state.auth.check(bearer, namespace).await {
        Ok(()) => {}
        Err(Denied::Unauthenticated) => {
            return error(
                StatusCode::UNAUTHORIZED,
                "a valid bearer token is required (Authorization: Bearer <token>)",
                None,
            );
        }
        Err(Denied::Forbidden) => {
            return error(
                StatusCode::FORBIDDEN,
                format!("this token may not send in namespace {namespace}"),
                None,
            );
        }
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    let message: OutgoingMessage = match serde_path_to_error::deserialize(de) {
        Ok(m) => m,
        Err(e) => {
            let path = e.path().to_string();
            return error(
                StatusCode::BAD_REQUEST,
                format!("invalid JSON: {}", e.inner()),
                Some(if path == "." { String::new() } else { path }).filter(|p| !p.is_empty()),
            );
        }
    };
    match state.outbox.send(namespace, name, &message).await {
        Ok(report) => (status_of(&report), axum::Json(report)).into_response(),
        Err(SendError::Invalid(e)) => {
            error(StatusCode::BAD_REQUEST, e.message.clone(), Some(e.field))
        }
        Err(e @ SendError::NotFound { .. }) => error(StatusCode::NOT_FOUND, e.to_string(), None),
        Err(e @ SendError::NoPrimary { .. }) => {
            error(StatusCode::SERVICE_UNAVAILABLE, e.to_string(), None)
        }
    }
}

fn status_of(report: &SendReport) -> StatusCode {
    if report.count(Outcome::Sent) > 0 {
        StatusCode::OK
    } else if report.count(Outcome::Deferred) > 0 {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    }
}

/// Serves the endpoint on `listener` (plain TCP, or `tls::TlsListener`)
/// until `shutdown` completes.
pub async fn serve<L>(
    listener: L,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}
