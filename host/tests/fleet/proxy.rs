//! A TCP proxy the chaos test puts on every path it wants to break: in front of each server (clients' connections)
//! and in front of Redis (the servers' connections). [`ChaosProxy::cut`] closes every connection open through it at
//! once, at whatever point each one is (a request half sent, a reply half read, a script's answer on its way), as a
//! load balancer's restart or a network partition does; new connections pass again at once.
//! [`ChaosProxy::redirect`] points new connections at another upstream (a server restarted on a new port keeps its
//! address in the clients' eyes).

use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// One listening proxy; stops accepting when dropped (connections through it then end with their peers).
pub(crate) struct ChaosProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    upstream: Arc<Mutex<SocketAddr>>,
    cuts: watch::Sender<u64>,
    accepting: JoinHandle<()>,
}

impl ChaosProxy {
    /// A proxy on a free loopback port to `upstream`. Needs a tokio runtime.
    pub(crate) fn start(upstream: SocketAddr) -> ChaosProxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        listener.set_nonblocking(true).expect("non-blocking listener");
        let addr = listener.local_addr().expect("the proxy's address");
        let listener = TcpListener::from_std(listener).expect("a tokio listener");
        let upstream = Arc::new(Mutex::new(upstream));
        let (cuts, _) = watch::channel(0u64);
        let accepting = tokio::spawn(accept(listener, upstream.clone(), cuts.clone()));
        ChaosProxy { addr, upstream, cuts, accepting }
    }

    /// `http://` + its address, for clients.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// New connections go to `upstream` from now on.
    pub(crate) fn redirect(&self, upstream: SocketAddr) {
        *self.upstream.lock() = upstream;
    }

    /// Closes every connection open through the proxy now.
    pub(crate) fn cut(&self) {
        self.cuts.send_modify(|n| *n += 1);
    }
}

impl Drop for ChaosProxy {
    fn drop(&mut self) {
        self.accepting.abort();
        self.cut();
    }
}

async fn accept(listener: TcpListener, upstream: Arc<Mutex<SocketAddr>>, cuts: watch::Sender<u64>) {
    while let Ok((client, _)) = listener.accept().await {
        let target = *upstream.lock();
        let mut cut = cuts.subscribe();
        tokio::spawn(async move {
            let Ok(mut server) = TcpStream::connect(target).await else { return };
            let mut client = client;
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                _ = cut.changed() => {}
            }
        });
    }
}

/// The `host:port` of a base URL such as `http://127.0.0.1:8080`.
pub(crate) fn socket_of(base: &str) -> SocketAddr {
    base.trim_start_matches("http://").parse().unwrap_or_else(|e| panic!("{base} is no socket address: {e}"))
}
