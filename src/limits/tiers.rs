//! Limit profiles ("tiers") from a TOML file, selected per token by a claim:
//!
//! ```toml
//! [tiers.free]
//! max_channels_per_client = 3
//! max_payload_size_kb = 256
//!
//! [tiers.paid]
//! max_channels_per_client = 10
//! ```
//!
//! A setting a tier leaves out is the global one.

use std::time::Duration;

use ahash::AHashMap;
use serde::Deserialize;

use super::ClientLimits;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    tiers: std::collections::HashMap<String, Tier>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Tier {
    max_channels_per_client: Option<usize>,
    max_payload_size_kb: Option<usize>,
    client_presence_max_calls: Option<usize>,
    client_presence_window_ms: Option<u64>,
}

/// Parses a limits file (its text) into tiers over the `global` limits.
pub fn load_tiers(text: &str, global: &ClientLimits) -> Result<AHashMap<String, ClientLimits>, String> {
    let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
    Ok(file
        .tiers
        .into_iter()
        .map(|(name, t)| {
            let limits = ClientLimits {
                max_channels_per_client: t.max_channels_per_client.unwrap_or(global.max_channels_per_client),
                max_payload_size_kb: t.max_payload_size_kb.unwrap_or(global.max_payload_size_kb),
                client_presence_max_calls: t.client_presence_max_calls.unwrap_or(global.client_presence_max_calls),
                client_presence_window: t
                    .client_presence_window_ms
                    .map_or(global.client_presence_window, Duration::from_millis),
            };
            (name, limits)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn global() -> ClientLimits {
        ClientLimits {
            max_channels_per_client: 1000,
            max_payload_size_kb: 3000,
            client_presence_max_calls: 30,
            client_presence_window: Duration::from_secs(30),
        }
    }

    #[test]
    fn tiers_override_what_they_set() {
        let tiers = load_tiers(
            "[tiers.free]\nmax_channels_per_client = 3\nmax_payload_size_kb = 256\n[tiers.paid]\nmax_channels_per_client = 10\n",
            &global(),
        )
        .unwrap();
        assert_eq!(tiers["free"].max_channels_per_client, 3);
        assert_eq!(tiers["free"].max_payload_size_kb, 256);
        assert_eq!(tiers["paid"].max_channels_per_client, 10);
        assert_eq!(tiers["paid"].max_payload_size_kb, 3000);
        assert_eq!(tiers["paid"].client_presence_max_calls, 30);
    }

    #[test]
    fn typos_are_errors() {
        assert!(load_tiers("[tiers.free]\nmax_channel = 3\n", &global()).is_err());
        assert!(load_tiers("[tier.free]\n", &global()).is_err());
    }
}
