//! The edge proxy as configured through `berth.toml`: host/path routing to running
//! instances, forwarded headers, allow rules, HTTPS with SNI from PEM files, redirects,
//! certificate reload by `apply`, and metrics.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use testkit::free_port;

use crate::harness::{BERTH, Berth, http, stderr};

const TWO_SITES: &str = r#"
[services.api]
command = ["{app}"]
domains = ["api.test"]
paths = ["/env"]

[services.site]
command = ["{app}"]
domains = ["site.test", "*.site.test"]
default = true
"#;

#[test]
fn requests_are_routed_by_host_and_path_with_forwarded_headers() {
    let b = Berth::start(TWO_SITES);
    b.wait_running("api", 1);
    b.wait_running("site", 1);
    let service_of = |host: &str, path: &str| {
        let (status, body) = http(&b.url(), "GET", host, path).unwrap();
        assert_eq!(status, 200, "{host}{path}: {body}");
        match body
            .split_whitespace()
            .find_map(|w| w.strip_prefix("service="))
        {
            Some(s) => s.to_owned(),
            None => body, // /env/BERTH_SERVICE answers the name alone
        }
    };
    assert_eq!(service_of("api.test", "/env/BERTH_SERVICE"), "api");
    assert_eq!(
        service_of("API.test:80", "/env/BERTH_SERVICE"),
        "api",
        "case and port ignored"
    );
    assert_eq!(
        service_of("api.test", "/"),
        "site",
        "no prefix of api matches: the default"
    );
    assert_eq!(service_of("site.test", "/"), "site");
    assert_eq!(
        service_of("deep.sub.site.test", "/env/BERTH_SERVICE"),
        "site"
    );
    assert_eq!(
        service_of("unknown.test", "/"),
        "site",
        "the default service"
    );

    let (status, head) = http(&b.url(), "GET", "site.test", "/headers").unwrap();
    assert_eq!(status, 200);
    let head = head.to_ascii_lowercase();
    assert!(head.contains("host: site.test"), "host preserved: {head}");
    assert!(head.contains("x-forwarded-for: 127.0.0.1"), "{head}");
    assert!(head.contains("x-forwarded-proto: http"), "{head}");
    assert!(head.contains("x-forwarded-host: site.test"), "{head}");
    assert!(head.contains("x-real-ip: 127.0.0.1"), "{head}");
    assert!(head.contains("x-request-id: "), "{head}");
}

#[test]
fn without_a_default_unknown_hosts_get_404_and_stopped_services_503() {
    let b = Berth::start(
        r#"
[services.api]
command = ["{app}"]
domains = ["api.test"]
"#,
    );
    b.wait_running("api", 1);
    let (status, _) = http(&b.url(), "GET", "nobody.test", "/").unwrap();
    assert_eq!(status, 404);
    b.ok(&["stop", "api"]);
    b.wait_for("api", "stopped", |all| {
        all.iter().all(|i| i.state == "stopped")
    });
    let (status, body) = http(&b.url(), "GET", "api.test", "/").unwrap();
    assert_eq!(status, 503, "{body}");
}

#[test]
fn allow_rules_see_the_client_address() {
    let b = Berth::start(
        r#"
[services.private-site]
command = ["{app}"]
domains = ["p.test"]
allow = ["127.0.0.2/32"]
"#,
    );
    b.wait_running("private-site", 1);
    let (status, _) = http(&b.url(), "GET", "p.test", "/").unwrap();
    assert_eq!(status, 403, "a client on 127.0.0.1 got through");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let addr: SocketAddr = b.url().parse().unwrap();
    let stream = rt.block_on(async {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        s.connect(addr).await.unwrap().into_std().unwrap()
    });
    stream.set_nonblocking(false).unwrap();
    let mut stream = stream;
    write!(
        stream,
        "GET / HTTP/1.1\r\nHost: p.test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
}

#[test]
fn metrics_count_requests_per_service() {
    let metrics_port = free_port();
    let mut b = Berth::project(TWO_SITES);
    let text = std::fs::read_to_string(b.config()).unwrap();
    std::fs::write(
        b.config(),
        text.replacen(
            "[berth]\n",
            &format!("[berth]\nmetrics = \"127.0.0.1:{metrics_port}\"\n"),
            1,
        ),
    )
    .unwrap();
    b.up();
    b.wait_running("site", 1);
    for _ in 0..3 {
        http(&b.url(), "GET", "site.test", "/").unwrap();
    }
    let (status, text) =
        http(&format!("127.0.0.1:{metrics_port}"), "GET", "x", "/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(
        text.contains("berth_proxy_requests_total{service=\"site\",code=\"2xx\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("berth_instance_up{service=\"site\",instance=\"site-1\",release=\"v1\"} 1"),
        "{text}"
    );
}

// ---- TLS -------------------------------------------------------------------------------

struct Cert {
    der: Vec<u8>,
    cert: PathBuf,
    key: PathBuf,
}

fn cert(dir: &Path, name: &str, names: &[&str]) -> Cert {
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    let c = params.self_signed(&key).unwrap();
    let cert = dir.join(format!("{name}.pem"));
    let keyf = dir.join(format!("{name}.key"));
    std::fs::write(&cert, c.pem()).unwrap();
    std::fs::write(&keyf, key.serialize_pem()).unwrap();
    Cert {
        der: c.der().to_vec(),
        cert,
        key: keyf,
    }
}

/// Accepts any certificate: the tests check *which* one was served.
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A TLS connection with `sni` (an IP address sends no SNI).
fn tls_connect(port: u16, sni: &str) -> Tls {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).unwrap();
    }
    tls
}

fn served_cert(tls: &Tls) -> Vec<u8> {
    tls.conn.peer_certificates().unwrap()[0].to_vec()
}

/// One keep-alive request on an open connection; returns (status, body).
fn tls_get(tls: &mut Tls, host: &str, path: &str) -> (u16, String) {
    write!(tls, "GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
    tls.flush().unwrap();
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        tls.read_exact(&mut byte).unwrap();
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0);
    let mut body = vec![0; len];
    tls.read_exact(&mut body).unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn tls_project(b: &Berth, https: u16, certs: &[&Cert], services: &str) {
    let mut text = std::fs::read_to_string(b.config()).unwrap();
    let mut certs_toml = String::new();
    for c in certs {
        certs_toml.push_str(&format!(
            "[[proxy.certificates]]\ncert = \"{}\"\nkey = \"{}\"\n",
            c.cert.display(),
            c.key.display()
        ));
    }
    text = text.replacen(
        "[proxy]\n",
        &format!("[proxy]\nhttps = \"127.0.0.1:{https}\"\n"),
        1,
    );
    let header_end = text.find("\n\n[services").unwrap_or(text.len());
    let header = format!("{}\n{certs_toml}", &text[..header_end]);
    std::fs::write(
        b.config(),
        format!(
            "{header}\n{}",
            services.replace("{app}", crate::harness::APP)
        ),
    )
    .unwrap();
}

const SECURE: &str = r#"
[services.secure]
command = ["{app}"]
domains = ["secure.test", "*.wild.test"]
https_redirect = true
"#;

#[test]
fn https_picks_the_certificate_by_sni_and_http_redirects_with_the_port() {
    let mut b = Berth::project("");
    let https = free_port();
    let first = cert(b.dir.path(), "first", &["secure.test"]);
    let wild = cert(b.dir.path(), "wild", &["*.wild.test"]);
    tls_project(&b, https, &[&first, &wild], SECURE);
    b.up();
    b.wait_running("secure", 1);

    let mut tls = tls_connect(https, "secure.test");
    assert_eq!(served_cert(&tls), first.der);
    let (status, body) = tls_get(&mut tls, "secure.test", "/");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("service=secure"));
    let (_, head) = tls_get(&mut tls, "secure.test", "/headers");
    assert!(
        head.to_ascii_lowercase()
            .contains("x-forwarded-proto: https"),
        "{head}"
    );

    let tls = tls_connect(https, "a.wild.test");
    assert_eq!(served_cert(&tls), wild.der, "wildcard certificate by SNI");
    let tls = tls_connect(https, "127.0.0.1");
    assert_eq!(
        served_cert(&tls),
        first.der,
        "no SNI: the first certificate"
    );

    let mut s = TcpStream::connect(b.url()).unwrap();
    write!(
        s,
        "GET /path?q=1 HTTP/1.1\r\nHost: secure.test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 308"), "{out}");
    assert!(
        out.to_ascii_lowercase()
            .contains(&format!("location: https://secure.test:{https}/path?q=1")),
        "{out}"
    );
}

#[test]
fn check_reports_a_key_that_does_not_match_its_certificate() {
    let b = Berth::project("");
    let one = cert(b.dir.path(), "one", &["secure.test"]);
    let two = cert(b.dir.path(), "two", &["secure.test"]);
    let mixed = Cert {
        der: vec![],
        cert: one.cert.clone(),
        key: two.key.clone(),
    };
    tls_project(&b, free_port(), &[&mixed], SECURE);
    let out = std::process::Command::new(BERTH)
        .args(["check", "-c"])
        .arg(b.config())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("one.pem") || err.contains("two.key"),
        "names the files: {err}"
    );
    let b2 = Berth::project("");
    let missing = Cert {
        der: vec![],
        cert: b2.dir.path().join("nope.pem"),
        key: two.key.clone(),
    };
    tls_project(&b2, free_port(), &[&missing], SECURE);
    let out = std::process::Command::new(BERTH)
        .args(["check", "-c"])
        .arg(b2.config())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("nope.pem"), "{}", stderr(&out));
}

#[test]
fn apply_takes_up_new_certificate_files_without_dropping_a_connection() {
    let mut b = Berth::project("");
    let https = free_port();
    let old = cert(b.dir.path(), "site", &["secure.test"]);
    tls_project(&b, https, &[&old], SECURE);
    b.up();
    b.wait_running("secure", 1);
    let mut open = tls_connect(https, "secure.test");
    assert_eq!(tls_get(&mut open, "secure.test", "/").0, 200);

    // Same paths, new contents (as a renewal does).
    let new = cert(b.dir.path(), "site", &["secure.test"]);
    assert_ne!(old.der, new.der);
    let out = b.ok(&["apply"]);
    assert!(out.contains("unchanged: secure"), "{out}");
    assert_eq!(served_cert(&tls_connect(https, "secure.test")), new.der);
    assert_eq!(
        tls_get(&mut open, "secure.test", "/").0,
        200,
        "the open connection was dropped"
    );
}
