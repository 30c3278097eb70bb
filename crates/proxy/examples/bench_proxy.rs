//! Manual benchmark helper (not a test):
//!
//! ```sh
//! cargo run --release -p proxy --example bench_proxy -- upstream 127.0.0.1:18081
//! cargo run --release -p proxy --example bench_proxy -- proxy 127.0.0.1:18080 127.0.0.1:18081 [ACCESS_LOG|""] [HTTPS_ADDR]
//! wrk -c 50 -d 10s -H 'Host: bench.test' http://127.0.0.1:18080/
//! ```
//!
//! The runtime has 2 worker threads, like berth's (`BENCH_WORKERS=N` to change it).
//! `bench/proxy/run` is the real comparison (berth up vs nginx vs haproxy).

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use proxy::{Backend, HostPattern, Proxy, ProxyConfig, RouteTable, ServiceRoute};

fn main() {
    let workers = std::env::var("BENCH_WORKERS")
        .ok()
        .and_then(|w| w.parse().ok())
        .unwrap_or(2);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(run());
}

async fn run() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let addr = |i: usize| -> SocketAddr {
        args.get(i)
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("argument {i} must be an address"))
    };
    match args.first().map(String::as_str) {
        Some("upstream") => upstream(addr(1)).await,
        Some("proxy") => {
            let mut config = ProxyConfig {
                http: Some(addr(1)),
                access_log: args.get(3).filter(|a| !a.is_empty()).map(Into::into),
                ..ProxyConfig::default()
            };
            if let Some(tls) = args.get(4).and_then(|a| a.parse().ok()) {
                // Self-signed certificate for `bench.test`, written next to the binary's temp dir.
                let key = rcgen::KeyPair::generate().expect("key");
                let cert = rcgen::CertificateParams::new(vec!["bench.test".to_owned()])
                    .expect("params")
                    .self_signed(&key)
                    .expect("cert");
                let dir = std::env::temp_dir();
                let (c, k) = (dir.join("bench_proxy.pem"), dir.join("bench_proxy.key"));
                std::fs::write(&c, cert.pem()).expect("write cert");
                std::fs::write(&k, key.serialize_pem()).expect("write key");
                config.https = Some(tls);
                config.certificates = vec![(c, k)];
            }
            let routes = RouteTable {
                services: vec![ServiceRoute {
                    name: "bench".into(),
                    hosts: vec![HostPattern::Exact("bench.test".into())],
                    default: true,
                    backends: vec![Backend {
                        instance: "bench-1".into(),
                        addr: addr(2),
                    }],
                    ..ServiceRoute::default()
                }],
            };
            let _proxy = Proxy::start(config, routes).await.expect("start");
            std::future::pending::<()>().await;
        }
        _ => eprintln!("usage: bench_proxy upstream ADDR | proxy ADDR UPSTREAM [ACCESS_LOG]"),
    }
}

async fn upstream(addr: SocketAddr) {
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(|_req| async {
                Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                    b"hello world\n",
                ))))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
