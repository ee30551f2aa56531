//! The read-only query API (spec section 4), on the HTTP listener beside `/metrics`: what the
//! output topics hold, for callers that ask rather than consume. JSON, answered from the
//! [`Store`] of current records that the publishing process keeps as it publishes (so an answer
//! says what the topics say); `404` for an unknown entity; an optional bearer token
//! (`http.api_token`); described by the OpenAPI 3.1 document served at `/openapi.json`
//! (`docs/openapi.json`).
//!
//! | path | answer |
//! |---|---|
//! | `/v1/scopes` | every scope object |
//! | `/v1/scopes/{project}/{task}` | one scope object |
//! | `/v1/gates/{project}/{annotator_id}` | the annotator's latest gate decision in the project: may it take a task? |
//! | `/v1/annotators/{project}/{task}/{annotator_id}` | one annotator object |
//! | `/v1/items/{project}/{task}/{item_id}` | one item object (consensus and, where computed, truth, trusted consensus and route) |
//! | `/v1/leaderboard/{project}/{task}` | the scope's leaderboard entries, by rank |
//!
//! In a cluster whose processes publish their own keys ([`crate::service::Share`]), every
//! process serves the API: it answers for the keys it publishes (the scopes and leaderboards are
//! the first process's) and forwards a request for another key to the process that publishes it
//! (`cluster.api_addresses`), relaying its answer ([`Forwarding`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderName, Request, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use foldhash::fast::RandomState;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::service::{OutputTopic, Share};

/// The OpenAPI 3.1 document of the API.
pub const OPENAPI: &str = include_str!("../docs/openapi.json");

/// The topics whose records the API answers from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Scopes,
    Annotators,
    Items,
    Gates,
    Leaderboard,
}

impl Kind {
    /// Whether the API lists this kind's records by a prefix of their keys (the scopes, and a
    /// scope's leaderboard): then they are kept in key order. The others (annotators, items,
    /// gates: up to millions, each changed by most epochs) are looked up one by one, by the key
    /// their topic carries.
    fn listed(self) -> bool {
        matches!(self, Kind::Scopes | Kind::Leaderboard)
    }
}

/// The records of one kind: by their key's parts in order ([`Kind::listed`]), or by the key as
/// the topic carries it (a JSON array of strings, [`crate::service::key`]), which the publisher
/// hands over as it is: a record replaced costs a hash lookup, with neither parsing its key nor
/// allocating one.
enum Records {
    Listed(BTreeMap<Vec<String>, Arc<[u8]>>),
    Keyed(HashMap<String, Arc<[u8]>, RandomState>),
}

impl Records {
    fn of(kind: Kind) -> Records {
        if kind.listed() {
            Records::Listed(BTreeMap::new())
        } else {
            Records::Keyed(HashMap::default())
        }
    }
}

/// The current record of every key of the topics the API answers from.
#[derive(Default)]
pub struct Store {
    records: RwLock<BTreeMap<Kind, Records>>,
}

impl Store {
    /// Records what a topic now holds for `key` (a JSON array of strings): `value`, or nothing
    /// for a tombstone. A key that is not an array of strings is not one the API serves.
    pub fn apply(&self, kind: Kind, key: &str, value: Option<&[u8]>) {
        let mut records = self.records.write().expect("the API store is whole");
        match records.entry(kind).or_insert_with(|| Records::of(kind)) {
            Records::Listed(records) => {
                let Ok(parts) = serde_json::from_str::<Vec<String>>(key) else { return };
                match value {
                    Some(value) => {
                        records.insert(parts, value.into());
                    }
                    None => {
                        records.remove(&parts);
                    }
                }
            }
            // Any other key is never asked for: [`Store::get`] forms keys as the publisher does.
            Records::Keyed(records) => match (value, records.get_mut(key)) {
                (Some(value), Some(held)) => *held = value.into(),
                (Some(value), None) => {
                    records.insert(key.to_owned(), value.into());
                }
                (None, _) => {
                    records.remove(key);
                }
            },
        }
    }

    fn get(&self, kind: Kind, parts: &[&str]) -> Option<Arc<[u8]>> {
        let records = self.records.read().expect("the API store is whole");
        match records.get(&kind)? {
            Records::Listed(records) => {
                let key: Vec<String> = parts.iter().map(|p| p.to_string()).collect();
                records.get(&key).cloned()
            }
            Records::Keyed(records) => records.get(&crate::service::key(parts)).cloned(),
        }
    }

    /// The records whose key starts with `prefix`, in key order (of a listed kind,
    /// [`Kind::listed`]; none of another).
    fn prefixed(&self, kind: Kind, prefix: &[&str]) -> Vec<Arc<[u8]>> {
        debug_assert!(kind.listed(), "{kind:?} is looked up one by one, not listed");
        let records = self.records.read().expect("the API store is whole");
        let Some(Records::Listed(records)) = records.get(&kind) else { return Vec::new() };
        let start: Vec<String> = prefix.iter().map(|p| p.to_string()).collect();
        records
            .range(start..)
            .take_while(|(key, _)| key.len() >= prefix.len() && key.iter().zip(prefix).all(|(k, p)| k == p))
            .map(|(_, value)| value.clone())
            .collect()
    }
}

/// What the API handlers share.
#[derive(Clone)]
pub struct Api {
    pub store: Arc<Store>,
    /// The bearer token every `/v1` request must carry, if set.
    pub token: Option<Arc<str>>,
    /// In a cluster whose processes publish their own keys: where the others answer.
    pub forwarding: Option<Arc<Forwarding>>,
}

/// Marks a request one process forwarded to another: it is answered where it arrives, never
/// forwarded again.
const FORWARDED: HeaderName = HeaderName::from_static("x-labelqc-forwarded");

/// How long a forwarded request may take.
const FORWARD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Which process of a cluster answers for a key, and where each process's API listens.
pub struct Forwarding {
    /// This process and the number of processes that publish.
    pub share: Share,
    /// Every process's HTTP listener, `host:port` by process index (empty: not configured).
    pub addresses: Vec<String>,
    client: Client<HttpConnector, Body>,
}

impl Forwarding {
    pub fn new(share: Share, addresses: Vec<String>) -> Forwarding {
        Forwarding { share, addresses, client: Client::builder(TokioExecutor::new()).build_http() }
    }

    /// The process that answers for `key` of `kind`, if not this one.
    fn elsewhere(&self, kind: Kind, key: &[&str]) -> Option<usize> {
        let topic = match kind {
            Kind::Scopes => OutputTopic::Scopes,
            Kind::Annotators => OutputTopic::Annotators,
            Kind::Items => OutputTopic::Items,
            Kind::Gates => OutputTopic::Gating,
            Kind::Leaderboard => OutputTopic::Leaderboard,
        };
        let process = self.share.publisher(topic, &crate::service::key(key));
        (process != self.share.process).then_some(process)
    }

    /// Sends the request for `uri` to `process` and relays its answer; `502` or `504` with a
    /// message if it cannot, `503` if `cluster.api_addresses` is not set.
    async fn forward(&self, process: usize, uri: &Uri, headers: &HeaderMap) -> Response {
        let Some(address) = self.addresses.get(process) else {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "process {process} of the cluster answers for this key; set cluster.api_addresses (every \
                     process's http.listen) so that this process can forward the request, or ask process \
                     {process}"
                ),
            );
        };
        let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
        let mut request = Request::get(format!("http://{address}{path}")).header(FORWARDED, "1");
        if let Some(authorization) = headers.get(header::AUTHORIZATION) {
            request = request.header(header::AUTHORIZATION, authorization);
        }
        let request = match request.body(Body::empty()) {
            Ok(request) => request,
            Err(e) => return error(StatusCode::BAD_GATEWAY, format!("cannot forward to {address}: {e}")),
        };
        match tokio::time::timeout(FORWARD_TIMEOUT, self.client.request(request)).await {
            Ok(Ok(response)) => response.map(Body::new).into_response(),
            Ok(Err(e)) => error(
                StatusCode::BAD_GATEWAY,
                format!("process {process} ({address}) answers for this key and cannot be reached: {e}"),
            ),
            Err(_) => error(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "process {process} ({address}) answers for this key and did not answer within {} s",
                    FORWARD_TIMEOUT.as_secs()
                ),
            ),
        }
    }
}

/// Where a request for `key` of `kind` must be answered, if not here: unless it was forwarded
/// already.
fn elsewhere(api: &Api, headers: &HeaderMap, kind: Kind, key: &[&str]) -> Option<(Arc<Forwarding>, usize)> {
    if headers.contains_key(FORWARDED) {
        return None;
    }
    let forwarding = api.forwarding.as_ref()?;
    forwarding.elsewhere(kind, key).map(|process| (forwarding.clone(), process))
}

fn error(status: StatusCode, message: String) -> Response {
    json(status, serde_json::json!({ "error": message }).to_string().into_bytes())
}

fn json(status: StatusCode, body: Vec<u8>) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn not_found(what: String) -> Response {
    json(StatusCode::NOT_FOUND, serde_json::json!({ "error": format!("no {what}") }).to_string().into_bytes())
}

fn array(values: &[Arc<[u8]>]) -> Vec<u8> {
    let mut body = vec![b'['];
    for (i, value) in values.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(value);
    }
    body.push(b']');
    body
}

/// Compares in time independent of where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// `None` when the request may go on, else the `401` to answer.
fn unauthorised(api: &Api, headers: &HeaderMap) -> Option<Response> {
    let token = api.token.as_deref()?;
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given.is_some_and(|given| same(given.as_bytes(), token.as_bytes())) {
        return None;
    }
    let body = serde_json::json!({ "error": "send the API token as `Authorization: Bearer TOKEN`" });
    Some(
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer"), (header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response(),
    )
}

/// One stored entity as JSON, or the `401` or a `404` that names `what` (in a cluster, the
/// answer of the process that publishes it).
async fn entity(
    api: &Api,
    headers: &HeaderMap,
    uri: &Uri,
    kind: Kind,
    key: &[&str],
    what: impl FnOnce() -> String,
) -> Response {
    if let Some(response) = unauthorised(api, headers) {
        return response;
    }
    if let Some((forwarding, process)) = elsewhere(api, headers, kind, key) {
        return forwarding.forward(process, uri, headers).await;
    }
    match api.store.get(kind, key) {
        Some(value) => json(StatusCode::OK, value.to_vec()),
        None => not_found(what()),
    }
}

pub async fn openapi() -> Response {
    json(StatusCode::OK, OPENAPI.as_bytes().to_vec())
}

pub async fn scopes(State(api): State<Api>, headers: HeaderMap, uri: Uri) -> Response {
    if let Some(response) = unauthorised(&api, &headers) {
        return response;
    }
    if let Some((forwarding, process)) = elsewhere(&api, &headers, Kind::Scopes, &[]) {
        return forwarding.forward(process, &uri, &headers).await;
    }
    json(StatusCode::OK, array(&api.store.prefixed(Kind::Scopes, &[])))
}

pub async fn scope(
    State(api): State<Api>,
    headers: HeaderMap,
    uri: Uri,
    Path((project, task)): Path<(String, String)>,
) -> Response {
    entity(&api, &headers, &uri, Kind::Scopes, &[&project, &task], || format!("scope {project}/{task}")).await
}

pub async fn gate(
    State(api): State<Api>,
    headers: HeaderMap,
    uri: Uri,
    Path((project, annotator)): Path<(String, String)>,
) -> Response {
    entity(&api, &headers, &uri, Kind::Gates, &[&project, &annotator], || {
        format!("gate for annotator {annotator} in project {project}")
    })
    .await
}

pub async fn annotator(
    State(api): State<Api>,
    headers: HeaderMap,
    uri: Uri,
    Path((project, task, annotator)): Path<(String, String, String)>,
) -> Response {
    entity(&api, &headers, &uri, Kind::Annotators, &[&project, &task, &annotator], || {
        format!("annotator {annotator} in scope {project}/{task}")
    })
    .await
}

pub async fn item(
    State(api): State<Api>,
    headers: HeaderMap,
    uri: Uri,
    Path((project, task, item)): Path<(String, String, String)>,
) -> Response {
    entity(&api, &headers, &uri, Kind::Items, &[&project, &task, &item], || {
        format!("item {item} in scope {project}/{task}")
    })
    .await
}

pub async fn leaderboard(
    State(api): State<Api>,
    headers: HeaderMap,
    uri: Uri,
    Path((project, task)): Path<(String, String)>,
) -> Response {
    if let Some(response) = unauthorised(&api, &headers) {
        return response;
    }
    if let Some((forwarding, process)) = elsewhere(&api, &headers, Kind::Leaderboard, &[&project, &task]) {
        return forwarding.forward(process, &uri, &headers).await;
    }
    if api.store.get(Kind::Scopes, &[&project, &task]).is_none() {
        return not_found(format!("scope {project}/{task}"));
    }
    let mut entries: Vec<(i64, Arc<[u8]>)> = api
        .store
        .prefixed(Kind::Leaderboard, &[&project, &task])
        .into_iter()
        .map(|value| {
            let rank = serde_json::from_slice::<serde_json::Value>(&value)
                .ok()
                .and_then(|v| v["rank"].as_i64())
                .unwrap_or(i64::MAX);
            (rank, value)
        })
        .collect();
    entries.sort_by_key(|(rank, _)| *rank);
    let values: Vec<Arc<[u8]>> = entries.into_iter().map(|(_, v)| v).collect();
    json(StatusCode::OK, array(&values))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_answers_what_the_topics_hold() {
        let store = Store::default();
        store.apply(Kind::Scopes, r#"["p","t"]"#, Some(b"{\"n\":1}"));
        store.apply(Kind::Scopes, r#"["p","u"]"#, Some(b"{\"n\":2}"));
        store.apply(Kind::Scopes, r#"["q","t"]"#, Some(b"{\"n\":3}"));
        assert_eq!(store.get(Kind::Scopes, &["p", "t"]).as_deref(), Some(&b"{\"n\":1}"[..]));
        assert_eq!(store.prefixed(Kind::Scopes, &["p"]).len(), 2);
        assert_eq!(array(&store.prefixed(Kind::Scopes, &[])), b"[{\"n\":1},{\"n\":2},{\"n\":3}]".to_vec());
        // A tombstone removes the record; keys that are not arrays of strings are not served.
        store.apply(Kind::Scopes, r#"["p","t"]"#, None);
        assert!(store.get(Kind::Scopes, &["p", "t"]).is_none());
        store.apply(Kind::Scopes, r#"["x",1]"#, Some(b"{}"));
        assert_eq!(store.prefixed(Kind::Scopes, &[]).len(), 2);
    }

    #[test]
    fn records_looked_up_one_by_one_are_found_by_the_key_their_topic_carries() {
        let store = Store::default();
        let name = "say \"hi\" \u{e9}/\\";
        let key = crate::service::key(&["p", "t", name]);
        store.apply(Kind::Items, &key, Some(b"{\"n\":1}"));
        store.apply(Kind::Items, &key, Some(b"{\"n\":2}"));
        store.apply(Kind::Annotators, &key, Some(b"{\"a\":1}"));
        assert_eq!(store.get(Kind::Items, &["p", "t", name]).as_deref(), Some(&b"{\"n\":2}"[..]));
        assert_eq!(store.get(Kind::Annotators, &["p", "t", name]).as_deref(), Some(&b"{\"a\":1}"[..]));
        assert!(store.get(Kind::Items, &["p", "t"]).is_none());
        assert!(store.get(Kind::Items, &["p", "t", "say"]).is_none());
        store.apply(Kind::Items, &key, None);
        assert!(store.get(Kind::Items, &["p", "t", name]).is_none());
        assert_eq!(store.get(Kind::Annotators, &["p", "t", name]).as_deref(), Some(&b"{\"a\":1}"[..]));
    }

    /// In a cluster, a key another process publishes is forwarded; without
    /// `cluster.api_addresses` the answer is a 503 that names the setting, and a forwarded
    /// request is answered where it arrives.
    #[tokio::test]
    async fn a_key_of_another_process_needs_its_address() {
        let share = Share { process: 0, processes: 2 };
        let forwarding = Arc::new(Forwarding::new(share, Vec::new()));
        let api =
            Api { store: Arc::new(Store::default()), token: None, forwarding: Some(forwarding.clone()) };
        // Scopes and leaderboards are the first process's; annotators are dealt out by key.
        assert_eq!(forwarding.elsewhere(Kind::Scopes, &["p", "t"]), None);
        assert_eq!(forwarding.elsewhere(Kind::Leaderboard, &["p", "t"]), None);
        let names: Vec<String> = (0..20).map(|i| format!("a{i}")).collect();
        let theirs = names.iter().find(|n| forwarding.elsewhere(Kind::Annotators, &["p", "t", n]) == Some(1));
        let ours = names.iter().find(|n| forwarding.elsewhere(Kind::Annotators, &["p", "t", n]).is_none());
        let (theirs, ours) = (theirs.expect("a key of process 1"), ours.expect("a key of process 0"));
        let ask = |name: &str, headers: HeaderMap| {
            let uri: Uri = format!("/v1/annotators/p/t/{name}").parse().unwrap();
            annotator(State(api.clone()), headers, uri, Path(("p".into(), "t".into(), name.to_string())))
        };
        let response = ask(theirs, HeaderMap::new()).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = axum::body::to_bytes(response.into_body(), 1 << 16).await.unwrap();
        let body = String::from_utf8(body.to_vec()).unwrap();
        assert!(body.contains("cluster.api_addresses") && body.contains("process 1"), "{body}");
        assert_eq!(ask(ours, HeaderMap::new()).await.status(), StatusCode::NOT_FOUND);
        let mut forwarded = HeaderMap::new();
        forwarded.insert(FORWARDED, "1".parse().unwrap());
        assert_eq!(ask(theirs, forwarded).await.status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"secret", b"secret"));
        assert!(!same(b"secret", b"secreT"));
        assert!(!same(b"secret", b"secret2"));
    }
}
