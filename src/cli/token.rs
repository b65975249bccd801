//! `realtime token`: prints one signed JWT on stdout, so a deployment with `JWT_SECRET`
//! can make its `anon`/`service_role` keys and test-user tokens without another tool.
//! Parsing is pure (tested here); only [`run`] reads the clock and prints.

use clap::Args;
use serde_json::{Map, Value};

use crate::config::Config;

/// `realtime token --role <role> [--sub <uuid>] [--exp 1h] [--claim k=v]…`
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// The `role` claim: `anon` or `service_role` for API keys, `authenticated` for users
    /// (any Postgres role your RLS policies use).
    #[arg(long)]
    pub role: String,

    /// The `sub` claim: the user id `auth.uid()` returns in RLS policies.
    #[arg(long)]
    pub sub: Option<String>,

    /// Lifetime: a number with s, m, h, d, w or y (`90s`, `1h`, `30d`, `10y`); a bare
    /// number is seconds.
    #[arg(long, default_value = "1h", value_parser = parse_lifetime)]
    pub exp: i64,

    /// Extra claim `key=value`, repeatable. A value that is valid JSON (`42`, `true`,
    /// `{"a":1}`, `"007"`) is used as JSON, anything else as a string.
    #[arg(long = "claim", value_name = "KEY=VALUE", value_parser = parse_claim)]
    pub claims: Vec<(String, Value)>,
}

/// Seconds from `90s`, `15m`, `1h`, `7d`, `2w`, `10y` or a bare number of seconds.
pub fn parse_lifetime(text: &str) -> Result<i64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: i64 = digits
        .parse()
        .map_err(|_| format!("{text:?}: expected a number and a unit, e.g. 1h, 30d"))?;
    let unit_secs = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        "y" => 365 * 86_400,
        other => return Err(format!("{text:?}: unknown unit {other:?} (use s, m, h, d, w or y)")),
    };
    match n.checked_mul(unit_secs) {
        Some(secs) if secs > 0 => Ok(secs),
        _ => Err(format!(
            "{text:?}: the lifetime must be positive and below a few billion years"
        )),
    }
}

/// `key=value` → (key, JSON value or string).
pub fn parse_claim(text: &str) -> Result<(String, Value), String> {
    let Some((key, value)) = text.split_once('=') else {
        return Err(format!("{text:?}: expected key=value"));
    };
    if key.is_empty() {
        return Err(format!("{text:?}: the claim name is empty"));
    }
    let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()));
    Ok((key.to_owned(), value))
}

/// The claims of the token: `iss`, `role`, `iat`, `exp`, `sub` when given, then each
/// `--claim` (which may override any of them).
pub fn claims(args: &TokenArgs, now: i64) -> Value {
    let mut claims = Map::new();
    claims.insert("iss".into(), "realtime-rs".into());
    claims.insert("role".into(), args.role.clone().into());
    claims.insert("iat".into(), now.into());
    claims.insert("exp".into(), now.saturating_add(args.exp).into());
    if let Some(sub) = &args.sub {
        claims.insert("sub".into(), sub.clone().into());
    }
    for (k, v) in &args.claims {
        claims.insert(k.clone(), v.clone());
    }
    Value::Object(claims)
}

/// Prints the token on stdout; notes (which secret, a short one) go to stderr so
/// `KEY=$(realtime token …)` captures the token alone.
pub fn run(config: &Config, args: &TokenArgs) -> Result<(), String> {
    let secret = match config.jwt_secret.as_deref() {
        Some(s) if !s.is_empty() => s,
        _ if config.jwt_jwks.is_some() => {
            return Err(
                "realtime token signs HS256 with JWT_SECRET; with only JWT_JWKS set, sign \
                        tokens with your identity provider's key"
                    .to_owned(),
            )
        }
        _ => {
            eprintln!("realtime token: JWT_SECRET is unset: signing with the development secret of `realtime dev`");
            super::DEV_JWT_SECRET
        }
    };
    if let Some(warning) = crate::short_secret_warning(secret) {
        eprintln!("realtime token: {warning}");
    }
    let token = crate::auth::sign_hs256(secret, &claims(args, crate::clock::now_ms() / 1000))?;
    println!("{token}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_read_units_and_refuse_nonsense() {
        assert_eq!(parse_lifetime("1h"), Ok(3600));
        assert_eq!(parse_lifetime("90s"), Ok(90));
        assert_eq!(parse_lifetime("90"), Ok(90));
        assert_eq!(parse_lifetime("15m"), Ok(900));
        assert_eq!(parse_lifetime("30d"), Ok(30 * 86_400));
        assert_eq!(parse_lifetime("2w"), Ok(14 * 86_400));
        assert_eq!(parse_lifetime("10y"), Ok(3650 * 86_400));
        for bad in ["", "h", "1x", "0", "-1h", "1.5h", "99999999999999999999y"] {
            assert!(parse_lifetime(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn claim_values_are_json_when_they_parse_else_strings() {
        assert_eq!(parse_claim("tier=free"), Ok(("tier".into(), Value::from("free"))));
        assert_eq!(parse_claim("n=3"), Ok(("n".into(), Value::from(3))));
        assert_eq!(parse_claim("ok=true"), Ok(("ok".into(), Value::from(true))));
        assert_eq!(parse_claim(r#"id="007""#), Ok(("id".into(), Value::from("007"))));
        assert_eq!(parse_claim("eq=a=b"), Ok(("eq".into(), Value::from("a=b"))));
        assert_eq!(
            parse_claim(r#"app_metadata={"team":"x"}"#),
            Ok(("app_metadata".into(), serde_json::json!({"team": "x"})))
        );
        assert!(parse_claim("novalue").is_err());
        assert!(parse_claim("=x").is_err());
    }

    #[test]
    fn claims_put_flags_first_and_let_claim_override() {
        let args = TokenArgs {
            role: "authenticated".into(),
            sub: Some("u1".into()),
            exp: 60,
            claims: vec![("iss".into(), "me".into()), ("tier".into(), "free".into())],
        };
        assert_eq!(
            claims(&args, 1000),
            serde_json::json!({"iss": "me", "role": "authenticated", "iat": 1000, "exp": 1060, "sub": "u1", "tier": "free"})
        );
    }
}
