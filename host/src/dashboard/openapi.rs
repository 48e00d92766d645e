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

    /// What generators choke on is absent: no list of types (a `oneOf`
    /// instead), no enum without its type; and every operation names the
    /// one error response for 404 and 405, and for 413 when it takes a body
    /// (every /api/v1 operation; the probes answer in their own shape).
    #[test]
    fn the_document_is_one_generators_accept() {
        fn walk(at: &str, node: &serde_json::Value) {
            match node {
                serde_json::Value::Object(map) => {
                    assert!(!map.get("type").is_some_and(|t| t.is_array()), "{at}: a list of types");
                    if map.contains_key("enum") {
                        assert!(map.get("type").is_some_and(|t| t.is_string()), "{at}: an enum without a type");
                    }
                    for (key, value) in map {
                        walk(&format!("{at}/{key}"), value);
                    }
                }
                serde_json::Value::Array(items) => items.iter().for_each(|item| walk(at, item)),
                _ => {}
            }
        }
        let document: serde_json::Value = serde_json::from_str(super::DOCUMENT).expect("openapi.json is JSON");
        walk("", &document);
        let error = serde_json::json!({ "$ref": "#/components/responses/Error" });
        for (path, item) in document["paths"].as_object().expect("paths") {
            if !path.starts_with("/api/v1/") {
                continue; // the probes (/healthz, /readyz) are not the API
            }
            for (method, operation) in item.as_object().expect("a path item") {
                let responses = &operation["responses"];
                let mut codes = vec!["404", "405"];
                if operation.get("requestBody").is_some() {
                    codes.push("413");
                }
                for code in codes {
                    assert_eq!(responses[code], error, "{method} {path} {code}");
                }
            }
        }
    }
}
