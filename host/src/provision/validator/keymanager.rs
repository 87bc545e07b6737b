//! The client of a validator client's keymanager API (and of the few beacon API calls the
//! driver needs): requests with the client's token, answers read within a bound, failures
//! worded for users.
//!
//! Owns: the HTTP side of talking to one client. Must not: decide what to import or delete,
//! or touch the store (the validator driver does).

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;

use super::super::DriverError;
use super::ValidatorAccess;
use crate::interchange::Root;

/// Largest keymanager answer read (a key's history grows with its age: generous).
const MAX_ANSWER_BYTES: usize = 64 << 20;

/// An HTTP client for clients' keymanager and beacon APIs.
pub(super) struct Keymanager {
    http: reqwest::Client,
}

impl Keymanager {
    pub(super) fn new() -> Self {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("a plain HTTP client builds");
        Keymanager { http }
    }

    /// Whether the beacon API answers (`GET /eth/v1/node/version`); why not, if it does not.
    pub(super) async fn beacon_ready(&self, access: &ValidatorAccess) -> Result<(), String> {
        match self.http.get(format!("{}/eth/v1/node/version", access.beacon)).send().await {
            Ok(response) if response.status().is_success() => Ok(()),
            Ok(response) => Err(format!("the beacon API answers {}", response.status())),
            Err(err) => Err(format!("the beacon API does not answer: {err}")),
        }
    }

    /// A request to the client's keymanager API, with the client's token.
    pub(super) fn request(
        &self,
        method: reqwest::Method,
        access: &ValidatorAccess,
        path: &str,
    ) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", access.keymanager)).bearer_auth(&access.token)
    }

    pub(super) async fn get(&self, access: &ValidatorAccess, path: &str) -> Result<Value, DriverError> {
        self.send(self.request(reqwest::Method::GET, access, path), path).await
    }

    pub(super) async fn send(&self, request: reqwest::RequestBuilder, what: &str) -> Result<Value, DriverError> {
        let response = request
            .send()
            .await
            .map_err(|e| DriverError::Failed(format!("the keymanager API does not answer {what}: {e}")))?;
        let status = response.status();
        let mut response = response;
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| DriverError::Failed(format!("the keymanager API's answer to {what} broke off: {e}")))?
        {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(DriverError::Failed(format!(
                    "the keymanager API's answer to {what} is over {MAX_ANSWER_BYTES} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        let text = String::from_utf8_lossy(&body);
        if !status.is_success() {
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_string))
                .unwrap_or_else(|| text.chars().take(300).collect());
            return Err(DriverError::Failed(format!("the keymanager API answered {what} with {status}: {message}")));
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text)
            .map_err(|e| DriverError::Failed(format!("the keymanager API answered {what} with bad JSON: {e}")))
    }

    /// The chain's `genesis_validators_root`, from the client's beacon API.
    pub(super) async fn genesis_root(&self, access: &ValidatorAccess) -> Result<Root, DriverError> {
        let what = "GET /eth/v1/beacon/genesis";
        let answer = self.send(self.http.get(format!("{}/eth/v1/beacon/genesis", access.beacon)), what).await?;
        answer["data"]["genesis_validators_root"].as_str().and_then(Root::parse).ok_or_else(|| {
            DriverError::Failed(format!("the beacon API answered {what} without a genesis_validators_root"))
        })
    }

    /// The keys the client holds (`0x` + lowercase hex).
    pub(super) async fn loaded_keys(&self, access: &ValidatorAccess) -> Result<BTreeSet<String>, DriverError> {
        let list = self.get(access, "/eth/v1/keystores").await?;
        Ok(list["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|k| k["validating_pubkey"].as_str())
            .map(str::to_ascii_lowercase)
            .collect())
    }
}
