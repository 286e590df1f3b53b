//! The HTTP address of a coordinator (`wmr coordinator --http`, `wmr run
//! --http`): the status pages ([`pages`]) and Prometheus metrics at
//! `/metrics`, behind the same tokens as the gRPC API; and a worker's own
//! `/metrics` (`wmr worker --metrics`).
//!
//! With a tokens file, every request carries a token: `Authorization:
//! Bearer TOKEN` (Prometheus, curl), or the cookie `/login` sets (browsers).
//! The pages show a client only its own jobs, as the gRPC API does, and an
//! admin every job. `/metrics` (cluster-wide totals) is for admins and
//! `metrics` tokens (Prometheus), which read nothing else.

pub mod pages;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;

use crate::JobId;
use crate::coordinator::metrics::CONTENT_TYPE;
use crate::coordinator::service::Service;
use crate::identity::{Identity, Role};
use crate::protocol::status::JobStatusDoc;
use crate::rpc::auth::Tokens;
use crate::spawn::SpawnedTask;

/// The cookie `/login` sets: the token, percent-encoded.
const TOKEN_COOKIE: &str = "wmr_token";

/// An HTTP server running in the background; dropped, it stops.
pub struct HttpServer {
    _serving: SpawnedTask<std::io::Result<()>>,
    /// The address it listens on.
    pub addr: SocketAddr,
}

/// Serve the status pages and `/metrics` of `service` on `addr` (see
/// [`serve_coordinator`]), over TLS with `tls`, until the returned server
/// is dropped.
///
/// # Errors
/// If the address can't be bound.
pub async fn start_coordinator(
    addr: SocketAddr,
    service: ServiceSlot,
    tokens: Option<Arc<Tokens>>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> std::io::Result<HttpServer> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let serving = match tls {
        None => SpawnedTask::spawn(serve_coordinator(service, tokens, listener, std::future::pending())),
        Some(tls) => SpawnedTask::spawn(serve_https(coordinator_routes(service, tokens, true), listener, tls)),
    };
    Ok(HttpServer {
        addr,
        _serving: serving,
    })
}

/// Connections served at once over HTTPS; more wait to be accepted.
const HTTPS_CONNECTIONS: usize = 256;
/// How long a client has for its TLS handshake, and for each request's headers.
const HTTPS_HANDSHAKE: std::time::Duration = std::time::Duration::from_secs(10);

/// Serve `app` over TLS on `listener`: each connection on its own task (a
/// slow handshake holds up no other), at most [`HTTPS_CONNECTIONS`] at once.
async fn serve_https(
    app: Router,
    listener: tokio::net::TcpListener,
    tls: tokio_rustls::TlsAcceptor,
) -> std::io::Result<()> {
    let slots = Arc::new(tokio::sync::Semaphore::new(HTTPS_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return Ok(());
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, say: wait, and accept again.
                tracing::warn!(error = %e, "accepting an HTTPS connection failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let (tls, app) = (tls.clone(), app.clone());
        // Detached: the task ends with its connection, and holds its slot
        // until then.
        SpawnedTask::spawn(async move {
            let _slot = slot;
            let stream = match tokio::time::timeout(HTTPS_HANDSHAKE, tls.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake refused"),
                Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
            };
            let served = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HTTPS_HANDSHAKE)
                .serve_connection(
                    hyper_util::rt::TokioIo::new(stream),
                    hyper_util::service::TowerToHyperService::new(app),
                )
                .await;
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "an HTTPS connection ended with an error");
            }
        })
        .detach();
    }
}

/// Serve a worker's metrics, `text()`, on `addr` (see [`serve_metrics`])
/// until the returned server is dropped.
///
/// # Errors
/// If the address can't be bound.
pub async fn start_metrics(
    addr: SocketAddr,
    text: Arc<dyn Fn() -> String + Send + Sync>,
) -> std::io::Result<HttpServer> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    Ok(HttpServer {
        addr: listener.local_addr()?,
        _serving: SpawnedTask::spawn(serve_metrics(text, listener, std::future::pending())),
    })
}

/// The service the pages show, once there is one: a standby coordinator
/// serves its HTTP address (so probes see it alive) before it takes over.
pub type ServiceSlot = Arc<std::sync::OnceLock<Arc<Service>>>;

#[derive(Clone)]
struct Web {
    service: ServiceSlot,
    tokens: Option<Arc<Tokens>>,
    /// Served over TLS: the login cookie is marked Secure.
    https: bool,
}

impl Web {
    /// The service, or the answer that there is none yet.
    fn service(&self) -> Result<&Arc<Service>, Box<Response>> {
        self.service.get().ok_or_else(|| {
            Box::new(
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "this coordinator is a standby: it serves once it takes over the store\n",
                )
                    .into_response(),
            )
        })
    }
}

/// Serve the status pages and `/metrics` of `service` on `listener` until
/// `shutdown` completes. With `tokens`, every request must carry one.
/// `/healthz` answers while the process lives; `/readyz`, and every page,
/// only once `service` is set.
///
/// # Errors
/// If accepting connections fails.
pub async fn serve_coordinator(
    service: ServiceSlot,
    tokens: Option<Arc<Tokens>>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, coordinator_routes(service, tokens, false))
        .with_graceful_shutdown(shutdown)
        .await
}

fn coordinator_routes(service: ServiceSlot, tokens: Option<Arc<Tokens>>, https: bool) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/jobs/{id}", get(job))
        .route("/metrics", get(metrics))
        .route("/login", get(login_form).post(login))
        .route("/logout", get(logout))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(Web { service, tokens, https })
}

/// Serve `text()` as `/metrics` on `listener` until `shutdown` completes:
/// a worker's metrics, which carry no job's data and need no token.
///
/// # Errors
/// If accepting connections fails.
pub async fn serve_metrics(
    text: Arc<dyn Fn() -> String + Send + Sync>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let text = text.clone();
                async move { ([(header::CONTENT_TYPE, CONTENT_TYPE)], text()) }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }));
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

/// Who calls: anyone where no tokens are configured; else the identity
/// of the bearer token or the login cookie, if either is valid.
fn identify(web: &Web, headers: &HeaderMap) -> Option<Identity> {
    let Some(tokens) = &web.tokens else {
        return Some(Identity::anonymous());
    };
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        return tokens.identify(value.as_bytes()).cloned();
    }
    let token = cookie(headers, TOKEN_COOKIE)?;
    tokens.identify(format!("Bearer {token}").as_bytes()).cloned()
}

/// The value of cookie `name`, percent-decoded.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| {
            url::form_urlencoded::parse(format!("t={v}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        })
}

/// The caller of a page, or the answer refusing it: a login form for no or
/// a wrong token, forbidden for a worker's or a metrics reader's.
fn page_caller(web: &Web, headers: &HeaderMap) -> Result<Identity, Box<Response>> {
    match identify(web, headers) {
        Some(who) if matches!(who.role, Role::Worker | Role::Metrics) => Err(Box::new(
            (
                StatusCode::FORBIDDEN,
                Html(
                    pages::message("This token does not read the status pages; log in with a client's token.")
                        .into_string(),
                ),
            )
                .into_response(),
        )),
        Some(who) => Ok(who),
        None => Err(Box::new(
            (
                StatusCode::UNAUTHORIZED,
                Html(pages::login(cookie(headers, TOKEN_COOKIE).is_some()).into_string()),
            )
                .into_response(),
        )),
    }
}

/// The caller of a page and the service it shows, or the answer refusing
/// it (see [`page_caller`] and [`Web::service`]).
fn page_context<'a>(web: &'a Web, headers: &HeaderMap) -> Result<(Identity, &'a Arc<Service>), Box<Response>> {
    let who = page_caller(web, headers)?;
    Ok((who, web.service()?))
}

/// Wait until what a page is about to show is journaled, as gRPC status
/// reads do ([`Service::journaled`]); a 503 if the journal failed.
async fn journaled(service: &Service) -> Result<(), Box<Response>> {
    service.journaled().await.map_err(|e| {
        let page = pages::message(&format!("The coordinator cannot write its journal: {}", e.message));
        Box::new((StatusCode::SERVICE_UNAVAILABLE, Html(page.into_string())).into_response())
    })
}

async fn index(State(web): State<Web>, headers: HeaderMap) -> Response {
    let (who, service) = match page_context(&web, &headers) {
        Ok(found) => found,
        Err(refused) => return *refused,
    };
    let jobs = service.jobs_view(&who, |j| JobStatusDoc::of(j, false));
    let workers = service.workers_view();
    if let Err(refused) = journaled(service).await {
        return *refused;
    }
    Html(pages::index(&jobs, &workers, &who, web.tokens.is_some()).into_string()).into_response()
}

async fn job(State(web): State<Web>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let (who, service) = match page_context(&web, &headers) {
        Ok(found) => found,
        Err(refused) => return *refused,
    };
    let found = JobId::parse(&id).and_then(|id| service.job_view(&who, &id, |j| JobStatusDoc::of(j, true)).ok());
    if let Err(refused) = journaled(service).await {
        return *refused;
    }
    match found {
        Some(doc) => {
            Html(pages::job(&doc, crate::protocol::status::millis(std::time::SystemTime::now())).into_string())
                .into_response()
        }
        // Another tenant's job is as absent as one that never existed.
        None => (
            StatusCode::NOT_FOUND,
            Html(pages::message(&format!("No job {id} here that you may see.")).into_string()),
        )
            .into_response(),
    }
}

async fn metrics(State(web): State<Web>, headers: HeaderMap) -> Response {
    match identify(&web, &headers) {
        Some(who) if matches!(who.role, Role::Admin | Role::Metrics) => {}
        Some(_) => {
            return (
                StatusCode::FORBIDDEN,
                "the metrics are for `metrics` and `admin` tokens; give Prometheus a TOKEN,prometheus,metrics line \
                 in the tokens file\n",
            )
                .into_response();
        }
        None => {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "a token is required: send `Authorization: Bearer TOKEN` with a `metrics` token from the \
                 coordinator's tokens file\n",
            )
                .into_response();
        }
    }
    match web.service() {
        Ok(service) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], service.metrics_text()).into_response(),
        Err(standby) => *standby,
    }
}

async fn ready(State(web): State<Web>) -> Response {
    match web.service() {
        Ok(_) => "ready\n".into_response(),
        Err(standby) => *standby,
    }
}

async fn login_form() -> Html<String> {
    Html(pages::login(false).into_string())
}

#[derive(serde::Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(State(web): State<Web>, Form(form): Form<LoginForm>) -> Response {
    let token = form.token.trim();
    let valid = match &web.tokens {
        None => true,
        Some(tokens) => tokens.identify(format!("Bearer {token}").as_bytes()).is_some(),
    };
    if !valid {
        return (StatusCode::UNAUTHORIZED, Html(pages::login(true).into_string())).into_response();
    }
    let value: String = url::form_urlencoded::byte_serialize(token.as_bytes()).collect();
    let secure = if web.https { "; Secure" } else { "" };
    let cookie = format!("{TOKEN_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict{secure}");
    let mut response = Redirect::to("/").into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

async fn logout() -> Response {
    let mut response = Redirect::to("/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("wmr_token=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_by_name_and_decoded() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; wmr_token=s%3Bx%2Cy; b=2"),
        );
        assert_eq!(cookie(&headers, TOKEN_COOKIE).as_deref(), Some("s;x,y"));
        assert_eq!(cookie(&headers, "c"), None);
    }
}
