//! `GET /api/channels` (service role): the live topics on this node with their member
//! and presence counts, for dashboards such as the inspector page.
//!
//! `members` counts the channels subscribed on this node only (in a cluster, ask each
//! node); `presence` counts distinct presence keys, which in a cluster are every node's
//! (presence is one replicated CRDT). A topic with presence but no member here (a
//! server-set entry, or another node's members) is listed with `members: 0`.
//!
//! Pages are in (topic, private) order; `next_cursor` is the last listed topic, encoded,
//! so a page never repeats or skips a topic that existed during the whole walk.

use ahash::AHashMap;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::json;
use tracing::info;

use crate::app::App;
use crate::fanout::TopicKey;
use crate::http::{json_error, response, Body};

/// Page size without `limit=`.
const DEFAULT_LIMIT: usize = 100;
/// Largest `limit=`.
const MAX_LIMIT: usize = 1000;

/// Where a page starts: after this (topic, private).
#[derive(Debug, PartialEq, Eq)]
struct Cursor {
    topic: String,
    private: bool,
}

impl Cursor {
    fn encode(topic: &str, private: bool) -> String {
        let raw = format!("{}{topic}", u8::from(private));
        URL_SAFE_NO_PAD.encode(raw)
    }

    fn decode(s: &str) -> Option<Cursor> {
        let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(s).ok()?).ok()?;
        let private = match raw.as_bytes().first()? {
            b'0' => false,
            b'1' => true,
            _ => return None,
        };
        Some(Cursor {
            topic: raw[1..].to_owned(),
            private,
        })
    }
}

/// The parsed query.
#[derive(Debug, PartialEq, Eq)]
struct Query {
    prefix: String,
    limit: usize,
    after: Option<Cursor>,
}

fn parse_query(query: &str) -> Result<Query, &'static str> {
    let mut q = Query {
        prefix: String::new(),
        limit: DEFAULT_LIMIT,
        after: None,
    };
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "prefix" => q.prefix = v.into_owned(),
            "limit" => match v.parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => q.limit = n,
                _ => return Err("limit must be an integer from 1 to 1000"),
            },
            "cursor" if v.is_empty() => {}
            "cursor" => q.after = Some(Cursor::decode(&v).ok_or("invalid cursor")?),
            _ => {}
        }
    }
    Ok(q)
}

pub(super) fn list(app: &App, req: &Request<Incoming>) -> Response<Body> {
    let q = match parse_query(req.uri().query().unwrap_or_default()) {
        Ok(q) => q,
        Err(why) => {
            info!(reason = why, "channels list refused");
            return json_error(StatusCode::UNPROCESSABLE_ENTITY, "message", why);
        }
    };
    let keep = |k: &TopicKey| {
        let name = k.sub_topic();
        name.starts_with(q.prefix.as_str())
            && q.after
                .as_ref()
                .is_none_or(|c| (name, k.private) > (c.topic.as_str(), c.private))
    };
    let mut topics: AHashMap<TopicKey, usize> = app.publish.topics(keep).into_iter().collect();
    for key in app.presence.topics(keep) {
        topics.entry(key).or_insert(0);
    }
    let mut topics: Vec<(TopicKey, usize)> = topics.into_iter().collect();
    topics.sort_unstable_by(|(a, _), (b, _)| (a.sub_topic(), a.private).cmp(&(b.sub_topic(), b.private)));
    let more = topics.len() > q.limit;
    topics.truncate(q.limit);
    let next_cursor = match topics.last() {
        Some((k, _)) if more => Some(Cursor::encode(k.sub_topic(), k.private)),
        _ => None,
    };
    let channels: Vec<serde_json::Value> = topics
        .iter()
        .map(|(k, members)| {
            json!({
                "topic": k.sub_topic(),
                "private": k.private,
                "members": members,
                "presence": app.presence.key_count_of(k),
            })
        })
        .collect();
    let body = json!({"channels": channels, "next_cursor": next_cursor});
    response(StatusCode::OK, "application/json", body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_defaults_limits_and_cursor_round_trip() {
        assert_eq!(
            parse_query(""),
            Ok(Query {
                prefix: String::new(),
                limit: 100,
                after: None
            })
        );
        let c = Cursor::encode("room:ü/1", true);
        let q = parse_query(&format!("prefix=room%3A&limit=1000&cursor={c}")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(q.prefix, "room:");
        assert_eq!(q.limit, 1000);
        assert_eq!(
            q.after,
            Some(Cursor {
                topic: "room:ü/1".to_owned(),
                private: true
            })
        );
        for bad in ["limit=0", "limit=1001", "limit=x", "cursor=%%%", "cursor=Mg"] {
            assert!(parse_query(bad).is_err(), "{bad}");
        }
    }
}
