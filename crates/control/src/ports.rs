//! Instance port allocation from `[berth] ports`.
//!
//! **Invariant:** a port is never handed out while any instance record holds it — a
//! draining or stopping instance keeps its port until it has stopped — and never when
//! something else on the machine is listening on it.

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener};

use spec::PortRange;

#[derive(Debug)]
pub struct PortAllocator {
    range: PortRange,
    /// Where the next search starts: ports are handed out round the range rather than
    /// lowest-first, so a just-freed port is not reused at once.
    cursor: u16,
}

impl PortAllocator {
    pub fn new(range: PortRange) -> Self {
        PortAllocator {
            range,
            cursor: range.start,
        }
    }

    pub fn set_range(&mut self, range: PortRange) {
        if self.range != range {
            *self = PortAllocator::new(range);
        }
    }

    /// A free port not in `held`, or `None` when the range is exhausted.
    pub fn allocate(&mut self, held: &HashSet<u16>) -> Option<u16> {
        let size = u32::from(self.range.end - self.range.start) + 1;
        for _ in 0..size {
            let port = self.cursor;
            self.cursor = if port >= self.range.end {
                self.range.start
            } else {
                port + 1
            };
            if !held.contains(&port) && is_free(port) {
                return Some(port);
            }
        }
        None
    }
}

/// Nobody listens on the port (checked by binding it on the loopback and the wildcard
/// address, which is what apps do).
fn is_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
        && TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_held_and_busy_ports_and_wraps() {
        let busy = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let p = busy.local_addr().unwrap().port();
        let mut a = PortAllocator::new(PortRange { start: p, end: p });
        assert_eq!(a.allocate(&HashSet::new()), None, "busy port handed out");
        drop(busy);
        assert_eq!(a.allocate(&HashSet::new()), Some(p));
        assert_eq!(
            a.allocate(&HashSet::from([p])),
            None,
            "held port handed out"
        );
    }
}
