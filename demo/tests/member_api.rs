//! The member's HTTP API, driven over HTTP on a real group: three `hedge-demo member`
//! processes on the Spanner emulator (the memory store cannot be shared between processes),
//! configured only through the `HEDGE_*` environment, as under a HedgeGroup.
//!
//! Each line of hedge's Go demo walkthrough (`curl localhost:8081/put -d "samplekey
//! samplevalue"`, `/get`, `/send`, `/broadcast`) gets its documented answer, requests go to
//! different members (a follower's put is read back on another member, a follower's send
//! reaches the leader), and every other route answers too. Bad requests get a 4xx with a
//! message, and the member keeps serving.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hedge::{DatabasePath, ElectionTimings};
use serde_json::Value;

const GROUP: &str = "api";
const LEASE: Duration = Duration::from_secs(2);
const SECRET: &str = "member-api-test-secret-0123456789";

/// One member process, what it printed, and its HTTP address once it printed it.
struct Member {
    id: String,
    child: Child,
    output: Arc<Mutex<Vec<String>>>,
}

impl Member {
    fn spawn(id: &str, db: &DatabasePath, emulator_host: &str) -> Self {
        let timings = ElectionTimings::from_lease(LEASE);
        let mut child = Command::new(env!("CARGO_BIN_EXE_hedge-demo"))
            .arg("member")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .env("SPANNER_EMULATOR_HOST", emulator_host)
            .env("HEDGE_GROUP", GROUP)
            .env("HEDGE_SPANNER_DATABASE", db.to_string())
            .env("POD_NAME", id)
            .env("POD_IP", "127.0.0.1")
            // Port 0 with POD_IP set: the member advertises POD_IP and the port it bound (the
            // members reaching each other below is what shows it).
            .env("HEDGE_PEER_PORT", "0")
            .env("HEDGE_GROUP_SECRET", SECRET)
            .env("HEDGE_DEMO_HTTP_ADDR", "127.0.0.1:0")
            .env("HEDGE_LEASE_MS", timings.lease.as_millis().to_string())
            .env(
                "HEDGE_RENEW_INTERVAL_MS",
                timings.renew_interval.as_millis().to_string(),
            )
            .env(
                "HEDGE_POLL_INTERVAL_MS",
                timings.poll_interval.as_millis().to_string(),
            )
            .env(
                "HEDGE_SAFETY_MARGIN_MS",
                timings.safety_margin.as_millis().to_string(),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start hedge-demo member");
        let output = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let output = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    output.lock().expect("output").push(line);
                }
            });
        }
        Self {
            id: id.to_owned(),
            child,
            output,
        }
    }

    fn output(&self) -> String {
        self.output.lock().expect("output").join("\n")
    }

    /// The HTTP address from the member's start line (`HTTP API on http://ADDR `).
    fn http_addr(&self, within: Duration) -> SocketAddr {
        let started = Instant::now();
        loop {
            let found = self.output.lock().expect("output").iter().find_map(|l| {
                let rest = l.split("HTTP API on http://").nth(1)?;
                rest.split_whitespace().next()?.parse().ok()
            });
            if let Some(addr) = found {
                return addr;
            }
            assert!(
                started.elapsed() < within,
                "{} printed no HTTP address:\n{}",
                self.id,
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: String,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {self:?}"))
    }
}

/// Sends a raw request (what curl sends: `-d` posts the body as a form) and reads the answer.
fn request(addr: SocketAddr, method: &str, path: &str, headers: &[&str], body: &[u8]) -> Answer {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    if !headers.iter().any(|h| h.starts_with("Content-Length")) {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).expect("write head");
    // The server may answer (413) before reading a body it refuses.
    let _ = stream.write_all(body);
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read answer");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    Answer {
        status,
        headers: head.to_owned(),
        body: body.trim_end().to_owned(),
    }
}

fn post(addr: SocketAddr, path: &str, body: &str) -> Answer {
    request(
        addr,
        "POST",
        path,
        &["Content-Type: application/x-www-form-urlencoded"],
        body.as_bytes(),
    )
}

fn get(addr: SocketAddr, path: &str) -> Answer {
    request(addr, "GET", path, &[], b"")
}

fn get_json(addr: SocketAddr, path: &str) -> Value {
    let answer = request(addr, "GET", path, &["Accept: application/json"], b"");
    assert_eq!(answer.status, 200, "{answer:?}");
    answer.json()
}

/// Waits until every member names the same leader and sees all three members.
fn wait_for_group(addrs: &BTreeMap<String, SocketAddr>, within: Duration) -> (String, u64) {
    let started = Instant::now();
    loop {
        let views: Vec<Option<(String, u64, usize)>> = addrs
            .values()
            .map(|addr| {
                let answer = request(*addr, "GET", "/members", &["Accept: application/json"], b"");
                let json = (answer.status == 200).then(|| answer.json())?;
                Some((
                    json["leader"].as_str()?.to_owned(),
                    json["token"].as_u64()?,
                    json["members"].as_array()?.len(),
                ))
            })
            .collect();
        if let Some(Some(first)) = views.first()
            && first.2 == addrs.len()
            && views.iter().all(|v| v.as_ref() == Some(first))
        {
            return (first.0.clone(), first.1);
        }
        assert!(started.elapsed() < within, "no settled group: {views:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_go_walkthrough_and_every_route_answer_as_documented() {
    let Some(emulator) = hedge_tests::emulator_or_skip(
        &hedge_tests::emulator::current_test_name("member_api"),
        false,
    )
    .await
    else {
        return;
    };
    let db = emulator
        .create_database_with_schema_default()
        .await
        .expect("database");
    let members: Vec<Member> = ["pod-a", "pod-b", "pod-c"]
        .into_iter()
        .map(|id| Member::spawn(id, &db, emulator.grpc_host()))
        .collect();
    let addrs: BTreeMap<String, SocketAddr> = members
        .iter()
        .map(|m| (m.id.clone(), m.http_addr(Duration::from_secs(30))))
        .collect();
    // The HTTP requests block; the emulator and the processes run without this runtime.
    tokio::task::spawn_blocking(move || walkthrough(&members, &addrs))
        .await
        .expect("the walkthrough");
}

fn walkthrough(members: &[Member], addrs: &BTreeMap<String, SocketAddr>) {
    let (leader, token) = wait_for_group(addrs, Duration::from_secs(30));
    let followers: Vec<&String> = addrs.keys().filter(|id| **id != leader).collect();
    let (f1, f2) = (followers[0].as_str(), followers[1].as_str());
    let (at_f1, at_f2, at_leader) = (addrs[f1], addrs[f2], addrs[&leader]);

    // curl localhost:8081/put -d "samplekey samplevalue", on a follower.
    let answer = post(at_f1, "/put", "samplekey samplevalue");
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(
        answer.body,
        format!("put: sender={f1}, key=samplekey, value=samplevalue")
    );
    assert!(answer.headers.contains("text/plain"), "{answer:?}");
    // curl localhost:8081/get -d "samplekey", on the other follower.
    let answer = post(at_f2, "/get", "samplekey");
    assert_eq!(
        answer.body,
        format!("get: sender={f2}, key=samplekey, value=samplevalue")
    );
    let answer = get(at_leader, "/get?key=samplekey");
    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(answer.body.ends_with("value=samplevalue"), "{answer:?}");
    // curl localhost:8081/send -d "hello-world": the leader's handler answers.
    let answer = post(at_f1, "/send", "hello-world");
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body, format!("sender={f1}, reply=hello hello-world"));
    let sent = request(
        at_f2,
        "POST",
        "/send",
        &["Accept: application/json"],
        b"hello-world",
    )
    .json();
    assert_eq!(sent["leader"], leader.as_str());
    assert_eq!(sent["token"], token);
    // curl localhost:8081/broadcast -d "hello-all": every member's handler answers.
    let answer = post(at_f2, "/broadcast", "hello-all");
    assert_eq!(answer.status, 200, "{answer:?}");
    for id in addrs.keys() {
        let line = format!("broadcast: sender={f2}, member={id}, reply=broadcast hello-all");
        assert!(answer.body.lines().any(|l| l == line), "{line}: {answer:?}");
    }
    // An empty body is the Go demo's "hello".
    assert_eq!(
        post(at_f1, "/send", "").body,
        format!("sender={f1}, reply=hello hello")
    );

    // The members, and the leader with its token, in both forms.
    let answer = get(at_f1, "/members");
    assert_eq!(answer.body.lines().count(), 3, "{answer:?}");
    assert!(
        answer
            .body
            .lines()
            .any(|l| l.starts_with(&leader) && l.ends_with("(leader)")),
        "{answer:?}"
    );
    assert_eq!(
        get(at_f1, "/leader").body,
        format!("leader={leader}, token={token}")
    );
    assert_eq!(
        get(at_leader, "/leader").body,
        format!("leader={leader}, token={token} (self)")
    );
    let json = get_json(at_leader, "/leader");
    assert_eq!(json["leader"], leader.as_str());
    assert_eq!(json["token"], token);
    assert_eq!(json["is_leader"], true);

    // A semaphore of limit 2 over three members.
    let answer = post(at_f1, "/semaphore/jobs/acquire?limit=2", "");
    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(
        answer
            .body
            .starts_with(&format!("acquired: sender={f1}, semaphore=jobs, limit=2")),
        "{answer:?}"
    );
    let second = request(
        at_f2,
        "POST",
        "/semaphore/jobs/acquire",
        &["Accept: application/json"],
        b"",
    );
    assert_eq!(second.status, 200, "{second:?}");
    let second = second.json();
    assert_eq!(second["limit"], 2);
    let full = post(at_leader, "/semaphore/jobs/acquire?wait_ms=0", "");
    assert_eq!(full.status, 409, "{full:?}");
    assert!(full.body.contains("is full (limit 2)"), "{full:?}");
    let released = post(at_f1, "/semaphore/jobs/release", "");
    assert_eq!(released.status, 200, "{released:?}");
    assert!(released.body.starts_with("released: "), "{released:?}");
    let third = request(
        at_leader,
        "POST",
        "/semaphore/jobs/acquire?wait_ms=5000",
        &["Accept: application/json"],
        b"",
    );
    assert_eq!(third.status, 200, "{third:?}");
    let third = third.json();
    assert!(
        third["token"].as_u64() > second["token"].as_u64(),
        "{third} after {second}"
    );
    // A release naming a permit releases that one.
    let permit = second["permit"].as_str().expect("permit id");
    assert_eq!(post(at_f2, "/semaphore/jobs/release", permit).status, 200);

    // Metrics and health.
    let metrics = get(at_f1, "/metrics");
    assert_eq!(metrics.status, 200);
    assert!(metrics.body.contains("hedge_"), "{metrics:?}");
    assert_eq!(get(at_f1, "/healthz").body, "ok");
    assert!(get(at_f1, "/").body.contains("/semaphore/<name>/acquire"));

    bad_requests(at_f1);
    for member in members {
        assert!(
            !member.output().contains("panicked"),
            "{}:\n{}",
            member.id,
            member.output()
        );
    }
}

/// Every bad request gets a 4xx with a message (in both forms), and the member keeps serving.
fn bad_requests(at: SocketAddr) {
    let cases: Vec<(&str, Answer, u16, &str)> = vec![
        (
            "missing put body",
            post(at, "/put", ""),
            400,
            "<key> <value>",
        ),
        (
            "put without a value",
            post(at, "/put", "samplekey"),
            400,
            "<key> <value>",
        ),
        ("missing get key", post(at, "/get", ""), 400, "name the key"),
        (
            "unknown key",
            post(at, "/get", "no-such-key"),
            404,
            "no value for key",
        ),
        (
            "unknown route",
            get(at, "/nope"),
            404,
            "unknown route /nope",
        ),
        (
            "wrong method",
            get(at, "/put"),
            405,
            "/put accepts POST only",
        ),
        (
            "unknown semaphore",
            post(at, "/semaphore/no-such/acquire", ""),
            404,
            "does not exist",
        ),
        (
            "release of an unknown semaphore",
            post(at, "/semaphore/no-such/release", ""),
            404,
            "does not exist",
        ),
        (
            "release without a permit",
            post(at, "/semaphore/jobs/release", ""),
            409,
            "holds no permit",
        ),
        (
            "limit mismatch",
            post(at, "/semaphore/jobs/acquire?limit=3", ""),
            409,
            "exists with limit 2",
        ),
        (
            "bad query",
            post(at, "/semaphore/jobs/acquire?limit=lots", ""),
            400,
            "not a number",
        ),
        (
            "oversized body",
            request(
                at,
                "POST",
                "/put",
                &["Content-Length: 1000000"],
                &[b'x'; 1024],
            ),
            413,
            "over the limit",
        ),
        (
            "non-UTF-8 body",
            request(at, "POST", "/send", &[], &[0xff, 0xfe]),
            400,
            "not UTF-8",
        ),
    ];
    for (what, answer, status, message) in cases {
        assert_eq!(answer.status, status, "{what}: {answer:?}");
        assert!(answer.body.starts_with("error: "), "{what}: {answer:?}");
        assert!(answer.body.contains(message), "{what}: {answer:?}");
    }
    let json = request(at, "GET", "/nope", &["Accept: application/json"], b"");
    assert_eq!(json.status, 404);
    assert_eq!(json.json()["status"], 404);
    assert!(get(at, "/put").headers.contains("allow: POST"));
    // Still serving.
    assert_eq!(get(at, "/healthz").body, "ok");
}
