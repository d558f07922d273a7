//! What `parley calls list/show` and `/metrics` read: calls with both parties' full quality
//! reports, and the figures the quality metrics are counted from.
//!
//! Only reads. The rules (good/fair/poor, what a failure means) are not here: the verdict is
//! [`crate::quality::verdict`], the diagnosis lives with the command that prints it.

use std::collections::HashMap;

use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use crate::calls::CallParty;
use crate::quality::{StatsReport, split_list};
use crate::{Result, Store};

/// One call as the admin sees it: the record and each party's latest report.
#[derive(Debug, Clone, PartialEq)]
pub struct AdminCall {
    pub id: String,
    pub caller: CallParty,
    pub callee: CallParty,
    pub media: String,
    pub state: String,
    pub status: Option<String>,
    pub reason: Option<String>,
    pub ended_by: Option<i64>,
    pub created_at: i64,
    pub answered_at: Option<i64>,
    pub ended_at: Option<i64>,
    pub caller_report: Option<PartyReport>,
    pub callee_report: Option<PartyReport>,
}

/// A party's latest `call:stats` and when it arrived (unix milliseconds).
#[derive(Debug, Clone, PartialEq)]
pub struct PartyReport {
    pub reported_at: i64,
    pub report: StatsReport,
}

/// Which calls `parley calls list` shows, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdminCallQuery {
    /// Only calls started at or after this time (unix milliseconds).
    pub since: Option<i64>,
    /// Only calls where this user (by id) is a party.
    pub user: Option<i64>,
    /// Rows per read; the caller filters further (e.g. poor calls only) and stops when it has
    /// enough.
    pub page: u32,
    /// Only calls older than this `seq` (the previous page's last).
    pub before: Option<i64>,
}

macro_rules! admin_select {
    () => {
        "SELECT c.seq, c.id, c.caller_id, cu.username, cu.display_name,
                c.callee_id, eu.username, eu.display_name,
                c.media, c.state, c.status, c.reason, c.ended_by,
                c.created_at, c.answered_at, c.ended_at
         FROM calls c
         JOIN users cu ON cu.id = c.caller_id
         JOIN users eu ON eu.id = c.callee_id "
    };
}

fn admin_call_from(row: &SqliteRow) -> Result<(i64, AdminCall)> {
    Ok((
        row.try_get(0)?,
        AdminCall {
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
            created_at: row.try_get(13)?,
            answered_at: row.try_get(14)?,
            ended_at: row.try_get(15)?,
            caller_report: None,
            callee_report: None,
        },
    ))
}

fn report_from(row: &SqliteRow) -> Result<(String, i64, PartyReport)> {
    Ok((
        row.try_get("call_id")?,
        row.try_get("user_id")?,
        PartyReport {
            reported_at: row.try_get("reported_at")?,
            report: StatsReport {
                path: row.try_get("path")?,
                local_candidate: row.try_get("local_candidate")?,
                remote_candidate: row.try_get("remote_candidate")?,
                relay_protocol: row.try_get("relay_protocol")?,
                rtt_ms: row.try_get("rtt_ms")?,
                jitter_ms: row.try_get("jitter_ms")?,
                loss_in_pct: row.try_get("loss_in_pct")?,
                loss_out_pct: row.try_get("loss_out_pct")?,
                bitrate_in_kbps: row.try_get("bitrate_in_kbps")?,
                bitrate_out_kbps: row.try_get("bitrate_out_kbps")?,
                audio_concealed_pct: row.try_get("audio_concealed_pct")?,
                video_freezes: row.try_get("video_freezes")?,
                video_width: row.try_get("video_width")?,
                video_height: row.try_get("video_height")?,
                network_type: row.try_get("network_type")?,
                ice_state: row.try_get("ice_state")?,
                local_candidate_types: split_list(row.try_get("local_candidate_types")?),
                remote_candidate_types: split_list(row.try_get("remote_candidate_types")?),
                relay_protocols: split_list(row.try_get("relay_protocols")?),
            },
        },
    ))
}

/// A figure the quality metrics count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QualityFigure {
    /// `answered_at - created_at` of every answered call, in milliseconds.
    SetupMs,
    /// `rtt_ms` of each party's report of a settled call (reports without a media path, from a
    /// client whose ICE never connected, have none and are not counted).
    RttMs,
    /// The worse direction's loss, in percent, of each party's report of a settled call (as
    /// for `RttMs`, only reports with a media path).
    LossPct,
}

/// Histogram counts of one figure: `le[i]` samples at most `bounds[i]`, their sum and count.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FigureCounts {
    pub le: Vec<u64>,
    pub sum: f64,
    pub count: u64,
}

impl Store {
    /// One page of calls, newest first, each with both parties' reports; and the `seq` to ask
    /// the next page `before` (`None` on the last page).
    pub async fn admin_calls(
        &self,
        query: &AdminCallQuery,
    ) -> Result<(Vec<AdminCall>, Option<i64>)> {
        let page = query.page.clamp(1, 1000);
        let rows = sqlx::query(concat!(
            admin_select!(),
            "WHERE (?1 IS NULL OR c.created_at >= ?1)
               AND (?2 IS NULL OR c.caller_id = ?2 OR c.callee_id = ?2)
               AND (?3 IS NULL OR c.seq < ?3)
             ORDER BY c.seq DESC LIMIT ?4"
        ))
        .bind(query.since)
        .bind(query.user)
        .bind(query.before)
        .bind(i64::from(page))
        .fetch_all(&mut *self.conn().await?)
        .await?;
        let mut calls = Vec::with_capacity(rows.len());
        let mut last_seq = None;
        for row in &rows {
            let (seq, call) = admin_call_from(row)?;
            last_seq = Some(seq);
            calls.push(call);
        }
        self.attach_reports(&mut calls).await?;
        let next = if rows.len() == page as usize {
            last_seq
        } else {
            None
        };
        Ok((calls, next))
    }

    /// One call by its id, or by a prefix of it that only one call has (ids are long; the
    /// admin copies the first characters from `parley calls list`). `Ok(None)` when no call
    /// matches; an `Invalid` error when several do.
    pub async fn admin_call(&self, id_or_prefix: &str) -> Result<Option<AdminCall>> {
        // Call ids are hex; anything else matches nothing, and is never spliced into LIKE.
        if id_or_prefix.is_empty() || !id_or_prefix.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Ok(None);
        }
        let rows = sqlx::query(concat!(
            admin_select!(),
            "WHERE c.id = ?1 OR c.id LIKE ?1 || '%' ORDER BY (c.id = ?1) DESC, c.seq DESC LIMIT 2"
        ))
        .bind(id_or_prefix)
        .fetch_all(&mut *self.conn().await?)
        .await?;
        let mut calls = Vec::new();
        for row in &rows {
            calls.push(admin_call_from(row)?.1);
        }
        if calls.len() == 2 && calls[0].id != id_or_prefix {
            return Err(crate::StoreError::Invalid {
                field: "call id",
                reason: format!("{id_or_prefix:?} is the start of more than one call id"),
            });
        }
        calls.truncate(1);
        self.attach_reports(&mut calls).await?;
        Ok(calls.pop())
    }

    async fn attach_reports(&self, calls: &mut [AdminCall]) -> Result<()> {
        if calls.is_empty() {
            return Ok(());
        }
        // At most 1000 ids (the page bound): well under SQLite's 32766 bound parameters.
        let marks = vec!["?"; calls.len()].join(", ");
        let sql = format!("SELECT * FROM call_quality WHERE call_id IN ({marks})");
        // Only `?` placeholders are spliced in; every value is bound.
        let mut select = sqlx::query(sqlx::AssertSqlSafe(sql));
        for call in calls.iter() {
            select = select.bind(call.id.clone());
        }
        let mut reports: HashMap<(String, i64), PartyReport> = HashMap::new();
        for row in select.fetch_all(&mut *self.conn().await?).await? {
            let (call_id, user_id, report) = report_from(&row)?;
            reports.insert((call_id, user_id), report);
        }
        for call in calls.iter_mut() {
            call.caller_report = reports.remove(&(call.id.clone(), call.caller.id));
            call.callee_report = reports.remove(&(call.id.clone(), call.callee.id));
        }
        Ok(())
    }

    /// Counts of `figure` for a histogram with `bounds` (in the figure's unit), counted by
    /// SQLite so that a scrape reads no rows. A report counts once its call ended more than
    /// `settled_ms` before `now` (the final report can no longer replace it), so each sample is
    /// counted once and the counts only grow; a setup time is final once the call is answered.
    pub async fn quality_counts(
        &self,
        figure: QualityFigure,
        bounds: &[f64],
        now: i64,
        settled_ms: i64,
    ) -> Result<FigureCounts> {
        let source = match figure {
            QualityFigure::SetupMs => {
                "SELECT max(answered_at - created_at, 0) AS v FROM calls
                 WHERE answered_at IS NOT NULL AND ?1 IS NOT NULL"
            }
            QualityFigure::RttMs => {
                "SELECT q.rtt_ms AS v FROM call_quality q JOIN calls c ON c.id = q.call_id
                 WHERE c.ended_at IS NOT NULL AND c.ended_at <= ?1
                   AND q.path IS NOT NULL AND q.rtt_ms IS NOT NULL"
            }
            QualityFigure::LossPct => {
                "SELECT max(q.loss_in_pct, q.loss_out_pct) AS v
                 FROM call_quality q JOIN calls c ON c.id = q.call_id
                 WHERE c.ended_at IS NOT NULL AND c.ended_at <= ?1 AND q.path IS NOT NULL
                   AND q.loss_in_pct IS NOT NULL AND q.loss_out_pct IS NOT NULL"
            }
        };
        // Only fixed text and numbered placeholders are spliced in; every value is bound.
        let buckets: String = (0..bounds.len())
            .map(|i| format!(", coalesce(sum(v <= ?{}), 0)", i + 2))
            .collect();
        let sql = format!("SELECT count(*), total(v){buckets} FROM ({source})");
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(now.saturating_sub(settled_ms));
        for bound in bounds {
            query = query.bind(*bound);
        }
        let row = query.fetch_one(&mut *self.conn().await?).await?;
        let mut counts = FigureCounts {
            count: row.try_get::<i64, _>(0)?.max(0) as u64,
            sum: row.try_get(1)?,
            le: Vec::with_capacity(bounds.len()),
        };
        for i in 0..bounds.len() {
            counts.le.push(row.try_get::<i64, _>(i + 2)?.max(0) as u64);
        }
        Ok(counts)
    }

    /// Reports of settled calls (as [`Store::quality_counts`]) by path and relay protocol; a
    /// report without a path (ICE never selected a pair) has neither and is not counted.
    pub async fn quality_paths(
        &self,
        now: i64,
        settled_ms: i64,
    ) -> Result<Vec<(String, Option<String>, u64)>> {
        let rows = sqlx::query(
            "SELECT q.path, q.relay_protocol, count(*)
             FROM call_quality q JOIN calls c ON c.id = q.call_id
             WHERE c.ended_at IS NOT NULL AND c.ended_at <= ? AND q.path IS NOT NULL
             GROUP BY q.path, q.relay_protocol",
        )
        .bind(now.saturating_sub(settled_ms))
        .fetch_all(&mut *self.conn().await?)
        .await?;
        let mut paths = Vec::with_capacity(rows.len());
        for row in rows {
            paths.push((
                row.try_get(0)?,
                row.try_get(1)?,
                row.try_get::<i64, _>(2)?.max(0) as u64,
            ));
        }
        Ok(paths)
    }
}
