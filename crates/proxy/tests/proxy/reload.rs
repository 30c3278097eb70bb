//! Route swaps under continuous load: no request fails.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_swaps_under_load_fail_no_request() {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let c = upstream("c").await;
    let sets: Vec<Vec<&Upstream>> = vec![
        vec![&a],
        vec![&a, &b],
        vec![&b],
        vec![&b, &c],
        vec![&c],
        vec![&c, &a],
    ];
    let tables: Vec<_> = sets
        .iter()
        .map(|set| table(vec![service("web", &["web.test"], set)]))
        .collect();
    let (proxy, addr) = start(config(), tables[0].clone()).await;

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for i in 0..4 {
        let (stop, ok) = (stop.clone(), ok.clone());
        clients.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            // Half keep one connection alive, half reconnect every request.
            let mut tx = None;
            while !stop.load(Ordering::Relaxed) {
                if tx.is_none() || i % 2 == 1 {
                    let stream = TcpStream::connect(addr).await.expect("connect");
                    let (s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                        .await
                        .expect("handshake");
                    tokio::spawn(conn);
                    tx = Some(s);
                }
                let s = tx.as_mut().expect("sender");
                let path = if i == 0 { "/sleep/20" } else { "/x" };
                match tokio::time::timeout(WAIT, s.send_request(get("web.test", path))).await {
                    Ok(Ok(resp)) => {
                        let got = collect(resp).await;
                        if got.status == 200 {
                            ok.fetch_add(1, Ordering::Relaxed);
                        } else {
                            failures.push(format!("{} {}", got.status, got.text()));
                        }
                    }
                    other => failures.push(format!("{other:?}")),
                }
            }
            failures
        }));
    }

    let mut served_before = 0;
    for round in 0..30 {
        proxy.update_routes(tables[round % tables.len()].clone());
        // Let some requests pass on each table before the next swap.
        served_before = eventually(WAIT, "requests progress", || {
            let now = ok.load(Ordering::Relaxed);
            async move { (now >= served_before + 10).then_some(now) }
        })
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for c in clients {
        failures.extend(c.await.expect("join"));
    }
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(ok.load(Ordering::Relaxed) >= 300);
    eventually(Duration::from_secs(5), "nothing in flight", || async {
        let total: usize = ["a", "b", "c"].iter().map(|i| proxy.in_flight(i)).sum();
        (total == 0).then_some(())
    })
    .await;
}
