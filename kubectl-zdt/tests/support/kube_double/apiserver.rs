//! A TEST DOUBLE of the Kubernetes API server: a scripted, in-memory server on 127.0.0.1 that
//! speaks the real HTTP API as far as kube-rs uses it, so the agent and the CLI run unchanged
//! against it:
//!
//! - list (`kind: XList` with `metadata.resourceVersion`), get, and watch (`?watch=true`,
//!   newline-delimited events from `resourceVersion`, `BOOKMARK`s when allowed, an `ERROR`
//!   event with a 410 `Status` when that version was compacted away — exactly what a real server
//!   sends, so kube-runtime's watcher relists);
//! - label selectors (`k=v`, comma-separated) and the field selectors `metadata.name`,
//!   `metadata.namespace`, `spec.nodeName`;
//! - server-side apply (`PATCH` with `application/apply-patch+yaml`: creates or merges),
//!   merge patches, create, delete (404 `Status` when absent); `?dryRun=All` answers a patch
//!   without storing it;
//! - `pods/NAME/portforward` upgraded to a websocket with the `v4.channel.k8s.io` subprotocol:
//!   per port a data and an error channel, each opened with the port number, then bytes
//!   relayed to the address the test registered for that pod (the "pod's" 127.0.0.1 listener);
//! - `pods/NAME/log` from text the test registered;
//! - `GET /version` with the gitVersion the test set ([`ApiServer::set_version`]), and the
//!   strict schema of that version: an apply with a field the version lacks is rejected with
//!   422, as a real server does (`schema.rs`).
//!
//! Every request is recorded with the bearer token that made it, translated to the verb,
//! resource and subresource the real authorizer would check, so tests can compare the calls
//! against the shipped RBAC rules. Tests script the rest of the cluster (kubelet, controllers)
//! by calling [`ApiServer::put`] and [`ApiServer::remove`].

use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use super::{
    portforward::relay,
    request::{Body, Selectors, Target, full, merge, parse_path, query_of, status},
    schema,
    store::{Event, State, kind_of, put, remove, resource_of},
};
use bytes::Bytes;
use futures::StreamExt as _;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::{Request, Response, StatusCode, body::Frame, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::{net::TcpListener, sync::broadcast};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{handshake::derive_accept_key, protocol::Role},
};

/// A request as the authorizer sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    /// The bearer token of the client (which identity made the call).
    pub user: String,
    pub verb: String,
    pub group: String,
    pub resource: String,
    pub subresource: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

impl Call {
    /// `verb group/resource[/sub]`, e.g. `watch /pods`, `create /pods/portforward`.
    pub fn short(&self) -> String {
        let sub = self
            .subresource
            .as_deref()
            .map(|s| format!("/{s}"))
            .unwrap_or_default();
        format!("{} {}/{}{sub}", self.verb, self.group, self.resource)
    }
}

/// The test double. Dropping it stops the server.
pub struct ApiServer {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    events: broadcast::Sender<Event>,
    /// Sending on it ends every open watch (a network blip).
    disconnect: broadcast::Sender<()>,
    stall: broadcast::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ApiServer {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let (events, _) = broadcast::channel(4096);
        let (disconnect, _) = broadcast::channel(4);
        let (stall, _) = broadcast::channel(4);
        let shared = Shared {
            state: state.clone(),
            events: events.clone(),
            disconnect: disconnect.clone(),
            stall: stall.clone(),
        };
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let shared = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(shared.handle(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Self {
            addr,
            state,
            events,
            disconnect,
            stall,
            task,
        }
    }

    /// A kubeconfig for this server, authenticating with `token` (the identity in [`Call`]).
    pub fn kubeconfig(&self, dir: &std::path::Path, token: &str) -> std::path::PathBuf {
        let path = dir.join(format!("kubeconfig-{token}"));
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: double\n  cluster:\n    server: http://{}\ncontexts:\n- name: double\n  context:\n    cluster: double\n    user: {token}\n    namespace: default\ncurrent-context: double\nusers:\n- name: {token}\n  user:\n    token: {token}\n",
            self.addr
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    /// A kube client for this server authenticating with `token`.
    pub fn client(&self, token: &str) -> kube::Client {
        kube::Client::try_from(self.config(token)).unwrap()
    }

    /// The client settings [`ApiServer::client`] uses, for a client built another way.
    pub fn config(&self, token: &str) -> kube::Config {
        let mut config = kube::Config::new(format!("http://{}", self.addr).parse().unwrap());
        config.auth_info.token = Some(token.to_owned().into());
        config.default_namespace = "default".to_owned();
        config
    }

    /// Creates or replaces an object (as a controller or the kubelet would) and notifies
    /// watchers; returns its new resourceVersion.
    pub fn put(&self, object: Value) -> u64 {
        let (group, resource) = resource_of(&object);
        put(&self.state, &self.events, (group, resource), object)
    }

    /// Deletes an object and notifies watchers.
    pub fn remove(&self, group: &str, resource: &str, namespace: &str, name: &str) -> bool {
        remove(
            &self.state,
            &self.events,
            (group.to_owned(), resource.to_owned()),
            namespace,
            name,
        )
        .is_some()
    }

    pub fn get(&self, group: &str, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        let state = self.state.lock().unwrap();
        state
            .objects
            .get(&(
                group.to_owned(),
                resource.to_owned(),
                namespace.to_owned(),
                name.to_owned(),
            ))
            .map(|s| s.object.clone())
    }

    /// Objects of a resource, all namespaces.
    pub fn list(&self, group: &str, resource: &str) -> Vec<Value> {
        let state = self.state.lock().unwrap();
        state
            .objects
            .values()
            .filter(|s| s.key.0 == group && s.key.1 == resource)
            .map(|s| s.object.clone())
            .collect()
    }

    /// Ends every open watch, as a dropped connection or an API server restart would.
    pub fn disconnect_watches(&self) {
        let _ = self.disconnect.send(());
    }

    /// Every open watch goes silent without closing (no event, no bookmark, no FIN), as a
    /// connection whose NAT entry was flushed does; watches opened afterwards work.
    pub fn stall_watches(&self) {
        let _ = self.stall.send(());
    }

    /// The server reports `git_version` (e.g. `v1.23.17-eks-abc`) from `GET /version` and
    /// rejects fields newer than it.
    pub fn set_version(&self, git_version: &str) {
        self.state.lock().unwrap().git_version = Some(git_version.to_owned());
    }

    /// Writes to `resource` (e.g. `daemonsets`) are denied by an admission webhook (a policy
    /// engine) with `message`.
    pub fn deny(&self, resource: &str, message: &str) {
        self.state
            .lock()
            .unwrap()
            .denials
            .insert(resource.to_owned(), message.to_owned());
    }

    /// How many times a client asked `GET /version` (a non-resource URL every authenticated
    /// user may read, so not one of [`ApiServer::calls`]).
    pub fn version_requests(&self) -> usize {
        self.state.lock().unwrap().version_requests
    }

    /// Makes every request fail with 503 (`true`) or serves again (`false`).
    pub fn set_down(&self, down: bool) {
        self.state.lock().unwrap().down = down;
    }

    /// Forgets the event history: a watch resuming from an older version gets 410 Gone.
    pub fn compact(&self) {
        let mut state = self.state.lock().unwrap();
        state.compacted = state.rv;
        state.log.clear();
    }

    /// Port-forwards to pod `name` reach `addr`.
    pub fn forward(&self, pod: &str, addr: SocketAddr) {
        self.state
            .lock()
            .unwrap()
            .forwards
            .insert(pod.to_owned(), addr);
    }

    /// `pods/NAME/log` returns `text`.
    pub fn set_log(&self, pod: &str, text: &str) {
        self.state
            .lock()
            .unwrap()
            .logs
            .insert(pod.to_owned(), text.to_owned());
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().unwrap().calls.clone()
    }

    /// Subscribes to object changes (for tests that react like a controller would).
    pub fn changes(&self) -> broadcast::Receiver<EventView> {
        let (tx, rx) = broadcast::channel(1024);
        let mut inner = self.events.subscribe();
        tokio::spawn(async move {
            while let Ok(e) = inner.recv().await {
                if tx
                    .send(EventView {
                        kind: e.kind,
                        resource: e.key.1.clone(),
                        object: e.object.clone(),
                    })
                    .is_err()
                {
                    return;
                }
            }
        });
        rx
    }
}

/// A change as seen by [`ApiServer::changes`].
#[derive(Clone, Debug)]
pub struct EventView {
    pub kind: &'static str,
    pub resource: String,
    pub object: Value,
}

#[derive(Clone)]
struct Shared {
    state: Arc<Mutex<State>>,
    events: broadcast::Sender<Event>,
    disconnect: broadcast::Sender<()>,
    stall: broadcast::Sender<()>,
}

impl Shared {
    async fn handle(&self, req: Request<hyper::body::Incoming>) -> Response<Body> {
        let user = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("anonymous")
            .to_owned();
        if self.state.lock().unwrap().down {
            return full(
                StatusCode::SERVICE_UNAVAILABLE,
                status(
                    503,
                    "ServiceUnavailable",
                    "the API server is restarting (test double)",
                ),
            );
        }
        if req.uri().path() == "/version" {
            let mut s = self.state.lock().unwrap();
            s.version_requests += 1;
            let git_version = s
                .git_version
                .clone()
                .unwrap_or_else(|| "v1.31.0".to_owned());
            let minor = schema::minor_of(&git_version);
            // Managed clusters report minors like "28+".
            return full(
                StatusCode::OK,
                json!({"major": "1", "minor": format!("{minor}+"), "gitVersion": git_version,
                       "gitCommit": "0000000", "gitTreeState": "clean",
                       "buildDate": "2026-11-22T01:00:00Z", "goVersion": "go1.25.4",
                       "compiler": "gc", "platform": "linux/amd64"}),
            );
        }
        let Some(target) = parse_path(req.uri().path()) else {
            return full(
                StatusCode::NOT_FOUND,
                status(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                ),
            );
        };
        let query = query_of(req.uri());
        let watch = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
        let verb = match (req.method().as_str(), &target.name, watch) {
            ("GET", _, true) => "watch",
            ("GET", Some(_), false) if target.subresource.as_deref() == Some("portforward") => {
                // Since Kubernetes 1.35 (AuthorizePodWebsocketUpgradeCreatePermission) a
                // websocket port-forward is authorized as `create`.
                "create"
            }
            ("GET", Some(_), false) => "get",
            ("GET", None, false) => "list",
            ("PATCH", _, _) => "patch",
            ("DELETE", _, _) => "delete",
            ("POST", _, _) => "create",
            ("PUT", _, _) => "update",
            _ => "unknown",
        };
        self.state.lock().unwrap().calls.push(Call {
            user,
            verb: verb.to_owned(),
            group: target.group.clone(),
            resource: target.resource.clone(),
            subresource: target.subresource.clone(),
            namespace: target.namespace.clone(),
            name: target.name.clone(),
        });
        let key = (target.group.clone(), target.resource.clone());
        match (verb, target.subresource.as_deref()) {
            ("watch", None) => self.watch(key, &target, &query),
            ("list", None) => self.list(key, &target, &query),
            ("get", None) => self.get(key, &target),
            ("create", Some("portforward")) => self.portforward(req, &target, &query),
            ("get", Some("log")) => {
                let name = target.name.clone().unwrap_or_default();
                let text = self.state.lock().unwrap().logs.get(&name).cloned();
                match text {
                    Some(t) => Response::new(Full::new(Bytes::from(t)).boxed()),
                    None => full(
                        StatusCode::NOT_FOUND,
                        status(404, "NotFound", &format!("pods \"{name}\" not found")),
                    ),
                }
            }
            ("patch", None) => self.patch(req, key, &target).await,
            ("create", None) => self.create(req, key, &target).await,
            ("delete", None) => {
                let ns = target.namespace.clone().unwrap_or_default();
                let name = target.name.clone().unwrap_or_default();
                match remove(&self.state, &self.events, key, &ns, &name) {
                    Some(o) => full(StatusCode::OK, o),
                    None => full(
                        StatusCode::NOT_FOUND,
                        status(
                            404,
                            "NotFound",
                            &format!("{} \"{name}\" not found", target.resource),
                        ),
                    ),
                }
            }
            _ => full(
                StatusCode::METHOD_NOT_ALLOWED,
                status(405, "MethodNotAllowed", "not scripted in the test double"),
            ),
        }
    }

    fn matching(&self, key: &(String, String), target: &Target, sel: &Selectors) -> Vec<Value> {
        let s = self.state.lock().unwrap();
        s.objects
            .values()
            .filter(|o| &o.key == key)
            .filter(|o| {
                target.namespace.is_none()
                    || o.object["metadata"]["namespace"].as_str() == target.namespace.as_deref()
            })
            .filter(|o| sel.matches(&o.object))
            .map(|o| o.object.clone())
            .collect()
    }

    fn list(
        &self,
        key: (String, String),
        target: &Target,
        query: &HashMap<String, String>,
    ) -> Response<Body> {
        let sel = Selectors::parse(query);
        let items = self.matching(&key, target, &sel);
        let rv = self.state.lock().unwrap().rv;
        let group_version = if key.0.is_empty() {
            "v1".to_owned()
        } else {
            format!("{}/v1", key.0)
        };
        full(
            StatusCode::OK,
            json!({"kind": format!("{}List", kind_of(&key.1)), "apiVersion": group_version,
                   "metadata": {"resourceVersion": rv.to_string()}, "items": items}),
        )
    }

    fn get(&self, key: (String, String), target: &Target) -> Response<Body> {
        let s = self.state.lock().unwrap();
        let id = (
            key.0,
            key.1.clone(),
            target.namespace.clone().unwrap_or_default(),
            target.name.clone().unwrap_or_default(),
        );
        match s.objects.get(&id) {
            Some(o) => full(StatusCode::OK, o.object.clone()),
            None => full(
                StatusCode::NOT_FOUND,
                status(
                    404,
                    "NotFound",
                    &format!("{} \"{}\" not found", key.1, id.3),
                ),
            ),
        }
    }

    fn watch(
        &self,
        key: (String, String),
        target: &Target,
        query: &HashMap<String, String>,
    ) -> Response<Body> {
        let sel = Selectors::parse(query);
        let from: u64 = query
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let bookmarks = query.get("allowWatchBookmarks").map(String::as_str) == Some("true");
        let namespace = target.namespace.clone();
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1024);
        let mut live = self.events.subscribe();
        let mut disconnect = self.disconnect.subscribe();
        let mut stall = self.stall.subscribe();
        let (replay, gone, current) = {
            let s = self.state.lock().unwrap();
            let gone = from != 0 && from < s.compacted;
            let replay: Vec<Event> = if from == 0 {
                // A watch without a version starts with the current state as ADDED events.
                s.objects
                    .values()
                    .filter(|o| o.key == key)
                    .map(|o| Event {
                        rv: s.rv,
                        key: o.key.clone(),
                        kind: "ADDED",
                        object: o.object.clone(),
                    })
                    .collect()
            } else {
                s.log.iter().filter(|e| e.rv > from).cloned().collect()
            };
            (replay, gone, s.rv)
        };
        let relevant = move |e: &Event| {
            e.key == key
                && (namespace.is_none()
                    || e.object["metadata"]["namespace"].as_str() == namespace.as_deref())
                && sel.matches(&e.object)
        };
        tokio::spawn(async move {
            let line = |v: Value| Bytes::from(format!("{v}\n"));
            if gone {
                let _ = tx
                    .send(line(
                        json!({"type": "ERROR", "object": status(410, "Expired",
                        &format!("too old resource version: {from} ({current})"))}),
                    ))
                    .await;
                return;
            }
            let replayed = from.max(current);
            let mut last = replayed;
            for e in replay.into_iter().filter(|e| relevant(e)) {
                if tx
                    .send(line(json!({"type": e.kind, "object": e.object})))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tokio::select! {
                    biased;
                    _ = disconnect.recv() => return,
                    _ = stall.recv() => {
                        // Holds the response open and silent until the client gives up.
                        let _open = tx;
                        std::future::pending::<()>().await;
                        return;
                    }
                    e = live.recv() => match e {
                        // Older events were in the replay (subscribing came first, so none is missed).
                        Ok(e) if e.rv > replayed => {
                            last = last.max(e.rv);
                            if relevant(&e) && tx.send(line(json!({"type": e.kind, "object": e.object}))).await.is_err() {
                                return;
                            }
                        }
                        Ok(_) => {}
                        Err(_) => return,
                    },
                    _ = tick.tick(), if bookmarks => {
                        let kind = "Bookmark";
                        if tx.send(line(json!({"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": "v1",
                            "metadata": {"resourceVersion": last.to_string()}}}))).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        let stream = tokio_stream_from(rx).map(|b| Ok::<_, Infallible>(Frame::data(b)));
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .body(BodyExt::boxed(StreamBody::new(stream)))
            .unwrap()
    }

    async fn patch(
        &self,
        req: Request<hyper::body::Incoming>,
        key: (String, String),
        target: &Target,
    ) -> Response<Body> {
        let content_type = req
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let dry_run = query_of(req.uri())
            .get("dryRun")
            .is_some_and(|v| v == "All");
        let body = req.into_body().collect().await.unwrap().to_bytes();
        // Apply patches are YAML (JSON is YAML); merge patches are JSON.
        let patch: Value = match serde_yaml::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                return full(
                    StatusCode::BAD_REQUEST,
                    status(400, "BadRequest", &e.to_string()),
                );
            }
        };
        let ns = target.namespace.clone().unwrap_or_default();
        let name = target.name.clone().unwrap_or_default();
        let denial = self.state.lock().unwrap().denials.get(&key.1).cloned();
        if let Some(message) = denial {
            return full(
                StatusCode::BAD_REQUEST,
                status(
                    400,
                    "BadRequest",
                    &format!(
                        "admission webhook \"validate.policy.example\" denied the request: {message}"
                    ),
                ),
            );
        }
        if content_type == "application/apply-patch+yaml" {
            let minor = schema::minor_of(
                self.state
                    .lock()
                    .unwrap()
                    .git_version
                    .as_deref()
                    .unwrap_or("v1.31.0"),
            );
            if let Some(field) = schema::undeclared(&patch, minor) {
                let what = format!(
                    "{ns}/{name}; {}, Kind={}",
                    patch["apiVersion"].as_str().unwrap_or_default(),
                    patch["kind"].as_str().unwrap_or_default()
                );
                return full(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    status(
                        422,
                        "Invalid",
                        &format!(
                            "failed to create typed patch object ({what}): {field}: field not declared in schema"
                        ),
                    ),
                );
            }
        }
        let existing = self
            .state
            .lock()
            .unwrap()
            .objects
            .get(&(key.0.clone(), key.1.clone(), ns.clone(), name.clone()))
            .map(|s| s.object.clone());
        let merged = match (existing, content_type.as_str()) {
            (Some(mut o), _) => {
                merge(&mut o, &patch);
                o
            }
            (None, "application/apply-patch+yaml") => {
                let mut o = patch;
                if !ns.is_empty() {
                    o["metadata"]["namespace"] = json!(ns);
                }
                o
            }
            (None, _) => {
                return full(
                    StatusCode::NOT_FOUND,
                    status(404, "NotFound", &format!("{} \"{name}\" not found", key.1)),
                );
            }
        };
        if dry_run {
            // Validated and merged as for real, answered, not stored.
            return full(StatusCode::OK, merged);
        }
        put(&self.state, &self.events, key.clone(), merged);
        self.get(key, target)
    }

    async fn create(
        &self,
        req: Request<hyper::body::Incoming>,
        key: (String, String),
        target: &Target,
    ) -> Response<Body> {
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let mut object: Value = match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                return full(
                    StatusCode::BAD_REQUEST,
                    status(400, "BadRequest", &e.to_string()),
                );
            }
        };
        if let Some(ns) = &target.namespace {
            object["metadata"]["namespace"] = json!(ns);
        }
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let id = (
            key.0.clone(),
            key.1.clone(),
            target.namespace.clone().unwrap_or_default(),
            name.clone(),
        );
        if self.state.lock().unwrap().objects.contains_key(&id) {
            return full(
                StatusCode::CONFLICT,
                status(
                    409,
                    "AlreadyExists",
                    &format!("{} \"{name}\" already exists", key.1),
                ),
            );
        }
        put(&self.state, &self.events, key.clone(), object);
        let target = Target {
            name: Some(name),
            ..target.clone()
        };
        let mut resp = self.get(key, &target);
        *resp.status_mut() = StatusCode::CREATED;
        resp
    }

    fn portforward(
        &self,
        req: Request<hyper::body::Incoming>,
        target: &Target,
        query: &HashMap<String, String>,
    ) -> Response<Body> {
        let name = target.name.clone().unwrap_or_default();
        let Some(addr) = self.state.lock().unwrap().forwards.get(&name).copied() else {
            return full(
                StatusCode::NOT_FOUND,
                status(404, "NotFound", &format!("pods \"{name}\" not found")),
            );
        };
        let Some(port) = query.get("ports").and_then(|p| p.parse::<u16>().ok()) else {
            return full(
                StatusCode::BAD_REQUEST,
                status(400, "BadRequest", "exactly one port expected"),
            );
        };
        let Some(key) = req
            .headers()
            .get("sec-websocket-key")
            .map(|k| derive_accept_key(k.as_bytes()))
        else {
            return full(
                StatusCode::BAD_REQUEST,
                status(400, "BadRequest", "port-forward needs a websocket upgrade"),
            );
        };
        tokio::spawn(async move {
            let Ok(upgraded) = hyper::upgrade::on(req).await else {
                return;
            };
            let ws =
                WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
            relay(ws, addr, port).await;
        });
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-accept", key)
            .header("sec-websocket-protocol", "v4.channel.k8s.io")
            .body(Full::new(Bytes::new()).boxed())
            .unwrap()
    }
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Bytes>,
) -> impl futures::Stream<Item = Bytes> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
