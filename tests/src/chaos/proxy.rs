//! A fault-injecting TCP proxy, for the links between members and Spanner and between members.
//!
//! `tc netem` and firewalls are not available everywhere the tests run (CI included); a proxy in
//! userspace is. A [`Proxy`] listens on a loopback port and forwards every connection to its
//! upstream; [`Proxy::set`] changes what happens to the bytes from then on:
//!
//! | [`LinkFault`] | what the endpoints see |
//! |---|---|
//! | `Pass` | a plain connection |
//! | `Latency(d)` | every chunk arrives `d` later, in order, in both directions (throughput is kept: chunks are delayed, not serialised) |
//! | `Cut` | a partition: nothing moves either way; bytes wait in the kernel's buffers and are delivered when the cut heals, as TCP retransmission would; new connections are accepted and stall too |
//! | `OneWay(dir)` | only `dir` stalls: requests arrive but replies do not (or the reverse) |
//! | `Reset` | every open connection is reset (RST) now, and new ones are reset on arrival until the fault changes |
//!
//! A stall does not read from the sender's socket, so the sender blocks on TCP backpressure exactly
//! as it would behind a real partition; its keep-alives and deadlines decide what it does about
//! it. Everything is bounded: connecting upstream gives up after [`CONNECT_TIMEOUT`], and
//! [`Proxy::stop`] (or dropping the proxy) closes the listener and every connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::sync::CancellationToken;

/// How long the proxy waits for its upstream to accept a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest chunk read at once.
const CHUNK: usize = 16 * 1024;

/// How many read chunks may wait for their delivery time in one direction.
const IN_FLIGHT_CHUNKS: usize = 256;

/// A direction of a proxied connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the connecting client to the upstream (requests).
    ToUpstream,
    /// From the upstream back to the client (replies).
    ToClient,
}

/// What the proxy does to the bytes it forwards.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LinkFault {
    /// Forward everything at once.
    #[default]
    Pass,
    /// Deliver every chunk this much later, both ways.
    Latency(Duration),
    /// Forward nothing either way until the fault changes (a partition).
    Cut,
    /// Forward nothing in this direction until the fault changes.
    OneWay(Direction),
    /// Reset every connection now, and every new one until the fault changes.
    Reset,
}

impl LinkFault {
    /// Whether bytes may move in `direction` now.
    fn lets_through(self, direction: Direction) -> bool {
        match self {
            LinkFault::Pass | LinkFault::Latency(_) => true,
            LinkFault::Cut | LinkFault::Reset => false,
            LinkFault::OneWay(stalled) => stalled != direction,
        }
    }

    fn latency(self) -> Duration {
        match self {
            LinkFault::Latency(d) => d,
            _ => Duration::ZERO,
        }
    }
}

/// Errors of the proxy.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The proxy could not listen.
    #[error("the proxy cannot listen on loopback: {0}")]
    Bind(#[source] std::io::Error),
}

/// What a proxy has done, for reports and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Connections accepted.
    pub accepted: u64,
    /// Connections reset by a [`LinkFault::Reset`] (open ones and refused new ones).
    pub reset: u64,
    /// Bytes forwarded to the upstream.
    pub bytes_up: u64,
    /// Bytes forwarded back to clients.
    pub bytes_down: u64,
}

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    reset: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
}

/// A running proxy from a loopback port to an upstream address.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    fault: watch::Sender<LinkFault>,
    counters: Arc<Counters>,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    /// Starts a proxy on a free loopback port, forwarding to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Result<Self, ProxyError> {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(ProxyError::Bind)?;
        let addr = listener.local_addr().map_err(ProxyError::Bind)?;
        let (fault, faults) = watch::channel(LinkFault::Pass);
        let counters = Arc::new(Counters::default());
        let stop = CancellationToken::new();
        let task = tokio::spawn(accept_loop(
            listener,
            upstream,
            faults,
            counters.clone(),
            stop.clone(),
        ));
        Ok(Self {
            addr,
            upstream,
            fault,
            counters,
            stop,
            task: Some(task),
        })
    }

    /// The address clients connect to (`127.0.0.1:port`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address the proxy forwards to.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Changes what the proxy does from now on (chunks already waiting for a latency keep
    /// theirs).
    pub fn set(&self, fault: LinkFault) {
        self.fault.send_replace(fault);
    }

    /// The current fault.
    pub fn fault(&self) -> LinkFault {
        *self.fault.borrow()
    }

    /// What the proxy has done so far.
    pub fn stats(&self) -> ProxyStats {
        let c = &self.counters;
        ProxyStats {
            accepted: c.accepted.load(Ordering::Relaxed),
            reset: c.reset.load(Ordering::Relaxed),
            bytes_up: c.bytes_up.load(Ordering::Relaxed),
            bytes_down: c.bytes_down.load(Ordering::Relaxed),
        }
    }

    /// Closes the listener and every connection, and waits (at most a second) for it.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = timeout(Duration::from_secs(1), task).await;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    faults: watch::Receiver<LinkFault>,
    counters: Arc<Counters>,
    stop: CancellationToken,
) {
    // Dropping the set (when this task ends or is aborted) aborts every connection's task, which
    // closes its sockets.
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            a = listener.accept() => a,
        };
        while connections.try_join_next().is_some() {}
        let Ok((client, _)) = accepted else {
            // Out of descriptors or the like: wait a little rather than spin.
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        counters.accepted.fetch_add(1, Ordering::Relaxed);
        if *faults.borrow() == LinkFault::Reset {
            counters.reset.fetch_add(1, Ordering::Relaxed);
            reset(&client);
            continue;
        }
        connections.spawn(connection(
            client,
            upstream,
            faults.clone(),
            counters.clone(),
            stop.clone(),
        ));
    }
    connections.abort_all();
}

/// Closes `stream` with a RST instead of a FIN when it is dropped.
fn reset(stream: &TcpStream) {
    let _ = stream.set_zero_linger();
}

/// One proxied connection: two directions, each a reader and a writer, until either side
/// closes, the proxy stops, or a reset fault ends it.
async fn connection(
    client: TcpStream,
    upstream: SocketAddr,
    mut faults: watch::Receiver<LinkFault>,
    counters: Arc<Counters>,
    stop: CancellationToken,
) {
    let _ = client.set_nodelay(true);
    // Connect upstream only when the link lets requests through: behind a cut, the client's
    // connection stalls as a partitioned one would.
    let opened = tokio::select! {
        () = stop.cancelled() => return,
        open = wait_open(&mut faults, Direction::ToUpstream) => open,
    };
    if !opened {
        counters.reset.fetch_add(1, Ordering::Relaxed);
        reset(&client);
        return;
    }
    let server = match timeout(CONNECT_TIMEOUT, TcpStream::connect(upstream)).await {
        Ok(Ok(s)) => s,
        // The upstream is down: the client sees its connection reset, as it would on a refused
        // connection through a real load balancer.
        _ => {
            reset(&client);
            return;
        }
    };
    let _ = server.set_nodelay(true);
    let client = Arc::new(client);
    let server = Arc::new(server);
    let done = CancellationToken::new();
    let mut pumps = JoinSet::new();
    for (from, to, direction) in [
        (client.clone(), server.clone(), Direction::ToUpstream),
        (server.clone(), client.clone(), Direction::ToClient),
    ] {
        let (tx, rx) = mpsc::channel(IN_FLIGHT_CHUNKS);
        pumps.spawn(read_side(from, tx, faults.clone(), direction, done.clone()));
        pumps.spawn(write_side(
            to,
            rx,
            faults.clone(),
            direction,
            done.clone(),
            counters.clone(),
        ));
    }
    let reset_now = async {
        loop {
            if *faults.borrow_and_update() == LinkFault::Reset {
                return;
            }
            if faults.changed().await.is_err() {
                // The proxy is gone: never resets, the stop token ends the connection.
                std::future::pending::<()>().await;
            }
        }
    };
    // The connection lives until both directions are done (each ends after its EOF has been
    // passed on), or a reset, or the proxy stops.
    let both_done = async { while pumps.join_next().await.is_some() {} };
    tokio::select! {
        () = both_done => {}
        () = reset_now => {
            counters.reset.fetch_add(1, Ordering::Relaxed);
            reset(&client);
            reset(&server);
        }
        () = stop.cancelled() => {}
    }
    done.cancel();
}

/// Waits until `direction` is open; `false` when the fault became a reset (or the proxy went
/// away) instead.
async fn wait_open(faults: &mut watch::Receiver<LinkFault>, direction: Direction) -> bool {
    loop {
        let fault = *faults.borrow_and_update();
        if fault == LinkFault::Reset {
            return false;
        }
        if fault.lets_through(direction) {
            return true;
        }
        if faults.changed().await.is_err() {
            return false;
        }
    }
}

/// Reads chunks while the direction is open and queues each with its delivery time; an EOF is
/// queued as an empty chunk.
async fn read_side(
    from: Arc<TcpStream>,
    queue: mpsc::Sender<(Instant, Bytes)>,
    mut faults: watch::Receiver<LinkFault>,
    direction: Direction,
    done: CancellationToken,
) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        // A stalled direction reads nothing: the sender blocks on TCP backpressure.
        let open = tokio::select! {
            () = done.cancelled() => return,
            open = wait_open(&mut faults, direction) => open,
        };
        if !open {
            return;
        }
        let read = tokio::select! {
            () = done.cancelled() => return,
            r = read_some(&from, &mut buf) => r,
        };
        let chunk = match read {
            Ok(0) | Err(_) => Bytes::new(),
            Ok(n) => Bytes::copy_from_slice(&buf[..n]),
        };
        let eof = chunk.is_empty();
        let due = Instant::now() + faults.borrow().latency();
        if queue.send((due, chunk)).await.is_err() || eof {
            return;
        }
    }
}

/// Writes queued chunks at their delivery time, holding them while the direction is stalled;
/// an empty chunk passes the EOF on (a half close).
async fn write_side(
    to: Arc<TcpStream>,
    mut queue: mpsc::Receiver<(Instant, Bytes)>,
    mut faults: watch::Receiver<LinkFault>,
    direction: Direction,
    done: CancellationToken,
    counters: Arc<Counters>,
) {
    loop {
        let next = tokio::select! {
            () = done.cancelled() => return,
            n = queue.recv() => n,
        };
        let Some((due, chunk)) = next else { return };
        tokio::select! {
            () = done.cancelled() => return,
            () = sleep_until(due) => {}
        }
        let open = tokio::select! {
            () = done.cancelled() => return,
            open = wait_open(&mut faults, direction) => open,
        };
        if !open {
            return;
        }
        if chunk.is_empty() {
            let _ = socket2::SockRef::from(&*to).shutdown(std::net::Shutdown::Write);
            return;
        }
        let wrote = tokio::select! {
            () = done.cancelled() => return,
            w = write_all(&to, &chunk) => w,
        };
        if wrote.is_err() {
            return;
        }
        let total = match direction {
            Direction::ToUpstream => &counters.bytes_up,
            Direction::ToClient => &counters.bytes_down,
        };
        total.fetch_add(chunk.len() as u64, Ordering::Relaxed);
    }
}

async fn read_some(stream: &TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        stream.readable().await?;
        match stream.try_read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

async fn write_all(stream: &TcpStream, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        stream.writable().await?;
        match stream.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An upstream that echoes every byte and counts what it received.
    async fn echo() -> (SocketAddr, Arc<AtomicU64>) {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(AtomicU64::new(0));
        let count = received.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let count = count.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        count.fetch_add(n as u64, Ordering::Relaxed);
                    }
                });
            }
        });
        (addr, received)
    }

    async fn round_trip(stream: &mut TcpStream, message: &[u8]) -> std::io::Result<Vec<u8>> {
        stream.write_all(message).await?;
        let mut back = vec![0u8; message.len()];
        stream.read_exact(&mut back).await?;
        Ok(back)
    }

    /// Bounds every wait of these tests: none should come near it.
    const BOUND: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn passes_bytes_both_ways_and_counts_them() {
        let (upstream, _) = echo().await;
        let proxy = Proxy::start(upstream).await.unwrap();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        let big = vec![7u8; 200_000];
        let back = timeout(BOUND, round_trip(&mut s, &big))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, big);
        let stats = proxy.stats();
        assert_eq!((stats.accepted, stats.bytes_up), (1, 200_000));
        // The writer counts after writing; the echo is read back only after it was counted.
        assert_eq!(stats.bytes_down, 200_000);
        // A half close passes through: the echo sees EOF and closes, and so do we.
        s.shutdown().await.unwrap();
        let mut rest = Vec::new();
        let n = timeout(BOUND, s.read_to_end(&mut rest))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 0);
    }

    #[tokio::test]
    async fn latency_delays_each_direction() {
        let (upstream, _) = echo().await;
        let proxy = Proxy::start(upstream).await.unwrap();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        round_trip(&mut s, b"warm").await.unwrap();
        let delay = Duration::from_millis(100);
        proxy.set(LinkFault::Latency(delay));
        let began = Instant::now();
        let back = timeout(BOUND, round_trip(&mut s, b"slow"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, b"slow");
        // Once on the way up, once on the way back.
        assert!(began.elapsed() >= delay * 2, "{:?}", began.elapsed());
        proxy.set(LinkFault::Pass);
        assert_eq!(round_trip(&mut s, b"fast").await.unwrap(), b"fast");
    }

    #[tokio::test]
    async fn a_cut_stalls_both_ways_and_delivers_everything_when_it_heals() {
        let (upstream, received) = echo().await;
        let proxy = Proxy::start(upstream).await.unwrap();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        round_trip(&mut s, b"before").await.unwrap();
        proxy.set(LinkFault::Cut);
        s.write_all(b"during").await.unwrap();
        let mut buf = [0u8; 6];
        assert!(
            timeout(Duration::from_millis(300), s.read_exact(&mut buf))
                .await
                .is_err(),
            "a reply came through the cut"
        );
        assert_eq!(
            received.load(Ordering::Relaxed),
            6,
            "the request came through"
        );
        // A connection opened during the cut stalls too.
        let mut late = TcpStream::connect(proxy.addr()).await.unwrap();
        late.write_all(b"new").await.unwrap();
        proxy.set(LinkFault::Pass);
        timeout(BOUND, s.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf, b"during");
        let mut three = [0u8; 3];
        timeout(BOUND, late.read_exact(&mut three))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&three, b"new");
    }

    #[tokio::test]
    async fn a_one_way_cut_lets_requests_through_and_holds_the_replies() {
        let (upstream, received) = echo().await;
        let proxy = Proxy::start(upstream).await.unwrap();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        round_trip(&mut s, b"x").await.unwrap();
        proxy.set(LinkFault::OneWay(Direction::ToClient));
        s.write_all(b"request").await.unwrap();
        let arrived = async {
            while received.load(Ordering::Relaxed) < 8 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        timeout(BOUND, arrived).await.expect("the request arrives");
        let mut buf = [0u8; 7];
        assert!(
            timeout(Duration::from_millis(300), s.read_exact(&mut buf))
                .await
                .is_err(),
            "a reply came through the one-way cut"
        );
        proxy.set(LinkFault::Pass);
        timeout(BOUND, s.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf, b"request");
    }

    #[tokio::test]
    async fn a_reset_ends_open_connections_and_refuses_new_ones_until_it_heals() {
        let (upstream, _) = echo().await;
        let proxy = Proxy::start(upstream).await.unwrap();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        round_trip(&mut s, b"x").await.unwrap();
        proxy.set(LinkFault::Reset);
        let mut buf = [0u8; 1];
        let read = timeout(BOUND, s.read(&mut buf)).await.unwrap();
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "an open connection is ended: {read:?}"
        );
        let mut refused = TcpStream::connect(proxy.addr()).await.unwrap();
        let read = timeout(BOUND, async {
            let _ = refused.write_all(b"x").await;
            refused.read(&mut buf).await
        })
        .await
        .unwrap();
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "a new one is reset: {read:?}"
        );
        assert!(proxy.stats().reset >= 2);
        proxy.set(LinkFault::Pass);
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(
            timeout(BOUND, round_trip(&mut s, b"ok"))
                .await
                .unwrap()
                .unwrap(),
            b"ok"
        );
    }

    #[tokio::test]
    async fn stopping_closes_the_listener_and_every_connection() {
        let (upstream, _) = echo().await;
        let proxy = Proxy::start(upstream).await.unwrap();
        let addr = proxy.addr();
        let mut s = TcpStream::connect(addr).await.unwrap();
        round_trip(&mut s, b"x").await.unwrap();
        proxy.stop().await;
        let mut buf = [0u8; 1];
        let read = timeout(BOUND, s.read(&mut buf)).await.unwrap();
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        assert!(TcpStream::connect(addr).await.is_err(), "still listening");
    }

    #[tokio::test]
    async fn an_unreachable_upstream_resets_the_client() {
        // A port nothing listens on (bound, read, released).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let proxy = Proxy::start(port).await.unwrap();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        let mut buf = [0u8; 1];
        let read = timeout(BOUND, s.read(&mut buf)).await.unwrap();
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
}
