//! The Prometheus endpoint: `GET /metrics` answers with the rendered page
//! (text exposition format 0.0.4), anything else 404. Hand-written on tokio
//! because it serves one page to one scraper; pulling in an HTTP stack for
//! that is not worth it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Renders the current metrics page.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Serves `render()` on `listener` until `cancel`.
pub async fn serve(listener: TcpListener, render: Render, cancel: CancellationToken) {
    loop {
        let (mut stream, _) = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let render = render.clone();
        tokio::spawn(async move {
            // One request per connection, bounded in size and time.
            let mut buf = vec![0u8; 4096];
            let mut n = 0;
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                while n < buf.len() {
                    let k = stream.read(&mut buf[n..]).await?;
                    if k == 0 {
                        break;
                    }
                    n += k;
                    if buf[..n].windows(4).any(|w| w == b"\r\n\r\n")
                        || buf[..n].windows(2).any(|w| w == b"\n\n")
                    {
                        break;
                    }
                }
                Ok::<_, std::io::Error>(())
            })
            .await;
            if !matches!(read, Ok(Ok(()))) {
                return;
            }
            let head = String::from_utf8_lossy(&buf[..n]);
            let path = head.split_whitespace().nth(1).unwrap_or("");
            let (status, body, ctype) = if head.starts_with("GET ")
                && (path == "/metrics" || path.starts_with("/metrics?"))
            {
                (
                    "200 OK",
                    render(),
                    "text/plain; version=0.0.4; charset=utf-8",
                )
            } else {
                (
                    "404 Not Found",
                    "see /metrics\n".to_owned(),
                    "text/plain; charset=utf-8",
                )
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(resp.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

/// Binds `addr` and serves; a bind failure is logged, not fatal (metrics
/// are optional, the mail path is not).
pub async fn start(addr: Option<SocketAddr>, render: Render, cancel: CancellationToken) {
    let Some(addr) = addr else { return };
    match TcpListener::bind(addr).await {
        Ok(l) => {
            tracing::info!(listen = %addr, "metrics at http://{addr}/metrics");
            serve(l, render, cancel).await;
        }
        Err(e) => {
            tracing::error!(listen = %addr, error = %e, "metrics endpoint not started (CERES_METRICS_LISTEN)")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serves_metrics_and_404() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(serve(l, Arc::new(|| "up 1\n".to_owned()), cancel.clone()));
        for (path, want) in [("/metrics", "200 OK"), ("/", "404")] {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut resp = String::new();
            s.read_to_string(&mut resp).await.unwrap();
            assert!(resp.contains(want), "{resp}");
            if want == "200 OK" {
                assert!(resp.ends_with("up 1\n"));
            }
        }
        cancel.cancel();
        task.await.unwrap();
    }
}
