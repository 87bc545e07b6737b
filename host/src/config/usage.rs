//! `[usage]` (metering: compute-unit weights, how often usage is flushed to the store) and a
//! plan's `[services.plans.usage]` (its own weights, its quota).

use std::collections::BTreeMap;

use serde::Deserialize;

use super::ConfigError;

/// Compute units per method when neither `[usage.weights]` nor the plan names it, modelled on
/// the tables hosted RPC providers publish.
pub const DEFAULT_WEIGHTS: &[(&str, u32)] = &[
    ("eth_blockNumber", 10),
    ("eth_chainId", 0),
    ("net_version", 0),
    ("web3_clientVersion", 0),
    ("eth_syncing", 0),
    ("eth_gasPrice", 19),
    ("eth_maxPriorityFeePerGas", 10),
    ("eth_feeHistory", 10),
    ("eth_getBalance", 19),
    ("eth_getCode", 26),
    ("eth_getStorageAt", 17),
    ("eth_getTransactionCount", 26),
    ("eth_getBlockByNumber", 16),
    ("eth_getBlockByHash", 21),
    ("eth_getTransactionByHash", 17),
    ("eth_getTransactionReceipt", 15),
    ("eth_call", 26),
    ("eth_estimateGas", 87),
    ("eth_getLogs", 60),
    ("eth_sendRawTransaction", 40),
    ("eth_subscribe", 10),
    ("eth_unsubscribe", 10),
];

/// Compute units of a method no table names.
pub const DEFAULT_UNKNOWN_WEIGHT: u32 = 20;

/// `[usage]`: how calls are metered and how often the meters are written to the store.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UsageSettings {
    /// How often each replica writes what it metered to the store, in milliseconds. A crash
    /// loses at most this much usage; a graceful stop loses none.
    pub flush_interval_ms: u64,
    /// Rows written per statement (a flush writes as many statements as it needs).
    pub flush_batch_rows: usize,
    /// Compute units per method, over the built-in table ([`DEFAULT_WEIGHTS`]).
    pub weights: BTreeMap<String, u32>,
    /// Compute units of a method no table names.
    pub unknown_method_weight: u32,
}

impl Default for UsageSettings {
    fn default() -> Self {
        UsageSettings {
            flush_interval_ms: 10_000,
            flush_batch_rows: 500,
            weights: BTreeMap::new(),
            unknown_method_weight: DEFAULT_UNKNOWN_WEIGHT,
        }
    }
}

impl UsageSettings {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.flush_interval_ms == 0 || self.flush_interval_ms > 3_600_000 {
            return Err(ConfigError::Invalid("usage.flush_interval_ms must be between 1 and 3600000".into()));
        }
        if self.flush_batch_rows == 0 || self.flush_batch_rows > 2000 {
            return Err(ConfigError::Invalid("usage.flush_batch_rows must be between 1 and 2000".into()));
        }
        Ok(())
    }
}

/// `[services.plans.usage]`: a plan's weights over `[usage.weights]`, and its quota.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PlanUsageDecl {
    /// Compute units per method for this plan's calls, over `[usage.weights]`.
    pub weights: BTreeMap<String, u32>,
    /// Compute units of a method no table names, for this plan (default: the `[usage]` one).
    pub unknown_method_weight: Option<u32>,
    /// The plan's quota, if it has one.
    pub quota: Option<QuotaDecl>,
}

/// A quota: at most `compute_units` per `window`, counted per binding or per instance.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QuotaDecl {
    /// Compute units allowed in one window.
    pub compute_units: u64,
    /// `day` (UTC), `month` (UTC, calendar) or `<n>s` (n seconds, aligned to the Unix epoch).
    pub window: QuotaWindow,
    /// Whose calls one count covers: `binding` (the default) or `instance`.
    #[serde(default)]
    pub per: QuotaScope,
}

/// The window a quota counts over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaWindow {
    /// A UTC day.
    Day,
    /// A UTC calendar month.
    Month,
    /// `n` seconds, aligned to the Unix epoch (for short test windows, or hourly quotas).
    Seconds(u64),
}

impl QuotaWindow {
    /// Parses `day`, `month` or `<n>s`.
    pub fn parse(text: &str) -> Result<QuotaWindow, String> {
        match text {
            "day" => Ok(QuotaWindow::Day),
            "month" => Ok(QuotaWindow::Month),
            _ => match text.strip_suffix('s').and_then(|n| n.parse::<u64>().ok()) {
                Some(n) if (1..=366 * 86_400).contains(&n) => Ok(QuotaWindow::Seconds(n)),
                _ => {
                    Err(format!("quota window {text:?} must be \"day\", \"month\" or \"<seconds>s\" (1s to 366 days)"))
                }
            },
        }
    }

    /// The window as configured (`day`, `month`, `60s`).
    pub fn name(&self) -> String {
        match self {
            QuotaWindow::Day => "day".into(),
            QuotaWindow::Month => "month".into(),
            QuotaWindow::Seconds(n) => format!("{n}s"),
        }
    }
}

impl<'de> Deserialize<'de> for QuotaWindow {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        QuotaWindow::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Whose calls a quota counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuotaScope {
    /// Each binding has the quota to itself.
    #[default]
    Binding,
    /// The bindings of an instance share it.
    Instance,
}

impl QuotaScope {
    /// `binding` or `instance`.
    pub fn name(self) -> &'static str {
        match self {
            QuotaScope::Binding => "binding",
            QuotaScope::Instance => "instance",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_parse_and_bad_ones_are_named() {
        assert_eq!(QuotaWindow::parse("day"), Ok(QuotaWindow::Day));
        assert_eq!(QuotaWindow::parse("month"), Ok(QuotaWindow::Month));
        assert_eq!(QuotaWindow::parse("5s"), Ok(QuotaWindow::Seconds(5)));
        for bad in ["0s", "week", "s", "-3s", "1h"] {
            assert!(QuotaWindow::parse(bad).unwrap_err().contains(bad), "{bad}");
        }
    }
}
