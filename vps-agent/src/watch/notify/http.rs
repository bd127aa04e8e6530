//! One HTTP/1.1 POST, over TCP or TLS (rustls): all a webhook needs.
//! Hand-written like the metrics endpoint: one request per connection
//! (`Connection: close`), the status line read, the rest ignored, and every
//! step bounded in time and size.

use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::webhook::{Body, WebhookUrl};

/// The most of the response read (status line and headers are far smaller).
const MAX_HEAD: usize = 16 * 1024;

/// Why a POST did not get a 2xx.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The host name did not resolve.
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        /// The host.
        host: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// No connection to any address of the host.
    #[error("cannot connect to {target}: {source}")]
    Connect {
        /// host:port.
        target: String,
        /// The last error.
        #[source]
        source: std::io::Error,
    },
    /// TLS set-up or handshake failed.
    #[error("TLS with {host}: {reason}")]
    Tls {
        /// The host.
        host: String,
        /// Why.
        reason: String,
    },
    /// The whole exchange took too long.
    #[error("no complete answer within {} s", .0.as_secs())]
    Timeout(Duration),
    /// Reading or writing failed.
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
    /// The answer is not HTTP.
    #[error("not an HTTP answer: {0:?}")]
    BadResponse(String),
    /// The server answered, but not 2xx.
    #[error("the server answered HTTP {0}")]
    Status(String),
}

impl HttpError {
    /// The server refused the request itself (4xx other than 408 and 429):
    /// the same request would be refused again.
    pub fn is_permanent(&self) -> bool {
        match self {
            HttpError::Status(s) => {
                s.starts_with('4') && !s.starts_with("408") && !s.starts_with("429")
            }
            _ => false,
        }
    }
}

/// POSTs `body` to `url`; `Ok` with the status line ("200 OK") on a 2xx.
/// `ca_file`: the CAs an https server must chain to (`None`: the system's).
pub async fn post(
    url: &WebhookUrl,
    body: &Body,
    ca_file: Option<&std::path::Path>,
    timeout: Duration,
) -> Result<String, HttpError> {
    tokio::time::timeout(timeout, post_inner(url, body, ca_file))
        .await
        .map_err(|_| HttpError::Timeout(timeout))?
}

async fn post_inner(
    url: &WebhookUrl,
    body: &Body,
    ca_file: Option<&std::path::Path>,
) -> Result<String, HttpError> {
    let tcp = connect(url).await?;
    let request = request_bytes(url, body);
    if url.tls {
        let connector = ceres_smtp::tls_connector(ca_file).map_err(|e| HttpError::Tls {
            host: url.host.clone(),
            reason: e.to_string(),
        })?;
        let name = ServerName::try_from(url.host.clone()).map_err(|e| HttpError::Tls {
            host: url.host.clone(),
            reason: e.to_string(),
        })?;
        let tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| HttpError::Tls {
                host: url.host.clone(),
                reason: e.to_string(),
            })?;
        exchange(tls, &request).await
    } else {
        exchange(tcp, &request).await
    }
}

async fn connect(url: &WebhookUrl) -> Result<TcpStream, HttpError> {
    let addrs: Vec<_> = tokio::net::lookup_host((url.host.as_str(), url.port))
        .await
        .map_err(|source| HttpError::Resolve {
            host: url.host.clone(),
            source,
        })?
        .collect();
    let mut last = std::io::Error::other("the name has no address");
    for a in addrs {
        match TcpStream::connect(a).await {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(HttpError::Connect {
        target: url.host_header(),
        source: last,
    })
}

/// The request: headers from us only (the body's headers are ASCII lines
/// made by [`super::webhook::body`]), so nothing in a message can add one.
fn request_bytes(url: &WebhookUrl, body: &Body) -> Vec<u8> {
    let mut head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: ceres-vps/{}\r\nContent-Type: {}\r\n\
         Content-Length: {}\r\nConnection: close\r\n",
        url.path,
        url.host_header(),
        crate::service::VERSION,
        body.content_type,
        body.bytes.len()
    );
    if let Some(auth) = url.basic_auth() {
        head.push_str(&format!("Authorization: {auth}\r\n"));
    }
    for (name, value) in &body.headers {
        let value: String = value.chars().filter(|c| !c.is_control()).collect();
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(&body.bytes);
    bytes
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    request: &[u8],
) -> Result<String, HttpError> {
    stream.write_all(request).await?;
    stream.flush().await?;
    let mut head = Vec::new();
    let mut chunk = [0u8; 2048];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < MAX_HEAD {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let line = text.lines().next().unwrap_or("").trim();
    let mut parts = line.splitn(3, ' ');
    let (version, code) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let reason = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.")
        || code.len() != 3
        || !code.bytes().all(|b| b.is_ascii_digit())
    {
        let shown: String = line.chars().take(80).collect();
        return Err(HttpError::BadResponse(shown));
    }
    let status: String = format!("{code} {reason}")
        .trim()
        .chars()
        .filter(|c| !c.is_control())
        .take(120)
        .collect();
    let _ = stream.shutdown().await;
    if code.starts_with('2') {
        Ok(status)
    } else {
        Err(HttpError::Status(status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-shot server on loopback: answers `reply` and returns the request.
    async fn server(reply: &'static str) -> (WebhookUrl, tokio::task::JoinHandle<String>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://u:p@{}/hook?k=v", l.local_addr().unwrap())
            .parse()
            .unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = s.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got);
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("Content-Length: "))
                        .unwrap()
                        .parse()
                        .unwrap();
                    if body.len() >= len {
                        break;
                    }
                }
            }
            s.write_all(reply.as_bytes()).await.unwrap();
            String::from_utf8(got).unwrap()
        });
        (url, task)
    }

    fn body() -> Body {
        Body {
            content_type: "text/plain",
            headers: vec![("Title", "a\r\nInjected: yes".into())],
            bytes: b"hello".to_vec(),
        }
    }

    #[tokio::test]
    async fn a_post_with_auth_and_the_status_read() {
        let (url, task) = server("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await;
        let status = post(&url, &body(), None, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(status, "200 OK");
        let req = task.await.unwrap();
        assert!(req.starts_with("POST /hook?k=v HTTP/1.1\r\n"), "{req}");
        assert!(req.contains("Authorization: Basic dTpw\r\n"), "{req}");
        // A header value cannot start a header of its own.
        assert!(req.contains("Title: aInjected: yes\r\n"), "{req}");
        assert!(req.ends_with("\r\n\r\nhello"), "{req}");
    }

    #[tokio::test]
    async fn https_is_verified_against_the_ca_given() {
        ceres_pki::tls::install_crypto_provider();
        let ca = ceres_pki::Ca::generate("hooks.example", Duration::from_secs(86_400)).unwrap();
        let names = ceres_pki::ServerNames {
            ips: vec!["127.0.0.1".parse().unwrap()],
            hosts: Vec::new(),
        };
        let cert = ca.issue_server(&names, Duration::from_secs(3600)).unwrap();
        let mut config =
            ceres_pki::tls::server_config(ca.cert_der(), &cert.cert_pem, &cert.key_pem).unwrap();
        config.alpn_protocols.clear();
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            for _ in 0..2 {
                let (tcp, _) = l.accept().await.unwrap();
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    continue;
                };
                let mut buf = vec![0u8; 4096];
                let n = tls.read(&mut buf).await.unwrap();
                assert!(buf[..n].starts_with(b"POST /hook HTTP/1.1\r\n"));
                tls.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                    .await
                    .unwrap();
                let _ = tls.shutdown().await;
            }
        });
        let url: WebhookUrl = format!("https://127.0.0.1:{port}/hook").parse().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.cert_pem()).unwrap();
        let status = post(&url, &body(), Some(&ca_file), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(status, "204 No Content");
        // The same server against a CA bundle that does not hold its CA.
        let other = ceres_pki::Ca::generate("other.example", Duration::from_secs(86_400)).unwrap();
        std::fs::write(&ca_file, other.cert_pem()).unwrap();
        let e = post(&url, &body(), Some(&ca_file), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(e, HttpError::Tls { .. }), "{e}");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn refusals_and_garbage_are_errors() {
        let (url, _t) = server("HTTP/1.1 403 Forbidden\r\n\r\n").await;
        let e = post(&url, &body(), None, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), "the server answered HTTP 403 Forbidden");
        assert!(e.is_permanent());
        assert!(!HttpError::Status("429 Too Many Requests".into()).is_permanent());
        assert!(!HttpError::Status("503 Service Unavailable".into()).is_permanent());
        let (url, _t) = server("SSH-2.0-OpenSSH\r\n").await;
        let e = post(&url, &body(), None, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(e, HttpError::BadResponse(_)), "{e}");
        let closed: WebhookUrl = "http://127.0.0.1:1/".parse().unwrap();
        let e = post(&closed, &body(), None, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(e, HttpError::Connect { .. }), "{e}");
    }
}
