//! Header handling for forwarded requests and responses: hop-by-hop headers removed
//! (the fixed list plus whatever `Connection` names), `X-Forwarded-For` appended,
//! `X-Forwarded-Proto` / `X-Forwarded-Host` / `X-Real-IP` set, `X-Request-Id`
//! generated when absent, and the client address resolved through `trusted_proxies`.
//!
//! `X-Forwarded-Proto` and `X-Forwarded-Host` from a trusted proxy are kept (it saw the
//! original request); from anyone else they are overwritten. `X-Real-IP` is always the
//! resolved client, so applications should prefer it over parsing `X-Forwarded-For`.

use std::io::Write as _;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub(crate) static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

/// Whether a header value is a comma-separated list containing `token`
/// (case-insensitive).
fn has_token(value: &HeaderValue, token: &str) -> bool {
    value
        .as_bytes()
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// An HTTP/1.1 `Upgrade` request (WebSocket and the like).
pub(crate) fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| has_token(v, "upgrade"))
}

/// Removes hop-by-hop headers. With `upgrade`, `Connection: upgrade` and `Upgrade`
/// are put back so the next hop sees the upgrade.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    if headers.contains_key(header::CONNECTION) {
        let values: Vec<HeaderValue> = headers
            .get_all(header::CONNECTION)
            .iter()
            .cloned()
            .collect();
        headers.remove(header::CONNECTION);
        for value in &values {
            for token in value.as_bytes().split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"upgrade") && upgrade {
                    continue;
                }
                if let Ok(name) = HeaderName::from_bytes(token) {
                    headers.remove(name);
                }
            }
        }
    }
    headers.remove(&KEEP_ALIVE);
    headers.remove(&PROXY_CONNECTION);
    headers.remove(header::TE);
    headers.remove(header::TRAILER);
    headers.remove(header::TRANSFER_ENCODING);
    headers.remove(header::PROXY_AUTHENTICATE);
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|net| net.contains(&ip))
}

/// The address of the client: the socket peer, unless the peer is a trusted proxy, in
/// which case `X-Forwarded-For` is read right to left and the first address not itself
/// trusted is the client.
pub(crate) fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    if trusted.is_empty() || !is_trusted(peer, trusted) {
        return peer;
    }
    let mut client = peer;
    for value in headers.get_all(&X_FORWARDED_FOR).iter().rev() {
        for entry in value.as_bytes().rsplit(|&b| b == b',') {
            let Some(ip) = std::str::from_utf8(entry.trim_ascii())
                .ok()
                .and_then(|s| s.parse::<IpAddr>().ok())
            else {
                return client;
            };
            let ip = ip.to_canonical();
            client = ip;
            if !is_trusted(ip, trusted) {
                return ip;
            }
        }
    }
    client
}

/// An IP address as a header value, formatted without allocating a `String`.
pub(crate) fn ip_value(ip: IpAddr) -> HeaderValue {
    let mut buf = [0u8; 48];
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    let _ = write!(cursor, "{ip}");
    let len = cursor.position() as usize;
    HeaderValue::from_bytes(&buf[..len]).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Sets the forwarding headers on a request about to go upstream.
pub(crate) struct Forwarded<'a> {
    pub(crate) peer: IpAddr,
    /// `peer` as a header value.
    pub(crate) peer_value: &'a HeaderValue,
    pub(crate) peer_trusted: bool,
    pub(crate) client: IpAddr,
    pub(crate) https: bool,
    /// The original `Host` (or `:authority`), port included.
    pub(crate) host: Option<&'a HeaderValue>,
}

impl Forwarded<'_> {
    pub(crate) fn apply(&self, headers: &mut HeaderMap) {
        let peer = self.peer_value;
        match headers.entry(&X_FORWARDED_FOR) {
            header::Entry::Occupied(mut e) => {
                // Joining keeps one header line, as most applications read only one.
                let mut joined: Vec<u8> = Vec::with_capacity(64);
                for (i, v) in e.iter().enumerate() {
                    if i > 0 {
                        joined.extend_from_slice(b", ");
                    }
                    joined.extend_from_slice(v.as_bytes());
                }
                joined.extend_from_slice(b", ");
                joined.extend_from_slice(peer.as_bytes());
                if let Ok(v) = HeaderValue::from_bytes(&joined) {
                    e.insert(v);
                }
            }
            header::Entry::Vacant(e) => {
                e.insert(peer.clone());
            }
        }
        let real = if self.client == self.peer {
            peer.clone()
        } else {
            ip_value(self.client)
        };
        headers.insert(&X_REAL_IP, real);
        if !(self.peer_trusted && headers.contains_key(&X_FORWARDED_PROTO)) {
            let proto = if self.https { "https" } else { "http" };
            headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(proto));
        }
        if !(self.peer_trusted && headers.contains_key(&X_FORWARDED_HOST))
            && let Some(host) = self.host
        {
            headers.insert(&X_FORWARDED_HOST, host.clone());
        }
        if !headers.contains_key(&X_REQUEST_ID) {
            headers.insert(&X_REQUEST_ID, request_id());
        }
    }
}

/// A fresh request id: 32 hex digits, unique within the process and unlikely to
/// collide across processes (random per-process seed, counter, scrambled).
pub(crate) fn request_id() -> HeaderValue {
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = *SEED.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.write_u32(std::process::id());
        h.finish()
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let hi = splitmix(seed ^ n.rotate_left(32));
    let lo = splitmix(n.wrapping_add(seed));
    let mut buf = [0u8; 32];
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, byte) in hi
        .to_be_bytes()
        .iter()
        .chain(lo.to_be_bytes().iter())
        .enumerate()
    {
        buf[2 * i] = HEX[usize::from(byte >> 4)];
        buf[2 * i + 1] = HEX[usize::from(byte & 0xf)];
    }
    HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Fuzz entry: parses `data` as header lines (`name: value`), runs the request-head
/// handling on them and checks its invariants; must never panic.
pub fn fuzz_request_head(data: &[u8]) {
    let mut headers = HeaderMap::new();
    for line in data.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(line[..colon].trim_ascii()),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    let trusted: Vec<IpNet> = vec![
        "127.0.0.0/8".parse().expect("cidr"),
        "::1/128".parse().expect("cidr"),
    ];
    let peer = IpAddr::from([127, 0, 0, 1]);
    let client = client_ip(peer, &headers, &trusted);
    let upgrade = is_upgrade(&headers);
    let host = headers.get(header::HOST).cloned();
    if let Some(h) = host.as_ref().and_then(|h| h.to_str().ok()) {
        let _ = crate::routes::normalize_host(h);
    }
    strip_hop_by_hop(&mut headers, upgrade);
    Forwarded {
        peer,
        peer_value: &ip_value(peer),
        peer_trusted: true,
        client,
        https: false,
        host: host.as_ref(),
    }
    .apply(&mut headers);
    assert!(!headers.contains_key(header::TRANSFER_ENCODING));
    assert!(headers.contains_key(&X_REQUEST_ID));
    assert!(headers.contains_key(&X_REAL_IP));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    #[test]
    fn strips_hop_by_hop_and_connection_tokens() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("proxy-connection", "keep-alive"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
    }

    #[test]
    fn keeps_upgrade_for_upgrade_requests() {
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
    }

    #[test]
    fn client_ip_trusts_only_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("net")];
        let peer_lb: IpAddr = "10.0.0.5".parse().expect("ip");
        let stranger: IpAddr = "192.0.2.7".parse().expect("ip");
        let h = map(&[("x-forwarded-for", "1.1.1.1, 203.0.113.9, 10.0.0.9")]);
        assert_eq!(
            client_ip(peer_lb, &h, &trusted),
            "203.0.113.9".parse::<IpAddr>().expect("ip")
        );
        assert_eq!(client_ip(stranger, &h, &trusted), stranger);
        assert_eq!(client_ip(peer_lb, &h, &[]), peer_lb);
        let garbage = map(&[("x-forwarded-for", "nonsense, 10.0.0.3")]);
        assert_eq!(
            client_ip(peer_lb, &garbage, &trusted),
            "10.0.0.3".parse::<IpAddr>().expect("ip")
        );
        let mapped = map(&[("x-forwarded-for", "::ffff:198.51.100.1")]);
        assert_eq!(
            client_ip(peer_lb, &mapped, &trusted),
            "198.51.100.1".parse::<IpAddr>().expect("ip")
        );
    }

    #[test]
    fn forwarded_headers() {
        let mut h = map(&[
            ("x-forwarded-for", "198.51.100.1"),
            ("x-forwarded-proto", "https"),
        ]);
        let host = HeaderValue::from_static("a.test:8080");
        Forwarded {
            peer: "127.0.0.1".parse().expect("ip"),
            peer_value: &HeaderValue::from_static("127.0.0.1"),
            peer_trusted: false,
            client: "127.0.0.1".parse().expect("ip"),
            https: false,
            host: Some(&host),
        }
        .apply(&mut h);
        assert_eq!(h["x-forwarded-for"], "198.51.100.1, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "a.test:8080");
        assert_eq!(h["x-real-ip"], "127.0.0.1");
        assert_eq!(h["x-request-id"].len(), 32);
    }

    #[test]
    fn request_ids_differ() {
        let a = request_id();
        let b = request_id();
        assert_ne!(a, b);
        assert!(
            a.to_str()
                .expect("ascii")
                .bytes()
                .all(|c| c.is_ascii_hexdigit())
        );
    }

    #[test]
    fn fuzz_entry_survives_odd_heads() {
        fuzz_request_head(
            b"connection: upgrade, ,,\nupgrade: x\nx-forwarded-for: ,,::1, 999.1\nhost: [::1\n",
        );
        fuzz_request_head(b"connection: \xff\ntransfer-encoding: chunked\n");
        fuzz_request_head(b"");
    }
}
