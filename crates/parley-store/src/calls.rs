//! The call log: one row per call attempt, written by the daemon's call driver as a call starts,
//! is answered and ends; read back as history, missed counts and single calls.
//!
//! Values are plain strings and unix milliseconds here; the daemon converts them to and from the
//! call core's types, so this crate does not depend on the state machine.

use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use crate::{Result, Store};

/// A party as shown with a call (removed users keep their anonymised row, so history survives).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallParty {
    pub id: i64,
    pub username: String,
    pub display_name: String,
}

/// One call as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRow {
    /// Insertion order; the history cursor.
    pub seq: i64,
    pub id: String,
    pub caller: CallParty,
    pub callee: CallParty,
    pub media: String,
    pub state: String,
    pub status: Option<String>,
    pub reason: Option<String>,
    pub ended_by: Option<i64>,
    pub message: Option<String>,
    pub created_at: i64,
    pub answered_at: Option<i64>,
    pub ended_at: Option<i64>,
    pub callee_seen: bool,
    /// The `deviceId` bound on each side (see migration 0003); what restoring a call needs.
    pub caller_device: Option<String>,
    pub callee_device: Option<String>,
}

/// What the driver writes: a full snapshot, inserted or updated by `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallWrite<'a> {
    pub id: &'a str,
    pub caller_id: i64,
    pub callee_id: i64,
    pub media: &'a str,
    pub state: &'a str,
    pub status: Option<&'a str>,
    pub reason: Option<&'a str>,
    pub ended_by: Option<i64>,
    pub message: Option<&'a str>,
    pub created_at: i64,
    pub answered_at: Option<i64>,
    pub ended_at: Option<i64>,
    pub caller_device: Option<&'a str>,
    pub callee_device: Option<&'a str>,
}

/// `filter=` of the history endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryFilter {
    /// Incoming calls whose status is missed or busy.
    Missed,
    Incoming,
    Outgoing,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryQuery {
    /// Page size, already clamped by the caller.
    pub limit: u32,
    /// Only rows older than this cursor (`seq`).
    pub before: Option<i64>,
    pub media: Option<String>,
    pub filter: Option<HistoryFilter>,
}

/// The answer of `hide_call`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HideOutcome {
    Hidden,
    /// No such call, or the user is not a party.
    NotFound,
    /// The call is still ringing or active.
    Live,
}

macro_rules! call_select {
    () => {
        "SELECT c.seq, c.id, c.caller_id, cu.username, cu.display_name,
                c.callee_id, eu.username, eu.display_name,
                c.media, c.state, c.status, c.reason, c.ended_by, c.message,
                c.created_at, c.answered_at, c.ended_at, c.callee_seen,
                c.caller_device, c.callee_device
         FROM calls c
         JOIN users cu ON cu.id = c.caller_id
         JOIN users eu ON eu.id = c.callee_id "
    };
}

fn call_from(row: SqliteRow) -> Result<CallRow> {
    Ok(CallRow {
        seq: row.try_get(0)?,
        id: row.try_get(1)?,
        caller: CallParty {
            id: row.try_get(2)?,
            username: row.try_get(3)?,
            display_name: row.try_get(4)?,
        },
        callee: CallParty {
            id: row.try_get(5)?,
            username: row.try_get(6)?,
            display_name: row.try_get(7)?,
        },
        media: row.try_get(8)?,
        state: row.try_get(9)?,
        status: row.try_get(10)?,
        reason: row.try_get(11)?,
        ended_by: row.try_get(12)?,
        message: row.try_get(13)?,
        created_at: row.try_get(14)?,
        answered_at: row.try_get(15)?,
        ended_at: row.try_get(16)?,
        callee_seen: row.try_get(17)?,
        caller_device: row.try_get(18)?,
        callee_device: row.try_get(19)?,
    })
}

impl Store {
    /// Inserts the call, or updates everything that can change about it.
    pub async fn save_call(&self, call: &CallWrite<'_>) -> Result<()> {
        self.save_calls(std::slice::from_ref(call)).await
    }

    /// Writes several snapshots in one statement: all or none, and one commit (one fsync) for
    /// the lot. The daemon's call-log writer batches what queued up while the last commit ran,
    /// which is what keeps `synchronous=FULL` affordable under load. One autocommit statement,
    /// not a transaction around several: when a write fails (disk full), SQLite rolls the
    /// statement back itself, whereas a failed explicit transaction (when the store still had a
    /// pool of four) left a pooled connection holding the write lock until its next use, and
    /// every other writer waited on it.
    pub async fn save_calls(&self, calls: &[CallWrite<'_>]) -> Result<()> {
        if calls.is_empty() {
            return Ok(());
        }
        // Built from constants and placeholders only; every value is bound.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(upsert_sql(calls.len())));
        for call in calls {
            query = query
                .bind(call.id)
                .bind(call.caller_id)
                .bind(call.callee_id)
                .bind(call.media)
                .bind(call.state)
                .bind(call.status)
                .bind(call.reason)
                .bind(call.ended_by)
                .bind(call.message)
                .bind(call.created_at)
                .bind(call.answered_at)
                .bind(call.ended_at)
                .bind(call.caller_device)
                .bind(call.callee_device);
        }
        query.execute(&mut *self.conn().await?).await?;
        Ok(())
    }

    /// One call by its public id, whoever the parties are (the caller checks membership).
    pub async fn call_by_id(&self, id: &str) -> Result<Option<CallRow>> {
        let row = sqlx::query(concat!(call_select!(), "WHERE c.id = ?"))
            .bind(id)
            .fetch_optional(&mut *self.conn().await?)
            .await?;
        row.map(call_from).transpose()
    }

    /// The calls the log shows live (ringing or active): those the previous process left
    /// when it stopped, gracefully or not, in the order they started. The store decides
    /// nothing about them; the daemon hands them to the switchboard, which restores or ends
    /// each one and writes the outcome back like any other change.
    pub async fn live_calls(&self) -> Result<Vec<CallRow>> {
        let rows = sqlx::query(concat!(
            call_select!(),
            "WHERE c.state != 'ended' ORDER BY c.seq"
        ))
        .fetch_all(&mut *self.conn().await?)
        .await?;
        rows.into_iter().map(call_from).collect()
    }

    /// A page of `user`'s ended calls, newest first, without the ones they hid. The second value
    /// is the cursor of the next page, `None` on the last one.
    pub async fn call_history(
        &self,
        user: i64,
        query: &HistoryQuery,
    ) -> Result<(Vec<CallRow>, Option<i64>)> {
        let filter: i64 = match query.filter {
            None => 0,
            Some(HistoryFilter::Missed) => 1,
            Some(HistoryFilter::Incoming) => 2,
            Some(HistoryFilter::Outgoing) => 3,
        };
        let limit = i64::from(query.limit.max(1));
        let rows = sqlx::query(concat!(
            call_select!(),
            "WHERE c.state = 'ended'
               AND ((c.caller_id = ?1 AND c.caller_hidden = 0)
                    OR (c.callee_id = ?1 AND c.callee_hidden = 0))
               AND (?2 IS NULL OR c.seq < ?2)
               AND (?3 IS NULL OR c.media = ?3)
               AND (?4 = 0
                    OR (?4 = 1 AND c.callee_id = ?1 AND c.status IN ('missed', 'busy'))
                    OR (?4 = 2 AND c.callee_id = ?1)
                    OR (?4 = 3 AND c.caller_id = ?1))
             ORDER BY c.seq DESC
             LIMIT ?5"
        ))
        .bind(user)
        .bind(query.before)
        .bind(query.media.as_deref())
        .bind(filter)
        // One extra row tells whether another page exists without a second query.
        .bind(limit + 1)
        .fetch_all(&mut *self.conn().await?)
        .await?;
        let mut calls = rows
            .into_iter()
            .map(call_from)
            .collect::<Result<Vec<_>>>()?;
        let next = if calls.len() as i64 > limit {
            calls.truncate(limit as usize);
            calls.last().map(|c| c.seq)
        } else {
            None
        };
        Ok((calls, next))
    }

    /// Missed (and busy) incoming calls `user` has not marked seen nor hidden.
    pub async fn unseen_missed_count(&self, user: i64) -> Result<i64> {
        let (count,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM calls
             WHERE callee_id = ? AND state = 'ended' AND status IN ('missed', 'busy')
               AND callee_seen = 0 AND callee_hidden = 0",
        )
        .bind(user)
        .fetch_one(&mut *self.conn().await?)
        .await?;
        Ok(count)
    }

    /// Marks every missed call of `user` as seen.
    pub async fn mark_missed_seen(&self, user: i64) -> Result<()> {
        sqlx::query(
            "UPDATE calls SET callee_seen = 1
             WHERE callee_id = ? AND state = 'ended' AND status IN ('missed', 'busy')
               AND callee_seen = 0",
        )
        .bind(user)
        .execute(&mut *self.conn().await?)
        .await?;
        Ok(())
    }

    /// Hides an ended call from `user`'s history only; the other party keeps it.
    pub async fn hide_call(&self, user: i64, id: &str) -> Result<HideOutcome> {
        let row: Option<(i64, i64, String)> =
            sqlx::query_as("SELECT caller_id, callee_id, state FROM calls WHERE id = ?")
                .bind(id)
                .fetch_optional(&mut *self.conn().await?)
                .await?;
        let Some((caller, callee, state)) = row else {
            return Ok(HideOutcome::NotFound);
        };
        if caller != user && callee != user {
            return Ok(HideOutcome::NotFound);
        }
        if state != "ended" {
            return Ok(HideOutcome::Live);
        }
        sqlx::query(
            "UPDATE calls SET
                caller_hidden = CASE WHEN caller_id = ?1 THEN 1 ELSE caller_hidden END,
                callee_hidden = CASE WHEN callee_id = ?1 THEN 1 ELSE callee_hidden END
             WHERE id = ?2",
        )
        .bind(user)
        .bind(id)
        .execute(&mut *self.conn().await?)
        .await?;
        Ok(HideOutcome::Hidden)
    }
}

/// The upsert of `rows` call snapshots, 14 placeholders each, in `CallWrite`'s field order.
fn upsert_sql(rows: usize) -> String {
    let mut sql = String::from(UPSERT_HEAD);
    for i in 0..rows {
        sql.push_str(if i == 0 { "(" } else { ", (" });
        sql.push_str("?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)");
    }
    sql.push_str(UPSERT_TAIL);
    sql
}

const UPSERT_HEAD: &str =
    "INSERT INTO calls (id, caller_id, callee_id, media, state, status, reason,
                                ended_by, message, created_at, answered_at, ended_at,
                                caller_device, callee_device)
                 VALUES ";
const UPSERT_TAIL: &str = "
                 ON CONFLICT(id) DO UPDATE SET
                    state = excluded.state, status = excluded.status, reason = excluded.reason,
                    ended_by = excluded.ended_by, message = excluded.message,
                    answered_at = excluded.answered_at, ended_at = excluded.ended_at,
                    caller_device = excluded.caller_device,
                    callee_device = excluded.callee_device";

#[cfg(test)]
mod tests {
    use sqlx::Row;

    use super::upsert_sql;
    use crate::Store;

    /// Issue 14: the upsert runs for every call state change. A CHECK written `x IN (...)` made
    /// SQLite build an ephemeral b-tree of the list on every execution (four per upsert, a sixth
    /// of the store's instructions per call setup); migration 0006 wrote them with `OR`.
    #[tokio::test]
    async fn the_call_log_upsert_builds_no_temporary_table() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("parley.db")).await.unwrap();
        for rows in [1, 3] {
            let explain = format!("EXPLAIN {}", upsert_sql(rows));
            let mut query = sqlx::query(sqlx::AssertSqlSafe(explain));
            for _ in 0..rows * 14 {
                query = query.bind(None::<i64>);
            }
            let opcodes: Vec<String> = query
                .fetch_all(&mut *store.conn().await.unwrap())
                .await
                .unwrap()
                .iter()
                .map(|row| row.get("opcode"))
                .collect();
            assert!(opcodes.iter().any(|op| op == "Insert"), "{opcodes:?}");
            assert_eq!(
                opcodes.iter().filter(|op| *op == "OpenEphemeral").count(),
                0,
                "{rows} row(s): {opcodes:?}"
            );
        }
        store.close().await;
    }
}
