//! Validator keys in the store: which instance holds each key, and the slashing-protection
//! history exported when a key leaves a client.

use sqlx::Row as _;

use super::{Result, Store, now_ms, random_id};

/// One stored export of a key's slashing-protection history.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryRow {
    /// The key (`0x` + 96 lowercase hex digits).
    pub pubkey: String,
    /// The instance whose client exported it.
    pub instance_id: String,
    /// An EIP-3076 interchange document with this key's entry only.
    pub interchange: String,
    /// When it was stored.
    pub exported_ms: i64,
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

    /// Stores each key's exported history and releases the keys' claims by `instance_id`, in
    /// one transaction: a key is free again only once its history is safe.
    pub async fn store_history_and_release(&self, instance_id: &str, histories: &[(String, String)]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let now = now_ms();
        for (pubkey, interchange) in histories {
            sqlx::query(
                "INSERT INTO slashing_protection (id, pubkey, instance_id, interchange, exported_ms) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(random_id())
            .bind(pubkey)
            .bind(instance_id)
            .bind(interchange)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            release(&mut tx, instance_id, pubkey).await?;
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

    /// Every stored export of a key's history, oldest first.
    pub async fn history(&self, pubkey: &str) -> Result<Vec<HistoryRow>> {
        let rows = sqlx::query(
            "SELECT pubkey, instance_id, interchange, exported_ms FROM slashing_protection \
             WHERE pubkey = $1 ORDER BY exported_ms, id",
        )
        .bind(pubkey)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(HistoryRow {
                    pubkey: row.try_get("pubkey")?,
                    instance_id: row.try_get("instance_id")?,
                    interchange: row.try_get("interchange")?,
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
