//! Incoming mail: protocol clients, the connection test and the fetch worker
//! behind an IncomingEmailServer. Core code: no Kubernetes here.

pub mod imap;
mod judging;
mod plan;
pub mod pop3;
pub mod settings;
pub mod worker;

use crate::connection::{ConnectionReport, Probe, within};
use crate::vocab::{ConnectionStage, IncomingProtocol};
pub use settings::IncomingSettings;

/// The staged connection test (the Test Connection button): DNS, TCP, TLS,
/// greeting, sign-in, then IMAP EXAMINE of the mailbox (read-only) or POP3 STAT.
/// It changes nothing in the mailbox.
pub async fn test_connection(settings: &IncomingSettings) -> ConnectionReport {
    let mut probe = Probe::new();
    let io = settings.server.timeouts.io;
    let outcome = match settings.protocol {
        IncomingProtocol::Imap => match imap::connect(&settings.server, &mut probe).await {
            Ok(mut session) => {
                let mailbox = settings.mailbox.clone();
                let result = probe
                    .stage(
                        ConnectionStage::Mailbox,
                        within(io, "examining the mailbox", async {
                            session
                                .examine(&mailbox)
                                .await
                                .map(drop)
                                .map_err(|e| imap::mailbox_failure(&mailbox, e))
                        }),
                    )
                    .await;
                let _ = within(io, "logging out", async {
                    session.logout().await.map_err(|e| {
                        crate::connection::Failure::new(
                            crate::connection::Reason::ProtocolError,
                            e.to_string(),
                        )
                    })
                })
                .await;
                result
            }
            Err(f) => Err(f),
        },
        IncomingProtocol::Pop3 => match pop3::Pop3::connect(&settings.server, &mut probe).await {
            Ok(mut pop) => {
                let result = probe
                    .stage(ConnectionStage::Mailbox, pop.stat())
                    .await
                    .map(drop);
                let _ = pop.quit().await;
                result
            }
            Err(f) => Err(f),
        },
    };
    probe.finish(outcome)
}
