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

/// Whether `name` is on the fixed hop-by-hop list (`Upgrade` included).
pub(crate) fn is_fixed_hop(name: &HeaderName) -> bool {
    *name == header::CONNECTION
        || *name == header::TE
        || *name == header::TRAILER
        || *name == header::TRANSFER_ENCODING
        || *name == header::PROXY_AUTHENTICATE
        || *name == header::UPGRADE
        || *name == KEEP_ALIVE
        || *name == PROXY_CONNECTION
}

/// The header names a `Connection` value lists, besides the ones every proxy drops
/// anyway (`keep-alive`, `close`) and, with `keep_upgrade`, `upgrade`.
fn connection_tokens(value: &HeaderValue, keep_upgrade: bool) -> impl Iterator<Item = &[u8]> {
    value
        .as_bytes()
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(move |t| {
            !(t.is_empty()
                || t.eq_ignore_ascii_case(b"keep-alive")
                || t.eq_ignore_ascii_case(b"close")
                || (keep_upgrade && t.eq_ignore_ascii_case(b"upgrade")))
        })
}

/// Removes hop-by-hop headers. With `upgrade`, `Connection: upgrade` and `Upgrade`
/// are put back so the next hop sees the upgrade.
///
/// One pass over the names first: most heads carry none or only `Connection`, and a
/// removal costs a hash lookup per name.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    if !headers.keys().any(is_fixed_hop) {
        if upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        return;
    }
    if let header::Entry::Occupied(entry) = headers.entry(header::CONNECTION) {
        let (_, values) = entry.remove_entry_mult();
        let mut named: Vec<HeaderName> = Vec::new();
        for value in values {
            for token in connection_tokens(&value, upgrade) {
                if let Ok(name) = HeaderName::from_bytes(token) {
                    named.push(name);
                }
            }
        }
        for name in named {
            headers.remove(name);
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

impl Forwarded<'_> {
    /// Writes the header lines of a request about to go upstream over HTTP/1.1, as
    /// [`strip_hop_by_hop`] (no upgrade), dropping `Expect`, setting `Host` and
    /// [`Forwarded::apply`] would leave `headers`, without changing the map:
    /// the client's fields in order, then `Host` and the forwarding fields.
    pub(crate) fn encode(&self, headers: &HeaderMap, out: &mut Vec<u8>) {
        fn line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| connection_tokens(v, false))
            .filter_map(|t| HeaderName::from_bytes(t).ok())
            .collect();
        let keep_proto = self.peer_trusted && headers.contains_key(&X_FORWARDED_PROTO);
        let keep_fwd_host =
            self.host.is_none() || (self.peer_trusted && headers.contains_key(&X_FORWARDED_HOST));
        let mut forwarded_for: Option<Vec<u8>> = None;
        let mut has_request_id = false;
        for (name, value) in headers {
            if is_fixed_hop(name) || *name == header::EXPECT || named.contains(name) {
                continue;
            }
            if *name == header::HOST {
                // `self.host` is this header (or the authority when there is none).
                continue;
            }
            if *name == X_FORWARDED_FOR {
                let joined = forwarded_for.get_or_insert_with(|| Vec::with_capacity(64));
                joined.extend_from_slice(value.as_bytes());
                joined.extend_from_slice(b", ");
                continue;
            }
            if *name == X_REAL_IP
                || (*name == X_FORWARDED_PROTO && !keep_proto)
                || (*name == X_FORWARDED_HOST && !keep_fwd_host)
            {
                continue;
            }
            has_request_id |= *name == X_REQUEST_ID;
            line(out, name.as_str().as_bytes(), value.as_bytes());
        }
        if let Some(host) = self.host {
            line(out, b"host", host.as_bytes());
        }
        match forwarded_for {
            Some(mut joined) => {
                joined.extend_from_slice(self.peer_value.as_bytes());
                line(out, b"x-forwarded-for", &joined);
            }
            None => line(out, b"x-forwarded-for", self.peer_value.as_bytes()),
        }
        if self.client == self.peer {
            line(out, b"x-real-ip", self.peer_value.as_bytes());
        } else {
            line(out, b"x-real-ip", ip_value(self.client).as_bytes());
        }
        if !keep_proto {
            let proto: &[u8] = if self.https { b"https" } else { b"http" };
            line(out, b"x-forwarded-proto", proto);
        }
        if !keep_fwd_host && let Some(host) = self.host {
            line(out, b"x-forwarded-host", host.as_bytes());
        }
        if !has_request_id {
            line(out, b"x-request-id", &request_id_bytes());
        }
    }
}

/// A fresh request id as a header value.
pub(crate) fn request_id() -> HeaderValue {
    HeaderValue::from_bytes(&request_id_bytes()).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// A fresh request id: 32 hex digits, unique within the process and unlikely to
/// collide across processes (random per-process seed, counter, scrambled).
fn request_id_bytes() -> [u8; 32] {
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
    buf
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
    fn encode_writes_what_strip_and_apply_leave() {
        let cases: [&[(&str, &str)]; 4] = [
            &[("host", "a.test")],
            &[
                ("host", "a.test:8080"),
                ("connection", "keep-alive, X-Secret"),
                ("x-secret", "1"),
                ("x-forwarded-for", "198.51.100.1"),
                ("x-forwarded-for", "203.0.113.9"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "elsewhere"),
                ("x-real-ip", "192.0.2.1"),
                ("expect", "100-continue"),
                ("te", "trailers"),
                ("upgrade", "h2c"),
                ("keep-alive", "timeout=5"),
                ("x-request-id", "abc"),
                ("accept", "*/*"),
                ("accept", "text/html"),
            ],
            &[("accept", "*/*")],
            &[("host", "a.test"), ("connection", "host, close")],
        ];
        let lines = |text: &[u8]| -> Vec<(String, String)> {
            let mut v: Vec<(String, String)> = String::from_utf8_lossy(text)
                .split("\r\n")
                .filter(|l| !l.is_empty())
                .map(|l| {
                    let (n, v) = l.split_once(": ").expect("field line");
                    (n.to_owned(), v.to_owned())
                })
                .collect();
            v.sort();
            v
        };
        let peer: IpAddr = "127.0.0.1".parse().expect("ip");
        for case in cases {
            for trusted in [false, true] {
                let headers = map(case);
                let host = headers.get(header::HOST).cloned();
                let peer_value = ip_value(peer);
                let fwd = Forwarded {
                    peer,
                    peer_value: &peer_value,
                    peer_trusted: trusted,
                    client: if trusted {
                        "203.0.113.9".parse().expect("ip")
                    } else {
                        peer
                    },
                    https: trusted,
                    host: host.as_ref(),
                };
                let mut want = headers.clone();
                strip_hop_by_hop(&mut want, false);
                want.remove(header::EXPECT);
                if let Some(h) = &host
                    && !want.contains_key(header::HOST)
                {
                    want.insert(header::HOST, h.clone());
                }
                fwd.apply(&mut want);
                let mut want_text = Vec::new();
                for (n, v) in &want {
                    want_text.extend_from_slice(n.as_str().as_bytes());
                    want_text.extend_from_slice(b": ");
                    want_text.extend_from_slice(v.as_bytes());
                    want_text.extend_from_slice(b"\r\n");
                }
                let mut got_text = Vec::new();
                fwd.encode(&headers, &mut got_text);
                let generated = |l: &Vec<(String, String)>| {
                    l.iter()
                        .filter(|(n, v)| n != "x-request-id" || v == "abc")
                        .cloned()
                        .collect::<Vec<_>>()
                };
                let (want, got) = (lines(&want_text), lines(&got_text));
                assert_eq!(
                    generated(&got),
                    generated(&want),
                    "{case:?} trusted={trusted}"
                );
                let ids = |l: &Vec<(String, String)>| {
                    l.iter().filter(|(n, _)| n == "x-request-id").count()
                };
                assert_eq!(ids(&got), 1);
                assert_eq!(ids(&want), 1);
            }
        }
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
