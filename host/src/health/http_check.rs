//! The host's HTTP check of an agent's `health_url` (DESIGN §5): an SSRF-safe GET. The URL's host is resolved
//! once and every address is checked before any connection; the connection goes to a checked address (never
//! re-resolved), the first of them that answers; unspecified, link-local, cloud-metadata, IPv4-mapped, multicast
//! and broadcast addresses are refused, and loopback unless the host (and port, for a `host:port` entry) is in
//! `PROBE_ALLOWED_HOSTS`. No redirects are followed, no proxy is used, at most 4 KiB is read. An `https://` check
//! runs TLS over that same checked connection and verifies the certificate against the URL's host, trusting
//! Mozilla's roots (compiled in, as for notifications) and the certificates of `PROBE_CA_FILE` ([`ProbeTrust`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

use crate::plugins::bindings::HttpCheck;

/// Bytes read from the response, headers included.
const MAX_RESPONSE_BYTES: usize = 4096;
/// Bytes of the body passed to probes.
const BODY_PREFIX_BYTES: usize = 1024;

/// Why an address may not be checked, if it may not.
pub fn refused(ip: IpAddr, loopback_allowed: bool) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => refused_v4(v4, loopback_allowed),
        IpAddr::V6(v6) => {
            if let Some(embedded) = embedded_v4(v6) {
                // IPv4-mapped, IPv4-compatible, NAT64 and 6to4 forms reach an IPv4 host: refused outright, so no
                // translation can lead to a metadata or private service.
                return refused_v4(embedded, loopback_allowed).or(Some("an IPv6 form of an IPv4 address"));
            }
            if v6.is_unspecified() {
                Some("unspecified")
            } else if v6.is_loopback() {
                (!loopback_allowed).then_some("loopback (allow it with PROBE_ALLOWED_HOSTS)")
            } else if v6.is_multicast() {
                Some("multicast")
            } else if (v6.segments()[0] & 0xffc0) == 0xfe80 {
                Some("link-local")
            } else if v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
                Some("a cloud metadata address")
            } else {
                None
            }
        }
    }
}

/// The IPv4 address inside an IPv6 one, for the forms that reach IPv4 hosts: `::ffff:a.b.c.d` (mapped),
/// `::a.b.c.d` (compatible, not `::` or `::1`), `64:ff9b::a.b.c.d` (NAT64), `2002:AABB:CCDD::` (6to4).
fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if let Some(mapped) = v6.to_ipv4_mapped() {
        return Some(mapped);
    }
    if s[..6] == [0, 0, 0, 0, 0, 0] && !(v6.is_unspecified() || v6.is_loopback()) {
        return Some(tail);
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(tail);
    }
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new((s[1] >> 8) as u8, s[1] as u8, (s[2] >> 8) as u8, s[2] as u8));
    }
    None
}

fn refused_v4(v4: Ipv4Addr, loopback_allowed: bool) -> Option<&'static str> {
    if v4.octets()[0] == 0 {
        Some("unspecified (0.0.0.0/8)")
    } else if v4.is_loopback() {
        (!loopback_allowed).then_some("loopback (allow it with PROBE_ALLOWED_HOSTS)")
    } else if v4 == Ipv4Addr::new(169, 254, 169, 254) || v4 == Ipv4Addr::new(100, 100, 100, 200) {
        Some("a cloud metadata address")
    } else if v4.is_link_local() {
        Some("link-local")
    } else if v4.is_multicast() {
        Some("multicast")
    } else if v4.is_broadcast() {
        Some("broadcast")
    } else {
        None
    }
}

/// Whether a `PROBE_ALLOWED_HOSTS` entry lets a check reach `host` on `port` at a loopback address: `host:port`
/// (`[::1]:8080` for IPv6) allows that port only; a bare host allows every port of it, Redis's included, which is
/// why the start-up log warns about bare entries.
pub fn allows(entry: &str, host: &str, port: u16) -> bool {
    let (entry_host, entry_port) = split_entry(entry.trim());
    entry_host.eq_ignore_ascii_case(host) && entry_port.is_none_or(|allowed| allowed == port)
}

/// `host:port`, `[v6]:port`, `[v6]`, or a bare host (a bare IPv6 address has several colons and no port).
pub fn split_entry(entry: &str) -> (&str, Option<u16>) {
    if let Some(rest) = entry.strip_prefix('[') {
        let (host, after) = rest.split_once(']').unwrap_or((rest, ""));
        return (host, after.strip_prefix(':').and_then(|p| p.parse().ok()));
    }
    match entry.split_once(':') {
        Some((host, port)) if !port.contains(':') => match port.parse() {
            Ok(port) => (host, Some(port)),
            Err(_) => (entry, None),
        },
        _ => (entry, None),
    }
}

/// Whom an `https` check trusts: Mozilla's roots, and the certificates of `PROBE_CA_FILE` for agents whose health
/// URLs are served under a private CA. Built once at start-up and shared by every check.
#[derive(Clone)]
pub struct ProbeTrust {
    config: Arc<ClientConfig>,
    /// Certificates added to Mozilla's roots.
    added: usize,
}

impl ProbeTrust {
    /// Mozilla's roots only.
    pub fn public() -> Self {
        Self::with_roots(Vec::new())
    }

    /// Mozilla's roots and every certificate of a PEM bundle; an error names what is wrong with the bundle.
    pub fn with_pem(pem: &[u8]) -> Result<Self, String> {
        let added = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| format!("not a PEM bundle of certificates: {error}"))?;
        if added.is_empty() {
            return Err("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into());
        }
        let given = added.len();
        let trust = Self::with_roots(added);
        if trust.added < given {
            // A CA file half taken would fail checks later with a less helpful "UnknownIssuer".
            return Err(format!("{} of its {given} certificates cannot be trust anchors", given - trust.added));
        }
        Ok(trust)
    }

    /// [`ProbeTrust::with_pem`] of a file (`PROBE_CA_FILE`).
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let pem = std::fs::read(path).map_err(|error| format!("cannot read {}: {error}", path.display()))?;
        Self::with_pem(&pem).map_err(|error| format!("{}: {error}", path.display()))
    }

    fn with_roots(added: Vec<CertificateDer<'static>>) -> Self {
        let mut roots = RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        // The count of certificates taken is what `with_pem` checks.
        let (taken, _) = roots.add_parsable_certificates(added);
        // The provider is named rather than taken from the process default, which is ambiguous when two are built.
        let config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("ring supports rustls' default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        ProbeTrust { config: Arc::new(config), added: taken }
    }

    /// How many certificates beyond Mozilla's roots are trusted.
    pub fn added(&self) -> usize {
        self.added
    }
}

impl std::fmt::Debug for ProbeTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProbeTrust").field("added", &self.added).finish_non_exhaustive()
    }
}

fn failed(started: Instant, error: impl Into<String>) -> HttpCheck {
    HttpCheck {
        status: None,
        latency_ms: started.elapsed().as_millis().min(u32::MAX as u128) as u32,
        body_prefix: String::new(),
        error: Some(error.into()),
    }
}

/// GETs `url` within `timeout`; loopback targets only when the URL's host is in `allowed_hosts`; an `https` URL's
/// certificate must chain to one of `trust`'s roots and name the URL's host.
pub async fn check(url: &str, allowed_hosts: &[String], trust: &ProbeTrust, timeout: Duration) -> HttpCheck {
    let started = Instant::now();
    match tokio::time::timeout(timeout, check_inner(url, allowed_hosts, trust, started)).await {
        Ok(result) => result,
        Err(_) => failed(started, format!("timed out after {timeout:?}")),
    }
}

async fn check_inner(url: &str, allowed_hosts: &[String], trust: &ProbeTrust, started: Instant) -> HttpCheck {
    let parsed = match url::Url::parse(url) {
        Ok(parsed) => parsed,
        Err(error) => return failed(started, format!("invalid URL: {error}")),
    };
    let tls = match parsed.scheme() {
        "http" => false,
        "https" => true,
        other => return failed(started, format!("scheme {other} is not http or https")),
    };
    let Some(host) = parsed.host_str() else { return failed(started, "the URL has no host") };
    let port = parsed.port_or_known_default().unwrap_or(80);
    let host_for_lookup = host.trim_start_matches('[').trim_end_matches(']').to_string();
    // The certificate must name the host of the URL (an address for an address), not the address connected to;
    // a host TLS cannot verify fails before any traffic.
    let server_name = match tls.then(|| ServerName::try_from(host_for_lookup.clone())) {
        None => None,
        Some(Ok(name)) => Some(name),
        Some(Err(error)) => return failed(started, format!("{host} is not a name TLS can verify: {error}")),
    };
    let addresses: Vec<SocketAddr> = match tokio::net::lookup_host((host_for_lookup.as_str(), port)).await {
        Ok(addresses) => addresses.collect(),
        Err(error) => return failed(started, format!("cannot resolve {host}: {error}")),
    };
    if addresses.is_empty() {
        return failed(started, format!("{host} resolves to no address"));
    }
    let loopback_allowed = allowed_hosts.iter().any(|entry| allows(entry, &host_for_lookup, port));
    for address in &addresses {
        if let Some(why) = refused(address.ip(), loopback_allowed) {
            return failed(started, format!("refused address {} ({why})", address.ip()));
        }
    }
    // Every address was checked: the first that answers is used (`localhost` is often `::1` before `127.0.0.1`, and
    // an agent may listen on one of them only).
    let mut stream = None;
    let mut refusals = Vec::new();
    for target in &addresses {
        match tokio::net::TcpStream::connect(target).await {
            Ok(connected) => {
                stream = Some(connected);
                break;
            }
            Err(error) => refusals.push(format!("connect to {target}: {error}")),
        }
    }
    let Some(stream) = stream else { return failed(started, refusals.join("; ")) };
    let path = match parsed.query() {
        Some(query) => format!("{}?{query}", parsed.path()),
        None => parsed.path().to_string(),
    };
    let host_header = match parsed.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: aragora-cp-probe\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    let Some(name) = server_name else { return exchange(stream, &request, started).await };
    match TlsConnector::from(trust.config.clone()).connect(name, stream).await {
        Ok(stream) => exchange(stream, &request, started).await,
        Err(error) => failed(started, format!("TLS with {host}: {error}")),
    }
}

/// Sends the request and reads the answer's status and the start of its body.
async fn exchange(mut stream: impl AsyncRead + AsyncWrite + Unpin, request: &str, started: Instant) -> HttpCheck {
    if let Err(error) = stream.write_all(request.as_bytes()).await {
        return failed(started, format!("send: {error}"));
    }
    let mut response = Vec::with_capacity(MAX_RESPONSE_BYTES);
    let mut buffer = [0u8; 1024];
    let mut latency_ms = None;
    while response.len() < MAX_RESPONSE_BYTES {
        match stream.read(&mut buffer).await {
            Ok(0) => break,
            Ok(read) => {
                response.extend_from_slice(&buffer[..read.min(MAX_RESPONSE_BYTES - response.len())]);
                if latency_ms.is_none() && response.windows(4).any(|w| w == b"\r\n\r\n") {
                    latency_ms = Some(started.elapsed().as_millis().min(u32::MAX as u128) as u32);
                }
            }
            // A TLS peer that closes without saying so (many do, having answered `Connection: close`) ends the
            // answer like a plain close once its head is whole: what is cut off then is the body, of which the
            // probes read a prefix. Cut inside the head, the answer is not one.
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof && latency_ms.is_some() => break,
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => {
                return failed(started, "the connection closed inside the answer's head");
            }
            Err(error) => return failed(started, format!("read: {error}")),
        }
    }
    let status = String::from_utf8_lossy(response.split(|b| *b == b'\n').next().unwrap_or_default())
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok());
    let Some(status) = status else { return failed(started, "not an HTTP response") };
    // The first KiB of the body, in bytes (then decoded), so a multi-byte body cannot pass more.
    let body_start = response.windows(4).position(|w| w == b"\r\n\r\n").map(|at| at + 4).unwrap_or(response.len());
    let body = &response[body_start..];
    let body_prefix = String::from_utf8_lossy(&body[..body.len().min(BODY_PREFIX_BYTES)]).into_owned();
    HttpCheck {
        status: Some(status),
        latency_ms: latency_ms.unwrap_or_else(|| started.elapsed().as_millis().min(u32::MAX as u128) as u32),
        body_prefix,
        error: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_the_addresses_of_the_design() {
        for bad in [
            "0.0.0.0",
            "0.1.2.3",
            "::a9fe:a9fe",
            "64:ff9b::a9fe:a9fe",
            "2002:a9fe:a9fe::1",
            "169.254.169.254",
            "100.100.100.200",
            "169.254.1.1",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:169.254.169.254",
            "::ffff:127.0.0.1",
        ] {
            assert!(refused(bad.parse().unwrap(), false).is_some(), "{bad}");
        }
        assert!(refused("127.0.0.1".parse().unwrap(), false).is_some());
        assert!(refused("127.0.0.1".parse().unwrap(), true).is_none());
        assert!(refused("93.184.216.34".parse().unwrap(), false).is_none());
    }

    const CA: &str = include_str!("../../tests/fixtures/tls/ca.pem");
    const CERT: &str = include_str!("../../tests/fixtures/tls/localhost.pem");
    const KEY: &str = include_str!("../../tests/fixtures/tls/localhost.key");

    #[test]
    fn a_ca_file_must_hold_certificates() {
        let no_pem = ProbeTrust::with_pem(b"not a certificate").unwrap_err();
        assert!(no_pem.contains("no PEM certificate"), "{no_pem}");
        let key_only = ProbeTrust::with_pem(KEY.as_bytes()).unwrap_err();
        assert!(key_only.contains("no PEM certificate"), "{key_only}");
        let missing = ProbeTrust::from_file(Path::new("/nonexistent/ca.pem")).unwrap_err();
        assert!(missing.contains("cannot read /nonexistent/ca.pem"), "{missing}");
        assert_eq!(ProbeTrust::with_pem(format!("{CERT}{CA}").as_bytes()).unwrap().added(), 2);
        let garbled = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let half = ProbeTrust::with_pem(format!("{CA}{garbled}").as_bytes()).unwrap_err();
        assert_eq!(half, "1 of its 2 certificates cannot be trust anchors");
    }
}
