//! WebSocket clients: connect (optionally from a spread source address), split, read and send frames.

use super::*;

pub type Io = TokioIo<Upgraded>;
pub type Ws = WebSocket<Io>;
pub type Reader = WebSocketRead<ReadHalf<Io>>;
pub type Writer = Arc<tokio::sync::Mutex<WebSocketWrite<WriteHalf<Io>>>>;

struct SpawnExecutor;

impl<Fut> hyper::rt::Executor<Fut> for SpawnExecutor
where
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    fn execute(&self, fut: Fut) {
        tokio::spawn(fut);
    }
}

/// Opens a WebSocket to `127.0.0.1:port` + `path_and_query`, optionally from a given
/// source address (to spread many clients over 127.0.0.0/8).
pub async fn ws_connect(port: u16, path_and_query: &str, bind: Option<Ipv4Addr>) -> Res<Ws> {
    let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
    let stream = match bind {
        None => TcpStream::connect(addr).await?,
        Some(ip) => {
            let s = TcpSocket::new_v4()?;
            s.bind(SocketAddr::new(IpAddr::V4(ip), 0))?;
            s.connect(addr).await?
        }
    };
    stream.set_nodelay(true)?;
    let req = Request::builder()
        .method("GET")
        .uri(format!("http://127.0.0.1:{port}{path_and_query}"))
        .header("Host", format!("127.0.0.1:{port}"))
        .header(UPGRADE, "websocket")
        .header(CONNECTION, "upgrade")
        .header("Sec-WebSocket-Key", handshake::generate_key())
        .header("Sec-WebSocket-Version", "13")
        .body(Empty::<Bytes>::new())?;
    let (ws, _) = handshake::client(&SpawnExecutor, req, stream).await?;
    Ok(ws)
}

/// The source address of client `i` when spreading: 1,000 clients per address,
/// 127.10.0.1, 127.10.0.2, … (each address has its own ephemeral port range).
pub fn spread_addr(i: usize) -> Ipv4Addr {
    let a = i / 1000;
    Ipv4Addr::new(
        127,
        10 + (a / 62_500) as u8,
        ((a / 250) % 250) as u8,
        (a % 250 + 1) as u8,
    )
}

/// Splits a connected socket: the reader stays with the caller, the writer is shared
/// (heartbeats, pongs, publishing).
pub fn split(ws: Ws) -> (Reader, Writer) {
    let (r, w) = ws.split(tokio::io::split);
    (r, Arc::new(tokio::sync::Mutex::new(w)))
}

/// Reads the next data frame, answering pings through `writer`.
/// Returns `None` when the connection is closed.
pub async fn next_frame(reader: &mut Reader, writer: &Writer) -> Res<Option<(OpCode, Vec<u8>)>> {
    loop {
        let w = writer.clone();
        let mut send = move |f: Frame<'_>| {
            let w = w.clone();
            let owned = Frame::new(true, f.opcode, None, Payload::Owned(f.payload.to_vec()));
            async move { w.lock().await.write_frame(owned).await }
        };
        let frame = reader.read_frame(&mut send).await?;
        match frame.opcode {
            OpCode::Close => return Ok(None),
            OpCode::Text | OpCode::Binary => return Ok(Some((frame.opcode, frame.payload.to_vec()))),
            _ => continue,
        }
    }
}

pub async fn send_text(writer: &Writer, text: String) -> Res<()> {
    writer
        .lock()
        .await
        .write_frame(Frame::text(Payload::Owned(text.into_bytes())))
        .await?;
    Ok(())
}

pub async fn send_frame(writer: &Writer, opcode: OpCode, bytes: Vec<u8>) -> Res<()> {
    writer
        .lock()
        .await
        .write_frame(Frame::new(true, opcode, None, Payload::Owned(bytes)))
        .await?;
    Ok(())
}

/// Reads a whole data frame from an unsplit socket (pings answered by fastwebsockets).
pub async fn read_data(ws: &mut Ws) -> Res<(OpCode, Vec<u8>)> {
    loop {
        let f = ws.read_frame().await?;
        match f.opcode {
            OpCode::Close => return Err(err("closed")),
            OpCode::Text | OpCode::Binary => return Ok((f.opcode, f.payload.to_vec())),
            _ => continue,
        }
    }
}
