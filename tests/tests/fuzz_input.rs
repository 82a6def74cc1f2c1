//! Property tests of what parses outside input without a network: the configuration from the
//! environment (`Config::from_vars`, `PeerOptions::from_vars`, `GroupSecret::from_vars`), the
//! peer authentication headers (`Authenticator::verify`) and the stream frame decoder
//! (`FrameDecoder`). Each property is "any input gets an answer, never a panic", plus a round
//! trip where there is one. A crash found here is kept as a named regression test below.

use std::collections::HashMap;

use bytes::Bytes;
use hedge::config::{
    ENV_DATABASE, ENV_GROUP, ENV_LEASE_MS, ENV_MEMBER_HEARTBEAT_MS, ENV_MEMBER_ID,
    ENV_MEMBER_TTL_MS, ENV_POD_IP, ENV_POD_NAME, ENV_POLL_INTERVAL_MS, ENV_RENEW_INTERVAL_MS,
    ENV_SAFETY_MARGIN_MS, ENV_SPANNER_EMULATOR_HOST,
};
use hedge::peer::auth::{ENV_GROUP_SECRET, ENV_GROUP_SECRET_FILE};
use hedge::peer::wire::{
    FrameDecoder, HEADER_GROUP, HEADER_SENDER, HEADER_SIGNATURE, HEADER_TIMESTAMP, encode_frame,
};
use hedge::peer::{Authenticator, ENV_PEER_ADVERTISE, ENV_PEER_PORT};
use hedge::{Config, GroupSecret, PeerOptions};
use http::{HeaderMap, HeaderValue};
use proptest::prelude::*;

/// Every variable the configuration reads.
const VARS: &[&str] = &[
    ENV_GROUP,
    ENV_DATABASE,
    ENV_MEMBER_ID,
    ENV_POD_NAME,
    ENV_POD_IP,
    ENV_LEASE_MS,
    ENV_RENEW_INTERVAL_MS,
    ENV_POLL_INTERVAL_MS,
    ENV_SAFETY_MARGIN_MS,
    ENV_MEMBER_HEARTBEAT_MS,
    ENV_MEMBER_TTL_MS,
    ENV_SPANNER_EMULATOR_HOST,
    ENV_PEER_PORT,
    ENV_PEER_ADVERTISE,
    ENV_GROUP_SECRET,
];

/// A value a person or a template might put in a variable: numbers (in and out of range, with
/// signs and units), paths, addresses, and arbitrary text.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<u64>().prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        (0u64..100_000).prop_map(|n| n.to_string()),
        (0u64..100_000).prop_map(|n| format!("{n}ms")),
        Just(String::new()),
        Just(" ".to_owned()),
        Just("projects/p/instances/i/databases/d".to_owned()),
        "projects/[a-z/]{0,20}".prop_map(|s| s),
        "[0-9.:]{0,24}".prop_map(|s| s),
        "\\PC{0,40}".prop_map(|s| s),
        proptest::collection::vec(any::<char>(), 0..64).prop_map(|c| c.into_iter().collect()),
    ]
}

fn vars() -> impl Strategy<Value = HashMap<String, String>> {
    proptest::collection::hash_map(
        proptest::sample::select(VARS).prop_map(str::to_owned),
        value(),
        0..VARS.len(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_environment_gets_a_configuration_or_a_clear_error(vars in vars()) {
        let get = |name: &str| vars.get(name).cloned();
        match Config::from_vars(get) {
            Ok(config) => {
                // A configuration it accepts is one it can run with.
                prop_assert!(!config.group.is_empty());
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
        if let Err(e) = PeerOptions::from_vars(get) {
            prop_assert!(!e.to_string().is_empty());
        }
        if let Err(e) = GroupSecret::from_vars(get) {
            prop_assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn any_headers_are_verified_or_refused(
        group in "\\PC{0,20}",
        sender in "\\PC{0,20}",
        timestamp in prop_oneof![any::<u64>().prop_map(|n| n.to_string()), "\\PC{0,24}"],
        signature in "[0-9a-f]{0,70}",
        method in "[A-Z]{0,8}",
        path in "/\\PC{0,30}",
        drop_one in 0usize..5,
    ) {
        let secret = GroupSecret::new("a secret of the group, long enough").unwrap();
        let auth = Authenticator::new("g", "receiver", &secret);
        let mut headers = HeaderMap::new();
        for (i, (name, value)) in [
            (HEADER_GROUP, &group),
            (HEADER_SENDER, &sender),
            (HEADER_TIMESTAMP, &timestamp),
            (HEADER_SIGNATURE, &signature),
        ]
        .into_iter()
        .enumerate()
        {
            if i != drop_one
                && let Ok(v) = HeaderValue::from_str(value)
            {
                headers.insert(name, v);
            }
        }
        // Random headers never carry a valid signature.
        prop_assert!(auth.verify(&headers, &method, &path).is_err());
    }

    #[test]
    fn a_signed_request_verifies_only_for_its_own_method_and_path(
        member in "[a-z0-9-]{1,30}",
        path in "/[a-z/]{0,30}",
        other in "/[a-z/]{0,30}",
    ) {
        let secret = GroupSecret::new("a secret of the group, long enough").unwrap();
        let sender = Authenticator::new("g", member.clone(), &secret);
        let receiver = Authenticator::new("g", "receiver", &secret);
        let credentials = sender.sign("POST", &path);
        let mut headers = HeaderMap::new();
        headers.insert(HEADER_GROUP, HeaderValue::from_static("g"));
        headers.insert(HEADER_SENDER, HeaderValue::from_str(&member).unwrap());
        headers.insert(HEADER_TIMESTAMP, HeaderValue::from_str(&credentials.timestamp).unwrap());
        headers.insert(HEADER_SIGNATURE, HeaderValue::from_str(&credentials.signature).unwrap());
        prop_assert_eq!(receiver.verify(&headers, "POST", &path).unwrap(), member);
        if other != path {
            prop_assert!(receiver.verify(&headers, "POST", &other).is_err());
        }
        prop_assert!(receiver.verify(&headers, "GET", &path).is_err());
    }

    #[test]
    fn any_bytes_decode_to_messages_or_an_error(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..16),
        limit in 0usize..1024,
    ) {
        let mut decoder = FrameDecoder::new(limit);
        let total: usize = chunks.iter().map(Vec::len).sum();
        let mut messages = 0usize;
        'chunks: for chunk in &chunks {
            decoder.push(chunk);
            // Each message takes at least its 4-byte header: the loop is bounded.
            for _ in 0..=total {
                match decoder.next_message() {
                    Ok(Some(m)) => {
                        prop_assert!(m.len() <= limit);
                        messages += 1;
                    }
                    Ok(None) => break,
                    Err(_) => break 'chunks,
                }
            }
        }
        prop_assert!(messages * 4 <= total);
        let _ = decoder.finish();
    }

    #[test]
    fn framed_messages_come_back_whole_however_the_body_is_cut(
        messages in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..8),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let body: Vec<u8> = messages
            .iter()
            .flat_map(|m| encode_frame(m).to_vec())
            .collect();
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(body.len() + 1)).collect();
        points.push(0);
        points.push(body.len());
        points.sort_unstable();
        let mut decoder = FrameDecoder::new(1024);
        let mut out: Vec<Bytes> = Vec::new();
        for pair in points.windows(2) {
            decoder.push(&body[pair[0]..pair[1]]);
            while let Some(m) = decoder.next_message().unwrap() {
                out.push(m);
            }
        }
        decoder.finish().unwrap();
        let expected: Vec<Bytes> = messages.into_iter().map(Bytes::from).collect();
        prop_assert_eq!(out, expected);
    }
}

/// The secret file variable pointing nowhere is an error that names the file, not a panic.
#[test]
fn a_missing_secret_file_is_a_clear_error() {
    let vars: HashMap<&str, &str> =
        HashMap::from([(ENV_GROUP_SECRET_FILE, "/nonexistent/hedge-secret")]);
    let error =
        GroupSecret::from_vars(|n| vars.get(n).map(|v| (*v).to_owned())).expect_err("no such file");
    assert!(
        error.to_string().contains("/nonexistent/hedge-secret"),
        "{error}"
    );
}
