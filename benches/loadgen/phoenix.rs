//! The Phoenix protocol of Supabase Realtime: paths, joins, broadcasts, heartbeats.

use super::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vsn {
    V1,
    V2,
}

impl FromStr for Vsn {
    type Err = Error;
    fn from_str(s: &str) -> Res<Vsn> {
        match s {
            "1" | "1.0.0" => Ok(Vsn::V1),
            "2" | "2.0.0" => Ok(Vsn::V2),
            _ => Err(err(format!("vsn {s:?}: 1.0.0 or 2.0.0"))),
        }
    }
}

impl Vsn {
    pub fn as_str(self) -> &'static str {
        match self {
            Vsn::V1 => "1.0.0",
            Vsn::V2 => "2.0.0",
        }
    }
}

pub fn phoenix_path(key: &str, vsn: Vsn) -> String {
    format!("/realtime/v1/websocket?apikey={key}&vsn={}", vsn.as_str())
}

/// A client → server message in the socket's encoding.
pub fn phoenix_text(
    vsn: Vsn,
    join_ref: Option<&str>,
    ref_: Option<&str>,
    topic: &str,
    event: &str,
    payload: &Value,
) -> String {
    match vsn {
        Vsn::V1 => {
            json!({"topic": topic, "event": event, "payload": payload, "ref": ref_, "join_ref": join_ref}).to_string()
        }
        Vsn::V2 => json!([join_ref, ref_, topic, event, payload]).to_string(),
    }
}

/// supabase-js' default join config, presence optionally enabled with a key.
pub fn join_config(presence_key: Option<&str>) -> Value {
    json!({
        "config": {
            "broadcast": {"ack": false, "self": false},
            "presence": {"key": presence_key.unwrap_or(""), "enabled": presence_key.is_some()},
            "postgres_changes": [],
            "private": false
        }
    })
}

/// A received Phoenix message normalised to `[join_ref, ref, topic, event, payload]`.
pub struct Msg {
    pub ref_: Option<String>,
    pub topic: String,
    pub event: String,
    pub payload: Value,
}

pub fn parse_phoenix(vsn: Vsn, text: &[u8]) -> Option<Msg> {
    let v: Value = serde_json::from_slice(text).ok()?;
    let (r, topic, event, payload) = match vsn {
        Vsn::V2 => {
            let a = v.as_array()?;
            (
                a.get(1)?.clone(),
                a.get(2)?.clone(),
                a.get(3)?.clone(),
                a.get(4)?.clone(),
            )
        }
        Vsn::V1 => (
            v["ref"].clone(),
            v["topic"].clone(),
            v["event"].clone(),
            v["payload"].clone(),
        ),
    };
    Some(Msg {
        ref_: r.as_str().map(str::to_owned),
        topic: topic.as_str()?.to_owned(),
        event: event.as_str()?.to_owned(),
        payload,
    })
}

/// Joins `topic` on an unsplit socket and waits for an `ok` reply.
pub async fn phoenix_join(ws: &mut Ws, vsn: Vsn, join_ref: &str, topic: &str, payload: &Value) -> Res<()> {
    let text = phoenix_text(vsn, Some(join_ref), Some(join_ref), topic, "phx_join", payload);
    ws.write_frame(Frame::text(Payload::Owned(text.into_bytes()))).await?;
    loop {
        let (op, data) = tokio::time::timeout(Duration::from_secs(30), read_data(ws))
            .await
            .map_err(|_| err(format!("no join reply for {topic} within 30 s")))??;
        if op != OpCode::Text {
            continue;
        }
        if let Some(m) = parse_phoenix(vsn, &data) {
            if m.event == "phx_reply" && m.ref_.as_deref() == Some(join_ref) {
                if m.payload["status"] == "ok" {
                    return Ok(());
                }
                return Err(err(format!("join {topic} refused: {}", m.payload)));
            }
        }
    }
}

/// A user broadcast push with a JSON payload: V2 → binary type 3, V1 → text.
pub fn phoenix_broadcast(vsn: Vsn, join_ref: &str, topic: &str, event: &str, payload_json: &str) -> (OpCode, Vec<u8>) {
    match vsn {
        Vsn::V2 => {
            let mut b = Vec::with_capacity(7 + join_ref.len() + topic.len() + event.len() + payload_json.len());
            b.extend_from_slice(&[3, join_ref.len() as u8, 0, topic.len() as u8, event.len() as u8, 0, 1]);
            b.extend_from_slice(join_ref.as_bytes());
            b.extend_from_slice(topic.as_bytes());
            b.extend_from_slice(event.as_bytes());
            b.extend_from_slice(payload_json.as_bytes());
            (OpCode::Binary, b)
        }
        Vsn::V1 => {
            let text = format!(
                "{{\"topic\":{},\"event\":\"broadcast\",\"payload\":{{\"type\":\"broadcast\",\"event\":{},\"payload\":{payload_json}}},\"ref\":null,\"join_ref\":{}}}",
                Value::from(topic),
                Value::from(event),
                Value::from(join_ref)
            );
            (OpCode::Text, text.into_bytes())
        }
    }
}

pub fn heartbeat(vsn: Vsn, ref_: u64) -> String {
    phoenix_text(vsn, None, Some(&ref_.to_string()), "phoenix", "heartbeat", &json!({}))
}

/// Sends a Phoenix heartbeat every `every` until the writer fails or `stop` is set.
pub fn spawn_heartbeats(writer: Writer, vsn: Vsn, every: Duration, stop: Arc<AtomicBool>) {
    // A weak handle: the socket closes when its reader is done, not at the next beat.
    let writer = Arc::downgrade(&writer);
    tokio::spawn(async move {
        let mut n = 0u64;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tick.tick().await;
            let Some(writer) = writer.upgrade() else { return };
            if stop.load(Ordering::Relaxed) {
                return;
            }
            n += 1;
            if send_text(&writer, heartbeat(vsn, n)).await.is_err() {
                return;
            }
        }
    });
}
