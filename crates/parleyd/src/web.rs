//! The embedded web client (built from web/ by build.rs) served at `/`.
//!
//! Every path that is not an API route falls back to `index.html`, so the
//! client's own routes survive a reload. Files under `/assets/` carry a content
//! hash in their names and are cached for a year; `index.html` is revalidated on
//! every load so a new release is picked up at once.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use rust_embed::RustEmbed;

#[derive(RustEmbed)]
#[folder = "$CARGO_MANIFEST_DIR/../../web/dist"]
struct Assets;

/// No inline script or style, nothing from another origin. `connect-src 'self'`
/// covers the same-origin WebSocket in current browsers; `blob:` media is not
/// needed because streams are attached with `srcObject`.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self' data:; media-src 'self'; connect-src 'self'; \
    manifest-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; \
    object-src 'none'";

/// Camera, microphone and screen capture (Share screen) for this origin only; nothing else the
/// client does not use.
const PERMISSIONS_POLICY: &str = "camera=(self), microphone=(self), display-capture=(self), \
    geolocation=(), payment=(), usb=(), interest-cohort=()";

const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// Serves one request for the web client (the router's fallback).
pub async fn serve(method: Method, uri: Uri, headers: HeaderMap) -> Response {
    let path = uri.path();
    if path == "/api" || path.starts_with("/api/") {
        // An unknown API route must answer in the API's error format, never with HTML.
        let body = serde_json::json!({
            "error": { "code": "NOT_FOUND", "message": format!("no route {method} {path}") }
        });
        return (StatusCode::NOT_FOUND, axum::Json(body)).into_response();
    }
    if method != Method::GET && method != Method::HEAD {
        let mut response = with_security_headers(
            (
                StatusCode::METHOD_NOT_ALLOWED,
                "only GET and HEAD are served here\n",
            )
                .into_response(),
        );
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }

    let relative = path.trim_start_matches('/');
    let name = if relative.is_empty() || relative.ends_with('/') {
        "index.html"
    } else if Assets::get(relative).is_some() {
        relative
    } else if relative.starts_with("assets/") {
        // A missing hashed asset (an old page asking for a previous release's file)
        // must be a plain 404: answering with index.html would be cached as the asset.
        return with_security_headers(
            (
                StatusCode::NOT_FOUND,
                [(header::CACHE_CONTROL, "no-store")],
                "no such asset\n",
            )
                .into_response(),
        );
    } else {
        "index.html"
    };
    serve_file(name, &method, &headers)
}

fn serve_file(name: &str, method: &Method, headers: &HeaderMap) -> Response {
    let gzip_name = format!("{name}.gz");
    let gzipped = accepts_gzip(headers)
        .then(|| Assets::get(&gzip_name))
        .flatten();
    let has_gzip_variant = gzipped.is_some() || Assets::get(&gzip_name).is_some();
    let (file, encoding) = match gzipped {
        Some(file) => (file, Some("gzip")),
        None => match Assets::get(name) {
            Some(file) => (file, None),
            None => {
                // build.mjs always writes index.html; reaching this is a broken build.
                log::error!("the embedded web client has no {name}; rebuild the daemon");
                return with_security_headers(
                    (StatusCode::INTERNAL_SERVER_ERROR, "web client missing\n").into_response(),
                );
            }
        },
    };

    let hash = file.metadata.sha256_hash();
    let etag = format!(
        "\"{}{}\"",
        hex_prefix(&hash),
        if encoding.is_some() { "-gz" } else { "" }
    );
    let cache_control = if name.starts_with("assets/") {
        IMMUTABLE
    } else {
        "no-cache"
    };

    let not_modified = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| {
            value
                .split(',')
                .any(|tag| tag.trim() == etag || tag.trim() == "*")
        });
    let mut builder = Response::builder()
        .header(header::CACHE_CONTROL, cache_control)
        .header(header::ETAG, &etag);
    if has_gzip_variant {
        builder = builder.header(header::VARY, "Accept-Encoding");
    }
    let response = if not_modified {
        builder.status(StatusCode::NOT_MODIFIED).body(Body::empty())
    } else {
        builder = builder
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, content_type(name))
            .header(header::CONTENT_LENGTH, file.data.len());
        if let Some(encoding) = encoding {
            builder = builder.header(header::CONTENT_ENCODING, encoding);
        }
        let body = if *method == Method::HEAD {
            Body::empty()
        } else {
            Body::from(file.data.into_owned())
        };
        builder.body(body)
    };
    with_security_headers(response.expect("static header names and values are valid"))
}

fn with_security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        ("content-security-policy", CONTENT_SECURITY_POLICY),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("x-frame-options", "DENY"),
        ("permissions-policy", PERMISSIONS_POLICY),
        ("cross-origin-opener-policy", "same-origin"),
        ("cross-origin-resource-policy", "same-origin"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// True unless the client refuses gzip (absent, or `q=0`).
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|coding| {
            let mut parts = coding.split(';').map(str::trim);
            let name = parts.next().unwrap_or_default();
            let refused = parts.any(|param| {
                param
                    .strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
        })
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, extension)| extension) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("json") => "application/json",
        Some("webmanifest") => "application/manifest+json",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

fn hex_prefix(bytes: &[u8]) -> String {
    bytes
        .iter()
        .take(12)
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::to_bytes;

    async fn get(path: &str, headers: &[(&'static str, &'static str)]) -> Response {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.insert(*name, HeaderValue::from_static(value));
        }
        serve(
            Method::GET,
            path.parse().expect("test paths are valid URIs"),
            map,
        )
        .await
    }

    fn header<'a>(response: &'a Response, name: &str) -> &'a str {
        response
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("")
    }

    async fn body_text(response: Response) -> String {
        let bytes = to_bytes(response.into_body(), 1 << 22)
            .await
            .expect("an embedded body fits in memory");
        String::from_utf8(bytes.to_vec()).expect("these test bodies are UTF-8")
    }

    fn hashed_script_name() -> String {
        Assets::iter()
            .find(|name| name.starts_with("assets/") && name.ends_with(".js"))
            .expect("the build produces a hashed script")
            .into_owned()
    }

    #[tokio::test]
    async fn index_is_html_revalidated_and_locked_down() {
        let response = get("/", &[]).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            header(&response, "content-type"),
            "text/html; charset=utf-8"
        );
        assert_eq!(header(&response, "cache-control"), "no-cache");
        assert_eq!(header(&response, "x-content-type-options"), "nosniff");
        assert_eq!(header(&response, "referrer-policy"), "no-referrer");
        let csp = header(&response, "content-security-policy");
        assert!(csp.contains("script-src 'self'"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        let html = body_text(response).await;
        assert!(html.contains("<div id=\"app\">"), "{html}");
        // No inline script: every script element names a same-origin file.
        for script in html.split("<script").skip(1) {
            assert!(
                script.contains("src=\"/assets/"),
                "inline or foreign script: {script}"
            );
        }
    }

    #[tokio::test]
    async fn client_routes_fall_back_to_index() {
        let index = body_text(get("/", &[]).await).await;
        for path in [
            "/history",
            "/people/alice",
            "/index.html",
            "/some/deep/path?x=1",
        ] {
            let response = get(path, &[]).await;
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            assert_eq!(header(&response, "cache-control"), "no-cache", "{path}");
            assert_eq!(body_text(response).await, index, "{path}");
        }
    }

    #[tokio::test]
    async fn hashed_assets_are_immutable_with_their_type() {
        let name = hashed_script_name();
        let response = get(&format!("/{name}"), &[]).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(header(&response, "cache-control"), IMMUTABLE);
        assert_eq!(
            header(&response, "content-type"),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(header(&response, "content-encoding"), "");
        let script = body_text(response).await;
        assert!(!script.is_empty());
    }

    #[tokio::test]
    async fn gzip_is_served_only_when_accepted() {
        let name = format!("/{}", hashed_script_name());
        let plain = get(&name, &[]).await;
        let plain_etag = header(&plain, "etag").to_owned();
        let plain_len = body_text(plain).await.len();

        let gzipped = get(&name, &[("accept-encoding", "br, gzip;q=0.8")]).await;
        assert_eq!(header(&gzipped, "content-encoding"), "gzip");
        assert_eq!(header(&gzipped, "vary"), "Accept-Encoding");
        assert_ne!(header(&gzipped, "etag"), plain_etag);
        let gzip_len = to_bytes(gzipped.into_body(), 1 << 22)
            .await
            .expect("an embedded body fits in memory")
            .len();
        assert!(gzip_len < plain_len, "{gzip_len} >= {plain_len}");

        let refused = get(&name, &[("accept-encoding", "gzip;q=0, identity")]).await;
        assert_eq!(header(&refused, "content-encoding"), "");
    }

    #[tokio::test]
    async fn a_matching_etag_gets_not_modified() {
        let first = get("/", &[]).await;
        let etag = header(&first, "etag").to_owned();
        assert!(etag.starts_with('"'), "{etag}");
        let mut map = HeaderMap::new();
        map.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_str(&etag).expect("an etag is a valid header value"),
        );
        let second = serve(Method::GET, Uri::from_static("/"), map).await;
        assert_eq!(second.status(), StatusCode::NOT_MODIFIED);
        assert!(body_text(second).await.is_empty());
    }

    #[tokio::test]
    async fn missing_assets_and_api_routes_are_not_html() {
        let asset = get("/assets/main-OLDHASH.js", &[]).await;
        assert_eq!(asset.status(), StatusCode::NOT_FOUND);
        assert_ne!(header(&asset, "content-type"), "text/html; charset=utf-8");

        let api = get("/api/v1/no-such-route", &[]).await;
        assert_eq!(api.status(), StatusCode::NOT_FOUND);
        let body: serde_json::Value =
            serde_json::from_str(&body_text(api).await).expect("the API answers JSON");
        assert_eq!(body["error"]["code"], "NOT_FOUND");
    }

    #[tokio::test]
    async fn head_has_no_body_and_other_methods_are_refused() {
        let head = serve(Method::HEAD, Uri::from_static("/"), HeaderMap::new()).await;
        assert_eq!(head.status(), StatusCode::OK);
        assert!(body_text(head).await.is_empty());

        let post = serve(Method::POST, Uri::from_static("/"), HeaderMap::new()).await;
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(header(&post, "allow"), "GET, HEAD");
    }

    #[test]
    fn the_client_fits_the_size_budget() {
        // Issue 7: the whole client under 150 KB gzipped.
        let total: usize = Assets::iter()
            .filter(|name| !name.ends_with(".gz"))
            .map(|name| {
                let gz = Assets::get(&format!("{name}.gz"));
                let file = gz
                    .or_else(|| Assets::get(&name))
                    .expect("iterated names exist");
                file.data.len()
            })
            .sum();
        assert!(total < 150_000, "the web client is {total} bytes gzipped");
    }
}
