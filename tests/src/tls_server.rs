//! A local HTTPS server for the health-check tests: `localhost`'s certificate from `host/tests/fixtures/tls`,
//! signed by the test authority there, answering every request with one status.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};

/// The test authority that signed the server's certificate, for `ProbeTrust::with_pem`.
pub const TEST_CA: &str = include_str!("../../host/tests/fixtures/tls/ca.pem");
const CERT: &str = include_str!("../../host/tests/fixtures/tls/localhost.pem");
const KEY: &str = include_str!("../../host/tests/fixtures/tls/localhost.key");

/// Serves on an ephemeral loopback port and answers the first request head of every connection with `status`
/// (`"200 OK"`) and the body `all is ok\n`, then closes: with `close_notify`, or, as many servers do, without it.
/// Answers the port.
pub async fn serve(status: &'static str, close_notify: bool) -> u16 {
    let certs = CertificateDer::pem_slice_iter(CERT.as_bytes()).collect::<Result<Vec<_>, _>>().expect("certificate");
    let key = PrivateKeyDer::from_pem_slice(KEY.as_bytes()).expect("key");
    let config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server certificate");
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A handshake the client refuses ends here.
                let Ok(mut stream) = acceptor.accept(stream).await else { return };
                let mut head = Vec::new();
                let mut buffer = [0u8; 512];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(read) => head.extend_from_slice(&buffer[..read]),
                    }
                }
                let answer = format!("HTTP/1.1 {status}\r\nContent-Length: 10\r\nConnection: close\r\n\r\nall is ok\n");
                let _ = stream.write_all(answer.as_bytes()).await;
                let _ = stream.flush().await;
                if close_notify {
                    let _ = stream.shutdown().await;
                }
            });
        }
    });
    port
}
