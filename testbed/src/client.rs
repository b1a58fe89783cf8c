//! A plain line-protocol client (IMAP, POP3, SMTP, LMTP) over TCP, implicit TLS or
//! STARTTLS, verifying the server against the stack's CA. It is how the harness
//! checks readiness and how tests talk to the servers without mailroom's code.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use crate::Error;

enum Transport {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Self::Plain(s) => s.read(buf),
            Self::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Self::Plain(s) => s.write(buf),
            Self::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Self::Plain(s) => s.flush(),
            Self::Tls(s) => s.flush(),
        }
    }
}

/// A connection that reads and writes CRLF-terminated lines.
pub struct LineClient {
    reader: BufReader<Transport>,
    tls: Arc<ClientConfig>,
}

/// A rustls client configuration that trusts only the given CA (PEM).
pub fn tls_config(ca_pem: &str) -> Result<Arc<ClientConfig>, Error> {
    let mut roots = RootCertStore::empty();
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(ca_pem.as_bytes()) {
        let cert: rustls::pki_types::CertificateDer<'static> =
            cert.map_err(|e| Error::Setup(format!("CA PEM: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| Error::Setup(format!("CA certificate: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Setup(format!("TLS versions: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn handshake(
    tcp: TcpStream,
    tls: &Arc<ClientConfig>,
) -> Result<StreamOwned<ClientConnection, TcpStream>, Error> {
    let name = ServerName::try_from("localhost").map_err(|e| Error::Setup(e.to_string()))?;
    let conn = ClientConnection::new(tls.clone(), name).map_err(|e| Error::Tls(e.to_string()))?;
    let mut stream = StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        stream
            .conn
            .complete_io(&mut stream.sock)
            .map_err(|e| Error::Tls(e.to_string()))?;
    }
    Ok(stream)
}

fn connect_tcp(addr: SocketAddr) -> Result<TcpStream, Error> {
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    tcp.set_write_timeout(Some(Duration::from_secs(10)))?;
    Ok(tcp)
}

impl LineClient {
    /// Connects without TLS (for STARTTLS ports).
    pub fn plain(addr: SocketAddr, ca_pem: &str) -> Result<Self, Error> {
        Ok(Self {
            reader: BufReader::new(Transport::Plain(connect_tcp(addr)?)),
            tls: tls_config(ca_pem)?,
        })
    }

    /// Connects with implicit TLS, verifying the certificate.
    pub fn tls(addr: SocketAddr, ca_pem: &str) -> Result<Self, Error> {
        let tls = tls_config(ca_pem)?;
        let stream = handshake(connect_tcp(addr)?, &tls)?;
        Ok(Self {
            reader: BufReader::new(Transport::Tls(Box::new(stream))),
            tls,
        })
    }

    /// Upgrades a plain connection after the server agreed to STARTTLS.
    pub fn upgrade(self) -> Result<Self, Error> {
        if !self.reader.buffer().is_empty() {
            return Err(Error::Protocol(
                "data arrived before the TLS handshake (STARTTLS injection)".into(),
            ));
        }
        let Transport::Plain(tcp) = self.reader.into_inner() else {
            return Err(Error::Protocol("connection is already TLS".into()));
        };
        let stream = handshake(tcp, &self.tls)?;
        Ok(Self {
            reader: BufReader::new(Transport::Tls(Box::new(stream))),
            tls: self.tls,
        })
    }

    /// Sends one line; CRLF is appended.
    pub fn send(&mut self, line: &str) -> Result<(), Error> {
        let w = self.reader.get_mut();
        w.write_all(line.as_bytes())?;
        w.write_all(b"\r\n")?;
        w.flush()?;
        Ok(())
    }

    /// Sends raw bytes as they are.
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), Error> {
        let w = self.reader.get_mut();
        w.write_all(bytes)?;
        w.flush()?;
        Ok(())
    }

    /// Reads one line without its line ending.
    pub fn line(&mut self) -> Result<String, Error> {
        let mut buf = Vec::new();
        let n = self.reader.read_until(b'\n', &mut buf)?;
        if n == 0 {
            return Err(Error::Protocol("connection closed by the server".into()));
        }
        while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            buf.pop();
        }
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    /// Reads lines until one satisfies `last`; returns them all.
    pub fn lines_until(&mut self, last: impl Fn(&str) -> bool) -> Result<Vec<String>, Error> {
        let mut lines = Vec::new();
        loop {
            let l = self.line()?;
            let done = last(&l);
            lines.push(l);
            if done {
                return Ok(lines);
            }
        }
    }

    /// Reads an SMTP/LMTP reply (all continuation lines); returns the lines.
    pub fn smtp_reply(&mut self) -> Result<Vec<String>, Error> {
        self.lines_until(|l| l.len() < 4 || l.as_bytes()[3] == b' ')
    }

    /// Sends an SMTP/LMTP command and reads its reply.
    pub fn smtp(&mut self, line: &str) -> Result<Vec<String>, Error> {
        self.send(line)?;
        self.smtp_reply()
    }

    /// Sends an IMAP command with the given tag and reads up to its tagged answer.
    pub fn imap(&mut self, tag: &str, command: &str) -> Result<Vec<String>, Error> {
        self.send(&format!("{tag} {command}"))?;
        let prefix = format!("{tag} ");
        self.lines_until(|l| l.starts_with(&prefix))
    }
}
