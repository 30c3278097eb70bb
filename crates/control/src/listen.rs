//! Finding instances that listen on a wildcard address (`0.0.0.0`, `::`): they are
//! reachable without the proxy, so its allow/deny rules do not protect them. berth warns.

/// The wildcard address a socket listens on for `port`, if any (from /proc/net/tcp{,6}).
pub fn wildcard_listener(port: u16) -> Option<&'static str> {
    let v4 = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let v6 = std::fs::read_to_string("/proc/net/tcp6").unwrap_or_default();
    if listens(&v4, "00000000", port) {
        Some("0.0.0.0")
    } else if listens(&v6, "00000000000000000000000000000000", port) {
        Some("[::]")
    } else {
        None
    }
}

/// Whether `table` (the text of /proc/net/tcp or tcp6) has a LISTEN socket on
/// `hex_addr:port`.
fn listens(table: &str, hex_addr: &str, port: u16) -> bool {
    let want = format!("{hex_addr}:{port:04X}");
    table.lines().skip(1).any(|l| {
        let mut f = l.split_whitespace();
        let local = f.nth(1);
        let state = f.nth(1);
        local == Some(want.as_str()) && state == Some("0A")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:4E20 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0100007F:4E21 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0 100 0 0 10 0
   2: 00000000:4E22 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0 100 0 0 10 0
";

    #[test]
    fn finds_only_wildcard_listeners() {
        assert!(listens(TABLE, "00000000", 0x4E20));
        assert!(!listens(TABLE, "00000000", 0x4E21), "loopback is fine");
        assert!(!listens(TABLE, "00000000", 0x4E22), "not listening");
    }

    #[test]
    fn sees_a_real_wildcard_socket() {
        let l = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert_eq!(wildcard_listener(port), Some("0.0.0.0"));
        let l2 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert_eq!(wildcard_listener(l2.local_addr().unwrap().port()), None);
    }
}
