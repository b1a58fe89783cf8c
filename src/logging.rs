//! The log. Libraries that print protocol traffic print sign-in commands with
//! them: async-imap writes every command it sends at trace (`LOGIN "user"
//! "password"`, the `AUTHENTICATE` token), lettre every SMTP line at debug
//! (`AUTH PLAIN …`). Their debug and trace events are dropped here, below any
//! filter, so no `RUST_LOG` a user sets can print a secret.

use std::io::Write;

use tracing::{Level, Metadata, Subscriber};
use tracing_subscriber::filter::{EnvFilter, filter_fn};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, fmt};

/// Targets whose verbose events carry what goes over the wire.
const WIRE_LOGGERS: &[&str] = &["async_imap", "imap_proto", "lettre"];

/// False for a wire logger's debug or trace event.
fn secret_safe(meta: &Metadata<'_>) -> bool {
    let verbose = matches!(*meta.level(), Level::DEBUG | Level::TRACE);
    let wire = WIRE_LOGGERS.iter().any(|t| {
        meta.target()
            .strip_prefix(t)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
    });
    !(verbose && wire)
}

/// The subscriber: `filter` (RUST_LOG) and the secret rule, text or JSON
/// lines to `writer`.
fn subscriber<W>(json: bool, filter: EnvFilter, writer: W) -> impl Subscriber + Send + Sync
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let layer = if json {
        fmt::layer().json().with_writer(writer).boxed()
    } else {
        fmt::layer().with_writer(writer).boxed()
    };
    tracing_subscriber::registry().with(
        layer
            .with_filter(filter)
            .with_filter(filter_fn(secret_safe)),
    )
}

/// Logs to standard error, filtered by RUST_LOG (default `info`). Records of
/// libraries that use `log` rather than `tracing` come through too.
pub fn init(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    if let Err(e) = subscriber(json, filter, std::io::stderr).try_init() {
        let _ = writeln!(std::io::stderr(), "logging could not be set up: {e}");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'w self) -> Buffer {
            self.clone()
        }
    }

    #[test]
    fn wire_loggers_stay_quiet_at_every_level_the_rest_does_not() {
        for json in [false, true] {
            let out = Buffer::default();
            let sub = subscriber(json, EnvFilter::new("trace"), out.clone());
            tracing::subscriber::with_default(sub, || {
                tracing::trace!(target: "async_imap::imap_stream", "encode: LOGIN \"u\" \"hunter2\"");
                tracing::debug!(target: "lettre::transport::smtp", "Wrote: AUTH PLAIN aHVudGVyMg==");
                tracing::trace!(target: "imap_proto", "hunter2");
                tracing::warn!(target: "async_imap", "the server closed the connection");
                tracing::trace!(target: "async_imap_other", "not a wire logger");
                tracing::trace!(target: "mailroom", "our own trace");
            });
            let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
            assert!(
                !text.contains("hunter2") && !text.contains("aHVudGVyMg"),
                "{text}"
            );
            assert!(text.contains("the server closed the connection"), "{text}");
            assert!(
                text.contains("not a wire logger") && text.contains("our own trace"),
                "{text}"
            );
        }
    }
}
