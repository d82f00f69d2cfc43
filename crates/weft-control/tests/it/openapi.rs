//! `docs/openapi.yaml` documents exactly the admin routes the server serves.
//!
//! The route list comes from `weft_control::admin::ROUTES`, the table the
//! router itself is built from, so a route added to the server without a
//! document entry (or documented but not served) fails here. A second test
//! asks a real server for every documented operation and checks that the
//! router answers it (not the "no such route" fallback, not 405).
#![allow(clippy::unwrap_used)]

use crate::common;

use std::collections::BTreeSet;

use serde_yaml::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use weft_control::admin::ROUTES;
use weft_control::admin::types::NewApiKey;

const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "patch", "head", "options", "trace",
];

fn spec() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::from_str(&text).unwrap()
}

/// `(METHOD, path)` of every operation in the document.
fn documented(spec: &Value) -> BTreeSet<(String, String)> {
    let paths = spec["paths"]
        .as_mapping()
        .expect("the document has `paths`");
    let mut out = BTreeSet::new();
    for (path, item) in paths {
        let path = path.as_str().unwrap();
        let item = item.as_mapping().unwrap();
        for key in item.keys() {
            let key = key.as_str().unwrap();
            if METHODS.contains(&key) {
                out.insert((key.to_uppercase(), path.to_owned()));
            }
        }
    }
    out
}

fn served() -> BTreeSet<(String, String)> {
    ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect()
}

#[test]
fn every_served_route_is_documented_and_every_documented_route_is_served() {
    let spec = spec();
    assert_eq!(spec["openapi"].as_str(), Some("3.1.0"));
    let served = served();
    assert!(
        served.len() >= 20,
        "the route table looks truncated: {served:?}"
    );
    let documented = documented(&spec);
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty() && unserved.is_empty(),
        "docs/openapi.yaml is out of date.\n  served but not documented: {undocumented:?}\n  documented but not served: {unserved:?}"
    );
}

#[test]
fn the_document_names_the_api_prefix_and_bearer_auth() {
    let spec = spec();
    let server = spec["servers"][0]["url"].as_str().unwrap();
    assert!(server.ends_with("/api/v1"), "server url {server}");
    let scheme = &spec["components"]["securitySchemes"]["apiKey"];
    assert_eq!(scheme["type"].as_str(), Some("http"));
    assert_eq!(scheme["scheme"].as_str(), Some("bearer"));
    assert!(
        spec["security"][0].get("apiKey").is_some(),
        "bearer auth must apply to every operation"
    );
}

/// Every `$ref` in the document points at something that exists.
#[test]
fn every_reference_in_the_document_resolves() {
    fn walk(v: &Value, root: &Value, refs: &mut Vec<String>) {
        match v {
            Value::Mapping(m) => {
                for (k, v) in m {
                    if k.as_str() == Some("$ref") {
                        let r = v.as_str().unwrap();
                        let mut cur = root;
                        for part in r.trim_start_matches("#/").split('/') {
                            cur = &cur[part];
                        }
                        assert!(!cur.is_null(), "dangling $ref {r}");
                        refs.push(r.to_owned());
                    } else {
                        walk(v, root, refs);
                    }
                }
            }
            Value::Sequence(s) => s.iter().for_each(|v| walk(v, root, refs)),
            _ => {}
        }
    }
    let spec = spec();
    let mut refs = Vec::new();
    walk(&spec, &spec, &mut refs);
    assert!(
        refs.len() > 50,
        "expected the operations to reference shared schemas, found {}",
        refs.len()
    );
}

/// Path parameters of a documented route, declared or not, must be the ones in the path.
#[test]
fn path_parameters_match_the_path_templates() {
    let spec = spec();
    for (path, item) in spec["paths"].as_mapping().unwrap() {
        let path = path.as_str().unwrap();
        let in_path: BTreeSet<String> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(str::to_owned)
            .collect();
        for (method, op) in item.as_mapping().unwrap() {
            let mut declared = BTreeSet::new();
            for p in op["parameters"].as_sequence().into_iter().flatten() {
                let p = match p.get("$ref").and_then(Value::as_str) {
                    Some(r) => &spec["components"]["parameters"][r.rsplit('/').next().unwrap()],
                    None => p,
                };
                if p["in"].as_str() == Some("path") {
                    declared.insert(p["name"].as_str().unwrap().to_owned());
                }
            }
            assert_eq!(
                declared,
                in_path,
                "{} {path}: path parameters",
                method.as_str().unwrap()
            );
        }
    }
}

/// One raw HTTP/1.1 request; returns (status, body).
async fn request(addr: &str, method: &str, path: &str, api_key: Option<&str>) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = api_key
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    let body = if matches!(method, "POST" | "PUT") {
        "{}"
    } else {
        ""
    };
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(common::WAIT, s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    let status = out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

const FALLBACK: &str = "no such admin API route";

#[tokio::test]
async fn the_server_answers_every_documented_operation_and_only_those() {
    let t = common::TestServer::start().await;
    let key = t
        .server
        .admin()
        .create_api_key(NewApiKey {
            description: "openapi test".into(),
            expiration_ms: None,
        })
        .await
        .unwrap()
        .secret;
    let addr = t.server.url().trim_start_matches("http://").to_owned();
    for (method, path) in documented(&spec()) {
        // Unknown ids and logins: the handler answers (404 naming the thing, 400, 422), the
        // router's fallback must not.
        let concrete = path
            .replace("{id}", "987654")
            .replace("{login}", "nobody@example.com")
            .replace("{auth_id}", "0123456789abcdef0123456789abcdef");
        let (status, body) =
            request(&addr, &method, &format!("/api/v1{concrete}"), Some(&key)).await;
        assert!(
            status != 405 && !body.contains(FALLBACK),
            "{method} {path}: the router does not serve it ({status} {body})"
        );
        let (status, body) = request(&addr, &method, &format!("/api/v1{concrete}"), None).await;
        assert_eq!(status, 401, "{method} {path} without an API key: {body}");
        assert!(
            body.contains("\"unauthorized\""),
            "{method} {path}: error body {body}"
        );
    }
    // And the check can fail: an undocumented route gets the fallback.
    let (status, body) = request(&addr, "GET", "/api/v1/not-a-route", Some(&key)).await;
    assert_eq!(status, 404);
    assert!(body.contains(FALLBACK), "{body}");
}
