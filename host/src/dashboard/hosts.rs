//! Which `Host` names the dashboard answers to, against DNS rebinding: a
//! page of another site whose name was made to resolve to this address
//! still sends its own name as `Host`, so only the bound address, the
//! loopback names (when bound to loopback or to every address) and the
//! names of `--gui-allowed-hosts` are served. An `Origin` on a request that
//! changes something must be `http://` and one of those names, in full.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, Shared};

/// Most names `--gui-allowed-hosts` may give.
pub(crate) const MAX_ALLOWED_HOSTS: usize = 64;

/// Longest name `--gui-allowed-hosts` may give, in bytes.
pub(crate) const MAX_HOST_BYTES: usize = 255;

/// Why a `--gui-allowed-hosts` list is refused, if it is (checked before
/// anything starts, and again when the dashboard binds).
pub fn check_allowed_hosts(hosts: &[String]) -> Result<(), String> {
    if hosts.len() > MAX_ALLOWED_HOSTS {
        return Err(format!("--gui-allowed-hosts takes at most {MAX_ALLOWED_HOSTS} names; {} given", hosts.len()));
    }
    for host in hosts {
        let bad = host.is_empty()
            || host.len() > MAX_HOST_BYTES
            || host.chars().any(|c| c.is_whitespace() || c.is_control() || c == '/' || c == ',');
        if bad {
            let shown: String = host.chars().take(64).collect();
            return Err(format!(
                "--gui-allowed-hosts: '{shown}' is not a host name: give HOST:PORT names of 1 to {MAX_HOST_BYTES} bytes, comma-separated"
            ));
        }
    }
    Ok(())
}

/// The `Host` values served (lower case): the bound address, the loopback
/// names when bound to loopback or to every address, and `extra`.
pub(crate) fn allowed(bound: SocketAddr, extra: &[String]) -> Vec<String> {
    let port = bound.port();
    let mut names = vec![match bound {
        SocketAddr::V6(v6) => format!("[{}]:{port}", v6.ip()),
        SocketAddr::V4(v4) => v4.to_string(),
    }];
    if bound.ip().is_loopback() || bound.ip().is_unspecified() {
        names.extend([format!("127.0.0.1:{port}"), format!("localhost:{port}"), format!("[::1]:{port}")]);
    }
    if port == 80 {
        // Browsers leave the default port out.
        let bare: Vec<String> = names.iter().filter_map(|n| n.strip_suffix(":80").map(str::to_string)).collect();
        names.extend(bare);
    }
    names.extend(extra.iter().map(|h| h.to_ascii_lowercase()));
    names.sort();
    names.dedup();
    names
}

/// Middleware: answers 421 `misdirected_request` to a request whose `Host`
/// is not served here (but for the health checks, which any name reaches).
pub(crate) async fn check_host(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let host = request.headers().get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    // A probe names the address it dials; the health checks reveal nothing.
    let probe = super::health::PATHS.contains(&request.uri().path());
    if probe || shared.allowed_hosts.iter().any(|allowed| allowed.eq_ignore_ascii_case(host)) {
        return next.run(request).await;
    }
    let shown: String = host.chars().take(64).collect();
    let message = if host.is_empty() {
        "this request names no Host; the dashboard serves only its own address and the names of --gui-allowed-hosts (FASTWORKER_GUI_ALLOWED_HOSTS)".to_string()
    } else {
        format!(
            "the dashboard does not serve the host '{shown}'; to reach it under that name, add it to --gui-allowed-hosts (FASTWORKER_GUI_ALLOWED_HOSTS)"
        )
    };
    ApiError::new(StatusCode::MISDIRECTED_REQUEST, "misdirected_request", message)
        .for_path(request.uri().path())
        .into_response()
}

/// Whether a request's `Origin` (if any) is this dashboard's: `http://` and
/// an allowed host, in full.
pub(crate) fn origin_allowed(shared: &Shared, headers: &HeaderMap) -> Result<(), String> {
    let Some(origin) = headers.get(header::ORIGIN) else { return Ok(()) };
    let origin = origin.to_str().unwrap_or("");
    let host = origin.get(..7).filter(|s| s.eq_ignore_ascii_case("http://")).map(|_| &origin[7..]);
    if host.is_some_and(|host| shared.allowed_hosts.iter().any(|allowed| allowed.eq_ignore_ascii_case(host))) {
        return Ok(());
    }
    let shown: String = origin.chars().take(64).collect();
    Err(format!(
        "requests from {shown} may not change tasks here: only pages of http:// and a host of this dashboard may (--gui-allowed-hosts)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_names_and_the_default_port() {
        let names = allowed("127.0.0.1:80".parse().unwrap(), &["Dash.Example:8443".into()]);
        for name in ["127.0.0.1:80", "localhost:80", "localhost", "127.0.0.1", "[::1]:80", "dash.example:8443"] {
            assert!(names.contains(&name.to_string()), "{name} in {names:?}");
        }
        let names = allowed("10.0.0.5:8080".parse().unwrap(), &[]);
        assert_eq!(names, ["10.0.0.5:8080"]);
    }

    #[test]
    fn bounded_lists() {
        assert!(check_allowed_hosts(&["a:1".into(), "b:2".into()]).is_ok());
        assert!(check_allowed_hosts(&vec!["a:1".to_string(); 65]).is_err());
        assert!(check_allowed_hosts(&["a".repeat(256)]).is_err());
        assert!(check_allowed_hosts(&["".into()]).is_err());
        assert!(check_allowed_hosts(&["http://a:1".into()]).is_err());
    }
}
