//! Group commit: the state changes that wait for the store together commit together.
//!
//! Owns: the queue of changes (a broker's transition, a runner's end of an operation) waiting
//! for a transaction, and running them: each change in a savepoint of one transaction, in the
//! order they arrived, then one COMMIT for all of them, and only then the answer to each. So a
//! provision accepted while another provision's operation ends costs one durable commit (one
//! fsync of the SQLite WAL), not two, and no change is answered before the commit that holds it
//! is durable: what a 201 or 202 acknowledged survives a crash exactly as before.
//!
//! Must not: wait for company. A change that finds no group running starts one at once (alone,
//! if nobody else waits); the changes that arrive while a group commits form the next group.
//! Nor may one change's failure reach another: a change whose statements fail is rolled back to
//! its savepoint and gets its own error; the others commit.
//!
//! Who runs a group: the first change that takes the group lock runs every change queued then,
//! on a task of its own (so a caller that goes away, such as an HTTP request whose client hung
//! up, never leaves the others' changes half done); the lock is held until that task ends.
//! A change's decision stays with its caller: the group reads its rows, sends them to the
//! caller, and applies the changes the caller decides (see `instances`), so a decision may
//! borrow what it likes.

use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;

use super::{Result, StoreError};

/// The transaction a change runs in.
pub(super) type Tx = sqlx::Transaction<'static, sqlx::Any>;

/// What a change did in its savepoint.
pub(super) enum Wrote {
    /// Rows changed: kept, and committed with the group.
    Changes,
    /// Nothing to keep (a decision that changes nothing, or a caller that went away): rolled
    /// back to its savepoint, the generation bump included.
    Nothing,
}

/// One change: its statements, run in the group's transaction.
pub(super) type Job = Box<dyn for<'t> FnOnce(&'t mut Tx) -> BoxFuture<'t, Result<Wrote>> + Send>;

/// Boxes a change (guides the closure's higher-ranked signature).
pub(super) fn job<F>(f: F) -> Job
where
    F: for<'t> FnOnce(&'t mut Tx) -> BoxFuture<'t, Result<Wrote>> + Send + 'static,
{
    Box::new(f)
}

type Done = tokio::sync::oneshot::Sender<Result<()>>;

/// The queue and the lock of a store's group commit. Shared by the store's clones.
#[derive(Default)]
pub(super) struct Group {
    queue: Mutex<Vec<(Job, Done)>>,
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl Group {
    fn take(&self) -> Vec<(Job, Done)> {
        std::mem::take(&mut *self.queue.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl super::Store {
    /// Runs `job` in the next group's transaction; `Ok` once that transaction has committed
    /// (or, for a job that wrote nothing, once it ran).
    pub(super) async fn grouped(&self, job: Job) -> Result<()> {
        let (done, finished) = tokio::sync::oneshot::channel();
        self.group.queue.lock().unwrap_or_else(|p| p.into_inner()).push((job, done));
        let lead = async {
            let guard = self.group.lock.clone().lock_owned().await;
            let jobs = self.group.take();
            if !jobs.is_empty() {
                // Its own task: the group finishes whatever becomes of this caller.
                let (pool, backend) = (self.pool.clone(), self.backend);
                tokio::spawn(async move {
                    run(&pool, backend, jobs).await;
                    drop(guard);
                });
            } else {
                // Another group took this job: its answer comes from there.
                drop(guard);
            }
            std::future::pending::<()>().await
        };
        tokio::select! {
            answer = finished => answer.unwrap_or_else(|_| Err(group_failed("the group's task ended without an answer"))),
            () = lead => unreachable!("leading never ends"),
        }
    }
}

/// An error for a change whose group could not commit (each change gets its own copy).
fn group_failed(reason: &str) -> StoreError {
    StoreError::Database(sqlx::Error::Protocol(format!("the store's group commit failed: {reason}")))
}

async fn run(pool: &sqlx::AnyPool, backend: super::Backend, jobs: Vec<(Job, Done)>) {
    let alone = jobs.len() == 1;
    let mut tx = match pool.begin().await {
        Ok(tx) => tx,
        Err(err) => {
            let reason = err.to_string();
            let mut jobs = jobs.into_iter();
            if let Some((_, done)) = jobs.next() {
                let _ = done.send(Err(err.into()));
            }
            jobs.for_each(|(_, done)| drop(done.send(Err(group_failed(&reason)))));
            return;
        }
    };
    let mut answers: Vec<(Done, Result<()>)> = Vec::with_capacity(jobs.len());
    let mut kept = 0u64;
    let mut broken = None;
    for (job, done) in jobs {
        if broken.is_some() {
            answers.push((done, Ok(())));
            continue;
        }
        if !alone && let Err(err) = sqlx::query("SAVEPOINT grouped").execute(&mut *tx).await {
            broken = Some(err.to_string());
            answers.push((done, Err(err.into())));
            continue;
        }
        let outcome = job(&mut tx).await;
        if !matches!(outcome, Ok(Wrote::Changes)) && !alone {
            let undone = sqlx::query("ROLLBACK TO SAVEPOINT grouped").execute(&mut *tx).await;
            if let Err(err) = undone {
                broken = Some(err.to_string());
            }
        }
        if !alone && broken.is_none() {
            // Ends the savepoint (its changes stay in the transaction, or are already undone).
            if let Err(err) = sqlx::query("RELEASE SAVEPOINT grouped").execute(&mut *tx).await {
                broken = Some(err.to_string());
            }
        }
        match outcome {
            Ok(Wrote::Changes) => {
                kept += 1;
                answers.push((done, Ok(())));
            }
            Ok(Wrote::Nothing) => answers.push((done, Ok(()))),
            Err(err) => answers.push((done, Err(err))),
        }
    }
    let committed = match (&broken, kept) {
        (Some(reason), _) => {
            drop(tx.rollback().await);
            Err(reason.clone())
        }
        (None, 0) => tx.rollback().await.map_err(|err| err.to_string()),
        (None, _) => tx.commit().await.map_err(|err| err.to_string()),
    };
    if committed.is_ok() && kept > 0 {
        let metrics = crate::telemetry::metrics();
        metrics.store_commits.inc();
        metrics.store_changes.inc_by(kept);
    }
    if let Err(reason) = &committed {
        tracing::warn!(changes = answers.len(), backend = ?backend, "a group of store changes did not commit: {reason}");
    }
    for (done, answer) in answers {
        let answer = match (&committed, answer) {
            (Err(reason), Ok(())) => Err(group_failed(reason)),
            (_, answer) => answer,
        };
        let _ = done.send(answer);
    }
}
