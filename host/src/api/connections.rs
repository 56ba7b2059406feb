//! Accepting and serving connections: HTTP/1.1 through hyper, with a header-read timeout, and a graceful stop.
//! `axum::serve` has no timeouts at all, so a client could hold a connection for ever by sending its headers a byte
//! a second, or by opening connections and sending nothing. Here a request's head must arrive within
//! `HEADER_READ_TIMEOUT` of the connection opening or of the previous response, which also closes keep-alive
//! connections idle that long. Bodies are bounded by size (`MAX_BODY_BYTES`), not by time, and a blocked claim
//! or an event stream is a response in progress, to which the timeout does not apply.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

/// Serves `app` on `listener` until `shutdown` resolves; then stops accepting, lets requests in progress finish
/// and closes idle connections, and returns when every connection is done.
pub(super) async fn serve(
    listener: TcpListener,
    app: Router,
    header_read_timeout: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(header_read_timeout);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(error) => {
                    pause_after(error).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        // Answers are small and follow a request at once: Nagle's algorithm would only delay them.
        let _ = stream.set_nodelay(true);
        // No upgrades: the API has no WebSocket or other protocol switch.
        let connection = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            // A client that goes away or times out ends its connection; nothing to report.
            let _ = connection.await;
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// After a failed accept: a connection reset before it was accepted is nothing; running out of file descriptors
/// (or another resource) is, and accepting again at once would spin, so it waits a moment.
async fn pause_after(error: std::io::Error) {
    use std::io::ErrorKind;
    if matches!(error.kind(), ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset)
    {
        return;
    }
    tracing::error!(%error, "accepting a connection failed; trying again in a second");
    tokio::time::sleep(Duration::from_secs(1)).await;
}
