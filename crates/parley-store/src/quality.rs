//! Call quality: the latest `call:stats` report of each party, and the summary (`quality`) that
//! `Call` and `HistoryEntry` carry for the requesting user's side.
//!
//! The daemon has already checked every value against the protocol's bounds; this module only
//! stores and reads them, plus [`verdict`], the one rule that turns numbers into good/fair/poor.

use std::collections::HashMap;

use serde::Serialize;
use sqlx::Row;

use crate::{Result, Store};

/// One checked `call:stats` report (spec: "Call quality"). Optional fields are those a client
/// may not know (no video in an audio call, no relay on a direct path).
///
/// `path` and the four figures are `None` in the report of a client whose ICE never selected a
/// candidate pair (ICE `new`, `checking`, `failed`, `disconnected` or `closed`, docs/api.md):
/// there is no media to measure, but its ICE state and candidate lists still say why.
#[derive(Debug, Clone, PartialEq)]
pub struct StatsReport {
    /// `direct` or `relay`; `None` when no candidate pair was selected.
    pub path: Option<String>,
    /// `host`, `srflx`, `prflx` or `relay`.
    pub local_candidate: Option<String>,
    pub remote_candidate: Option<String>,
    /// `udp`, `tcp` or `tls`; `None` on a direct path.
    pub relay_protocol: Option<String>,
    pub rtt_ms: Option<f64>,
    pub jitter_ms: Option<f64>,
    pub loss_in_pct: Option<f64>,
    pub loss_out_pct: Option<f64>,
    pub bitrate_in_kbps: Option<f64>,
    pub bitrate_out_kbps: Option<f64>,
    pub audio_concealed_pct: Option<f64>,
    pub video_freezes: Option<i64>,
    pub video_width: Option<i64>,
    pub video_height: Option<i64>,
    pub network_type: Option<String>,
    /// Parley extensions (docs/api.md), for "why did this call fail": the peer connection's
    /// `iceConnectionState` when the report was taken.
    pub ice_state: Option<String>,
    /// The candidate types each side gathered (`None` when the client did not say; an empty
    /// list when it gathered none), and the TURN transports that produced a local relay
    /// candidate. Each list is kept sorted and without duplicates.
    pub local_candidate_types: Option<Vec<String>>,
    pub remote_candidate_types: Option<Vec<String>>,
    pub relay_protocols: Option<Vec<String>>,
}

/// A list column: `NULL` when the client did not report the list, else its entries joined with
/// `,` (an empty string for an empty list, which says something: nothing was gathered).
pub(crate) fn join_list(list: &Option<Vec<String>>) -> Option<String> {
    list.as_ref().map(|items| items.join(","))
}

/// The inverse of [`join_list`].
pub(crate) fn split_list(text: Option<String>) -> Option<Vec<String>> {
    text.map(|text| {
        text.split(',')
            .filter(|item| !item.is_empty())
            .map(str::to_owned)
            .collect()
    })
}

/// How a call went for one party.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Good,
    Fair,
    Poor,
}

/// Round-trip time, in ms, up to which a call is still good / beyond which it is poor. A round
/// trip of 300 ms is ITU-T G.114's 150 ms one-way mouth-to-ear budget.
pub const GOOD_MAX_RTT_MS: f64 = 300.0;
pub const POOR_OVER_RTT_MS: f64 = 600.0;
/// Packet loss, in percent of the worse direction.
pub const GOOD_MAX_LOSS_PCT: f64 = 1.0;
pub const POOR_OVER_LOSS_PCT: f64 = 5.0;
/// Jitter, in ms: beyond about 30 ms jitter buffers start to add audible delay.
pub const GOOD_MAX_JITTER_MS: f64 = 30.0;
pub const POOR_OVER_JITTER_MS: f64 = 75.0;

/// The "good / fair / poor" rule: poor when any of round-trip time, loss or jitter is past its
/// poor threshold; good when all three are within their good limits; fair otherwise.
pub fn verdict(rtt_ms: f64, loss_pct: f64, jitter_ms: f64) -> Verdict {
    if rtt_ms > POOR_OVER_RTT_MS || loss_pct > POOR_OVER_LOSS_PCT || jitter_ms > POOR_OVER_JITTER_MS
    {
        Verdict::Poor
    } else if rtt_ms <= GOOD_MAX_RTT_MS
        && loss_pct <= GOOD_MAX_LOSS_PCT
        && jitter_ms <= GOOD_MAX_JITTER_MS
    {
        Verdict::Good
    } else {
        Verdict::Fair
    }
}

/// The `quality` object of `Call` and `HistoryEntry`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Quality {
    pub path: String,
    pub relay_protocol: Option<String>,
    pub rtt_ms: f64,
    /// The worse of the two directions' loss.
    pub loss_pct: f64,
    pub jitter_ms: f64,
    pub verdict: Verdict,
}

impl Quality {
    /// The summary of one report; `None` for a report without a media path (ICE never
    /// selected a pair), which has no figures to give a verdict on.
    pub fn of(report: &StatsReport) -> Option<Quality> {
        Quality::summarise(
            report.path.clone(),
            report.relay_protocol.clone(),
            [
                report.rtt_ms,
                report.jitter_ms,
                report.loss_in_pct,
                report.loss_out_pct,
            ],
        )
    }

    /// `figures`: round-trip time, jitter, loss in, loss out.
    fn summarise(
        path: Option<String>,
        relay_protocol: Option<String>,
        figures: [Option<f64>; 4],
    ) -> Option<Quality> {
        let (Some(path), [Some(rtt_ms), Some(jitter_ms), Some(loss_in), Some(loss_out)]) =
            (path, figures)
        else {
            return None;
        };
        let loss_pct = loss_in.max(loss_out);
        Some(Quality {
            path,
            relay_protocol,
            rtt_ms,
            loss_pct,
            jitter_ms,
            verdict: verdict(rtt_ms, loss_pct, jitter_ms),
        })
    }

    fn from_row(row: &sqlx::sqlite::SqliteRow) -> Result<(String, Option<Quality>)> {
        let quality = Quality::summarise(
            row.try_get("path")?,
            row.try_get("relay_protocol")?,
            [
                row.try_get("rtt_ms")?,
                row.try_get("jitter_ms")?,
                row.try_get("loss_in_pct")?,
                row.try_get("loss_out_pct")?,
            ],
        );
        Ok((row.try_get("call_id")?, quality))
    }
}

/// The columns `Quality::from_row` reads (a macro so that the queries stay static strings).
macro_rules! quality_columns {
    () => {
        "call_id, path, relay_protocol, rtt_ms, jitter_ms, loss_in_pct, loss_out_pct"
    };
}

impl Store {
    /// Stores `report` as `user`'s latest for `call_id`, replacing an older one.
    pub async fn save_call_stats(
        &self,
        call_id: &str,
        user_id: i64,
        reported_at: i64,
        report: &StatsReport,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO call_quality (call_id, user_id, reported_at, path, local_candidate,
                 remote_candidate, relay_protocol, rtt_ms, jitter_ms, loss_in_pct, loss_out_pct,
                 bitrate_in_kbps, bitrate_out_kbps, audio_concealed_pct, video_freezes,
                 video_width, video_height, network_type, ice_state, local_candidate_types,
                 remote_candidate_types, relay_protocols)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (call_id, user_id) DO UPDATE SET
                 reported_at = excluded.reported_at, path = excluded.path,
                 local_candidate = excluded.local_candidate,
                 remote_candidate = excluded.remote_candidate,
                 relay_protocol = excluded.relay_protocol, rtt_ms = excluded.rtt_ms,
                 jitter_ms = excluded.jitter_ms, loss_in_pct = excluded.loss_in_pct,
                 loss_out_pct = excluded.loss_out_pct, bitrate_in_kbps = excluded.bitrate_in_kbps,
                 bitrate_out_kbps = excluded.bitrate_out_kbps,
                 audio_concealed_pct = excluded.audio_concealed_pct,
                 video_freezes = excluded.video_freezes, video_width = excluded.video_width,
                 video_height = excluded.video_height, network_type = excluded.network_type,
                 ice_state = excluded.ice_state,
                 local_candidate_types = excluded.local_candidate_types,
                 remote_candidate_types = excluded.remote_candidate_types,
                 relay_protocols = excluded.relay_protocols",
        )
        .bind(call_id)
        .bind(user_id)
        .bind(reported_at)
        .bind(&report.path)
        .bind(&report.local_candidate)
        .bind(&report.remote_candidate)
        .bind(&report.relay_protocol)
        .bind(report.rtt_ms)
        .bind(report.jitter_ms)
        .bind(report.loss_in_pct)
        .bind(report.loss_out_pct)
        .bind(report.bitrate_in_kbps)
        .bind(report.bitrate_out_kbps)
        .bind(report.audio_concealed_pct)
        .bind(report.video_freezes)
        .bind(report.video_width)
        .bind(report.video_height)
        .bind(&report.network_type)
        .bind(&report.ice_state)
        .bind(join_list(&report.local_candidate_types))
        .bind(join_list(&report.remote_candidate_types))
        .bind(join_list(&report.relay_protocols))
        .execute(&mut *self.conn().await?)
        .await?;
        Ok(())
    }

    /// `user`'s side of a call's quality, `None` when that party sent no report or its latest
    /// report has no media path (ICE never connected: nothing to give a verdict on).
    pub async fn call_quality(&self, call_id: &str, user_id: i64) -> Result<Option<Quality>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            quality_columns!(),
            " FROM call_quality WHERE call_id = ? AND user_id = ?"
        ))
        .bind(call_id)
        .bind(user_id)
        .fetch_optional(&mut *self.conn().await?)
        .await?;
        Ok(match row.as_ref().map(Quality::from_row).transpose()? {
            Some((_, quality)) => quality,
            None => None,
        })
    }

    /// `user`'s side of the quality of each of `call_ids` that has a report with a media path (a
    /// history page).
    pub async fn calls_quality(
        &self,
        user_id: i64,
        call_ids: &[&str],
    ) -> Result<HashMap<String, Quality>> {
        let mut found = HashMap::new();
        // A history page has at most 200 entries: well under SQLite's 32766 bound parameters.
        if call_ids.is_empty() {
            return Ok(found);
        }
        let marks = vec!["?"; call_ids.len()].join(", ");
        let sql = format!(
            concat!(
                "SELECT ",
                quality_columns!(),
                " FROM call_quality WHERE user_id = ? AND call_id IN ({})"
            ),
            marks
        );
        // Only `?` placeholders are spliced in; every value is bound.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(user_id);
        for id in call_ids {
            query = query.bind(*id);
        }
        for row in query.fetch_all(&mut *self.conn().await?).await? {
            if let (call_id, Some(quality)) = Quality::from_row(&row)? {
                found.insert(call_id, quality);
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_is_good_only_when_all_three_are_within_the_good_limits() {
        assert_eq!(verdict(40.0, 0.0, 5.0), Verdict::Good);
        assert_eq!(
            verdict(300.0, 1.0, 30.0),
            Verdict::Good,
            "limits are inclusive"
        );
        assert_eq!(verdict(301.0, 0.0, 5.0), Verdict::Fair);
        assert_eq!(verdict(40.0, 1.5, 5.0), Verdict::Fair);
        assert_eq!(verdict(40.0, 0.0, 31.0), Verdict::Fair);
        assert_eq!(
            verdict(600.0, 5.0, 75.0),
            Verdict::Fair,
            "poor starts past the limit"
        );
    }

    #[test]
    fn verdict_is_poor_when_any_one_is_past_its_poor_threshold() {
        assert_eq!(verdict(601.0, 0.0, 5.0), Verdict::Poor);
        assert_eq!(verdict(40.0, 5.1, 5.0), Verdict::Poor);
        assert_eq!(verdict(40.0, 0.0, 76.0), Verdict::Poor);
        assert_eq!(verdict(60_000.0, 100.0, 60_000.0), Verdict::Poor);
    }

    /// A database with alice calling bob, call `c1`, answered; ended (completed) or still active.
    async fn store_with_answered_call(
        ended: bool,
    ) -> (tempfile::TempDir, Store, crate::User, crate::User) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(&dir.path().join("parley.db"))
            .await
            .expect("open");
        let alice = store
            .create_user("alice", None, "password-123")
            .await
            .unwrap();
        let bob = store
            .create_user("bob", None, "password-123")
            .await
            .unwrap();
        store
            .save_call(&crate::calls::CallWrite {
                id: "c1",
                caller_id: alice.id,
                callee_id: bob.id,
                media: "audio",
                state: if ended { "ended" } else { "active" },
                status: ended.then_some("completed"),
                reason: ended.then_some("hangup"),
                ended_by: None,
                message: None,
                created_at: 1,
                answered_at: Some(2),
                ended_at: ended.then_some(3),
                caller_device: None,
                callee_device: None,
            })
            .await
            .expect("call");
        (dir, store, alice, bob)
    }

    fn report(rtt_ms: f64, loss_out_pct: f64) -> StatsReport {
        StatsReport {
            path: Some("relay".into()),
            local_candidate: Some("relay".into()),
            remote_candidate: None,
            relay_protocol: Some("tcp".into()),
            rtt_ms: Some(rtt_ms),
            jitter_ms: Some(3.0),
            loss_in_pct: Some(0.5),
            loss_out_pct: Some(loss_out_pct),
            bitrate_in_kbps: None,
            bitrate_out_kbps: Some(40.0),
            audio_concealed_pct: None,
            video_freezes: Some(2),
            video_width: None,
            video_height: None,
            network_type: None,
            ice_state: Some("connected".into()),
            local_candidate_types: Some(vec!["host".into(), "relay".into()]),
            remote_candidate_types: Some(vec![]),
            relay_protocols: None,
        }
    }

    #[tokio::test]
    async fn the_latest_report_per_party_is_kept_and_read_back_for_that_party_only() {
        let (_dir, store, alice, bob) = store_with_answered_call(false).await;
        assert_eq!(store.call_quality("c1", alice.id).await.unwrap(), None);
        store
            .save_call_stats("c1", alice.id, 10, &report(40.0, 0.0))
            .await
            .unwrap();
        store
            .save_call_stats("c1", alice.id, 20, &report(700.0, 2.0))
            .await
            .unwrap();
        let quality = store
            .call_quality("c1", alice.id)
            .await
            .unwrap()
            .expect("saved");
        assert_eq!(
            quality,
            Quality {
                path: "relay".into(),
                relay_protocol: Some("tcp".into()),
                rtt_ms: 700.0,
                loss_pct: 2.0,
                jitter_ms: 3.0,
                verdict: Verdict::Poor,
            }
        );
        assert_eq!(store.call_quality("c1", bob.id).await.unwrap(), None);
        let page = store
            .calls_quality(alice.id, &["c1", "nope"])
            .await
            .unwrap();
        assert_eq!(page.len(), 1);
        assert_eq!(page["c1"].verdict, Verdict::Poor);
        assert!(
            store
                .calls_quality(bob.id, &["c1"])
                .await
                .unwrap()
                .is_empty()
        );
        assert!(store.calls_quality(alice.id, &[]).await.unwrap().is_empty());
    }

    /// The report of a client whose ICE failed before any candidate pair was selected.
    fn never_connected() -> StatsReport {
        StatsReport {
            path: None,
            local_candidate: None,
            remote_candidate: None,
            relay_protocol: None,
            rtt_ms: None,
            jitter_ms: None,
            loss_in_pct: None,
            loss_out_pct: None,
            ice_state: Some("failed".into()),
            local_candidate_types: Some(vec!["host".into()]),
            remote_candidate_types: Some(vec!["host".into(), "srflx".into()]),
            relay_protocols: Some(vec![]),
            ..report(0.0, 0.0)
        }
    }

    #[tokio::test]
    async fn a_report_without_a_media_path_is_kept_but_has_no_quality_and_no_metrics() {
        let (_dir, store, alice, _bob) = store_with_answered_call(true).await;
        store
            .save_call_stats("c1", alice.id, 10, &never_connected())
            .await
            .expect("stored");
        assert_eq!(Quality::of(&never_connected()), None);
        assert_eq!(store.call_quality("c1", alice.id).await.unwrap(), None);
        assert!(
            store
                .calls_quality(alice.id, &["c1"])
                .await
                .unwrap()
                .is_empty()
        );
        let call = store.admin_call("c1").await.unwrap().expect("the call");
        assert_eq!(
            call.caller_report.expect("kept for the admin").report,
            never_connected(),
            "the ICE state and candidate lists are what `parley calls show` reads"
        );
        let settled = 1_000_000;
        for figure in [
            crate::admin::QualityFigure::RttMs,
            crate::admin::QualityFigure::LossPct,
        ] {
            let counts = store
                .quality_counts(figure, &[1.0, 100.0], settled, 0)
                .await
                .unwrap();
            assert_eq!(counts.count, 0, "{figure:?}: a report without figures");
        }
        assert!(store.quality_paths(settled, 0).await.unwrap().is_empty());

        // The next report, once a pair was selected, replaces it and has a verdict again.
        store
            .save_call_stats("c1", alice.id, 20, &report(40.0, 0.0))
            .await
            .unwrap();
        assert_eq!(
            store
                .call_quality("c1", alice.id)
                .await
                .unwrap()
                .map(|q| q.verdict),
            Some(Verdict::Good)
        );
        assert_eq!(
            store.quality_paths(settled, 0).await.unwrap(),
            vec![("relay".to_owned(), Some("tcp".to_owned()), 1)]
        );
    }
}
