//! `GET /api/v1/openapi.json`: a hand-maintained OpenAPI 3.1 document. A hand-written file beat
//! utoipa here: the API is small, the spec's error codes and shapes are easier to state
//! directly, and a test (below) keeps the document and the router's routes in step.

use axum::http::header;
use axum::response::IntoResponse;

/// The document, embedded at build time.
pub const DOCUMENT: &str = include_str!("openapi.json");

pub async fn document() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// Every `.route("/…")` path in the daemon's sources: the router is assembled from these
    /// files, so a route added there without documentation fails this test.
    fn routed_paths() -> BTreeSet<String> {
        let sources = [
            include_str!("http.rs"),
            include_str!("../http/mod.rs"),
            include_str!("../http/auth.rs"),
            include_str!("../http/diagnostics.rs"),
            include_str!("../relay.rs"),
        ];
        let mut paths = BTreeSet::new();
        for source in sources {
            for piece in source.split(".route(\"").skip(1) {
                let path = piece.split('"').next().expect("split yields a first piece");
                // Catch-alls answer NOT_FOUND; they are not API routes.
                if !path.contains('*') {
                    paths.insert(path.to_owned());
                }
            }
        }
        paths
    }

    fn documented_paths() -> BTreeSet<String> {
        let document: serde_json::Value =
            serde_json::from_str(super::DOCUMENT).expect("openapi.json is valid JSON");
        assert_eq!(document["openapi"], "3.1.0");
        document["paths"]
            .as_object()
            .expect("the document has paths")
            .keys()
            .cloned()
            .collect()
    }

    #[test]
    fn every_route_is_documented_and_every_documented_path_is_routed() {
        let routed = routed_paths();
        let documented = documented_paths();
        assert!(
            routed.len() >= 15,
            "the source scan found too few routes: {routed:?}"
        );
        assert_eq!(routed, documented);
    }
}
