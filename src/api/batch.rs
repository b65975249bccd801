//! `POST /api/broadcast`: `{"messages":[{topic, event, payload, private?, id?}]}`, topics
//! without the `realtime:` prefix. Receivers get a text broadcast
//! `{"event","payload","type":"broadcast"[,"meta":{"id"}]}`.

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use realtime_protocol::broadcast::json_map;
use realtime_protocol::{errors, BroadcastMessage};
use serde_json::{json, Map, Value};
use tracing::{debug, info};

use super::read_body;
use crate::app::App;
use crate::auth::Claims;
use crate::fanout::TopicKey;
use crate::http::{empty, json_error, response, Body};

pub(super) async fn handle(app: &App, req: Request<Incoming>, claims: &Claims) -> Response<Body> {
    let Some(body) = read_body(req, app.config.max_frame_size).await else {
        return super::too_large();
    };
    let Ok(Value::Object(mut root)) = serde_json::from_slice::<Value>(&body) else {
        return json_error(StatusCode::BAD_REQUEST, "message", "Request body must be a JSON object");
    };
    let Some(Value::Array(messages)) = root.remove("messages") else {
        return unprocessable(json!({"messages": [errors::rest::CANT_BE_BLANK]}));
    };

    let max_payload = app.limits.for_claims(claims).max_payload_bytes();
    let checked: Vec<Result<Message, Map<String, Value>>> =
        messages.into_iter().map(|m| validate(m, max_payload)).collect();
    if checked.iter().any(Result::is_err) {
        let list: Vec<Value> = checked
            .into_iter()
            .map(|r| Value::Object(r.err().unwrap_or_default()))
            .collect();
        return unprocessable(json!({ "messages": list }));
    }

    // One write check per private topic; a topic that fails it is skipped (still 202),
    // as Supabase does.
    let mut allowed: std::collections::HashMap<String, bool> = std::collections::HashMap::new();
    for message in checked.into_iter().flatten() {
        if message.private {
            let ok = match allowed.get(&message.topic) {
                Some(ok) => *ok,
                None => {
                    let ok = super::may_write_private(app, claims, &message.topic).await;
                    allowed.insert(message.topic.clone(), ok);
                    ok
                }
            };
            if !ok {
                info!(topic = %message.topic, "skipping private REST broadcast: not authorized");
                continue;
            }
        }
        let meta = message.id.map(|id| json!({ "id": id }).to_string());
        let map = json_map(
            &message.event,
            meta.as_deref().map(str::as_bytes),
            message.payload.as_bytes(),
        );
        let key = TopicKey::new(&format!("realtime:{}", message.topic), message.private);
        let n = app
            .publish
            .broadcast(&key, &BroadcastMessage::Map(Bytes::from(map)), None);
        debug!(topic = %key.topic, delivered = n, "REST batch broadcast");
    }
    empty(StatusCode::ACCEPTED)
}

struct Message {
    topic: String,
    event: String,
    payload: String,
    private: bool,
    id: Option<Value>,
}

/// One message, or its per-field errors (`{"event":["can't be blank"],...}`).
fn validate(m: Value, max_payload: usize) -> Result<Message, Map<String, Value>> {
    let mut errs = Map::new();
    let Value::Object(mut m) = m else {
        errs.insert("message".into(), json!(["is invalid"]));
        return Err(errs);
    };
    let mut text = |field: &str, errs: &mut Map<String, Value>| match m.remove(field) {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s),
        None | Some(Value::Null) | Some(Value::String(_)) => {
            errs.insert(field.into(), json!([errors::rest::CANT_BE_BLANK]));
            None
        }
        Some(_) => {
            errs.insert(field.into(), json!(["is invalid"]));
            None
        }
    };
    let topic = text("topic", &mut errs);
    let event = text("event", &mut errs);
    let payload = match m.remove("payload") {
        Some(Value::Object(p)) => {
            let s = Value::Object(p).to_string();
            if s.len() > max_payload {
                crate::observability::limit_rejected("payload_size");
                errs.insert("payload".into(), json!([errors::rest::PAYLOAD_TOO_LARGE]));
            }
            Some(s)
        }
        None | Some(Value::Null) => {
            errs.insert("payload".into(), json!([errors::rest::CANT_BE_BLANK]));
            None
        }
        Some(_) => {
            errs.insert("payload".into(), json!(["is invalid"]));
            None
        }
    };
    let private = matches!(m.remove("private"), Some(Value::Bool(true)));
    let id = m.remove("id").filter(|v| !v.is_null());
    match (topic, event, payload) {
        (Some(topic), Some(event), Some(payload)) if errs.is_empty() => Ok(Message {
            topic,
            event,
            payload,
            private,
            id,
        }),
        _ => Err(errs),
    }
}

fn unprocessable(errors: Value) -> Response<Body> {
    response(
        StatusCode::UNPROCESSABLE_ENTITY,
        "application/json",
        json!({ "errors": errors }).to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_errors_match_supabase() {
        // samples/rest-batch-422.txt
        let a = validate(json!({"topic":"t"}), 1000).err().unwrap();
        assert_eq!(
            Value::Object(a),
            json!({"payload":["can't be blank"],"event":["can't be blank"]})
        );
        let b = validate(json!({"payload":{}}), 1000).err().unwrap();
        assert_eq!(
            Value::Object(b),
            json!({"topic":["can't be blank"],"event":["can't be blank"]})
        );
        assert!(validate(json!({"topic":"t","event":"e","payload":{"a":1}}), 1000).is_ok());
        let big = validate(json!({"topic":"t","event":"e","payload":{"a":"x".repeat(100)}}), 50)
            .err()
            .unwrap();
        assert_eq!(
            Value::Object(big),
            json!({"payload":["Payload size exceeds tenant limit"]})
        );
    }
}
