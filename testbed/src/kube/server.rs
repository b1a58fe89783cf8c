//! HTTPS on loopback: bearer-token authentication, faults, discovery, the
//! resource URL scheme, RBAC, then the verb.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::faults::Verdict;
use super::handlers::Call;
use super::rbac::{Attributes, User, forbidden_message};
use super::render::{self, Render};
use super::status::ApiError;
use super::{Logged, Shared, watch as watches};

type Body = BoxBody<Bytes, Infallible>;

pub(crate) async fn serve(
    listener: TcpListener,
    tls: TlsAcceptor,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => return,
        };
        let Ok((tcp, _)) = accepted else {
            continue;
        };
        let tls = tls.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            let Ok(stream) = tls.accept(tcp).await else {
                return;
            };
            let service = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(shared, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

fn json_response(code: u16, body: &Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *r.status_mut() = hyper::StatusCode::from_u16(code).unwrap_or(hyper::StatusCode::OK);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn error_response(e: &ApiError) -> Response<Body> {
    json_response(e.code, &e.body())
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let header = |name: hyper::header::HeaderName| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let token = header(hyper::header::AUTHORIZATION)
        .strip_prefix("Bearer ")
        .unwrap_or_default()
        .to_owned();
    let Some(user) = shared.lock().users.get(&token).cloned() else {
        return error_response(&ApiError::new(401, "Unauthorized", "Unauthorized"));
    };
    if let Some(action) = parts.uri.path().strip_prefix("/testbed/") {
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        return control(&shared, &user, action, &body);
    }
    match shared.faults.before(&[&user.name, &token]).await {
        Verdict::Serve => {}
        Verdict::Throttle { retry_after } => {
            let e = ApiError::new(
                429,
                "TooManyRequests",
                "the server has received too many requests and has asked us to try again later",
            );
            let mut r = error_response(&e);
            if let Ok(v) = hyper::header::HeaderValue::from_str(&retry_after.to_string()) {
                r.headers_mut().insert(hyper::header::RETRY_AFTER, v);
            }
            return r;
        }
        Verdict::Fail => {
            return error_response(&ApiError::new(
                500,
                "InternalError",
                "an error on the server (\"injected by the test\") has prevented the request from succeeding",
            ));
        }
    }
    let content_type = header(hyper::header::CONTENT_TYPE);
    if content_type.contains("protobuf") || content_type.contains("cbor") {
        // Like a server without that codec: the client falls back to JSON.
        return error_response(&ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml; got {content_type}"
            ),
        ));
    }
    let body = match body.collect().await {
        Ok(b) => b.to_bytes().to_vec(),
        Err(_) => return error_response(&ApiError::bad_request("the request body was cut off")),
    };
    let path = parts.uri.path().to_owned();
    let query: HashMap<String, String> =
        form_urlencoded::parse(parts.uri.query().unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    if let Some(r) = non_resource(&shared, &path) {
        return r;
    }
    let call = match parse_call(
        &shared,
        parts.method.as_str(),
        &path,
        query,
        body,
        Headers {
            token,
            accept: header(hyper::header::ACCEPT),
            content_type,
            user_agent: header(hyper::header::USER_AGENT),
        },
        user,
    ) {
        Ok(c) => c,
        Err(e) => return error_response(&e),
    };
    dispatch(&shared, call.clone_head(), call).await
}

/// The double's own controls, for tests that run it as a process:
/// `POST /testbed/faults` (`{"user", "latencyMs", "throttle", "retryAfter",
/// "fail", "partition", "heal"}`), `POST /testbed/drop-watches`,
/// `POST /testbed/compact`, `GET /testbed/requests`. Cluster admins only.
fn control(shared: &Shared, user: &User, action: &str, body: &[u8]) -> Response<Body> {
    if !user.groups.iter().any(|g| g == super::MASTERS) {
        return error_response(&ApiError::new(
            403,
            "Forbidden",
            "the test bed's controls are for system:masters",
        ));
    }
    match action {
        "faults" => {
            let Ok(f) = serde_json::from_slice::<Value>(body) else {
                return error_response(&ApiError::bad_request("expected a JSON object"));
            };
            let Some(who) = f["user"].as_str() else {
                return error_response(&ApiError::bad_request("\"user\" is required"));
            };
            let faults = &shared.faults;
            if f["heal"] == Value::Bool(true) {
                faults.heal(who);
            }
            if let Some(ms) = f["latencyMs"].as_u64() {
                faults.latency(who, std::time::Duration::from_millis(ms));
            }
            if let Some(n) = f["throttle"].as_u64() {
                let retry_after = f["retryAfter"].as_u64().unwrap_or(1);
                faults.throttle(who, n as u32, retry_after as u32);
            }
            if let Some(n) = f["fail"].as_u64() {
                faults.fail(who, n as u32);
            }
            if f["partition"] == Value::Bool(true) {
                faults.partition(who);
            }
        }
        "drop-watches" => {
            shared.drop_watches.send_modify(|n| *n += 1);
        }
        "compact" => shared.lock().store.compact(),
        "requests" => {
            let log = shared.log.lock().unwrap_or_else(|e| e.into_inner()).clone();
            return json_response(200, &serde_json::to_value(log).unwrap_or_default());
        }
        _ => {
            return error_response(&ApiError::new(
                404,
                "NotFound",
                format!("no control {action:?}"),
            ));
        }
    }
    json_response(
        200,
        &serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
    )
}

struct Headers {
    token: String,
    accept: String,
    content_type: String,
    user_agent: String,
}

/// Discovery, version and health: open to every authenticated user, as the
/// `system:discovery` role makes them on a real cluster.
fn non_resource(shared: &Shared, path: &str) -> Option<Response<Body>> {
    let state = shared.lock();
    let trimmed = path.trim_end_matches('/');
    let segments: Vec<&str> = trimmed.split('/').filter(|s| !s.is_empty()).collect();
    let body = match segments.as_slice() {
        ["version"] => render::version(),
        ["healthz" | "livez" | "readyz"] => {
            let mut r = Response::new(Full::new(Bytes::from_static(b"ok")).boxed());
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain"),
            );
            return Some(r);
        }
        ["api"] => render::core_versions(&shared.address),
        ["apis"] => render::groups(&state.kinds),
        ["api", "v1"] => render::resources(&state.kinds, "", "v1")?,
        ["apis", group] => match render::group(&state.kinds, group) {
            Some(g) => g,
            None => {
                return Some(error_response(&ApiError::new(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                )));
            }
        },
        ["apis", group, version] => match render::resources(&state.kinds, group, version) {
            Some(r) => r,
            None => {
                return Some(error_response(&ApiError::new(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                )));
            }
        },
        ["openapi", "v3"] => render::openapi_root(&state.kinds),
        ["openapi", "v3", "api", version] => {
            render::openapi_group_version(&state.kinds, "", version)?
        }
        ["openapi", "v3", "apis", group, version] => {
            render::openapi_group_version(&state.kinds, group, version)?
        }
        ["openapi", ..] => {
            return Some(error_response(&ApiError::new(
                404,
                "NotFound",
                "the server could not find the requested resource",
            )));
        }
        _ => return None,
    };
    Some(json_response(200, &body))
}

#[allow(clippy::too_many_arguments)]
fn parse_call(
    shared: &Shared,
    method: &str,
    path: &str,
    query: HashMap<String, String>,
    body: Vec<u8>,
    headers: Headers,
    user: User,
) -> Result<Call, ApiError> {
    let not_found = || {
        ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    };
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(not_found()),
    };
    let state = shared.lock();
    let namespaced = |r: &str| {
        state
            .kinds
            .find(group, version, r)
            .is_some_and(|k| k.namespaced)
    };
    let (namespace, resource, name, subresource) = match rest {
        ["namespaces", ns, r, tail @ ..] if namespaced(r) => (
            Some((*ns).to_owned()),
            *r,
            tail.first().copied(),
            tail.get(1).copied(),
        ),
        [r, tail @ ..] => (None, *r, tail.first().copied(), tail.get(1).copied()),
        [] => return Err(not_found()),
    };
    let kind = state
        .kinds
        .find(group, version, resource)
        .cloned()
        .ok_or_else(not_found)?;
    let subresource = subresource.unwrap_or_default().to_owned();
    if !(subresource.is_empty() || subresource == "status" && kind.status) {
        return Err(not_found());
    }
    let watch = query.get("watch").is_some_and(|w| w == "true" || w == "1");
    let verb = match (method, name.is_some()) {
        ("GET", true) => "get",
        ("GET", false) if watch => "watch",
        ("GET", false) => "list",
        ("POST", false) => "create",
        ("PUT", true) => "update",
        ("PATCH", true) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => {
            return Err(ApiError::method_not_allowed(format!(
                "the server does not allow this method on the requested resource: {method} {path}"
            )));
        }
    };
    let render = Render::from_request(
        &headers.accept,
        query.get("includeObject").map(String::as_str),
    );
    Ok(Call {
        verb: verb.to_owned(),
        kind,
        namespace,
        name: name.map(str::to_owned),
        subresource,
        query,
        body,
        content_type: headers.content_type,
        render,
        user,
        token: headers.token,
        user_agent: headers.user_agent,
    })
}

async fn dispatch(shared: &Arc<Shared>, head: Logged, call: Call) -> Response<Body> {
    let attributes = Attributes {
        verb: call.verb.clone(),
        group: call.kind.group.clone(),
        resource: call.kind.plural.clone(),
        subresource: call.subresource.clone(),
        namespace: call.namespace.clone(),
        name: call.name.clone(),
    };
    let allowed = shared.lock().rbac.allows(&call.user, &attributes);
    if !allowed {
        let e = ApiError::new(
            403,
            "Forbidden",
            forbidden_message(&call.user, &attributes, &call.kind.group_resource()),
        );
        shared.record(head, 403);
        return error_response(&e);
    }
    if call.verb == "watch" {
        return match watches::open(shared.clone(), call) {
            Ok(rx) => {
                shared.record(head, 200);
                let stream = futures::stream::unfold(rx, |mut rx| async move {
                    rx.recv()
                        .await
                        .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
                });
                let mut r = Response::new(StreamBody::new(stream).boxed());
                r.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static("application/json"),
                );
                r
            }
            Err(e) => {
                shared.record(head, e.code);
                error_response(&e)
            }
        };
    }
    let result = {
        let mut state = shared.lock();
        match call.verb.as_str() {
            "get" => state.get(&call).map(|v| (200, v)),
            "list" => state.list(&call).map(|v| (200, v)),
            "create" => state.create(&call).map(|v| (201, v)),
            "update" => state.update(&call).map(|v| (200, v)),
            "patch" => {
                let existed = call.name.as_deref().is_some_and(|n| {
                    state
                        .store
                        .get(
                            &call.kind.group_resource(),
                            call.namespace.as_deref().unwrap_or_default(),
                            n,
                        )
                        .is_some()
                });
                state
                    .patch(&call)
                    .map(|v| (if existed { 200 } else { 201 }, v))
            }
            "delete" => state.delete(&call).map(|v| (200, v)),
            _ => Err(ApiError::method_not_allowed(
                "deletecollection is not served by the test bed",
            )),
        }
    };
    match result {
        Ok((code, body)) => {
            shared.record(head, code);
            let body = if call.verb == "get" || call.verb == "list" {
                body
            } else {
                call.render.object(&call.kind, &body)
            };
            json_response(code, &body)
        }
        Err(e) => {
            shared.record(head, e.code);
            error_response(&e)
        }
    }
}

impl Call {
    fn clone_head(&self) -> Logged {
        Logged {
            user: self.user.name.clone(),
            verb: self.verb.clone(),
            resource: if self.subresource.is_empty() {
                self.kind.group_resource()
            } else {
                format!("{}/{}", self.kind.group_resource(), self.subresource)
            },
            namespace: self.namespace.clone().unwrap_or_default(),
            name: self.name.clone().unwrap_or_default(),
            query: self
                .query
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("&"),
            code: 0,
        }
    }
}
