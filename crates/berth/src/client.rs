//! The CLI's HTTP client for the control API, over the unix socket or TCP (with the
//! bearer token), on hyper's connection API — no extra HTTP client crate.

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use spec::ApiAddr;
use spec::api::ErrorBody;

pub struct Client {
    pub addr: ApiAddr,
    pub token: Option<String>,
}

impl Client {
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let resp = self.send(Method::GET, path, None).await?;
        json(resp).await
    }

    pub async fn post<T: DeserializeOwned>(&self, path: &str, body: &impl Serialize) -> Result<T> {
        let body = serde_json::to_vec(body)?;
        let resp = self.send(Method::POST, path, Some(body)).await?;
        json(resp).await
    }

    /// GETs a newline-delimited JSON stream and calls `each` for every line until the
    /// server ends it.
    pub async fn follow(
        &self,
        path: &str,
        mut each: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        let resp = self.send(Method::GET, path, None).await?;
        if !resp.status().is_success() {
            return json::<serde_json::Value>(resp).await.map(|_| ());
        }
        let mut body = resp.into_body();
        let mut buf: Vec<u8> = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.context("the connection to berth broke")?;
            if let Some(data) = frame.data_ref() {
                buf.extend_from_slice(data);
                while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=nl).collect();
                    each(&line[..line.len() - 1])?;
                }
            }
        }
        Ok(())
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Response<Incoming>> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "berth");
        if body.is_some() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        if let Some(t) = &self.token {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        let unreachable = |e: std::io::Error| {
            anyhow!(
                "cannot reach berth at {}: {e}; is `berth up` running with this config?",
                self.addr
            )
        };
        match &self.addr {
            ApiAddr::Unix(p) => {
                let stream = tokio::net::UnixStream::connect(p)
                    .await
                    .map_err(unreachable)?;
                exchange(stream, req).await
            }
            ApiAddr::Tcp(a) => {
                let stream = tokio::net::TcpStream::connect(a)
                    .await
                    .map_err(unreachable)?;
                exchange(stream, req).await
            }
        }
    }
}

async fn exchange<S>(stream: S, req: Request<Full<Bytes>>) -> Result<Response<Incoming>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("cannot talk to berth")?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
        .send_request(req)
        .await
        .context("berth did not answer")
}

async fn json<T: DeserializeOwned>(resp: Response<Incoming>) -> Result<T> {
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .context("reading berth's answer")?
        .to_bytes();
    if status.is_success() {
        return serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "unexpected answer from berth: {}",
                String::from_utf8_lossy(&bytes)
            )
        });
    }
    match serde_json::from_slice::<ErrorBody>(&bytes) {
        Ok(e) => bail!("{}", e.error.message),
        Err(_) if status == StatusCode::UNAUTHORIZED => bail!("unauthorized: check the API token"),
        Err(_) => bail!(
            "berth answered {status}: {}",
            String::from_utf8_lossy(&bytes)
        ),
    }
}
