//! The plain-HTTP listener of `http.redirect_listen` (port 80): ACME HTTP-01 answers under
//! `/.well-known/acme-challenge/`, a 308 to the HTTPS URL for everything else.
//!
//! Its own small accept loop rather than the main one: it serves no application, needs no
//! upgrades or TLS, and must stay cheap for a stranger to hold open, hence the head timeout, the
//! per-connection deadline and the cap on connections.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio_util::sync::CancellationToken;

use super::Http01Tokens;

/// A request head must arrive within this.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection is closed after this, whatever it does: a redirect takes one request.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(30);
/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 256;

const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

pub(super) async fn serve(
    listener: tokio::net::TcpListener,
    base: Option<String>,
    tokens: Arc<Http01Tokens>,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let base = Arc::new(base);
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => return,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let stream = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    log::warn!("http.redirect_listen: accept failed: {error}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let tokens = tokens.clone();
        let base = base.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |request: Request<_>| {
                let response = answer(&request, base.as_deref(), &tokens);
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .keep_alive(false);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_DEADLINE, connection).await;
        });
    }
}

/// The response to one request: the key authorization of a pending HTTP-01 token, or a 308 to
/// the same path on `base` (the HTTPS `http.public_url`), or on the Host header's name.
fn answer<B>(request: &Request<B>, base: Option<&str>, tokens: &Http01Tokens) -> Response<Body> {
    let path = request.uri().path();
    if let Some(token) = path.strip_prefix(CHALLENGE_PREFIX) {
        return match tokens.get(token) {
            Some(key_authorization) => Response::builder()
                .header(header::CONTENT_TYPE, "application/octet-stream")
                .body(Body::from(key_authorization))
                .expect("static response"),
            None => status(StatusCode::NOT_FOUND),
        };
    }
    let path_and_query = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let target = match base {
        Some(base) => format!("{base}{path_and_query}"),
        None => {
            let Some(host) = request
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(|h| {
                    h.rsplit_once(':')
                        .filter(|(_, port)| port.parse::<u16>().is_ok())
                        .map_or(h, |(name, _)| name)
                })
                .filter(|h| {
                    !h.is_empty()
                        && h.chars()
                            .all(|c| c.is_ascii_alphanumeric() || "-.[]:".contains(c))
                })
            else {
                return status(StatusCode::BAD_REQUEST);
            };
            format!("https://{host}{path_and_query}")
        }
    };
    match HeaderValue::try_from(target) {
        Ok(location) => Response::builder()
            .status(StatusCode::PERMANENT_REDIRECT)
            .header(header::LOCATION, location)
            .body(Body::empty())
            .expect("static response"),
        Err(_) => status(StatusCode::BAD_REQUEST),
    }
}

fn status(code: StatusCode) -> Response<Body> {
    Response::builder()
        .status(code)
        .body(Body::empty())
        .expect("static response")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(uri: &str, host: Option<&str>) -> Request<()> {
        let mut request = Request::builder().uri(uri);
        if let Some(host) = host {
            request = request.header(header::HOST, host);
        }
        request.body(()).expect("request")
    }

    fn location(response: &Response<Body>) -> &str {
        response.headers()[header::LOCATION]
            .to_str()
            .expect("ascii")
    }

    #[test]
    fn a_pending_token_is_answered_with_its_key_authorization() {
        let tokens = Http01Tokens::default();
        tokens.insert("abc", "abc.thumb");
        let response = answer(&get("/.well-known/acme-challenge/abc", None), None, &tokens);
        assert_eq!(response.status(), StatusCode::OK);
        let unknown = answer(&get("/.well-known/acme-challenge/zzz", None), None, &tokens);
        assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
        tokens.remove("abc");
        let gone = answer(&get("/.well-known/acme-challenge/abc", None), None, &tokens);
        assert_eq!(gone.status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn everything_else_is_redirected_to_https_with_path_and_query() {
        let tokens = Http01Tokens::default();
        let response = answer(
            &get("/call?x=1", Some("ignored.example.org")),
            Some("https://call.example.org:8443"),
            &tokens,
        );
        assert_eq!(response.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(
            location(&response),
            "https://call.example.org:8443/call?x=1"
        );
        let by_host = answer(&get("/", Some("call.example.org:80")), None, &tokens);
        assert_eq!(location(&by_host), "https://call.example.org/");
        let hostile = answer(&get("/", Some("evil\"<>")), None, &tokens);
        assert_eq!(hostile.status(), StatusCode::BAD_REQUEST);
    }
}
