//! How the generator speaks to the server under test: Phoenix, bare, or Pusher.

use super::*;

/// How the generator speaks to the server under test.
#[derive(Clone)]
pub enum Proto {
    /// Supabase Realtime: join each topic, publish user broadcasts.
    Phoenix { vsn: Vsn, key: String },
    /// The bare fan-out server: no join; it forwards the publisher's frames verbatim.
    /// The generator sends it the same frames as realtime-rs vsn 2.0.0.
    Bare,
    /// Pusher (Sockudo): private channel + client events, HMAC-signed subscriptions.
    Pusher { key: String, secret: String },
}

impl Proto {
    pub fn name(&self) -> String {
        match self {
            Proto::Phoenix { vsn, .. } => format!("realtime-rs vsn {}", vsn.as_str()),
            Proto::Bare => "bare fastwebsockets".into(),
            Proto::Pusher { .. } => "sockudo (pusher)".into(),
        }
    }

    pub(super) fn topic(&self, i: usize) -> String {
        match self {
            Proto::Pusher { .. } => format!("private-bench-{i}"),
            _ => format!("realtime:bench-{i}"),
        }
    }

    fn path(&self, topic: &str) -> String {
        match self {
            Proto::Phoenix { vsn, key } => phoenix_path(key, *vsn),
            Proto::Bare => format!("/ws?topic={topic}"),
            Proto::Pusher { key, .. } => format!("/app/{key}?protocol=7&client=rs-bench&version=1.0"),
        }
    }

    /// Connects and subscribes to `topics`; returns the socket and per-topic join refs.
    pub(super) async fn open(&self, port: u16, topics: &[String], bind: Option<Ipv4Addr>) -> Res<Ws> {
        let first = topics.first().map(String::as_str).unwrap_or("");
        let mut ws = ws_connect(port, &self.path(first), bind).await?;
        match self {
            Proto::Phoenix { vsn, .. } => {
                for (i, t) in topics.iter().enumerate() {
                    phoenix_join(&mut ws, *vsn, &(i + 1).to_string(), t, &join_config(None)).await?;
                }
            }
            Proto::Bare => {}
            Proto::Pusher { key, secret } => {
                let socket_id = pusher_socket_id(&mut ws).await?;
                for t in topics {
                    pusher_subscribe(&mut ws, key, secret, &socket_id, t).await?;
                }
            }
        }
        Ok(ws)
    }

    /// The frame publishing `payload_json` to topic `i` of `topics` (join_ref = i + 1).
    pub(super) fn publish(&self, topic: &str, join_ref: usize, payload_json: &str) -> (OpCode, Vec<u8>) {
        match self {
            Proto::Phoenix { vsn, .. } => phoenix_broadcast(*vsn, &join_ref.to_string(), topic, "m", payload_json),
            Proto::Bare => phoenix_broadcast(Vsn::V2, &join_ref.to_string(), topic, "m", payload_json),
            Proto::Pusher { .. } => (
                OpCode::Text,
                format!(
                    "{{\"event\":\"client-m\",\"channel\":{},\"data\":{payload_json}}}",
                    Value::from(topic)
                )
                .into_bytes(),
            ),
        }
    }

    /// What a receiver must answer to an application-level frame, if anything.
    pub(super) fn answer(&self, op: OpCode, data: &[u8]) -> Option<String> {
        match self {
            Proto::Pusher { .. } if op == OpCode::Text && find(data, b"pusher:ping").is_some() => {
                Some("{\"event\":\"pusher:pong\",\"data\":{}}".into())
            }
            _ => None,
        }
    }

    pub(super) fn heartbeats(&self) -> Option<Vsn> {
        match self {
            Proto::Phoenix { vsn, .. } => Some(*vsn),
            _ => None,
        }
    }
}

async fn pusher_socket_id(ws: &mut Ws) -> Res<String> {
    let (_, data) = tokio::time::timeout(Duration::from_secs(30), read_data(ws))
        .await
        .map_err(|_| err("no pusher:connection_established within 30 s"))??;
    let v: Value = serde_json::from_slice(&data)?;
    if v["event"] != "pusher:connection_established" {
        return Err(err(format!("expected connection_established, got {v}")));
    }
    let inner: Value = match &v["data"] {
        Value::String(s) => serde_json::from_str(s)?,
        other => other.clone(),
    };
    inner["socket_id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| err(format!("no socket_id in {v}")))
}

/// `key:hex(HMAC-SHA256(secret, "socket_id:channel"))`, Pusher's private-channel auth.
pub fn pusher_auth(key: &str, secret: &str, socket_id: &str, channel: &str) -> Res<String> {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).map_err(|e| err(e.to_string()))?;
    mac.update(format!("{socket_id}:{channel}").as_bytes());
    let sig: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{key}:{sig}"))
}

async fn pusher_subscribe(ws: &mut Ws, key: &str, secret: &str, socket_id: &str, channel: &str) -> Res<()> {
    let auth = pusher_auth(key, secret, socket_id, channel)?;
    let msg = json!({"event": "pusher:subscribe", "data": {"channel": channel, "auth": auth}}).to_string();
    ws.write_frame(Frame::text(Payload::Owned(msg.into_bytes()))).await?;
    loop {
        let (_, data) = tokio::time::timeout(Duration::from_secs(30), read_data(ws))
            .await
            .map_err(|_| err(format!("no subscription reply for {channel} within 30 s")))??;
        let v: Value = serde_json::from_slice(&data)?;
        match v["event"].as_str() {
            Some("pusher_internal:subscription_succeeded") if v["channel"] == channel => return Ok(()),
            Some("pusher:error") | Some("pusher:subscription_error") => {
                return Err(err(format!("subscribe {channel}: {v}")))
            }
            _ => {}
        }
    }
}
