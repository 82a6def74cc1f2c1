//! The `hedge-operator` binary as a process: the `crd` subcommand, and a clear message and exit
//! code when the CRD is not installed (against a stand-in API server that knows no HedgeGroups).

use std::process::Command;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_hedge-operator");

#[test]
fn the_crd_subcommand_prints_the_committed_crd() {
    let out = Command::new(BIN).arg("crd").output().unwrap();
    assert!(out.status.success());
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../crds/hedgegroup.yaml"
    ))
    .unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), committed);
}

/// An API server that answers every request with 404, as one without the HedgeGroup CRD answers
/// a list of HedgeGroups.
async fn api_server_without_the_crd() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let _ = stream.read(&mut buf).await;
                let body = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"the server could not find the requested resource","reason":"NotFound","details":{},"code":404}"#;
                let response = format!(
                    "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_missing_crd_stops_the_operator_with_a_clear_message() {
    let addr = api_server_without_the_crd().await;
    let dir = std::env::temp_dir().join(format!("hedge-operator-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: 'http://{addr}'}}\n\
             users:\n- name: u\n  user: {{}}\ncontexts:\n- name: x\n  context: {{cluster: c, user: u}}\ncurrent-context: x\n"
        ),
    )
    .unwrap();

    let out = tokio::process::Command::new(BIN)
        .args(["--metrics-addr", "127.0.0.1:0", "--log-format", "json"])
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "info")
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(30), out)
        .await
        .unwrap()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();

    let logs = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{logs}");
    assert!(
        logs.contains("the HedgeGroup CRD (hedgegroups.hedge.dev) is not installed"),
        "{logs}"
    );
    assert!(
        logs.lines().all(|l| l.starts_with('{')),
        "JSON logs: {logs}"
    );
}
