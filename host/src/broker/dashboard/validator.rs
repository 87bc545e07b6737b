//! What a validator instance's dashboard asks its client: each key's index, status and balance
//! (beacon API `states/head/validators`), the head slot and sync state (`node/syncing`), each
//! key's attestation duty in the current epoch (`validator/duties/attester`) and whether it was
//! seen live in the previous one (`validator/liveness`, where the client has it), and each key's
//! fee recipient (keymanager API, with the client's own token, which never leaves ovsb).
//!
//! Owns: those requests, all within one bound (a dashboard answers quickly even when the client
//! hangs), and reading their answers (bounded in size). Must not: ask for or show anything
//! secret (keystores, the client's token), or fail the page: what does not answer is shown as
//! such.

use std::sync::LazyLock;
use std::time::Duration;

use serde_json::{Value, json};

use super::view::{BeaconStatus, KeyView, MAX_KEYS_SHOWN, ValidatorView};
use crate::upstream::ValidatorAccess;

/// Largest answer read from the client.
const MAX_ANSWER_BYTES: usize = 4 << 20;
/// Keys whose fee recipient is asked of the keymanager one by one (past it, the instance's own
/// setting is shown for all).
const MAX_FEE_RECIPIENT_LOOKUPS: usize = 32;

fn client() -> &'static reqwest::Client {
    static CLIENT: LazyLock<reqwest::Client> = LazyLock::new(|| {
        reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("a plain HTTP client builds")
    });
    &CLIENT
}

/// Why a request gave nothing usable (the page only says that it did not).
#[derive(Debug)]
struct NoAnswer;

async fn json_of(request: reqwest::RequestBuilder) -> Result<Value, NoAnswer> {
    let mut response = request.send().await.map_err(|_| NoAnswer)?;
    if !response.status().is_success() {
        return Err(NoAnswer);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|_| NoAnswer)? {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_ANSWER_BYTES {
            return Err(NoAnswer);
        }
    }
    serde_json::from_slice(&body).map_err(|_| NoAnswer)
}

/// A number the beacon API gives as a decimal string (or a number).
fn number(value: &Value) -> Option<u64> {
    match value {
        Value::String(text) => text.parse().ok(),
        other => other.as_u64(),
    }
}

/// The keys of a validator instance (`pubkeys`, as its parameters list them), with what its
/// client (`access`; `None` when it is not running) says about them within `bound`.
pub(super) async fn view(
    access: Option<ValidatorAccess>,
    pubkeys: Vec<String>,
    fee_recipient: Option<String>,
    bound: Duration,
) -> ValidatorView {
    let more_keys = pubkeys.len().saturating_sub(MAX_KEYS_SHOWN);
    let mut keys: Vec<KeyView> =
        pubkeys.into_iter().take(MAX_KEYS_SHOWN).map(|pubkey| KeyView { pubkey, ..Default::default() }).collect();
    let beacon = match access {
        None => BeaconStatus::NotRunning,
        Some(access) => match tokio::time::timeout(bound, ask(&access, &mut keys)).await {
            Ok(Ok(status)) => status,
            Ok(Err(NoAnswer)) => BeaconStatus::Unreachable,
            Err(_) => BeaconStatus::TimedOut { ms: bound.as_millis() as u64 },
        },
    };
    ValidatorView { fee_recipient, beacon, keys, more_keys }
}

/// Fills `keys` from the client; the beacon node's head.
async fn ask(access: &ValidatorAccess, keys: &mut [KeyView]) -> Result<BeaconStatus, NoAnswer> {
    let http = client();
    let beacon = access.beacon.trim_end_matches('/');
    let ids: Vec<&str> = keys.iter().map(|k| k.pubkey.as_str()).collect();
    let validators = async {
        if ids.is_empty() {
            return Ok(json!({"data": []}));
        }
        json_of(http.get(format!("{beacon}/eth/v1/beacon/states/head/validators?id={}", ids.join(",")))).await
    };
    let syncing = json_of(http.get(format!("{beacon}/eth/v1/node/syncing")));
    let spec = json_of(http.get(format!("{beacon}/eth/v1/config/spec")));
    let fees = futures::future::join_all(keys.iter().take(MAX_FEE_RECIPIENT_LOOKUPS).map(|key| {
        let keymanager = access.keymanager.trim_end_matches('/');
        json_of(
            http.get(format!("{keymanager}/eth/v1/validator/{}/feerecipient", key.pubkey)).bearer_auth(&access.token),
        )
    }));
    let (validators, syncing, spec, fees) = tokio::join!(validators, syncing, spec, fees);
    for (key, fee) in keys.iter_mut().zip(fees) {
        key.fee_recipient = fee.ok().and_then(|f| f["data"]["ethaddress"].as_str().map(str::to_string));
    }
    let syncing = syncing?;
    let slot = number(&syncing["data"]["head_slot"]).ok_or(NoAnswer)?;
    let is_syncing = syncing["data"]["is_syncing"].as_bool().unwrap_or(false);
    let slots_per_epoch = spec.ok().and_then(|s| number(&s["data"]["SLOTS_PER_EPOCH"])).filter(|n| *n > 0);
    for entry in validators?["data"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let Some(pubkey) = entry["validator"]["pubkey"].as_str() else { continue };
        if let Some(key) = keys.iter_mut().find(|k| k.pubkey.eq_ignore_ascii_case(pubkey)) {
            key.index = number(&entry["index"]);
            key.status = entry["status"].as_str().map(str::to_string);
            key.balance_gwei = number(&entry["balance"]);
        }
    }
    let Some(slots_per_epoch) = slots_per_epoch else {
        return Ok(BeaconStatus::Head { slot, epoch: 0, syncing: is_syncing });
    };
    let epoch = slot / slots_per_epoch;
    let indices: Vec<String> = keys.iter().filter_map(|k| k.index.map(|i| i.to_string())).collect();
    if !indices.is_empty() {
        let duties = json_of(http.post(format!("{beacon}/eth/v1/validator/duties/attester/{epoch}")).json(&indices));
        let live = async {
            match epoch.checked_sub(1) {
                Some(previous) => {
                    json_of(http.post(format!("{beacon}/eth/v1/validator/liveness/{previous}")).json(&indices)).await
                }
                None => Err(NoAnswer),
            }
        };
        let (duties, live) = tokio::join!(duties, live);
        for duty in duties.ok().as_ref().and_then(|d| d["data"].as_array()).map(Vec::as_slice).unwrap_or_default() {
            let index = number(&duty["validator_index"]);
            if let Some(key) = keys.iter_mut().find(|k| k.index.is_some() && k.index == index) {
                key.attestation_slot = number(&duty["slot"]);
            }
        }
        for entry in live.ok().as_ref().and_then(|d| d["data"].as_array()).map(Vec::as_slice).unwrap_or_default() {
            let index = number(&entry["index"]);
            if let Some(key) = keys.iter_mut().find(|k| k.index.is_some() && k.index == index) {
                key.live_previous_epoch = entry["is_live"].as_bool();
            }
        }
    }
    Ok(BeaconStatus::Head { slot, epoch, syncing: is_syncing })
}
