//! WebSocket (HTTP/1.1 Upgrade) through the proxy, both directions.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

/// A WebSocket echo server.
async fn ws_upstream() -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() || msg.is_binary() {
                        let _ = ws.send(msg).await;
                    }
                }
            });
        }
    });
    Upstream {
        name: "ws".into(),
        addr,
        accepted: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_the_proxy() {
    let ws = ws_upstream().await;
    let (proxy, addr) = start(config(), table(vec![service("ws", &["ws.test"], &[&ws])])).await;
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (mut client, resp) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::client_async("ws://ws.test/chat", tcp),
    )
    .await
    .expect("in time")
    .expect("upgrade");
    assert_eq!(resp.status(), 101);
    assert_eq!(
        proxy.in_flight("ws"),
        1,
        "an open WebSocket counts as in flight"
    );

    // Routes change while the socket is open: it stays up.
    proxy.update_routes(table(vec![]));
    for i in 0..3 {
        let text = format!("hello {i}");
        client
            .send(Message::text(text.clone()))
            .await
            .expect("send");
        let echoed = tokio::time::timeout(WAIT, client.next())
            .await
            .expect("in time")
            .expect("a message")
            .expect("ok");
        assert_eq!(echoed, Message::text(text));
    }
    client.close(None).await.expect("close");
    while let Ok(Some(Ok(_))) = tokio::time::timeout(WAIT, client.next()).await {}
    drop(client);
    eventually(Duration::from_secs(5), "tunnel closed", || async {
        (proxy.in_flight("ws") == 0).then_some(())
    })
    .await;
}
