//! The port-forward relay: kubelet's side of the `v4.channel.k8s.io` websocket protocol.

use std::net::SocketAddr;

use futures::{SinkExt as _, StreamExt as _};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};
use tokio_tungstenite::{WebSocketStream, tungstenite::Message};

/// The v4 port-forward framing: channel 0 carries data, channel 1 errors; each starts with the
/// port number (little-endian), then data frames are prefixed with their channel byte.
pub(super) async fn relay<S>(ws: WebSocketStream<S>, addr: SocketAddr, port: u16)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut stream) = ws.split();
    let p = port.to_le_bytes();
    for ch in [0u8, 1u8] {
        if sink
            .send(Message::binary(vec![ch, p[0], p[1]]))
            .await
            .is_err()
        {
            return;
        }
    }
    let tcp = match TcpStream::connect(addr).await {
        Ok(t) => t,
        Err(e) => {
            let _ = sink
                .send(Message::binary(
                    [
                        &[1u8][..],
                        format!("error forwarding port {port} to pod: {e}").as_bytes(),
                    ]
                    .concat(),
                ))
                .await;
            let _ = sink.send(Message::Close(None)).await;
            return;
        }
    };
    let (mut rd, mut wr) = tcp.into_split();
    let to_pod = async move {
        while let Some(Ok(msg)) = stream.next().await {
            match msg {
                Message::Binary(b) if b.len() > 1 && b[0] == 0 => {
                    if wr.write_all(&b[1..]).await.is_err() {
                        break;
                    }
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = wr.shutdown().await;
    };
    let from_pod = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let frame = [&[0u8][..], &buf[..n]].concat();
                    if sink.send(Message::binary(frame)).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = sink.send(Message::Close(None)).await;
    };
    tokio::join!(to_pod, from_pod);
}
