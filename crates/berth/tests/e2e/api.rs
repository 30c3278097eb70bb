//! The control API over its real transports: errors, OpenAPI, tokens.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;

use crate::harness::{Berth, http, stderr};

const ONE: &str = "[services.web]\ncommand = [\"{app}\"]\ndomains = [\"web.test\"]\n";

/// One request over the unix socket; returns (status, body).
fn unix(b: &Berth, method: &str, path: &str, body: &str, content_type: &str) -> (u16, String) {
    let mut s = UnixStream::connect(b.data_dir().join("berth.sock")).unwrap();
    // berth may answer (e.g. 400 for a wrong content type) and close before the body is
    // written; the answer is what the test checks, so a failed write is not an error.
    let _ = write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: berth\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.split(' ').nth(1).unwrap().parse().unwrap();
    let body = out.split_once("\r\n\r\n").unwrap().1.to_owned();
    (status, body)
}

fn error_code(body: &str) -> String {
    // Chunked or not, the JSON object is in there.
    let start = body.find('{').unwrap_or(0);
    let end = body.rfind('}').map(|e| e + 1).unwrap_or(body.len());
    let v: serde_json::Value = serde_json::from_str(&body[start..end]).expect(body);
    v["error"]["code"].as_str().unwrap_or("").to_owned()
}

#[test]
fn errors_are_json_with_fitting_statuses() {
    let b = Berth::start(ONE);
    b.wait_running("web", 1);
    let (status, body) = unix(
        &b,
        "POST",
        "/v1/services/web/scale",
        "{\"instances\": \"x\"}",
        "application/json",
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(error_code(&body), "bad_request");
    assert!(body.contains("instances"), "says what is wrong: {body}");
    let (status, body) = unix(
        &b,
        "POST",
        "/v1/services/web/scale",
        "{not json",
        "application/json",
    );
    assert_eq!(status, 400, "{body}");
    let (status, body) = unix(
        &b,
        "POST",
        "/v1/services/web/scale",
        "{\"instances\": 1}",
        "text/plain",
    );
    assert_eq!(status, 400, "{body}");
    let (status, body) = unix(&b, "POST", "/v1/services/nope/stop", "", "application/json");
    assert_eq!(status, 404, "{body}");
    assert_eq!(error_code(&body), "not_found");
    let (status, body) = unix(&b, "GET", "/v1/nothing-here", "", "application/json");
    assert_eq!(status, 404, "{body}");
    assert_eq!(b.instances("web").len(), 1, "bad requests changed nothing");
}

#[test]
fn the_socket_is_private_and_serves_openapi() {
    let b = Berth::start(ONE);
    let mode = std::fs::metadata(b.data_dir().join("berth.sock"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let (status, body) = unix(&b, "GET", "/v1/openapi.json", "", "application/json");
    assert_eq!(status, 200);
    let start = body.find('{').unwrap();
    let doc: serde_json::Value =
        serde_json::from_str(&body[start..body.rfind('}').unwrap() + 1]).unwrap();
    for path in [
        "/v1/instances",
        "/v1/apply",
        "/v1/services/{name}/scale",
        "/v1/events",
    ] {
        assert!(
            doc["paths"].get(path).is_some(),
            "{path} missing from OpenAPI"
        );
    }
    assert!(doc["components"]["schemas"].get("PsResponse").is_some());
}

#[test]
fn a_tcp_api_needs_the_token() {
    let api_port = testkit::free_port();
    let mut b = Berth::project(ONE);
    let config = std::fs::read_to_string(b.config()).unwrap();
    std::fs::write(
        b.config(),
        config.replacen(
            "[berth]\n",
            &format!("[berth]\napi = \"127.0.0.1:{api_port}\"\n"),
            1,
        ),
    )
    .unwrap();
    b.up();
    let addr = format!("127.0.0.1:{api_port}");
    let (status, body) = http(&addr, "GET", "x", "/v1/instances").unwrap();
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("unauthorized"));
    let token_file = b.data_dir().join("api.token");
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // The CLI finds the token through the config.
    b.wait_running("web", 1);
    // A wrong token is refused.
    let out = std::process::Command::new(crate::harness::BERTH)
        .args(["--api", &addr, "--token", "wrong", "ps"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("unauthorized") || stderr(&out).contains("Bearer"),
        "{}",
        stderr(&out)
    );
}
