//! The drivers of the soak and chaos run (`tests/soak/run.sh`): an upstream that signs every
//! body, and the clients that load, check and attack a relay. One binary, one subcommand each.
//!
//! ```text
//! soak upstream ADDR                     bodies made from the request's id, signed in headers
//! soak load --base URL --names P ...     keep-alive load; every response checked (scenario 7)
//! soak loris / flood                     slow heads, oversize heads, random bytes, bad offers
//! soak big --base URL --name N --bytes B one upload and one download, SHA-256 both ways
//! soak wait-parked --admin ADDR --at-least N   polls /metrics until N agent connections
//! ```
//!
//! The body of request `id` is a pure function of `(id, position)`: a 64 KiB block drawn from
//! `id`, each block stamped with `id` and its index. So a body that belongs to another request,
//! a block out of place, or a short body never matches what the checker computes itself, and
//! the upstream's `x-soak-sha256` and `x-soak-len` must agree with it too. A `2xx` whose body
//! ended cleanly but does not match is an integrity failure: `load` exits 1 for a single one.
//!
//! Every client loop is bounded in count and in time; every output line is `key=value`, for the
//! script to read.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, Subcommand};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use ring::digest::{Context as Sha, SHA256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

/// The pattern's block: the body repeats a block of this size drawn from the id.
const BLOCK: usize = 64 * 1024;
/// Bytes of each block overwritten with the id and the block's index.
const STAMP: usize = 16;
/// Largest frame the generated bodies send at once.
const MAX_FRAME: usize = BLOCK;
/// A single exchange of `load` that takes longer than this is counted as a timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(40);
/// How long `load` waits for its workers after the run's duration before it gives up on them.
const STRAGGLER_WAIT: Duration = Duration::from_secs(45);

const H_ID: &str = "x-soak-id";
const H_LEN: &str = "x-soak-len";
const H_SHA: &str = "x-soak-sha256";

#[derive(Parser)]
#[command(about = "drivers of the ptth soak and chaos run (tests/soak/run.sh)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve `GET …/bytes?id=&len=[&delay=MS][&gap=MS][&frame=B][&chunked=1]`,
    /// `POST …/echo` and `POST …/sink` on ADDR.
    Upstream {
        addr: SocketAddr,
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
    /// Keep-alive load from `conns` connections; every response is checked.
    Load(LoadArgs),
    /// Slow-loris: `count` connections that send a head one byte at a time and never end it.
    Loris {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        count: usize,
        /// How long to keep trickling; each connection should be closed by the relay before.
        #[arg(long)]
        duration_s: u64,
        /// A connection still open this long after it started is counted as held too long.
        #[arg(long)]
        limit_s: u64,
    },
    /// Oversize heads, random bytes at every address, unauthenticated offers at a rate.
    Flood {
        #[arg(long, value_delimiter = ',')]
        addrs: Vec<SocketAddr>,
        #[arg(long)]
        oversize: usize,
        #[arg(long)]
        garbage: usize,
        #[arg(long)]
        offers_per_s: u64,
        #[arg(long)]
        duration_s: u64,
    },
    /// Upload and download `bytes` through the relay at the same time; SHA-256 both ways.
    Big {
        #[arg(long)]
        base: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        bytes: u64,
    },
    /// Poll the relay's `/metrics` until `ptth_agent_connections` reaches `at_least`.
    WaitParked {
        #[arg(long)]
        admin: SocketAddr,
        #[arg(long)]
        at_least: u64,
        #[arg(long)]
        timeout_s: u64,
    },
}

#[derive(Parser, Clone)]
struct LoadArgs {
    /// Scenario label, the prefix of every output line.
    #[arg(long)]
    label: String,
    /// `http://127.0.0.1:PORT` of the relay's public listener.
    #[arg(long)]
    base: String,
    /// Name prefix: names are `PREFIX0` … `PREFIX{N-1}` with `--name-count N`, or `PREFIX`
    /// alone with `--name-count 0`.
    #[arg(long)]
    names: String,
    #[arg(long, default_value_t = 0)]
    name_count: u32,
    #[arg(long, default_value_t = 64)]
    conns: usize,
    #[arg(long)]
    duration_s: u64,
    #[arg(long, default_value_t = 10_000_000)]
    max_requests: u64,
    /// Body sizes, picked at random per request.
    #[arg(long, value_delimiter = ',', default_value = "13,4096,65536")]
    sizes: Vec<u64>,
    /// Percent of requests that are `POST …/echo` (the body sent is checked on its way back).
    #[arg(long, default_value_t = 10)]
    echo_percent: u32,
    /// Percent of `GET`s answered without a length (chunked), where only the checksum and the
    /// length header can tell a cut body from a whole one.
    #[arg(long, default_value_t = 50)]
    chunked_percent: u32,
    /// Upstream wait before the head, in ms.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Upstream wait between body frames, in ms (a response stays in flight for a while).
    #[arg(long, default_value_t = 0)]
    gap_ms: u64,
    #[arg(long, default_value_t = MAX_FRAME)]
    frame: usize,
    /// Statuses that are counted but are not a failure of the run.
    #[arg(long, value_delimiter = ',')]
    allow: Vec<u16>,
    /// Bodies cut mid-way (an error, never a clean end) are expected here.
    #[arg(long)]
    allow_cut: bool,
    /// Connections refused or closed before a response are expected here.
    #[arg(long)]
    allow_conn_errors: bool,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let threads = match &cli.command {
        Command::Upstream { threads, .. } => *threads,
        _ => 1,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .expect("tokio runtime");
    let ok = runtime.block_on(async move {
        match cli.command {
            Command::Upstream { addr, .. } => upstream(addr).await,
            Command::Load(args) => load(args).await,
            Command::Loris {
                addr,
                count,
                duration_s,
                limit_s,
            } => loris(addr, count, duration_s, limit_s).await,
            Command::Flood {
                addrs,
                oversize,
                garbage,
                offers_per_s,
                duration_s,
            } => flood(addrs, oversize, garbage, offers_per_s, duration_s).await,
            Command::Big { base, name, bytes } => big(&base, &name, bytes).await,
            Command::WaitParked {
                admin,
                at_least,
                timeout_s,
            } => wait_parked(admin, at_least, timeout_s).await,
        }
    });
    if ok {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

// ---------------------------------------------------------------------------------------------
// The pattern: what the body of request `id` is, byte for byte.

/// The block that the body of `id` repeats (stamped per index).
fn base_block(id: u64, len: u64) -> Arc<Vec<u8>> {
    let mut block = vec![0; (len as usize).min(BLOCK)];
    fastrand::Rng::with_seed(id ^ 0x5eed_5eed_5eed_5eed).fill(&mut block);
    Arc::new(block)
}

/// Bytes `pos .. pos + out.len()` of the body of `id` (`out` never crosses a block boundary).
fn fill(base: &[u8], id: u64, pos: u64, out: &mut [u8]) {
    let index = pos / BLOCK as u64;
    let offset = (pos % BLOCK as u64) as usize;
    out.copy_from_slice(&base[offset..offset + out.len()]);
    let mut stamp = [0u8; STAMP];
    stamp[..8].copy_from_slice(&id.to_le_bytes());
    stamp[8..].copy_from_slice(&index.to_le_bytes());
    for (i, b) in out.iter_mut().enumerate() {
        let at = offset + i;
        if at >= STAMP {
            break;
        }
        *b ^= stamp[at];
    }
}

/// The next frame of a generated body: at most `frame` bytes, never across a block.
fn next_frame(base: &[u8], id: u64, pos: u64, len: u64, frame: usize) -> Bytes {
    let to_block_end = BLOCK as u64 - pos % BLOCK as u64;
    let n = (len - pos).min(to_block_end).min(frame as u64) as usize;
    let mut out = vec![0; n];
    fill(base, id, pos, &mut out);
    Bytes::from(out)
}

/// SHA-256 of the body of `id` with `len` bytes, computed as the checker and the upstream do.
fn pattern_sha(id: u64, len: u64) -> String {
    let base = base_block(id, len);
    let mut sha = Sha::new(&SHA256);
    let mut pos = 0;
    let mut buf = vec![0; BLOCK];
    while pos < len {
        let n = (len - pos).min(BLOCK as u64) as usize;
        fill(&base, id, pos, &mut buf[..n]);
        sha.update(&buf[..n]);
        pos += n as u64;
    }
    hex(sha.finish().as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A generated body: the pattern of `id`, `len` bytes, in frames of `frame` bytes, `gap`
/// apart; with an exact size (`Content-Length`) or without (chunked).
struct GenBody {
    base: Arc<Vec<u8>>,
    id: u64,
    len: u64,
    pos: u64,
    frame: usize,
    gap: Option<Duration>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    sized: bool,
}

impl GenBody {
    fn new(id: u64, len: u64, frame: usize, gap: Option<Duration>, sized: bool) -> Self {
        GenBody {
            base: base_block(id, len),
            id,
            len,
            pos: 0,
            frame: frame.clamp(1, MAX_FRAME),
            gap,
            sleep: None,
            sized,
        }
    }
}

impl Body for GenBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.pos >= this.len {
            return Poll::Ready(None);
        }
        if let (Some(gap), true) = (this.gap, this.pos > 0) {
            let sleep = this
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(gap)));
            ready!(sleep.as_mut().poll(cx));
            this.sleep = None;
        }
        let bytes = next_frame(&this.base, this.id, this.pos, this.len, this.frame);
        this.pos += bytes.len() as u64;
        Poll::Ready(Some(Ok(Frame::data(bytes))))
    }

    fn is_end_stream(&self) -> bool {
        self.pos >= self.len
    }

    fn size_hint(&self) -> SizeHint {
        if self.sized {
            SizeHint::with_exact(self.len - self.pos)
        } else {
            SizeHint::default()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The upstream.

type UpBody = BoxBody<Bytes, hyper::Error>;

fn query(uri: &http::Uri) -> BTreeMap<String, String> {
    uri.query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn number(q: &BTreeMap<String, String>, key: &str) -> u64 {
    q.get(key).and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn text(status: StatusCode, body: String) -> Response<UpBody> {
    let mut res = Response::new(
        http_body_util::Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *res.status_mut() = status;
    res
}

async fn serve_request(req: Request<Incoming>) -> Result<Response<UpBody>, Infallible> {
    let last = req.uri().path().rsplit('/').next().unwrap_or_default();
    let q = query(req.uri());
    let id = number(&q, "id");
    let id_header = HeaderValue::from(id);
    let mut res = match (req.method(), last) {
        (&Method::GET, "bytes") => {
            let len = number(&q, "len");
            let delay = number(&q, "delay");
            let gap = number(&q, "gap");
            let frame = q
                .get("frame")
                .and_then(|v| v.parse().ok())
                .unwrap_or(MAX_FRAME);
            let sized = q.get("chunked").map(String::as_str) != Some("1");
            let sha = if len > 4 * BLOCK as u64 {
                tokio::task::spawn_blocking(move || pattern_sha(id, len))
                    .await
                    .expect("hashing task")
            } else {
                pattern_sha(id, len)
            };
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            let gap = (gap > 0).then(|| Duration::from_millis(gap));
            let body = GenBody::new(id, len, frame, gap, sized);
            let mut res = Response::new(body.map_err(|never| match never {}).boxed());
            let h = res.headers_mut();
            h.insert(H_LEN, HeaderValue::from(len));
            h.insert(
                H_SHA,
                HeaderValue::try_from(sha).expect("hex is a header value"),
            );
            res
        }
        (&Method::POST, "echo") => {
            let length = req.headers().get(http::header::CONTENT_LENGTH).cloned();
            let mut res = Response::new(req.into_body().boxed());
            if let Some(length) = length {
                res.headers_mut()
                    .insert(http::header::CONTENT_LENGTH, length);
            }
            res
        }
        (&Method::POST, "sink") => {
            let mut body = req.into_body();
            let mut sha = Sha::new(&SHA256);
            let mut len = 0u64;
            let mut failed = None;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(frame) => {
                        if let Some(data) = frame.data_ref() {
                            sha.update(data);
                            len += data.len() as u64;
                        }
                    }
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            match failed {
                None => text(
                    StatusCode::OK,
                    format!("{len} {}", hex(sha.finish().as_ref())),
                ),
                Some(e) => text(StatusCode::BAD_REQUEST, format!("body failed: {e}")),
            }
        }
        _ => text(StatusCode::NOT_FOUND, "no such soak route\n".into()),
    };
    res.headers_mut().insert(H_ID, id_header);
    Ok(res)
}

async fn upstream(addr: SocketAddr) -> bool {
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("soak upstream: bind {addr}: {e}");
            return false;
        }
    };
    eprintln!("soak upstream listening on http://{addr}");
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                // EMFILE and friends: say so and go on, as a server would.
                eprintln!("soak upstream: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), hyper::service::service_fn(serve_request))
                .await;
        });
    }
}

// ---------------------------------------------------------------------------------------------
// The load generator and checker.

/// What one exchange came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    /// `2xx`, and the body is exactly what the upstream sent for this request.
    Ok,
    /// A non-`2xx` status (the number).
    Status(u16),
    /// `2xx`, then the body failed with an error (never a clean end).
    Cut,
    /// `2xx` and a body that ended cleanly but is not this request's: the run fails.
    Integrity,
    /// No response: refused, reset, or closed before the head.
    ConnError,
    /// No complete exchange within [`REQUEST_TIMEOUT`].
    Timeout,
}

#[derive(Default)]
struct Tally {
    /// Every exchange's outcome.
    counts: BTreeMap<Outcome, u64>,
    /// Outcomes of exchanges in flight when SIGUSR1 arrived.
    at_mark: BTreeMap<Outcome, u64>,
    latencies_us: Vec<u64>,
    integrity_examples: Vec<String>,
}

struct Plan {
    args: LoadArgs,
    authority: String,
    next_id: AtomicU64,
    sent: AtomicU64,
    deadline: Instant,
    /// Microseconds since `started` at which SIGUSR1 arrived (`u64::MAX`: not yet).
    mark_us: AtomicU64,
    started: Instant,
}

async fn load(args: LoadArgs) -> bool {
    let authority = args
        .base
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let started = Instant::now();
    let plan = Arc::new(Plan {
        authority,
        next_id: AtomicU64::new(fastrand::u64(1..u64::MAX / 2)),
        sent: AtomicU64::new(0),
        deadline: started + Duration::from_secs(args.duration_s),
        mark_us: AtomicU64::new(u64::MAX),
        started,
        args,
    });
    let tally = Arc::new(Mutex::new(Tally::default()));
    {
        let plan = plan.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            if let Ok(mut usr1) = signal(SignalKind::user_defined1()) {
                usr1.recv().await;
                let us = plan.started.elapsed().as_micros() as u64;
                plan.mark_us.store(us, Ordering::SeqCst);
            }
        });
    }
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..plan.args.conns {
        workers.spawn(worker(plan.clone(), tally.clone()));
    }
    let hard_stop = plan.deadline + STRAGGLER_WAIT;
    let mut stuck = 0;
    loop {
        match tokio::time::timeout_at(hard_stop.into(), workers.join_next()).await {
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(_) => {
                stuck = workers.len();
                workers.abort_all();
                break;
            }
        }
    }
    report(&plan, &*tally.lock().await, stuck)
}

fn report(plan: &Plan, t: &Tally, stuck: usize) -> bool {
    let a = &plan.args;
    let l = &a.label;
    let elapsed = plan.started.elapsed().as_secs_f64();
    let count = |o: Outcome| t.counts.get(&o).copied().unwrap_or(0);
    let total: u64 = t.counts.values().sum();
    let mut lat = t.latencies_us.clone();
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() as f64 - 1.0) * p).round() as usize;
        lat[i] as f64 / 1000.0
    };
    println!("{l}.requests={total}");
    println!("{l}.ok={}", count(Outcome::Ok));
    println!("{l}.rps={:.0}", count(Outcome::Ok) as f64 / elapsed);
    println!("{l}.p50_ms={:.2}", pct(0.50));
    println!("{l}.p99_ms={:.2}", pct(0.99));
    println!("{l}.max_ms={:.2}", pct(1.0));
    let mut statuses = Vec::new();
    let mut failures = Vec::new();
    for (o, n) in &t.counts {
        if let Outcome::Status(s) = o {
            statuses.push(format!("{s}:{n}"));
            if !a.allow.contains(s) {
                failures.push(format!("{n} responses {s}"));
            }
        }
    }
    println!("{l}.status_other={}", statuses.join(","));
    for s in [502u16, 503, 504] {
        println!("{l}.s{s}={}", count(Outcome::Status(s)));
    }
    println!("{l}.cut={}", count(Outcome::Cut));
    println!("{l}.conn_err={}", count(Outcome::ConnError));
    println!("{l}.timeout={}", count(Outcome::Timeout));
    println!("{l}.integrity={}", count(Outcome::Integrity));
    println!("{l}.stuck_workers={stuck}");
    if plan.mark_us.load(Ordering::SeqCst) != u64::MAX {
        let m = |o: Outcome| t.at_mark.get(&o).copied().unwrap_or(0);
        let in_flight: u64 = t.at_mark.values().sum();
        println!("{l}.mark_in_flight={in_flight}");
        println!("{l}.mark_completed={}", m(Outcome::Ok));
        println!(
            "{l}.mark_cut={}",
            in_flight - m(Outcome::Ok) - m(Outcome::Integrity)
        );
    }
    for e in &t.integrity_examples {
        println!("{l}.integrity_example={e}");
    }
    if count(Outcome::Integrity) > 0 {
        failures.push(format!(
            "{} bodies reported whole but wrong",
            count(Outcome::Integrity)
        ));
    }
    if count(Outcome::Cut) > 0 && !a.allow_cut {
        failures.push(format!("{} bodies cut", count(Outcome::Cut)));
    }
    if count(Outcome::ConnError) > 0 && !a.allow_conn_errors {
        failures.push(format!("{} connection errors", count(Outcome::ConnError)));
    }
    if count(Outcome::Timeout) > 0 {
        failures.push(format!("{} timeouts", count(Outcome::Timeout)));
    }
    if stuck > 0 {
        failures.push(format!("{stuck} workers stuck past the deadline"));
    }
    if count(Outcome::Ok) == 0 {
        failures.push("no request succeeded".into());
    }
    if failures.is_empty() {
        println!("{l}.verdict=PASS");
        true
    } else {
        println!("{l}.verdict=FAIL ({})", failures.join("; "));
        false
    }
}

type Sender = hyper::client::conn::http1::SendRequest<BoxBody<Bytes, Infallible>>;

async fn connect(addr: &str) -> Option<Sender> {
    let tcp = TcpStream::connect(addr).await.ok()?;
    let _ = tcp.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .ok()?;
    tokio::spawn(conn);
    Some(sender)
}

async fn worker(plan: Arc<Plan>, tally: Arc<Mutex<Tally>>) {
    let mut sender: Option<Sender> = None;
    let mut local = Tally::default();
    while Instant::now() < plan.deadline
        && plan.sent.fetch_add(1, Ordering::Relaxed) < plan.args.max_requests
    {
        let id = plan.next_id.fetch_add(1, Ordering::Relaxed);
        let start_us = plan.started.elapsed().as_micros() as u64;
        let t0 = Instant::now();
        let outcome = match tokio::time::timeout(
            REQUEST_TIMEOUT,
            exchange(&plan, &mut sender, id, &mut local),
        )
        .await
        {
            Ok(o) => o,
            Err(_) => {
                sender = None;
                Outcome::Timeout
            }
        };
        let end_us = plan.started.elapsed().as_micros() as u64;
        *local.counts.entry(outcome).or_default() += 1;
        let mark = plan.mark_us.load(Ordering::SeqCst);
        if start_us < mark && end_us >= mark && mark != u64::MAX {
            *local.at_mark.entry(outcome).or_default() += 1;
        }
        if outcome == Outcome::Ok {
            local.latencies_us.push(t0.elapsed().as_micros() as u64);
        }
        if outcome == Outcome::ConnError {
            // Do not spin on a refused port: a short pause before the next connection.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut t = tally.lock().await;
    for (o, n) in local.counts {
        *t.counts.entry(o).or_default() += n;
    }
    for (o, n) in local.at_mark {
        *t.at_mark.entry(o).or_default() += n;
    }
    t.latencies_us.extend(local.latencies_us);
    let room = 5usize.saturating_sub(t.integrity_examples.len());
    t.integrity_examples
        .extend(local.integrity_examples.into_iter().take(room));
}

fn header_u64(h: &HeaderMap, name: &str) -> Option<u64> {
    h.get(name)?.to_str().ok()?.parse().ok()
}

async fn exchange(plan: &Plan, sender: &mut Option<Sender>, id: u64, tally: &mut Tally) -> Outcome {
    let a = &plan.args;
    let name = if a.name_count == 0 {
        a.names.clone()
    } else {
        format!("{}{}", a.names, fastrand::u32(..a.name_count))
    };
    let len = a.sizes[fastrand::usize(..a.sizes.len())];
    let echo = fastrand::u32(..100) < a.echo_percent;
    let chunked = fastrand::u32(..100) < a.chunked_percent;
    let request = if echo {
        Request::post(format!("/{name}/echo?id={id}"))
            .body(GenBody::new(id, len, a.frame, None, !chunked).boxed())
    } else {
        let gap = if a.gap_ms > 0 {
            format!("&gap={}", a.gap_ms)
        } else {
            String::new()
        };
        Request::get(format!(
            "/{name}/bytes?id={id}&len={len}&delay={}&frame={}&chunked={}{gap}",
            a.delay_ms,
            a.frame,
            u8::from(chunked)
        ))
        .body(http_body_util::Empty::new().map_err(|n| match n {}).boxed())
    };
    let mut request = request.expect("valid request");
    request.headers_mut().insert(
        http::header::HOST,
        HeaderValue::try_from(plan.authority.as_str()).expect("authority"),
    );
    if sender.as_ref().is_none_or(|s| s.is_closed()) {
        *sender = connect(&plan.authority).await;
    }
    let Some(s) = sender.as_mut() else {
        return Outcome::ConnError;
    };
    if s.ready().await.is_err() {
        *sender = None;
        return Outcome::ConnError;
    }
    let response = match s.send_request(request).await {
        Ok(r) => r,
        Err(_) => {
            *sender = None;
            return Outcome::ConnError;
        }
    };
    let status = response.status();
    let (parts, mut body) = response.into_parts();
    // Read the body whatever the status, so the connection can carry the next request.
    let mut sha = Sha::new(&SHA256);
    let mut got = 0u64;
    let mut cut = false;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    sha.update(data);
                    got += data.len() as u64;
                }
            }
            Err(_) => {
                cut = true;
                break;
            }
        }
    }
    if !status.is_success() {
        if cut {
            *sender = None;
        }
        return Outcome::Status(status.as_u16());
    }
    if cut {
        *sender = None;
        return Outcome::Cut;
    }
    let got_sha = hex(sha.finish().as_ref());
    let expected = pattern_sha(id, len);
    let h = &parts.headers;
    let mut wrong = Vec::new();
    if header_u64(h, H_ID) != Some(id) {
        wrong.push(format!("id header {:?}", h.get(H_ID)));
    }
    if got != len {
        wrong.push(format!("{got} bytes of {len}"));
    }
    if got_sha != expected {
        wrong.push("body is not this request's".into());
    }
    if !echo {
        if header_u64(h, H_LEN) != Some(len) {
            wrong.push(format!("len header {:?}", h.get(H_LEN)));
        }
        if h.get(H_SHA).and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
            wrong.push("sha header is not this request's".into());
        }
    }
    if wrong.is_empty() {
        Outcome::Ok
    } else {
        *sender = None;
        tally.integrity_examples.push(format!(
            "{} {name} id={id} chunked={chunked}: {}",
            if echo { "POST echo" } else { "GET bytes" },
            wrong.join(", ")
        ));
        Outcome::Integrity
    }
}

// ---------------------------------------------------------------------------------------------
// Hostile clients.

/// Reads until the peer closes or `limit` passes; `true` when the peer closed.
async fn closed_within(tcp: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let until = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(until, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

async fn loris(addr: SocketAddr, count: usize, duration_s: u64, limit_s: u64) -> bool {
    let started = Instant::now();
    let stop = started + Duration::from_secs(duration_s);
    let limit = Duration::from_secs(limit_s);
    let opened = Arc::new(AtomicU64::new(0));
    let closed = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let max_close_ms = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..count {
        let (opened, closed, refused, max_close_ms) = (
            opened.clone(),
            closed.clone(),
            refused.clone(),
            max_close_ms.clone(),
        );
        tasks.spawn(async move {
            let Ok(mut tcp) = TcpStream::connect(addr).await else {
                refused.fetch_add(1, Ordering::Relaxed);
                return;
            };
            opened.fetch_add(1, Ordering::Relaxed);
            let t0 = Instant::now();
            let head = format!("GET /loris{i}/ HTTP/1.1\r\nHost: {addr}\r\nX-Slow: ");
            if tcp.write_all(head.as_bytes()).await.is_err() {
                closed.fetch_add(1, Ordering::Relaxed);
                return;
            }
            // One byte a second: each is progress, so only a deadline on the whole head stops it.
            let mut buf = [0u8; 1024];
            while Instant::now() < stop {
                tokio::select! {
                    r = tcp.read(&mut buf) => match r {
                        Ok(0) | Err(_) => {
                            closed.fetch_add(1, Ordering::Relaxed);
                            max_close_ms.fetch_max(t0.elapsed().as_millis() as u64, Ordering::Relaxed);
                            return;
                        }
                        Ok(_) => {}
                    },
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {
                        if tcp.write_all(b"a").await.is_err() {
                            closed.fetch_add(1, Ordering::Relaxed);
                            max_close_ms.fetch_max(t0.elapsed().as_millis() as u64, Ordering::Relaxed);
                            return;
                        }
                    }
                }
            }
        });
        if i % 256 == 255 {
            // Open them in batches so the accept queue is not what refuses them.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    while tasks.join_next().await.is_some() {}
    let opened = opened.load(Ordering::Relaxed);
    let closed = closed.load(Ordering::Relaxed);
    let max_close = max_close_ms.load(Ordering::Relaxed);
    println!("loris.opened={opened}");
    println!("loris.refused={}", refused.load(Ordering::Relaxed));
    println!("loris.closed_by_relay={closed}");
    println!("loris.max_hold_ms={max_close}");
    let ok = closed == opened && Duration::from_millis(max_close) <= limit;
    println!(
        "loris.verdict={}",
        if ok {
            "PASS".to_string()
        } else {
            format!(
                "FAIL ({} of {opened} still open after {duration_s}s, longest hold {max_close} ms, limit {limit_s}s)",
                opened - closed
            )
        }
    );
    ok
}

/// First line of the peer's answer, or `None` if it closed first.
async fn status_line(tcp: &mut TcpStream, limit: Duration) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    let until = tokio::time::Instant::now() + limit;
    while !buf.contains(&b'\n') && buf.len() < 4096 {
        match tokio::time::timeout_at(until, tcp.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    let line = String::from_utf8_lossy(&buf);
    let line = line.lines().next()?.to_string();
    (!line.is_empty()).then_some(line)
}

fn status_of(line: &Option<String>) -> String {
    match line {
        Some(l) => l.split(' ').nth(1).unwrap_or("junk").to_string(),
        None => "closed".into(),
    }
}

async fn flood(
    addrs: Vec<SocketAddr>,
    oversize: usize,
    garbage: usize,
    offers_per_s: u64,
    duration_s: u64,
) -> bool {
    let answers = Arc::new(std::sync::Mutex::new(BTreeMap::<String, u64>::new()));
    let note = |answers: &Arc<std::sync::Mutex<BTreeMap<String, u64>>>, key: String| {
        *answers.lock().unwrap().entry(key).or_default() += 1;
    };
    let limit = Duration::from_secs(15);
    let permits = Arc::new(tokio::sync::Semaphore::new(128));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..oversize {
        let addr = addrs[i % addrs.len()];
        let (answers, permits) = (answers.clone(), permits.clone());
        tasks.spawn(async move {
            let _p = permits.acquire_owned().await;
            let Ok(mut tcp) = TcpStream::connect(addr).await else {
                return note(&answers, "oversize.refused".into());
            };
            let head = format!(
                "GET /n0/ HTTP/1.1\r\nHost: {addr}\r\nX-Big: {}\r\n\r\n",
                "a".repeat(64 * 1024)
            );
            let _ = tcp.write_all(head.as_bytes()).await;
            let line = status_line(&mut tcp, limit).await;
            note(&answers, format!("oversize.{}", status_of(&line)));
        });
    }
    for i in 0..garbage {
        let addr = addrs[i % addrs.len()];
        let (answers, permits) = (answers.clone(), permits.clone());
        tasks.spawn(async move {
            let _p = permits.acquire_owned().await;
            let Ok(mut tcp) = TcpStream::connect(addr).await else {
                return note(&answers, "garbage.refused".into());
            };
            let mut junk = vec![0u8; fastrand::usize(1..8192)];
            fastrand::fill(&mut junk);
            let _ = tcp.write_all(&junk).await;
            let line = status_line(&mut tcp, limit).await;
            let closed = closed_within(&mut tcp, limit).await;
            note(
                &answers,
                format!(
                    "garbage.{}{}",
                    status_of(&line),
                    if closed { "" } else { ".held_open" }
                ),
            );
        });
    }
    let offers = offers_per_s * duration_s;
    let gap = Duration::from_micros(1_000_000 / offers_per_s.max(1));
    let offer_task = {
        let answers = answers.clone();
        let addrs = addrs.clone();
        tokio::spawn(async move {
            let mut inner = tokio::task::JoinSet::new();
            let mut tick = tokio::time::interval(gap);
            for i in 0..offers {
                tick.tick().await;
                let addr = addrs[i as usize % addrs.len()];
                let answers = answers.clone();
                inner.spawn(async move {
                    let Ok(mut tcp) = TcpStream::connect(addr).await else {
                        return note(&answers, "offer.refused".into());
                    };
                    let auth = if i % 2 == 0 {
                        ""
                    } else {
                        "Authorization: Bearer not-the-token\r\n"
                    };
                    let head = format!(
                        "POST /n{} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: PTTH/0.9\r\nConnection: Upgrade\r\n{auth}Content-Length: 0\r\n\r\n",
                        i % 1000
                    );
                    let _ = tcp.write_all(head.as_bytes()).await;
                    let line = status_line(&mut tcp, limit).await;
                    note(&answers, format!("offer.{}", status_of(&line)));
                });
            }
            while inner.join_next().await.is_some() {}
        })
    };
    while tasks.join_next().await.is_some() {}
    let _ = offer_task.await;
    let answers = answers.lock().unwrap().clone();
    let mut bad = Vec::new();
    for (k, n) in &answers {
        println!("flood.{k}={n}");
        // An unauthenticated offer that is accepted (101) or a socket the relay never closes
        // is a defect; everything else is a refusal, which is what a flood should get.
        if k == "offer.101" || k.ends_with(".held_open") || k.ends_with(".200") {
            bad.push(format!("{n} {k}"));
        }
    }
    if bad.is_empty() {
        println!("flood.verdict=PASS");
        true
    } else {
        println!("flood.verdict=FAIL ({})", bad.join("; "));
        false
    }
}

// ---------------------------------------------------------------------------------------------
// Long bodies.

async fn big(base: &str, name: &str, bytes: u64) -> bool {
    let addr = base.trim_start_matches("http://").trim_end_matches('/');
    let up_id = fastrand::u64(1..u64::MAX / 2);
    let down_id = up_id + 1;
    let upload = async {
        let t0 = Instant::now();
        let mut s = connect(addr).await.ok_or("connect failed")?;
        let mut req = Request::post(format!("/{name}/sink?id={up_id}"))
            .body(GenBody::new(up_id, bytes, MAX_FRAME, None, true).boxed())
            .expect("request");
        req.headers_mut().insert(
            http::header::HOST,
            HeaderValue::try_from(addr).expect("host"),
        );
        let res = s.send_request(req).await.map_err(|e| e.to_string())?;
        let status = res.status();
        let body = res
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let answer = String::from_utf8_lossy(&body).to_string();
        let expected = format!("{bytes} {}", pattern_sha(up_id, bytes));
        if status != StatusCode::OK || answer != expected {
            return Err(format!(
                "upload: {status}, upstream got {answer:?}, sent {expected:?}"
            ));
        }
        Ok::<_, String>(t0.elapsed())
    };
    let download = async {
        let t0 = Instant::now();
        let mut s = connect(addr).await.ok_or("connect failed")?;
        let mut req = Request::get(format!("/{name}/bytes?id={down_id}&len={bytes}"))
            .body(http_body_util::Empty::new().map_err(|n| match n {}).boxed())
            .expect("request");
        req.headers_mut().insert(
            http::header::HOST,
            HeaderValue::try_from(addr).expect("host"),
        );
        let res = s.send_request(req).await.map_err(|e| e.to_string())?;
        let status = res.status();
        let header = res
            .headers()
            .get(H_SHA)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let mut body = res.into_body();
        let mut sha = Sha::new(&SHA256);
        let mut got = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("download cut after {got} bytes: {e}"))?;
            if let Some(d) = frame.data_ref() {
                sha.update(d);
                got += d.len() as u64;
            }
        }
        let got_sha = hex(sha.finish().as_ref());
        if status != StatusCode::OK || got != bytes || got_sha != header {
            return Err(format!(
                "download: {status}, {got} of {bytes} bytes, sha {got_sha} vs header {header}"
            ));
        }
        if got_sha != pattern_sha(down_id, bytes) {
            return Err("download: the body and its header are another request's".into());
        }
        Ok::<_, String>(t0.elapsed())
    };
    let (up, down) = tokio::join!(upload, download);
    let mut ok = true;
    for (what, r) in [("upload", up), ("download", down)] {
        match r {
            Ok(t) => {
                println!("big.{what}_s={:.1}", t.as_secs_f64());
                println!(
                    "big.{what}_mib_s={:.0}",
                    bytes as f64 / (1 << 20) as f64 / t.as_secs_f64()
                );
                println!("big.{what}_sha256=match");
            }
            Err(e) => {
                println!("big.{what}_error={e}");
                ok = false;
            }
        }
    }
    println!("big.verdict={}", if ok { "PASS" } else { "FAIL" });
    ok
}

// ---------------------------------------------------------------------------------------------
// The relay's count of agent connections.

async fn agent_connections(admin: SocketAddr) -> Option<u64> {
    let mut tcp = TcpStream::connect(admin).await.ok()?;
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_string(&mut text))
        .await
        .ok()?
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("ptth_agent_connections "))
        .and_then(|v| v.trim().parse().ok())
}

async fn wait_parked(admin: SocketAddr, at_least: u64, timeout_s: u64) -> bool {
    let t0 = Instant::now();
    let stop = t0 + Duration::from_secs(timeout_s);
    let mut last = 0;
    // The count at each whole second, to show how a storm unfolds.
    let mut timeline = Vec::new();
    // A poll that takes long is the relay's admin endpoint stalling: say so.
    let mut slowest = Duration::ZERO;
    let mut failed_polls = 0;
    loop {
        let asked = Instant::now();
        let answer = agent_connections(admin).await;
        slowest = slowest.max(asked.elapsed());
        failed_polls += u32::from(answer.is_none());
        if let Some(n) = answer {
            last = n;
            let second = t0.elapsed().as_secs();
            if timeline.len() as u64 <= second {
                timeline.push(format!("{second}s:{n}"));
            }
            if n >= at_least {
                println!("parked={n}");
                println!("parked_after_ms={}", t0.elapsed().as_millis());
                println!("parked_timeline={}", timeline.join(","));
                println!("slowest_poll_ms={}", slowest.as_millis());
                println!("failed_polls={failed_polls}");
                return true;
            }
        }
        if Instant::now() >= stop {
            println!("parked={last}");
            println!("parked_after_ms=never");
            println!("parked_timeline={}", timeline.join(","));
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
