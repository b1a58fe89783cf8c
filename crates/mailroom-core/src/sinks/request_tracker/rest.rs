//! RT's REST 2 API as the sink calls it: token authentication, JSON in and
//! out, and retries that never repeat a write RT may already have made.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use crate::sinks::SinkError;

/// A REST 2 endpoint and the token that opens it.
pub(super) struct Rest {
    client: reqwest::Client,
    /// `<url>/REST/2.0`.
    pub(super) api: String,
    token: SecretString,
    pub(super) attempts: u32,
    pub(super) first_backoff: Duration,
}

/// An answer that was not a success, as the error the status shows.
pub(super) fn failure(answer: &Answer, what: &str) -> SinkError {
    match answer.status {
        StatusCode::UNAUTHORIZED => SinkError::Unavailable(
            "Request Tracker refused the token (401): check the Secret holds a current auth token of an enabled user".into(),
        ),
        s => SinkError::Unavailable(format!(
            "{what}: Request Tracker answered {s}: {}",
            answer.text()
        )),
    }
}

/// What one REST call answered: status and JSON body (null when none).
pub(super) struct Answer {
    pub(super) status: StatusCode,
    pub(super) body: Value,
}

impl Answer {
    pub(super) fn text(&self) -> String {
        let text = match &self.body {
            Value::Object(o) => o
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| self.body.to_string()),
            Value::Null => String::new(),
            other => other.to_string(),
        };
        text.chars().take(300).collect()
    }
}

impl Rest {
    pub(super) fn new(client: reqwest::Client, url: &str, token: &str) -> Self {
        Self {
            client,
            api: format!("{}/REST/2.0", url.trim_end_matches('/')),
            token: SecretString::from(token.to_owned()),
            attempts: 4,
            first_backoff: Duration::from_millis(250),
        }
    }

    /// One REST call, retried on 5xx, 408, 429 and transport errors. A POST
    /// (a create, a correspondence) is retried only where RT cannot have
    /// taken it (no connection, 429, 503): after a timeout RT may have, and
    /// the worker's next try looks for the key before posting again.
    pub(super) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Answer, SinkError> {
        let url = format!("{}{path}", self.api);
        let mut backoff = self.first_backoff;
        let mut last = String::new();
        for attempt in 1..=self.attempts {
            let mut request = self.client.request(method.clone(), &url).header(
                "Authorization",
                format!("token {}", self.token.expose_secret()),
            );
            if let Some(body) = body {
                request = request.json(body);
            }
            match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    let bytes = response.bytes().await.unwrap_or_default();
                    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                    let answer = Answer { status, body };
                    let untaken = status == StatusCode::TOO_MANY_REQUESTS
                        || status == StatusCode::SERVICE_UNAVAILABLE;
                    let retry = untaken
                        || (method != Method::POST
                            && (status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT));
                    last = format!(
                        "Request Tracker answered {status} to {method} {path}: {}",
                        answer.text()
                    );
                    if !retry {
                        if status.is_server_error() {
                            return Err(SinkError::Unavailable(last));
                        }
                        return Ok(answer);
                    }
                }
                Err(e) => {
                    last = format!("Request Tracker could not be reached ({method} {path}): {e}");
                    if method == Method::POST && !e.is_connect() {
                        return Err(SinkError::Unavailable(last));
                    }
                }
            }
            if attempt < self.attempts {
                tokio::time::sleep(backoff).await;
                backoff = backoff.saturating_mul(2);
            }
        }
        Err(SinkError::Unavailable(last))
    }

    /// A call that must succeed; anything else is a setup fault to fix in RT.
    pub(super) async fn expect(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        what: &str,
    ) -> Result<Value, SinkError> {
        let answer = self.call(method, path, body).await?;
        if answer.status.is_success() {
            return Ok(answer.body);
        }
        Err(failure(&answer, what))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use serde_json::json;

    use super::*;

    /// A server that reads each request and never answers; counts them.
    async fn silent_server() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = seen.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut buf = [0u8; 4096];
                if tokio::io::AsyncReadExt::read(&mut stream, &mut buf)
                    .await
                    .is_ok()
                {
                    count.fetch_add(1, Ordering::SeqCst);
                }
                held.push(stream);
            }
        });
        (url, seen)
    }

    fn quick(url: &str) -> Rest {
        let client = crate::sinks::http_client(
            Duration::from_millis(200),
            &crate::connection::TlsOptions::default(),
        )
        .unwrap();
        let mut rest = Rest::new(client, url, "1-14-token");
        rest.attempts = 3;
        rest.first_backoff = Duration::from_millis(10);
        rest
    }

    #[tokio::test]
    async fn a_post_that_timed_out_is_not_sent_again_but_a_read_is() {
        let (url, seen) = silent_server().await;
        let sink = quick(&url);
        let err = sink
            .call(Method::POST, "/ticket", Some(&json!({"Queue": "General"})))
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains("could not be reached"), "{err}");
        assert_eq!(seen.load(Ordering::SeqCst), 1, "RT may have taken it");
        assert!(
            sink.call(Method::GET, "/queue/General", None)
                .await
                .is_err()
        );
        assert_eq!(
            seen.load(Ordering::SeqCst),
            4,
            "a read is tried three times"
        );
    }
}
