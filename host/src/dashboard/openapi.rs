//! `GET /api/openapi.json`: the OpenAPI 3.1 description of the HTTP API for
//! tasks, written by hand (`openapi.json` beside this file) and compiled in.

use axum::http::header;
use axum::response::{IntoResponse, Response};

/// The document, as served.
pub(crate) const DOCUMENT: &str = include_str!("openapi.json");

/// Serves [`DOCUMENT`].
pub(crate) async fn serve() -> Response {
    ([(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-cache")], DOCUMENT).into_response()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// The operations the document describes and the routes the router
    /// serves are the same set, both ways.
    #[test]
    fn the_document_describes_exactly_the_routes_served() {
        let document: serde_json::Value = serde_json::from_str(super::DOCUMENT).expect("openapi.json is JSON");
        assert_eq!(document["openapi"].as_str().map(|v| v.starts_with("3.1")), Some(true));
        let mut described = BTreeSet::new();
        for (path, item) in document["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("a path item").keys() {
                if ["get", "post", "put", "delete", "patch"].contains(&method.as_str()) {
                    described.insert((method.to_ascii_uppercase(), path.clone()));
                }
            }
        }
        let served: BTreeSet<(String, String)> = super::super::task_api_routes()
            .into_iter()
            .map(|(method, path, _)| (method.to_string(), path.to_string()))
            .collect();
        assert_eq!(described, served, "openapi.json and the router differ");
    }
}
