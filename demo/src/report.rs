//! The report of `hedge-demo local`: what each step showed and how long it took, printed as
//! text at the end of the walkthrough, or as one JSON object with `--json` (keys documented in
//! docs/demo.md; CI checks them).

use std::collections::BTreeMap;

use serde::Serialize;

/// One step of the walkthrough.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    /// Its name (`election`, `membership`, `send`, ...).
    pub name: &'static str,
    /// How long it took, in milliseconds.
    pub ms: f64,
    /// What it showed, in one line.
    pub detail: String,
}

/// Everything the walkthrough showed.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// How many members the group had.
    pub members: usize,
    /// `memory`, `spanner` or `spanner-emulator`.
    pub store: &'static str,
    /// The lease, in milliseconds.
    pub lease_ms: u64,
    /// The first leader.
    pub leader: String,
    /// Its fencing token.
    pub token: u64,
    /// How many members believed they led at once when the first leader was found (must be 1).
    pub leaders_at_once: usize,
    /// Whether a value put by a follower was read back by another member.
    pub put_get_ok: bool,
    /// The member that sent to the leader.
    pub send_from: String,
    /// The leader's reply to the send.
    pub send_reply: String,
    /// How many members replied to the broadcast.
    pub broadcast_replies: usize,
    /// Every broadcast reply, by member.
    pub broadcast: BTreeMap<String, String>,
    /// The limit of the semaphore every member contended for.
    pub semaphore_limit: u32,
    /// The most permits of it held at once (at most `semaphore_limit`).
    pub semaphore_max_held: usize,
    /// How many permits were granted.
    pub semaphore_grants: usize,
    /// The leader that was crashed.
    pub crashed: String,
    /// From the crash until another member led, in milliseconds.
    pub failover_ms: f64,
    /// The leader after the failover.
    pub failover_leader: String,
    /// Its fencing token.
    pub failover_token: u64,
    /// The leader that was stopped gracefully.
    pub stopped: String,
    /// From the graceful stop until another member led, in milliseconds.
    pub handover_ms: f64,
    /// The leader after the handover.
    pub handover_leader: String,
    /// Its fencing token.
    pub handover_token: u64,
    /// The whole walkthrough, in milliseconds (starting the store and the members included).
    pub duration_ms: f64,
    /// Every step, in order.
    pub steps: Vec<Step>,
}

impl Report {
    /// The report as one line of JSON.
    pub fn to_json(&self) -> String {
        // Serializing plain strings and numbers cannot fail.
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The summary printed after the steps.
    pub fn summary(&self) -> String {
        let mut text = format!(
            "done in {}: one leader at a time, tokens increasing ({} < {} < {})\n",
            seconds(self.duration_ms),
            self.token,
            self.failover_token,
            self.handover_token
        );
        text.push_str("step durations:");
        for step in &self.steps {
            text.push_str(&format!(" {} {},", step.name, seconds(step.ms)));
        }
        text.pop();
        text
    }
}

/// `1234.5` ms as `1.23 s`, `12.3` as `12 ms`, `0.42` as `0.4 ms`.
pub fn seconds(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else if ms < 10.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_json_has_the_documented_keys() {
        let report = Report {
            members: 3,
            steps: vec![Step {
                name: "election",
                ms: 1.5,
                detail: "a leads".into(),
            }],
            ..Report::default()
        };
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        for key in [
            "members",
            "leader",
            "token",
            "put_get_ok",
            "broadcast_replies",
            "semaphore_limit",
            "semaphore_max_held",
            "failover_ms",
            "handover_ms",
            "duration_ms",
            "steps",
        ] {
            assert!(json.get(key).is_some(), "{key} missing from {json}");
        }
        assert_eq!(json["steps"][0]["name"], "election");
        assert_eq!(seconds(1234.5), "1.23 s");
        assert_eq!(seconds(12.3), "12 ms");
        assert_eq!(seconds(0.42), "0.4 ms");
    }
}
