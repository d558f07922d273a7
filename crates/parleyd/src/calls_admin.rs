//! `parley calls list` and `parley calls show`: the call log for the admin, with both parties'
//! connection path and quality, and for a call that went wrong a diagnosis in plain words.
//!
//! The diagnosis is one pure function, [`diagnose`], of the stored call, its two reports and
//! what the relay offers (from the config); everything else here reads and prints.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::bail;
use parley_config::Config;
use parley_store::Store;
use parley_store::admin::{AdminCall, AdminCallQuery, PartyReport};
use parley_store::quality::{Quality, StatsReport, Verdict};

use crate::cli::CallsCommand;

pub async fn run(config: &Config, command: CallsCommand) -> anyhow::Result<()> {
    let path = config.storage.database_path();
    // Listing must not create an empty database where the admin expected the daemon's.
    if !path.exists() {
        bail!(
            "no call log at {}: check storage.data_dir (or --config), or start the daemon once",
            path.display()
        );
    }
    let store = Store::open(&path).await?;
    let relay = RelayFacts::from_config(config);
    let mut out = String::new();
    let result = execute(&store, &relay, command, &mut out).await;
    store.close().await;
    print!("{out}");
    result
}

/// Runs one command, writing what it prints to `out` (so that tests read it as text).
pub async fn execute(
    store: &Store,
    relay: &RelayFacts,
    command: CallsCommand,
    out: &mut String,
) -> anyhow::Result<()> {
    match command {
        CallsCommand::List {
            since,
            poor,
            user,
            limit,
        } => {
            let user_id = match user {
                Some(name) => match store.user_by_username(&name).await? {
                    Some(user) => Some(user.id),
                    None => bail!("no user named {name:?}"),
                },
                None => None,
            };
            let since = since.map(|age| {
                parley_store::unix_millis_now()
                    .saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX))
            });
            let calls = list(store, since, user_id, poor, limit).await?;
            print_list(&calls, out);
        }
        CallsCommand::Show { id } => match store.admin_call(&id).await? {
            Some(call) => print_call(&call, relay, out),
            None => bail!("no call with id {id:?}"),
        },
    }
    Ok(())
}

async fn list(
    store: &Store,
    since: Option<i64>,
    user: Option<i64>,
    poor_only: bool,
    limit: usize,
) -> anyhow::Result<Vec<AdminCall>> {
    let mut query = AdminCallQuery {
        since,
        user,
        page: if poor_only {
            500
        } else {
            limit.clamp(1, 1000) as u32
        },
        before: None,
    };
    let mut found = Vec::new();
    loop {
        let (page, next) = store.admin_calls(&query).await?;
        found.extend(
            page.into_iter()
                .filter(|call| !poor_only || went_wrong(call)),
        );
        match next {
            Some(seq) if found.len() < limit => query.before = Some(seq),
            _ => break,
        }
    }
    found.truncate(limit);
    Ok(found)
}

/// What the relay offers clients, from the config: what a missing relay candidate can be
/// blamed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayFacts {
    pub enabled: bool,
    pub udp: bool,
    pub tcp: bool,
    pub tls: bool,
}

impl RelayFacts {
    pub fn from_config(config: &Config) -> RelayFacts {
        let turn = &config.turn;
        // The HTTP(S) port carries TURN over TCP, and over TLS when it speaks TLS, with
        // `turn.on_https_port` (issue 11).
        let front_door = turn.enabled && turn.on_https_port;
        RelayFacts {
            enabled: turn.enabled,
            udp: turn.enabled && turn.udp,
            tcp: (turn.enabled && turn.tcp) || front_door,
            // A certificate is always available (configured or generated), so an address is
            // all a separate TURN-over-TLS listener needs.
            tls: (turn.enabled && !turn.tls_listen.trim().is_empty())
                || (front_door && config.tls.enabled),
        }
    }
}

/// The call went wrong: a poor verdict on either side, ICE failed or disconnected in a
/// party's last report, a party's media never connected (its last report has no path), or a
/// device lost its connection to the server. `--poor` lists these.
pub fn went_wrong(call: &AdminCall) -> bool {
    call.reason.as_deref() == Some("connection_lost")
        || [&call.caller_report, &call.callee_report]
            .into_iter()
            .flatten()
            .any(|party| {
                party_verdict(&party.report) == Some(Verdict::Poor)
                    || party.report.path.is_none()
                    || matches!(
                        party.report.ice_state.as_deref(),
                        Some("failed" | "disconnected")
                    )
            })
}

/// `None` for a report without a media path: nothing was measured.
fn party_verdict(report: &StatsReport) -> Option<Verdict> {
    Quality::of(report).map(|quality| quality.verdict)
}

fn verdict_word(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Good => "good",
        Verdict::Fair => "fair",
        Verdict::Poor => "poor",
    }
}

/// The path in words: "direct", "relayed over TLS", "relayed", or "no media path" when ICE
/// never selected a candidate pair.
pub fn path_in_words(report: &StatsReport) -> String {
    match (report.path.as_deref(), report.relay_protocol.as_deref()) {
        (Some("relay"), Some(protocol)) => format!("relayed over {}", protocol.to_uppercase()),
        (Some("relay"), None) => "relayed".into(),
        (Some(_), _) => "direct".into(),
        (None, _) => "no media path".into(),
    }
}

/// "a", "a and b", "a, b and c".
fn join_and(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// The party's last report says ICE failed and it gathered no relay candidate: the failure
/// is on its side, whatever the other side had.
fn failed_without_relay(report: &StatsReport) -> bool {
    report.ice_state.as_deref() == Some("failed")
        && report
            .local_candidate_types
            .as_ref()
            .is_some_and(|types| !types.iter().any(|t| t == "relay"))
}

/// Why a party's ICE failed, from the candidates it gathered, what the relay offers, and
/// `other`: the other party's role when that party had no relay candidate (then no pair could
/// form, however good this side's candidates).
fn ice_failure(report: &StatsReport, relay: &RelayFacts, other: Option<&str>) -> String {
    let Some(local) = &report.local_candidate_types else {
        return "failed to connect (its client did not say which candidates it gathered)".into();
    };
    let has = |kind: &str| local.iter().any(|k| k == kind);
    if !has("relay") {
        if !relay.enabled {
            return "had no relay candidate; the embedded relay is disabled (turn.enabled = \
                    false) and a direct path did not work"
                .into();
        }
        let mut because = Vec::new();
        if !relay.udp {
            because.push("there is no STUN/TURN over UDP (turn.udp = false)".to_owned());
        } else if !has("srflx") {
            // A server-reflexive candidate needs one STUN answer over UDP.
            because.push("its network blocks UDP".to_owned());
        } else {
            because.push(
                "TURN over UDP refused it (see the relay's lines in the journal: \
                          credentials or quota)"
                    .to_owned(),
            );
        }
        for (name, key, offered) in [
            ("TCP", "turn.tcp or turn.on_https_port", relay.tcp),
            (
                "TLS",
                "tls.enabled with turn.on_https_port, or turn.tls_listen",
                relay.tls,
            ),
        ] {
            because.push(if offered {
                format!("TURN over {name} did not get through")
            } else {
                format!("TURN/{name} is not configured ({key})")
            });
        }
        return format!("had no relay candidate; {}", join_and(&because));
    }
    let over = match report.relay_protocols.as_deref() {
        Some(protocols) if !protocols.is_empty() => format!(
            " over {}",
            join_and(
                &protocols
                    .iter()
                    .map(|p| p.to_uppercase())
                    .collect::<Vec<_>>()
            )
        ),
        _ => String::new(),
    };
    if let Some(other) = other {
        return format!(
            "had a relay candidate{over}, but the {other}'s client had none to pair it with \
             (see the {other}'s line)"
        );
    }
    if report
        .remote_candidate_types
        .as_ref()
        .is_some_and(|remote| remote.is_empty())
    {
        return format!(
            "had a relay candidate{over} but received no candidate from the other side (the \
             other client gathered none, or its candidates were not delivered)"
        );
    }
    format!(
        "had a relay candidate{over} yet no pair connected: the address relayed candidates \
         carry (turn.relay_address) may not be reachable from outside, or a firewall blocks \
         the relay ports (turn.relay_ports)"
    )
}

/// Why a party's quality was poor: which of the verdict's limits it passed.
fn poor_because(report: &StatsReport, quality: &Quality) -> String {
    use parley_store::quality::{POOR_OVER_JITTER_MS, POOR_OVER_LOSS_PCT, POOR_OVER_RTT_MS};
    let mut why = Vec::new();
    if quality.loss_pct > POOR_OVER_LOSS_PCT {
        why.push(format!("{} loss", percent(quality.loss_pct)));
    }
    if quality.rtt_ms > POOR_OVER_RTT_MS {
        why.push(format!("{:.0} ms round trip", quality.rtt_ms));
    }
    if quality.jitter_ms > POOR_OVER_JITTER_MS {
        why.push(format!("{:.0} ms jitter", quality.jitter_ms));
    }
    let mut text = format!(
        "poor connection, {}: {}",
        path_in_words(report),
        join_and(&why)
    );
    if matches!(report.relay_protocol.as_deref(), Some("tcp" | "tls")) {
        text.push_str(
            " (relayed over TCP: its network probably blocks UDP, and a lost packet on TCP \
             delays every one after it)",
        );
    }
    text
}

fn percent(value: f64) -> String {
    if value.fract() == 0.0 {
        format!("{value:.0}%")
    } else {
        format!("{value:.1}%")
    }
}

/// The diagnosis of a call, in plain words, one finding per line; empty when nothing went
/// wrong that the log can tell. Pure: the call as stored and what the relay offers.
pub fn diagnose(call: &AdminCall, relay: &RelayFacts) -> Vec<String> {
    let mut findings = Vec::new();
    let lost = call.reason.as_deref() == Some("connection_lost");
    if call.answered_at.is_none() {
        if lost {
            findings.push(
                "a device lost its connection to the server while the call rang (network \
                 change, sleep or a closed tab)"
                    .to_owned(),
            );
        }
        return findings;
    }
    let parties = [
        ("caller", &call.caller, &call.caller_report),
        ("callee", &call.callee, &call.callee_report),
    ];
    let mut ice_failed = false;
    for (index, (role, party, report)) in parties.into_iter().enumerate() {
        let (other_role, _, other_report) = parties[1 - index];
        let other_blocked = other_report
            .as_ref()
            .is_some_and(|other| failed_without_relay(&other.report));
        let Some(PartyReport { report, .. }) = report else {
            continue;
        };
        let who = format!("{role}'s ({})", party.username);
        match report.ice_state.as_deref() {
            Some("failed") => {
                ice_failed = true;
                findings.push(format!(
                    "ICE failed: {who} client {}",
                    ice_failure(report, relay, other_blocked.then_some(other_role))
                ));
            }
            Some("disconnected") if report.path.is_some() => {
                ice_failed = true;
                findings.push(format!(
                    "media interrupted: the {who} last report says ICE disconnected ({})",
                    path_in_words(report)
                ));
            }
            // The call was answered but this side's media never started: its last report came
            // before ICE selected a pair (or after it gave up without saying failed).
            state if report.path.is_none() => {
                ice_failed = true;
                findings.push(format!(
                    "media never connected: the {who} last report says ICE {} with no candidate \
                     pair selected; it gathered {}",
                    state.unwrap_or("(state not reported)"),
                    match report.local_candidate_types.as_deref() {
                        None => "candidates it did not list".to_owned(),
                        Some([]) => "no candidate".to_owned(),
                        Some(types) => join_and(types),
                    }
                ));
            }
            _ => {}
        }
        if let Some(quality) = Quality::of(report)
            && quality.verdict == Verdict::Poor
        {
            findings.push(format!(
                "{role} ({}): {}",
                party.username,
                poor_because(report, &quality)
            ));
        }
    }
    if lost && !ice_failed {
        findings.push(
            "a device lost its connection to the server (network change, sleep or a closed \
             tab) and did not come back within the reconnect grace"
                .to_owned(),
        );
    }
    let missing: Vec<String> = parties
        .iter()
        .filter(|(_, _, report)| report.is_none())
        .map(|(role, party, _)| format!("the {role}'s ({})", party.username))
        .collect();
    if missing.len() == 2 {
        findings.push(
            "neither client sent a quality report (an older client, or the call ended before \
             its first report)"
                .to_owned(),
        );
    } else if !missing.is_empty() && !findings.is_empty() {
        findings.push(format!("{} client sent no quality report", missing[0]));
    }
    findings
}

/// `2m05s`, `1h02m`, `45s`.
fn duration(call: &AdminCall) -> String {
    let (Some(start), Some(end)) = (call.answered_at, call.ended_at) else {
        return "-".into();
    };
    let secs = (end - start).max(0) / 1000;
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

fn outcome(call: &AdminCall) -> String {
    match (&call.status, &call.reason) {
        (Some(status), Some(reason)) => format!("{status} ({reason})"),
        (Some(status), None) => status.clone(),
        (None, _) => call.state.clone(),
    }
}

/// A party's side in one column: `relay/tls poor`, `direct good`, `-` without a report.
fn side(report: &Option<PartyReport>) -> String {
    match report {
        None => "-".into(),
        Some(PartyReport { report, .. }) => {
            let verdict = party_verdict(report).map_or("-", verdict_word);
            let path = match (report.path.as_deref(), report.relay_protocol.as_deref()) {
                (Some("relay"), Some(protocol)) => format!("relay/{protocol}"),
                (Some(path), _) => path.to_owned(),
                (None, _) => "no-pair".to_owned(),
            };
            let failed = match report.ice_state.as_deref() {
                Some(state @ ("failed" | "disconnected")) => format!(" ice:{state}"),
                _ => String::new(),
            };
            format!("{path} {verdict}{failed}")
        }
    }
}

/// How many characters of the id `list` prints (`show` takes that prefix).
pub const SHORT_ID: usize = 12;

fn print_list(calls: &[AdminCall], out: &mut String) {
    let _ = writeln!(
        out,
        "{:<12}  {:<20}  {:>8}  {:<27}  {:<5}  {:<28}  {:<26}  CALLEE SIDE",
        "ID", "STARTED (UTC)", "DURATION", "CALLER -> CALLEE", "MEDIA", "OUTCOME", "CALLER SIDE"
    );
    for call in calls {
        let short: String = call.id.chars().take(SHORT_ID).collect();
        let started: String = parley_store::rfc3339(call.created_at)
            .chars()
            .take(19)
            .collect();
        let _ = writeln!(
            out,
            "{short:<12}  {started:<20}  {:>8}  {:<27}  {:<5}  {:<28}  {:<26}  {}",
            duration(call),
            format!("{} -> {}", call.caller.username, call.callee.username),
            call.media,
            outcome(call),
            side(&call.caller_report),
            side(&call.callee_report),
        );
    }
    if calls.is_empty() {
        let _ = writeln!(out, "(no calls)");
    }
}

fn print_party(role: &str, call: &AdminCall, out: &mut String) {
    let (party, report) = if role == "caller" {
        (&call.caller, &call.caller_report)
    } else {
        (&call.callee, &call.callee_report)
    };
    let _ = writeln!(out, "{role}: {} ({})", party.username, party.display_name);
    let Some(PartyReport {
        reported_at,
        report: r,
    }) = report
    else {
        let _ = writeln!(out, "  no quality report");
        return;
    };
    let list = |items: &Option<Vec<String>>| match items {
        None => "not reported".to_owned(),
        Some(items) if items.is_empty() => "none".to_owned(),
        Some(items) => items.join(", "),
    };
    let opt = |value: Option<f64>, unit: &str| match value {
        Some(v) => format!("{v:.0} {unit}"),
        None => "-".into(),
    };
    let _ = writeln!(
        out,
        "  path: {} (local {}, remote {})",
        path_in_words(r),
        r.local_candidate.as_deref().unwrap_or("?"),
        r.remote_candidate.as_deref().unwrap_or("?")
    );
    match (
        party_verdict(r),
        r.rtt_ms,
        r.loss_in_pct,
        r.loss_out_pct,
        r.jitter_ms,
    ) {
        (Some(verdict), Some(rtt), Some(loss_in), Some(loss_out), Some(jitter)) => {
            let _ = writeln!(
                out,
                "  quality: {}: round trip {rtt:.0} ms, loss in {} / out {}, jitter {jitter:.0} ms",
                verdict_word(verdict),
                percent(loss_in),
                percent(loss_out),
            );
        }
        _ => {
            let _ = writeln!(
                out,
                "  quality: not measured (no candidate pair was selected)"
            );
        }
    }
    let _ = writeln!(
        out,
        "  bitrate in {} / out {}, audio concealed {}, video {}",
        opt(r.bitrate_in_kbps, "kbit/s"),
        opt(r.bitrate_out_kbps, "kbit/s"),
        r.audio_concealed_pct
            .map(percent)
            .unwrap_or_else(|| "-".into()),
        match (r.video_width, r.video_height, r.video_freezes) {
            (Some(w), Some(h), freezes) => format!("{w}x{h}, {} freezes", freezes.unwrap_or(0)),
            _ => "-".into(),
        }
    );
    let _ = writeln!(
        out,
        "  ICE state: {}; gathered: {}; remote sent: {}; relay over: {}; network: {}",
        r.ice_state.as_deref().unwrap_or("not reported"),
        list(&r.local_candidate_types),
        list(&r.remote_candidate_types),
        list(&r.relay_protocols),
        r.network_type.as_deref().unwrap_or("-")
    );
    let _ = writeln!(out, "  reported at {}", parley_store::rfc3339(*reported_at));
}

fn print_call(call: &AdminCall, relay: &RelayFacts, out: &mut String) {
    let _ = writeln!(out, "call {}", call.id);
    let _ = writeln!(
        out,
        "{} call, {}, started {}",
        call.media,
        outcome(call),
        parley_store::rfc3339(call.created_at)
    );
    let _ = writeln!(
        out,
        "answered: {}; ended: {}; duration {}",
        call.answered_at
            .map(parley_store::rfc3339)
            .unwrap_or_else(|| "no".into()),
        call.ended_at
            .map(parley_store::rfc3339)
            .unwrap_or_else(|| "not yet".into()),
        duration(call)
    );
    print_party("caller", call, out);
    print_party("callee", call, out);
    let findings = diagnose(call, relay);
    if findings.is_empty() {
        let _ = writeln!(out, "diagnosis: nothing went wrong that the log shows");
    } else {
        let _ = writeln!(out, "diagnosis:");
        for finding in findings {
            let _ = writeln!(out, "  - {finding}");
        }
    }
}

/// `--since`: a whole number and a unit, `s`, `m`, `h`, `d` or `w`.
pub fn parse_age(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?}: add a unit: s, m, h, d or w (e.g. 1d)"))?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a number and a unit, e.g. 1d"))?;
    let unit_secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(format!("{text:?}: the unit is one of s, m, h, d, w")),
    };
    number
        .checked_mul(unit_secs)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{text:?}: too long"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use parley_store::calls::CallParty;

    const ALL: RelayFacts = RelayFacts {
        enabled: true,
        udp: true,
        tcp: true,
        tls: true,
    };
    const NO_TLS: RelayFacts = RelayFacts { tls: false, ..ALL };

    fn report(path: &str, protocol: Option<&str>) -> StatsReport {
        StatsReport {
            path: Some(path.into()),
            local_candidate: Some(if path == "relay" { "relay" } else { "host" }.into()),
            remote_candidate: Some("host".into()),
            relay_protocol: protocol.map(str::to_owned),
            rtt_ms: Some(40.0),
            jitter_ms: Some(3.0),
            loss_in_pct: Some(0.0),
            loss_out_pct: Some(0.0),
            bitrate_in_kbps: None,
            bitrate_out_kbps: None,
            audio_concealed_pct: None,
            video_freezes: None,
            video_width: None,
            video_height: None,
            network_type: None,
            ice_state: Some("connected".into()),
            local_candidate_types: Some(vec!["host".into(), "srflx".into(), "relay".into()]),
            remote_candidate_types: Some(vec!["host".into()]),
            relay_protocols: Some(vec!["udp".into()]),
        }
    }

    fn call(reason: &str, caller: Option<StatsReport>, callee: Option<StatsReport>) -> AdminCall {
        let party = |id, name: &str| CallParty {
            id,
            username: name.into(),
            display_name: name.into(),
        };
        let wrap = |report: Option<StatsReport>| {
            report.map(|report| PartyReport {
                reported_at: 5_000,
                report,
            })
        };
        AdminCall {
            id: "0123456789abcdef".into(),
            caller: party(1, "alice"),
            callee: party(2, "bob"),
            media: "audio".into(),
            state: "ended".into(),
            status: Some("completed".into()),
            reason: Some(reason.into()),
            ended_by: None,
            created_at: 1_000,
            answered_at: Some(2_000),
            ended_at: Some(62_000),
            caller_report: wrap(caller),
            callee_report: wrap(callee),
        }
    }

    #[test]
    fn a_good_call_has_nothing_to_say() {
        let good = call(
            "hangup",
            Some(report("direct", None)),
            Some(report("direct", None)),
        );
        assert!(diagnose(&good, &ALL).is_empty());
        assert!(!went_wrong(&good));
    }

    #[test]
    fn ice_failed_without_any_candidate_but_host_blames_blocked_udp_and_missing_tls() {
        let mut callee = report("direct", None);
        callee.ice_state = Some("failed".into());
        callee.local_candidate_types = Some(vec!["host".into()]);
        callee.relay_protocols = Some(vec![]);
        let failed = call(
            "hangup",
            Some(report("relay", Some("udp"))),
            Some(callee.clone()),
        );
        assert_eq!(
            diagnose(&failed, &NO_TLS),
            vec![
                "ICE failed: callee's (bob) client had no relay candidate; its network blocks \
                 UDP, TURN over TCP did not get through and TURN/TLS is not configured \
                 (tls.enabled with turn.on_https_port, or turn.tls_listen)"
            ]
        );
        assert!(went_wrong(&failed));
        let mut caller = report("relay", Some("udp"));
        caller.ice_state = Some("failed".into());
        let both = call("hangup", Some(caller), Some(callee.clone()));
        assert_eq!(
            diagnose(&both, &NO_TLS)[0],
            "ICE failed: caller's (alice) client had a relay candidate over UDP, but the \
             callee's client had none to pair it with (see the callee's line)",
            "the side that had a relay is not blamed on the relay's address"
        );
        assert!(
            diagnose(&failed, &ALL)[0].ends_with("and TURN over TLS did not get through"),
            "with TLS offered, TLS did not get through either"
        );
        let disabled = RelayFacts {
            enabled: false,
            udp: false,
            tcp: false,
            tls: false,
        };
        assert!(diagnose(&failed, &disabled)[0].contains("the embedded relay is disabled"));
    }

    #[test]
    fn ice_failed_with_a_relay_candidate_points_at_the_relay_address_and_ports() {
        let mut caller = report("relay", Some("tls"));
        caller.ice_state = Some("failed".into());
        caller.relay_protocols = Some(vec!["tcp".into(), "tls".into()]);
        let findings = diagnose(&call("hangup", Some(caller.clone()), None), &ALL);
        assert_eq!(findings.len(), 2, "{findings:?}");
        assert!(
            findings[0].starts_with(
                "ICE failed: caller's (alice) client had a relay candidate over TCP and TLS \
                 yet no pair connected"
            ),
            "{findings:?}"
        );
        assert!(findings[0].contains("turn.relay_address"));
        assert_eq!(
            findings[1],
            "the callee's (bob) client sent no quality report"
        );
        caller.remote_candidate_types = Some(vec![]);
        assert!(
            diagnose(&call("hangup", Some(caller), None), &ALL)[0]
                .contains("received no candidate from the other side")
        );
    }

    /// The report of a browser whose ICE never selected a candidate pair: no path, no figures,
    /// only its ICE state and the candidates it gathered.
    fn never_connected(ice_state: &str, gathered: &[&str]) -> StatsReport {
        StatsReport {
            path: None,
            local_candidate: None,
            remote_candidate: None,
            relay_protocol: None,
            rtt_ms: None,
            jitter_ms: None,
            loss_in_pct: None,
            loss_out_pct: None,
            ice_state: Some(ice_state.into()),
            local_candidate_types: Some(gathered.iter().map(|t| (*t).to_owned()).collect()),
            remote_candidate_types: Some(vec!["host".into(), "srflx".into(), "relay".into()]),
            relay_protocols: Some(vec![]),
            ..report("direct", None)
        }
    }

    #[test]
    fn a_never_connected_report_is_diagnosed_from_its_ice_state_and_candidates() {
        let failed = call(
            "hangup",
            Some(report("relay", Some("udp"))),
            Some(never_connected("failed", &["host"])),
        );
        assert_eq!(
            diagnose(&failed, &NO_TLS),
            vec![
                "ICE failed: callee's (bob) client had no relay candidate; its network blocks \
                 UDP, TURN over TCP did not get through and TURN/TLS is not configured \
                 (tls.enabled with turn.on_https_port, or turn.tls_listen)"
            ],
            "no verdict to give, and no other finding than the failure"
        );
        assert!(went_wrong(&failed));
        let mut out = String::new();
        print_call(&failed, &NO_TLS, &mut out);
        assert!(
            out.contains("  path: no media path (local ?, remote ?)"),
            "{out}"
        );
        assert!(
            out.contains("  quality: not measured (no candidate pair was selected)"),
            "{out}"
        );
        assert!(
            out.contains("  ICE state: failed; gathered: host; remote sent: host, srflx, relay"),
            "{out}"
        );
        assert!(
            out.contains("  - ICE failed: callee's (bob) client had no relay"),
            "{out}"
        );
        let mut out = String::new();
        print_list(std::slice::from_ref(&failed), &mut out);
        let line = out.lines().nth(1).expect("one row");
        assert!(
            line.ends_with("relay/udp good              no-pair - ice:failed"),
            "{line}"
        );
    }

    #[test]
    fn a_report_still_checking_when_the_call_ended_says_media_never_connected() {
        let checking = call(
            "hangup",
            Some(never_connected("checking", &["host", "srflx"])),
            None,
        );
        assert_eq!(
            diagnose(&checking, &ALL),
            vec![
                "media never connected: the caller's (alice) last report says ICE checking with \
                 no candidate pair selected; it gathered host and srflx",
                "the callee's (bob) client sent no quality report"
            ]
        );
        assert!(went_wrong(&checking));
        let mut nothing = never_connected("new", &[]);
        nothing.local_candidate_types = Some(vec![]);
        assert!(
            diagnose(&call("hangup", Some(nothing), None), &ALL)[0]
                .ends_with("ICE new with no candidate pair selected; it gathered no candidate")
        );
    }

    #[test]
    fn an_older_client_without_candidate_lists_is_said_so() {
        let mut caller = report("direct", None);
        caller.ice_state = Some("failed".into());
        caller.local_candidate_types = None;
        assert!(
            diagnose(&call("hangup", Some(caller), None), &ALL)[0]
                .contains("did not say which candidates it gathered")
        );
    }

    #[test]
    fn a_poor_call_names_the_limits_it_passed_and_the_tcp_relay() {
        let mut callee = report("relay", Some("tls"));
        callee.loss_in_pct = Some(8.0);
        callee.rtt_ms = Some(700.0);
        let findings = diagnose(
            &call("hangup", Some(report("direct", None)), Some(callee)),
            &ALL,
        );
        assert_eq!(findings.len(), 1, "{findings:?}");
        assert!(
            findings[0].starts_with(
                "callee (bob): poor connection, relayed over TLS: 8% loss and 700 ms round trip"
            ),
            "{findings:?}"
        );
        assert!(findings[0].contains("blocks UDP"));
    }

    #[test]
    fn a_lost_connection_and_missing_reports_are_reported() {
        let lost = call("connection_lost", None, None);
        assert_eq!(
            diagnose(&lost, &ALL),
            vec![
                "a device lost its connection to the server (network change, sleep or a closed \
                 tab) and did not come back within the reconnect grace",
                "neither client sent a quality report (an older client, or the call ended \
                 before its first report)"
            ]
        );
        assert!(went_wrong(&lost));
        let mut unanswered = call("no_answer", None, None);
        unanswered.answered_at = None;
        unanswered.status = Some("missed".into());
        assert!(
            diagnose(&unanswered, &ALL).is_empty(),
            "a call nobody answered did not fail"
        );
    }

    #[test]
    fn list_columns_show_path_verdict_and_ice_state() {
        let mut callee = report("relay", Some("tcp"));
        callee.ice_state = Some("failed".into());
        callee.loss_out_pct = Some(20.0);
        let mut out = String::new();
        print_list(&[call("hangup", None, Some(callee))], &mut out);
        let line = out.lines().nth(1).expect("one row");
        assert!(line.starts_with("0123456789ab  "), "{line}");
        assert!(line.contains("alice -> bob"), "{line}");
        assert!(line.contains("1m00s"), "{line}");
        assert!(line.contains("completed (hangup)"), "{line}");
        assert!(line.ends_with("relay/tcp poor ice:failed"), "{line}");
    }

    #[test]
    fn ages_take_a_unit() {
        assert_eq!(parse_age("90m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_age("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_age("2w"), Ok(Duration::from_secs(14 * 86_400)));
        assert!(parse_age("1").unwrap_err().contains("add a unit"));
        assert!(
            parse_age("1y")
                .unwrap_err()
                .contains("one of s, m, h, d, w")
        );
        assert!(parse_age("d").is_err());
        assert!(parse_age("99999999999999999999d").is_err());
    }
}
