//! L7 forwarding: one client request → pick a backend → forward → stream the answer back.
//!
//! Per request: load the pool snapshot once, clean the headers (hop-by-hop out, X-Forwarded-*
//! in), then try backends chosen by the pool's strategy. Failover follows the README's "Forwarding" section: a failed
//! connect is always retried on another backend (the request has not left the proxy); a request
//! that may have reached a backend is replayed only when it is idempotent, has no body and no
//! response byte has reached the client — which here is always true before the response head
//! arrives, since nothing is sent to the client until then. A try that times out is such a
//! case too: an idempotent bodiless request goes on to the next backend, and the client gets
//! 504 only when the last try timed out.
//!
//! Every connect failure, reset or timeout is also a passive health mark (see `health`): after
//! `fall` in a row the backend leaves rotation without waiting for the next probe.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{request, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Empty, Full};
use hyper::body::{Body, Incoming};
use hyper::upgrade::OnUpgrade;
use tokio::time::{timeout_at, Instant};

use super::failover::Failover;
use super::limits;
use super::local;
use super::response_body::{BodyError, UpstreamBody};
use crate::access_log::{AccessLog, HttpEntry};
use crate::backend::{Backend, InFlight, TryTimer};
use crate::http1::headers::{
    add_forwarding_value, is_upgrade_request, request_id, strip_hop_by_hop, Forwarded, X_REQUEST_ID,
};
use crate::metrics::Metrics;
use crate::pool::{Pool, Route};
use crate::shutdown::Signal;
use crate::upstream::h1_client::OwnBody;
use crate::upstream::{connect, connect_own, ClientBody, ConnectError, Sender, UpBody};

/// Body of every response the proxy sends: a backend's stream, or the proxy's own short text.
pub type RespBody = Either<UpstreamBody, Full<Bytes>>;

/// The HTTP proxy service of one listener.
pub struct HttpProxy {
    pub listener: Arc<str>,
    /// The pool this listener balances over, loaded once per request.
    pub route: Route,
    /// `"http"` or `"https"`, for X-Forwarded-Proto.
    pub scheme: &'static str,
    pub metrics: Arc<Metrics>,
    /// This listener's access log, when it has one.
    pub access_log: Option<Arc<AccessLog>>,
    /// `max_uri_bytes` and `max_body_bytes`, checked before anything is forwarded.
    pub limits: limits::Limits,
    /// The listener's `idle_timeout`: an upgraded tunnel (WebSocket) with no byte either way
    /// for this long is closed.
    pub tunnel_idle: std::time::Duration,
}

/// How one try at one backend ended, when it did not produce a response.
enum TryFailure {
    /// No connection could be made; the request never left the proxy.
    Connect(ConnectError),
    /// The request may have been (partly) written; `stale` when it went out on a reused pooled
    /// connection that the backend had closed, which says nothing about the backend's health.
    Sent { error: BodyError, stale: bool },
    /// No response head within `request_timeout`.
    Timeout,
}

/// How the request goes out. A bodiless request that asks for no upgrade is written by lb's own
/// client from its head, which every try can use again (see `h1_client`). A request with a body,
/// or an upgrade, goes through hyper's client; it can be tried again only while hyper hands it
/// back unsent.
enum Outgoing {
    Head(request::Parts, Forwarded),
    Streamed(Option<Request<UpBody>>),
}

fn is_idempotent(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE)
}

impl HttpProxy {
    /// Serves one request. Never fails: every problem becomes a status code. Counts it in
    /// `lb_requests_total` once its status is known; its duration is observed when the
    /// response ends (for a streamed body, when the last byte was passed on). `tunnel_drain`,
    /// given for requests that may upgrade, is held by the tunnel so that shutdown waits for it.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        client: SocketAddr,
        client_ip: HeaderValue,
        tunnel_drain: Option<Signal>,
    ) -> Result<Response<RespBody>, Infallible> {
        let started = std::time::Instant::now();
        let pool = self.route.load().load_full();
        // Only with an access log: what the line needs that `forward` consumes.
        let logged = self.access_log.as_ref().map(|_| {
            (req.method().clone(), req.uri().path_and_query().map_or_else(|| req.uri().to_string(), |p| p.to_string()))
        });
        let mut retries = 0;
        // Kept from the client or made here; it goes to the backend, back to the client and
        // into the access log.
        let request_id = request_id(req.headers());
        // A head that asks to switch protocols (or CONNECT) ends what lb judges of the
        // connection's bytes (see framing.rs): unless it becomes a tunnel, the connection ends
        // with its answer, so that nothing after it goes on unjudged.
        let switches = (tunnel_drain.is_some() || req.method() == Method::CONNECT) && req.version() < Version::HTTP_2;
        let (mut resp, backend) =
            self.forward(req, client, client_ip, tunnel_drain, &pool, started, &mut retries, &request_id).await;
        if switches && resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            resp.headers_mut().insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp.headers_mut().insert(X_REQUEST_ID.clone(), request_id.clone());
        let code = resp.status();
        match &backend {
            Some(b) => b.metrics().requests.with_label_values(&[&*self.listener, code.as_str()]).inc(),
            None => {
                let labels = [&*self.listener, &*pool.name];
                self.metrics.local_requests.with_label_values(&[labels[0], labels[1], code.as_str()]).inc();
                self.metrics.local_duration.with_label_values(&labels).observe(started.elapsed().as_secs_f64());
            }
        }
        if let (Some(log), Some((method, path))) = (&self.access_log, logged) {
            let entry = HttpEntry {
                listener: self.listener.clone(),
                client,
                method,
                path,
                backend: backend.as_ref().map(|b| b.name.clone()).unwrap_or_default(),
                started,
                retries,
                request_id,
            };
            match resp.body_mut() {
                // Logged when the body has been passed on, with its real size and duration.
                Either::Left(streamed) => streamed.log_at_end(log.clone(), entry, code.as_u16()),
                Either::Right(full) => log.http(&entry, code.as_u16(), full.size_hint().exact().unwrap_or(0)),
            }
        }
        Ok(resp)
    }

    /// Picks, forwards and retries; returns the response and the backend that gave it (`None`
    /// when lb answered itself).
    #[allow(clippy::too_many_arguments)]
    async fn forward(
        &self,
        mut req: Request<Incoming>,
        client: SocketAddr,
        client_ip: HeaderValue,
        tunnel_drain: Option<Signal>,
        pool: &Arc<Pool>,
        started: std::time::Instant,
        retries: &mut usize,
        request_id: &HeaderValue,
    ) -> (Response<RespBody>, Option<Arc<Backend>>) {
        // Hostile or oversized requests are answered here, before any backend sees a byte.
        let version = req.version();
        if let Err(refusal) = limits::check(&req, &self.limits) {
            return (refusal.response(version), None);
        }
        let upgrade = req.version() == Version::HTTP_11 && is_upgrade_request(req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        let host = match target(&mut parts, version) {
            Ok(host) => host,
            Err(refusal) => return (refusal.response(version), None),
        };
        // An HTTP/1.0 client may send no Host at all, but backends get HTTP/1.1, where it is
        // required: such requests name the backend they go to (as nginx does by default).
        let needs_host = host.is_none();
        // consistent_hash: hash the request's key while the headers are still the client's
        // (`None` at no cost for every other strategy).
        let key_hash = pool.kind.request_key_hash(&parts.headers, &parts.uri, client.ip());
        origin_form(&mut parts);
        let idempotent = is_idempotent(&parts.method);
        let mut outgoing = self.outgoing(parts, body, upgrade, client_ip, host, request_id);
        // A stale pooled connection (or a failed try) may replay only idempotent bodiless heads.
        let replayable_head = matches!(outgoing, Outgoing::Head(..)) && idempotent;
        let host_for =
            |backend: &Backend| needs_host.then(|| HeaderValue::from_str(&backend.addr.to_string()).ok()).flatten();

        let mut failover = Failover::new(pool, key_hash, retries);
        let mut stale_retry_used = false;
        let mut last_timed_out = false;
        loop {
            let Some(idx) = failover.next(&self.metrics) else {
                return (gave_up(failover.tried_any(), last_timed_out, &pool.name), None);
            };
            let backend = &pool.backends[idx];
            if matches!(outgoing, Outgoing::Streamed(None)) {
                return (local::bad_gateway(), None);
            }
            let in_flight = pool.acquire(idx);
            // least_time: this try's time to the response head feeds the backend's estimate.
            let timer = TryTimer::start(pool.kind);
            let (failure, unsent) = match try_backend(pool, backend, &mut outgoing, host_for(backend)).await {
                Ok(answer) => {
                    backend.health().record_answer();
                    // A 5xx counts as a failure for least_time: failing fast must not look fast.
                    if answer.status().is_server_error() {
                        timer.failed(backend, pool.settings.request_timeout);
                    } else {
                        timer.succeeded(backend);
                    }
                    let upgraded = client_upgrade.map(|u| (u, tunnel_drain));
                    let resp = self.answered(answer, upgrade, upgraded, in_flight, started);
                    return (resp, Some(backend.clone()));
                }
                Err(failed) => failed,
            };
            drop(in_flight);
            last_timed_out = matches!(failure, TryFailure::Timeout);
            let replay_stale = !stale_retry_used && replayable_head;
            match judge_failure(pool, backend, failure, replay_stale) {
                Judged::ReplayStale => {
                    stale_retry_used = true;
                    continue;
                }
                Judged::ClientFault(refusal) => return (refusal.response(version), None),
                Judged::BackendFault => {}
            }
            // least_time: a failed try counts as one that took request_timeout (the
            // stale-connection replay above is not the backend's fault and skips this).
            timer.failed(backend, pool.settings.request_timeout);
            if !failover.failed(idx) || !(unsent || replayable_head) {
                return (gave_up(true, last_timed_out, &pool.name), None);
            }
        }
    }

    /// How the request goes out (see [`Outgoing`]), with the forwarding headers.
    #[inline]
    fn outgoing(
        &self,
        mut parts: request::Parts,
        body: Incoming,
        upgrade: bool,
        client_ip: HeaderValue,
        host: Option<HeaderValue>,
        request_id: &HeaderValue,
    ) -> Outgoing {
        let bodiless = body.is_end_stream();
        if bodiless && !upgrade && parts.method != Method::CONNECT {
            // Header hygiene happens as lb's own client writes the head.
            let request_id = Some(request_id.clone());
            return Outgoing::Head(parts, Forwarded { client: client_ip, proto: self.scheme, host, request_id });
        }
        strip_hop_by_hop(&mut parts.headers, upgrade);
        add_forwarding_value(&mut parts.headers, &client_ip, self.scheme, host.as_ref(), Some(request_id));
        let body: UpBody = if bodiless {
            Either::Right(Empty::new())
        } else {
            Either::Left(ClientBody::new(body, self.limits.max_body_bytes))
        };
        Outgoing::Streamed(Some(Request::from_parts(parts, body)))
    }

    /// The client's response from a backend's answer: its head cleaned of hop-by-hop headers
    /// and its body streamed (counted in flight until the end); a `101` to an upgrade starts
    /// the tunnel between the two upgraded connections.
    #[inline]
    fn answered(
        &self,
        answer: Answer,
        upgrade: bool,
        upgraded: Option<(OnUpgrade, Option<Signal>)>,
        in_flight: InFlight,
        started: std::time::Instant,
    ) -> Response<RespBody> {
        let backend = in_flight.backend().clone();
        let duration = backend.metrics().duration.with_label_values(&[&*self.listener]);
        let (rp, body) = match answer {
            // Hop-by-hop headers were left out as the head was parsed.
            Answer::Own(rp, body) => (rp, UpstreamBody::own(body, in_flight, (duration, started))),
            Answer::Hyper(mut resp, sender) => {
                if upgrade && resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                    let backend_upgrade = hyper::upgrade::on(&mut resp);
                    if let Some((client_upgrade, drain)) = upgraded {
                        tokio::spawn(super::tcp::tunnel_upgraded(
                            client_upgrade,
                            backend_upgrade,
                            in_flight,
                            self.tunnel_idle,
                            drain,
                        ));
                    }
                    let (mut rp, _) = resp.into_parts();
                    strip_hop_by_hop(&mut rp.headers, true);
                    return Response::from_parts(rp, Either::Right(Full::default()));
                }
                let (mut rp, rbody) = resp.into_parts();
                // Framed by Transfer-Encoding, a Content-Length beside it is wrong
                // (RFC 9112 §6.3) and must not reach the client.
                if rp.headers.contains_key(TRANSFER_ENCODING) {
                    rp.headers.remove(CONTENT_LENGTH);
                }
                strip_hop_by_hop(&mut rp.headers, false);
                let reuse = (!upgrade).then_some(sender);
                (rp, UpstreamBody::hyper(rbody, reuse, in_flight, (duration, started)))
            }
        };
        Response::from_parts(rp, Either::Left(body))
    }
}

/// One try at `backend`: lb's own client for a bodiless head, hyper's for a streamed request
/// (which comes back for another try only if hyper hands it back unsent). On failure, says
/// whether the request provably never left the proxy.
async fn try_backend(
    pool: &Pool,
    backend: &Backend,
    outgoing: &mut Outgoing,
    host: Option<HeaderValue>,
) -> Result<Answer, (TryFailure, bool)> {
    match outgoing {
        Outgoing::Head(parts, fwd) => {
            exchange_own(pool, backend, parts, fwd, host).await.map(|(rp, body)| Answer::Own(rp, body))
        }
        Outgoing::Streamed(pending) => {
            // Only a request hyper handed back unsent is tried again: the caller gives up on a
            // streamed request that was not (and checks before each try), so this is not
            // reached; were it, it is no fault of the backend's (`stale`) and nothing to replay.
            let Some(mut req) = pending.take() else {
                return Err((TryFailure::Sent { error: "request already sent".into(), stale: true }, false));
            };
            if let Some(h) = host {
                req.headers_mut().insert(HOST, h);
            }
            match exchange(pool, backend, req).await {
                Ok((resp, sender)) => Ok(Answer::Hyper(resp, sender)),
                Err((failure, unsent)) => {
                    let back = unsent.is_some();
                    *pending = unsent;
                    Err((failure, back))
                }
            }
        }
    }
}

/// The host the request asks for, checked: a request target's authority wins over a `Host`
/// header (RFC 9112 §3.2.2 for absolute-form targets; HTTP/2 clients send `:authority` instead
/// of `Host`), and becomes the `Host` sent on. Userinfo (`user@`) is no part of a host. Two
/// `Host` headers, none on HTTP/1.1, or an empty or malformed one are refused (RFC 9112 §3.2)
/// rather than guessed at (the authority form was checked by the URI parser).
#[inline]
fn target(parts: &mut request::Parts, version: Version) -> Result<Option<HeaderValue>, limits::Refusal> {
    let authority = parts.uri.authority().and_then(|a| {
        let hostport = a.as_str().rsplit('@').next().unwrap_or_default();
        HeaderValue::from_str(hostport).ok()
    });
    // One lookup finds the Host header and a second one, which is refused.
    let mut hosts = parts.headers.get_all(HOST).iter();
    let (first_host, more_hosts) = (hosts.next().cloned(), hosts.next().is_some());
    if more_hosts {
        return Err(limits::Refusal::DuplicateHost);
    }
    let host = match authority {
        Some(a) => {
            if first_host.as_ref() != Some(&a) {
                parts.headers.insert(HOST, a.clone());
            }
            Some(a)
        }
        None => first_host,
    };
    match &host {
        // HTTP/1.0 may name no host (the backend's address is sent); HTTP/1.1 must (RFC 9112
        // §3.2), and an HTTP/2 request without `:authority` or `Host` is held to the same rule
        // rather than letting HTTP/2 be the way around it.
        None if version >= Version::HTTP_11 => Err(limits::Refusal::MissingHost),
        Some(h) if !limits::valid_host(h.as_bytes()) => Err(limits::Refusal::InvalidHost),
        _ => Ok(host),
    }
}

/// Backends get origin-form over HTTP/1.1 whatever the client spoke.
#[inline]
fn origin_form(parts: &mut request::Parts) {
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        parts.uri = match parts.uri.path_and_query() {
            Some(pq) if pq.as_str().starts_with('/') || pq.as_str() == "*" => Uri::from(pq.clone()),
            // `http://host?q=1` has the query but no path: the origin form is `/?q=1`
            // (which is how a path-and-query without a path displays).
            Some(pq) => Uri::try_from(pq.to_string()).unwrap_or_else(|_| Uri::from_static("/")),
            None => Uri::from_static("/"),
        };
    }
    parts.version = Version::HTTP_11;
}

/// lb's answer when no try succeeded: `503` when no backend was in rotation at all, else `504`
/// when the last try timed out and `502` otherwise.
#[inline]
fn gave_up(tried_any: bool, last_timed_out: bool, pool: &str) -> Response<RespBody> {
    if !tried_any {
        local::no_backend(pool)
    } else if last_timed_out {
        local::gateway_timeout()
    } else {
        local::bad_gateway()
    }
}

/// What a failed try means for the request.
enum Judged {
    /// A pooled connection the backend had closed: replay once on a fresh one, same backend.
    ReplayStale,
    /// The client's body broke off or outgrew `max_body_bytes`: answer it, try nothing more.
    ClientFault(limits::Refusal),
    /// The backend failed (marked passively); another may be tried.
    BackendFault,
}

/// Logs a failed try, marks the backend passively where it is at fault, and says what next.
#[inline]
fn judge_failure(pool: &Pool, backend: &Backend, failure: TryFailure, replay_stale: bool) -> Judged {
    match failure {
        TryFailure::Connect(e) => {
            tracing::warn!(pool = %pool.name, backend = %backend.name, error = %e, "backend connect failed");
            if !limits::out_of_descriptors(&e) {
                pool.passive_failure(backend, "connect failed");
            }
        }
        TryFailure::Sent { error, stale: true } if replay_stale => {
            // The backend closed an idle pooled connection as we reused it. Not a backend
            // fault: replay once on a fresh connection to the same one.
            tracing::debug!(pool = %pool.name, backend = %backend.name, error = %error, "stale upstream connection; replaying");
            backend.conns().clear();
            return Judged::ReplayStale;
        }
        TryFailure::Sent { error, stale } => {
            if let Some(refusal) = limits::client_fault(&*error) {
                tracing::debug!(pool = %pool.name, backend = %backend.name, error = %error, "request body failed");
                return Judged::ClientFault(refusal);
            }
            tracing::warn!(pool = %pool.name, backend = %backend.name, error = %error, "backend failed mid-request");
            // A pooled connection the backend closed as it was reused says nothing of its
            // health, even when the request cannot be replayed.
            if !stale {
                pool.passive_failure(backend, "reset mid-request");
            }
        }
        TryFailure::Timeout => {
            tracing::warn!(pool = %pool.name, backend = %backend.name, timeout = ?pool.settings.request_timeout, "backend timed out");
            pool.passive_failure(backend, "request timed out");
        }
    }
    Judged::BackendFault
}

/// A backend's response head, from either client.
enum Answer {
    Own(http::response::Parts, OwnBody),
    Hyper(Response<Incoming>, Sender),
}

impl Answer {
    fn status(&self) -> StatusCode {
        match self {
            Answer::Own(parts, _) => parts.status,
            Answer::Hyper(resp, _) => resp.status(),
        }
    }
}

/// One try at one backend with lb's own client: a pooled or new connection, the head, the
/// response head. On failure, says whether the request provably never left the proxy.
async fn exchange_own(
    pool: &Pool,
    backend: &Backend,
    parts: &request::Parts,
    fwd: &Forwarded,
    host: Option<HeaderValue>,
) -> Result<(http::response::Parts, OwnBody), (TryFailure, bool)> {
    let deadline = Instant::now() + pool.settings.request_timeout;
    loop {
        let (conn, reused) = match backend.conns().take_own() {
            Some(c) => (c, true),
            // Boxed for the same reason as in `exchange`.
            None => match Box::pin(connect_own(backend.addr, backend.tls(), pool.settings.connect_timeout)).await {
                Ok(c) => (c, false),
                Err(e) => return Err((TryFailure::Connect(e), true)),
            },
        };
        match timeout_at(deadline, conn.exchange(parts, host.as_ref(), fwd)).await {
            Err(_) => return Err((TryFailure::Timeout, false)),
            Ok(Ok(answer)) => return Ok(answer),
            // Refused before a byte was taken: the next connection may be fine.
            Ok(Err(f)) if f.unsent && reused => continue,
            Ok(Err(f)) => {
                let stale = reused && f.no_answer;
                return Err((TryFailure::Sent { error: f.error.into(), stale }, f.unsent));
            }
        }
    }
}

/// One try at one backend: a pooled or new connection, the request, the response head.
/// On failure, gives the request back when it provably never left the proxy.
#[allow(clippy::result_large_err)]
async fn exchange(
    pool: &Pool,
    backend: &Backend,
    mut req: Request<UpBody>,
) -> Result<(Response<Incoming>, Sender), (TryFailure, Option<Request<UpBody>>)> {
    let deadline = Instant::now() + pool.settings.request_timeout;
    loop {
        let (mut sender, reused) = match backend.conns().take() {
            Some(s) => (s, true),
            // Boxed: the connect path (TCP, TLS and HTTP handshakes) is large and rare on a warm
            // pool; inline it would grow every request's future to kilobytes, which hyper copies
            // into place per request (measured: 16% of all instructions).
            None => match Box::pin(connect(backend.addr, backend.tls(), pool.settings.connect_timeout)).await {
                Ok(s) => (s, false),
                Err(e) => return Err((TryFailure::Connect(e), Some(req))),
            },
        };
        if sender.ready().await.is_err() {
            if reused {
                continue; // closed while idle; take the next one
            }
            return Err((TryFailure::Connect(ConnectError::Closed(backend.addr)), Some(req)));
        }
        match timeout_at(deadline, sender.try_send_request(req)).await {
            Err(_) => return Err((TryFailure::Timeout, None)),
            Ok(Ok(resp)) => return Ok((resp, sender)),
            Ok(Err(mut e)) => match e.take_message() {
                // Never written: safe to send again on another connection.
                Some(back) if reused => req = back,
                Some(back) => {
                    return Err((TryFailure::Sent { error: e.into_error().into(), stale: false }, Some(back)))
                }
                None => return Err((TryFailure::Sent { error: e.into_error().into(), stale: reused }, None)),
            },
        }
    }
}
