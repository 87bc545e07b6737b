//! Validator keys in the store: which instance holds each key, and the slashing-protection
//! history of each key (what a platform gave with it, and what clients exported when the key
//! left them).
//!
//! A history row is decoded into an [`Interchange`] as it is read: a row that does not decode
//! is a [`super::StoreError::Corrupt`] (logged, counted in `ovsb_store_corrupt_rows_total`),
//! never skipped. Rows are kept compact: storing a key's history replaces the rows it was merged
//! from by their union, in one transaction.

use sqlx::Row as _;

use super::{Result, Store, corrupt, now_ms, random_id};
use crate::interchange::{Interchange, Pubkey, Root};

/// One stored history of a key.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryRow {
    /// The row's id.
    pub id: String,
    /// The key (`0x` + 96 lowercase hex digits).
    pub pubkey: String,
    /// The instance whose client exported it, or that was given it.
    pub instance_id: String,
    /// An EIP-3076 interchange with this key's entry only, decoded.
    pub interchange: Interchange,
    /// When it was stored.
    pub exported_ms: i64,
}

/// The union of `rows`' histories of `key` on `chain` (rows of other chains left out), and the
/// ids of the rows it holds every record of.
pub fn union_on_chain(rows: &[HistoryRow], chain: Root, key: Pubkey) -> (Interchange, Vec<String>) {
    let mut union = Interchange::empty(chain);
    let mut ids = Vec::new();
    for row in rows.iter().filter(|row| row.interchange.genesis_validators_root == chain) {
        union.absorb(&row.interchange.only(&[key]));
        ids.push(row.id.clone());
    }
    (union, ids)
}

/// A key's history to keep: the union of what it `replaces` (row ids, removed in the same
/// transaction) and whatever is new.
#[derive(Debug, Clone)]
pub struct KeptHistory {
    /// The key (`0x` + 96 lowercase hex digits).
    pub pubkey: String,
    /// Rows of this key that `interchange` holds every record of.
    pub replaces: Vec<String>,
    /// The key's history (its entry only).
    pub interchange: Interchange,
}

impl Store {
    /// Claims `pubkeys` for `instance_id`, all or none. Returns the keys another instance holds
    /// (with that instance), in which case nothing was claimed.
    pub async fn claim_validator_keys(&self, instance_id: &str, pubkeys: &[String]) -> Result<Vec<(String, String)>> {
        let mut tx = self.pool.begin().await?;
        let now = now_ms();
        let mut taken = Vec::new();
        for pubkey in pubkeys {
            sqlx::query(
                "INSERT INTO validator_keys (pubkey, instance_id, claimed_ms) VALUES ($1, $2, $3) \
                 ON CONFLICT (pubkey) DO NOTHING",
            )
            .bind(pubkey)
            .bind(instance_id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            let row = sqlx::query("SELECT instance_id FROM validator_keys WHERE pubkey = $1")
                .bind(pubkey)
                .fetch_one(&mut *tx)
                .await?;
            let holder: String = row.try_get("instance_id")?;
            if holder != instance_id {
                taken.push((pubkey.clone(), holder));
            }
        }
        if taken.is_empty() {
            tx.commit().await?;
        } else {
            tx.rollback().await?;
        }
        Ok(taken)
    }

    /// Stores each key's history (replacing the rows it was merged from) and, with `release`,
    /// releases the keys' claims by `instance_id`, in one transaction: a key is free again only
    /// once its history is safe.
    pub async fn keep_histories(&self, instance_id: &str, histories: &[KeptHistory], release_keys: bool) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let now = now_ms();
        for kept in histories {
            for id in &kept.replaces {
                sqlx::query("DELETE FROM slashing_protection WHERE id = $1 AND pubkey = $2")
                    .bind(id)
                    .bind(&kept.pubkey)
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query(
                "INSERT INTO slashing_protection (id, pubkey, instance_id, interchange, exported_ms) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(random_id())
            .bind(&kept.pubkey)
            .bind(instance_id)
            .bind(kept.interchange.to_json().to_string())
            .bind(now)
            .execute(&mut *tx)
            .await?;
            if release_keys {
                release(&mut tx, instance_id, &kept.pubkey).await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Releases claims of `instance_id` on keys its client is seen not to hold.
    pub async fn release_validator_keys(&self, instance_id: &str, pubkeys: &[String]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for pubkey in pubkeys {
            release(&mut tx, instance_id, pubkey).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The keys an instance holds (claimed, possibly loaded).
    pub async fn validator_keys_of(&self, instance_id: &str) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT pubkey FROM validator_keys WHERE instance_id = $1 ORDER BY pubkey")
            .bind(instance_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok(r.try_get("pubkey")?)).collect()
    }

    /// Every instance that holds at least one key.
    pub async fn validator_key_holders(&self) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT DISTINCT instance_id FROM validator_keys").fetch_all(&self.pool).await?;
        rows.iter().map(|r| Ok(r.try_get("instance_id")?)).collect()
    }

    /// The instance holding a key, if any.
    pub async fn validator_key_holder(&self, pubkey: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT instance_id FROM validator_keys WHERE pubkey = $1")
            .bind(pubkey)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("instance_id")).transpose()?)
    }

    /// Every stored history of a key, oldest first. A row that does not decode fails the
    /// read ([`super::StoreError::Corrupt`], logged and counted): a history is never returned
    /// narrowed.
    pub async fn history(&self, pubkey: &str) -> Result<Vec<HistoryRow>> {
        let rows = sqlx::query(
            "SELECT id, pubkey, instance_id, interchange, exported_ms FROM slashing_protection \
             WHERE pubkey = $1 ORDER BY exported_ms, id",
        )
        .bind(pubkey)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let id: String = row.try_get("id")?;
                let text: String = row.try_get("interchange")?;
                let interchange = Interchange::from_text(&text).map_err(|err| {
                    let reason =
                        format!("slashing_protection row {id} (key {pubkey}) is not an EIP-3076 interchange ({err})");
                    corrupt("slashing_protection", reason)
                })?;
                Ok(HistoryRow {
                    id,
                    pubkey: row.try_get("pubkey")?,
                    instance_id: row.try_get("instance_id")?,
                    interchange,
                    exported_ms: row.try_get("exported_ms")?,
                })
            })
            .collect()
    }
}

/// Drops the claim of `instance_id` on `pubkey` (another instance's claim is left alone).
async fn release(tx: &mut sqlx::Transaction<'_, sqlx::Any>, instance_id: &str, pubkey: &str) -> Result<()> {
    sqlx::query("DELETE FROM validator_keys WHERE pubkey = $1 AND instance_id = $2")
        .bind(pubkey)
        .bind(instance_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
