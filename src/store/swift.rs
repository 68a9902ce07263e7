//! OpenStack Swift through its native API: `swift://CONTAINER[/PREFIX]`.
//!
//! Authentication is v1 (tempauth, swauth: `X-Auth-User`/`X-Auth-Key` give a
//! storage URL and a token) or Keystone v3 (a password-scoped token and the
//! object-store endpoint from its catalog). Credentials come from the
//! environment (`ST_AUTH`/`ST_USER`/`ST_KEY` as python-swiftclient has them,
//! or `OS_AUTH_URL`/`OS_USERNAME`/`OS_PASSWORD`/`OS_PROJECT_NAME`/...) or a
//! password file; never from the command line, never into logs. A token that
//! expires (401) is renewed once, transparently.
//!
//! The layout is the S3 store's (and so s3fs-fuse's): an object per file,
//! `dir/` marker objects for empty directories, mode/uid/gid/mtime in
//! `X-Object-Meta-*` (what S3's `x-amz-meta-*` is in Swift), so one cluster's
//! data reads the same through either API. Files above the large-object
//! threshold are static large objects: segments in `CONTAINER_segments`,
//! uploaded in parallel, then the manifest.

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::RwLock;

use super::object_meta::{
    DIR_CONTENT_TYPE, S_IFDIR, S_IFREG, attrs_from, content_type_of, implied_dir, put_attrs,
    valid_path, version_of, writable_key,
};
use super::{
    Attrs, DirMeta, GetResult, ListPage, Node, ObjectMeta, Store, StoreError, StoreResult,
};

/// Names per listing page (Swift's default maximum).
const PAGE: usize = 10_000;
const META: &str = "x-object-meta-";

/// How to get a token.
#[derive(Clone)]
pub enum Auth {
    /// `GET auth_url` with X-Auth-User / X-Auth-Key (tempauth, swauth).
    V1 {
        url: String,
        user: String,
        key: String,
    },
    /// Keystone v3 password authentication, scoped to a project.
    V3 {
        url: String,
        user: String,
        password: String,
        user_domain: String,
        project: String,
        project_domain: String,
        region: Option<String>,
    },
}

impl std::fmt::Debug for Auth {
    // Never the key or password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::V1 { url, user, .. } => write!(f, "v1 auth at {url} as {user}"),
            Auth::V3 {
                url, user, project, ..
            } => {
                write!(f, "Keystone v3 at {url} as {user} in project {project}")
            }
        }
    }
}

impl Auth {
    /// From the environment (and `password_file`, whose first line is the key
    /// or password); `auth_url` overrides ST_AUTH / OS_AUTH_URL.
    pub fn from_env(auth_url: Option<&str>, password_file: Option<&Path>) -> Result<Auth, String> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let secret = |vars: &[&str]| -> Result<String, String> {
            if let Some(f) = password_file {
                let text = std::fs::read_to_string(f)
                    .map_err(|e| format!("password file {}: {e}", f.display()))?;
                return Ok(text.lines().next().unwrap_or("").to_string());
            }
            vars.iter().find_map(|v| env(v)).ok_or_else(|| {
                format!(
                    "swift: no key or password: set {} or use --password-file",
                    vars.join(" or ")
                )
            })
        };
        if let Some(user) = env("ST_USER") {
            let url = auth_url
                .map(str::to_string)
                .or_else(|| env("ST_AUTH"))
                .ok_or("swift: no auth URL: use --auth-url or set ST_AUTH")?;
            return Ok(Auth::V1 {
                url,
                user,
                key: secret(&["ST_KEY"])?,
            });
        }
        let user = env("OS_USERNAME")
            .ok_or("swift: no user: set ST_USER and ST_KEY (v1 auth) or OS_USERNAME and OS_PASSWORD (Keystone)")?;
        let url = auth_url
            .map(str::to_string)
            .or_else(|| env("OS_AUTH_URL"))
            .ok_or(
                "swift: no auth URL: use --auth-url or set OS_AUTH_URL (Keystone) or ST_AUTH (v1)",
            )?;
        Ok(Auth::V3 {
            url,
            user,
            password: secret(&["OS_PASSWORD"])?,
            user_domain: env("OS_USER_DOMAIN_NAME").unwrap_or_else(|| "Default".into()),
            project: env("OS_PROJECT_NAME")
                .or_else(|| env("OS_TENANT_NAME"))
                .ok_or("swift: no project: set OS_PROJECT_NAME")?,
            project_domain: env("OS_PROJECT_DOMAIN_NAME").unwrap_or_else(|| "Default".into()),
            region: env("OS_REGION_NAME"),
        })
    }
}

#[derive(Clone, Debug)]
pub struct SwiftConfig {
    pub container: String,
    /// Key prefix inside the container, without leading or trailing `/`.
    pub prefix: String,
    pub auth: Auth,
    /// Files larger than this become static large objects.
    pub slo_threshold: u64,
    pub segment_size: u64,
    pub parallel_segments: usize,
    pub request_timeout: Duration,
    pub attempts: u32,
}

impl SwiftConfig {
    pub fn new(container: &str, prefix: &str, auth: Auth) -> Self {
        SwiftConfig {
            container: container.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            auth,
            slo_threshold: 64 << 20,
            segment_size: 16 << 20,
            parallel_segments: 4,
            request_timeout: Duration::from_secs(60),
            attempts: 4,
        }
    }
}

#[derive(Clone)]
struct Session {
    storage_url: String,
    token: String,
}

pub struct SwiftStore {
    cfg: SwiftConfig,
    http: reqwest::Client,
    session: RwLock<Option<Session>>,
    /// `PREFIX/` or "".
    root: String,
    warned: Mutex<std::collections::HashSet<String>>,
}

/// One entry of a JSON container listing.
#[derive(Deserialize)]
struct Listed {
    name: Option<String>,
    subdir: Option<String>,
    bytes: Option<u64>,
    hash: Option<String>,
    last_modified: Option<String>,
}

/// Percent-encode a key for a URL path (keeping `/`).
fn enc(s: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'/')
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(s, SET).to_string()
}

/// Swift listings give `2026-11-22T23:18:12.123456` (UTC, no zone).
fn parse_listing_time(s: &str) -> Option<SystemTime> {
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|x| x.parse::<u64>());
    let (hh, mm, ss) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    // Days from 1970-01-01 of a proleptic Gregorian date.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
    let digits: String = frac.chars().take(9).collect();
    let nanos = digits.parse::<u32>().ok()? * 10u32.pow(9 - digits.len() as u32);
    UNIX_EPOCH.checked_add(Duration::new(
        days * 86_400 + hh * 3600 + mm * 60 + ss,
        nanos,
    ))
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// The object described by a HEAD or GET answer.
fn meta_from(key: &str, h: &HeaderMap) -> ObjectMeta {
    let size = header(h, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let modified = header(h, "last-modified").and_then(|v| httpdate::parse_http_date(v).ok());
    let md: HashMap<String, String> = h
        .iter()
        .filter_map(|(k, v)| {
            let name = k.as_str().strip_prefix(META)?;
            Some((name.to_string(), v.to_str().ok()?.to_string()))
        })
        .collect();
    let etag = header(h, "etag").map(|e| e.trim_matches('"').to_string());
    ObjectMeta {
        key: key.to_string(),
        size,
        version: version_of(etag.as_deref(), size, modified),
        modified: modified.unwrap_or(UNIX_EPOCH),
        attrs: attrs_from(Some(&md)),
    }
}

fn meta_headers(attrs: &Attrs, type_bits: u32, default_mode: u32) -> HeaderMap {
    let mut md = HashMap::new();
    put_attrs(&mut md, attrs, type_bits, default_mode);
    let mut h = HeaderMap::new();
    for (k, v) in md {
        if let (Ok(name), Ok(value)) = (
            reqwest::header::HeaderName::from_bytes(format!("{META}{k}").as_bytes()),
            HeaderValue::from_str(&v),
        ) {
            h.insert(name, value);
        }
    }
    h
}

fn transport(what: &str, e: reqwest::Error) -> StoreError {
    // The URL may carry the account, never a secret; still, keep it short.
    let mut cause: &dyn std::error::Error = &e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    StoreError::Unavailable(format!("{what}: {cause}"))
}

impl SwiftStore {
    /// Authenticate and check the container, with a plain message for each
    /// way that can fail.
    pub async fn open(cfg: SwiftConfig) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .read_timeout(cfg.request_timeout)
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| format!("swift: HTTP client: {e}"))?;
        let root = if cfg.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", cfg.prefix)
        };
        let store = SwiftStore {
            cfg,
            http,
            session: RwLock::new(None),
            root,
            warned: Mutex::new(Default::default()),
        };
        store.renew().await.map_err(|e| format!("swift: {e}"))?;
        let r = store
            .send(Method::HEAD, "", &[], HeaderMap::new(), None)
            .await
            .map_err(|e| format!("swift: container {:?}: {e}", store.cfg.container))?;
        match r.status() {
            s if s.is_success() => Ok(store),
            StatusCode::NOT_FOUND => Err(format!(
                "swift: no such container {:?} (create it first, e.g. `swift post {}`)",
                store.cfg.container, store.cfg.container
            )),
            s => Err(format!(
                "swift: container {:?}: HTTP {s}",
                store.cfg.container
            )),
        }
    }

    /// Forget the token: the next request authenticates again (tests).
    pub async fn spoil_token(&self) {
        if let Some(s) = self.session.write().await.as_mut() {
            s.token = "expired-token".into();
        }
    }

    async fn renew(&self) -> StoreResult<Session> {
        let s = match &self.cfg.auth {
            Auth::V1 { url, user, key } => {
                let r = self
                    .http
                    .get(url)
                    .header("X-Auth-User", user)
                    .header("X-Auth-Key", key)
                    .send()
                    .await
                    .map_err(|e| transport(&format!("auth at {url}"), e))?;
                auth_answer(
                    r.status(),
                    &format!("auth at {url}"),
                    &format!("refused user {user:?}: wrong user or key"),
                )?;
                let h = r.headers();
                match (header(h, "x-storage-url"), header(h, "x-auth-token")) {
                    (Some(u), Some(t)) => Session {
                        storage_url: u.trim_end_matches('/').to_string(),
                        token: t.to_string(),
                    },
                    _ => {
                        return Err(StoreError::Other(format!(
                            "auth at {url} answered without X-Storage-Url / X-Auth-Token"
                        )));
                    }
                }
            }
            Auth::V3 { url, .. } => self.keystone(url).await?,
        };
        *self.session.write().await = Some(s.clone());
        Ok(s)
    }

    async fn keystone(&self, url: &str) -> StoreResult<Session> {
        let Auth::V3 {
            user,
            password,
            user_domain,
            project,
            project_domain,
            region,
            ..
        } = &self.cfg.auth
        else {
            unreachable!("keystone() is for v3 auth");
        };
        let base = url.trim_end_matches('/');
        let tokens = if base.ends_with("/v3") {
            format!("{base}/auth/tokens")
        } else {
            format!("{base}/v3/auth/tokens")
        };
        let body = serde_json::json!({"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": user, "domain": {"name": user_domain}, "password": password}}},
            "scope": {"project": {"name": project, "domain": {"name": project_domain}}}
        }});
        let r = self
            .http
            .post(&tokens)
            .json(&body)
            .send()
            .await
            .map_err(|e| transport(&format!("Keystone at {base}"), e))?;
        auth_answer(
            r.status(),
            &format!("Keystone at {base}"),
            &format!(
                "refused user {user:?} for project {project:?}: wrong user, password or project"
            ),
        )?;
        let token = header(r.headers(), "x-subject-token")
            .ok_or_else(|| StoreError::Other(format!("Keystone at {base}: no X-Subject-Token")))?
            .to_string();
        let text = r
            .text()
            .await
            .map_err(|e| transport(&format!("Keystone at {base}"), e))?;
        let storage_url = object_store_endpoint(&text, region.as_deref()).ok_or_else(|| {
            StoreError::Other(format!(
                "Keystone at {base}: no public object-store endpoint{} in the catalog",
                region
                    .as_deref()
                    .map(|r| format!(" in region {r}"))
                    .unwrap_or_default()
            ))
        })?;
        Ok(Session { storage_url, token })
    }

    /// One request to `CONTAINER/PATH` (path relative to the container,
    /// already encoded), retried on 5xx and connection errors with backoff
    /// and jitter, re-authenticated once on 401.
    async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        headers: HeaderMap,
        body: Option<BodySource<'_>>,
    ) -> StoreResult<reqwest::Response> {
        self.send_in(&self.cfg.container, method, path, query, headers, body)
            .await
    }

    /// `send` to a container of the same account (the segments').
    async fn send_in(
        &self,
        container: &str,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        headers: HeaderMap,
        body: Option<BodySource<'_>>,
    ) -> StoreResult<reqwest::Response> {
        let mut renewed = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let session = match self.session.read().await.clone() {
                Some(s) => s,
                None => self.renew().await?,
            };
            let url = if path.is_empty() {
                format!("{}/{}", session.storage_url, enc(container))
            } else {
                format!("{}/{}/{path}", session.storage_url, enc(container))
            };
            let mut req = self
                .http
                .request(method.clone(), &url)
                .headers(headers.clone())
                .header("X-Auth-Token", &session.token)
                .query(query);
            if let Some(b) = &body {
                // Swift wants a length (411 for an empty body without one);
                // with it, files go as plain bodies, not chunked.
                req = req.header("content-length", b.len()).body(b.body().await?);
            }
            let result = req.send().await;
            let retry = match &result {
                Ok(r) if r.status() == StatusCode::UNAUTHORIZED && !renewed => {
                    renewed = true;
                    tracing::info!("swift token refused (expired?); authenticating again");
                    self.renew().await?;
                    continue;
                }
                Ok(r) => {
                    r.status().is_server_error() || r.status() == StatusCode::TOO_MANY_REQUESTS
                }
                Err(e) => e.is_connect() || e.is_timeout() || e.is_request(),
            };
            if !retry || attempt >= self.cfg.attempts {
                return match result {
                    Ok(r) if r.status() == StatusCode::UNAUTHORIZED => {
                        Err(StoreError::PermissionDenied(format!(
                            "{method} {path}: the token was refused after authenticating again"
                        )))
                    }
                    Ok(r) if r.status().is_server_error() => Err(StoreError::Unavailable(format!(
                        "{method} {path}: HTTP {}",
                        r.status()
                    ))),
                    Ok(r) => Ok(r),
                    Err(e) => Err(transport(&format!("{method} {path}"), e)),
                };
            }
            // 100 ms, 200 ms, 400 ms ... with full jitter.
            let cap = 100u64 << (attempt - 1).min(6);
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.subsec_nanos() as u64)
                .unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(nanos % cap.max(1))).await;
        }
    }

    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.root)
    }

    fn writable(&self, key: &str) -> StoreResult<String> {
        writable_key(&self.root, key)
    }

    fn warn_skip(&self, full: &str, why: &str) {
        let mut w = self.warned.lock().unwrap();
        if w.len() > 10_000 {
            w.clear();
        }
        if w.insert(full.to_string()) {
            tracing::warn!(container = %self.cfg.container, key = %full, "skipping an object: {why}");
        }
    }

    /// The directory `key`, if any object lies below it: its marker
    /// object's attributes where there is one, else an implied directory.
    async fn dir_below(&self, key: &str) -> StoreResult<Option<DirMeta>> {
        let marker = format!("{}/", self.full(key));
        let query = [
            ("format", "json"),
            ("prefix", marker.as_str()),
            ("limit", "1"),
        ];
        let below = self
            .send(Method::GET, "", &query, HeaderMap::new(), None)
            .await?;
        let listed: Vec<Listed> = if below.status().is_success() {
            below.json().await.map_err(|e| transport("listing", e))?
        } else {
            Vec::new()
        };
        let Some(first) = listed.first().and_then(|l| l.name.clone()) else {
            return Ok(None);
        };
        let attrs = if first == marker {
            self.head_full(key, &marker)
                .await?
                .map(|m| m.attrs)
                .unwrap_or_default()
        } else {
            Attrs::default()
        };
        Ok(Some(DirMeta {
            key: key.to_string(),
            modified: None,
            attrs,
        }))
    }

    async fn head_full(&self, key: &str, full: &str) -> StoreResult<Option<ObjectMeta>> {
        let r = self
            .send(Method::HEAD, &enc(full), &[], HeaderMap::new(), None)
            .await?;
        match r.status() {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => Ok(Some(meta_from(key, r.headers()))),
            s => Err(status_error("HEAD", full, s)),
        }
    }

    fn segments(&self) -> String {
        format!("{}_segments", self.cfg.container)
    }

    /// A static large object: segments in parallel, then the manifest.
    async fn put_slo(
        &self,
        full: &str,
        src: &Path,
        size: u64,
        headers: HeaderMap,
    ) -> StoreResult<()> {
        let seg = self.cfg.segment_size.max(1 << 20);
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let base = format!("{full}/{stamp:x}");
        // The segments container may not exist yet: make it (idempotent).
        let seg_container = self.segments();
        self.send_in(&seg_container, Method::PUT, "", &[], HeaderMap::new(), None)
            .await?;
        let count = size.div_ceil(seg);
        let parts: Vec<(u64, String, String)> = futures::stream::iter(0..count)
            .map(|i| {
                let name = format!("{base}/{i:08}");
                let seg_container = seg_container.clone();
                async move {
                    let range = i * seg..(i * seg + seg).min(size);
                    let len = range.end - range.start;
                    let r = self
                        .send_in(
                            &seg_container,
                            Method::PUT,
                            &enc(&name),
                            &[],
                            HeaderMap::new(),
                            Some(BodySource::File { path: src, range }),
                        )
                        .await?;
                    if !r.status().is_success() {
                        return Err(status_error("PUT segment", &name, r.status()));
                    }
                    let etag = header(r.headers(), "etag")
                        .unwrap_or("")
                        .trim_matches('"')
                        .to_string();
                    Ok::<_, StoreError>((len, name, etag))
                }
            })
            .buffered(self.cfg.parallel_segments.max(1))
            .try_collect()
            .await?;
        let manifest: Vec<serde_json::Value> = parts
            .iter()
            .map(|(len, name, etag)| {
                serde_json::json!({"path": format!("/{seg_container}/{name}"), "etag": etag, "size_bytes": len})
            })
            .collect();
        let r = self
            .send(
                Method::PUT,
                &enc(full),
                &[("multipart-manifest", "put")],
                headers,
                Some(BodySource::Bytes(
                    serde_json::to_vec(&manifest).unwrap_or_default(),
                )),
            )
            .await?;
        if !r.status().is_success() {
            // The segments are of no use without their manifest.
            for (_, name, _) in &parts {
                let _ = self
                    .send_in(
                        &seg_container,
                        Method::DELETE,
                        &enc(name),
                        &[],
                        HeaderMap::new(),
                        None,
                    )
                    .await;
            }
            return Err(status_error("PUT manifest", full, r.status()));
        }
        Ok(())
    }
}

/// Where a request body comes from; made again for each attempt.
enum BodySource<'a> {
    Bytes(Vec<u8>),
    File { path: &'a Path, range: Range<u64> },
}

impl BodySource<'_> {
    fn len(&self) -> u64 {
        match self {
            BodySource::Bytes(b) => b.len() as u64,
            BodySource::File { range, .. } => range.end - range.start,
        }
    }

    async fn body(&self) -> StoreResult<reqwest::Body> {
        match self {
            BodySource::Bytes(b) => Ok(reqwest::Body::from(b.clone())),
            BodySource::File { path, range } => {
                let mut f = tokio::fs::File::open(path)
                    .await
                    .map_err(|e| StoreError::from_io(e, &path.display().to_string()))?;
                f.seek(std::io::SeekFrom::Start(range.start))
                    .await
                    .map_err(|e| StoreError::from_io(e, &path.display().to_string()))?;
                let limited = f.take(range.end - range.start);
                Ok(reqwest::Body::wrap_stream(
                    tokio_util::io::ReaderStream::with_capacity(limited, 256 << 10),
                ))
            }
        }
    }
}

fn status_error(what: &str, key: &str, s: StatusCode) -> StoreError {
    match s {
        StatusCode::NOT_FOUND => StoreError::NotFound,
        StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED => {
            StoreError::PermissionDenied(format!("{what} {key:?}: HTTP {s}"))
        }
        StatusCode::PRECONDITION_FAILED => StoreError::AlreadyExists,
        StatusCode::PAYLOAD_TOO_LARGE => StoreError::TooLarge(format!("{what} {key:?}")),
        StatusCode::INSUFFICIENT_STORAGE => StoreError::NoSpace(format!("{what} {key:?}")),
        s if s.is_server_error() => StoreError::Unavailable(format!("{what} {key:?}: HTTP {s}")),
        s => StoreError::Other(format!("{what} {key:?}: HTTP {s}")),
    }
}

/// The public object-store URL in a Keystone v3 token's catalog.
pub fn object_store_endpoint(token_json: &str, region: Option<&str>) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(token_json).ok()?;
    let catalog = v.get("token")?.get("catalog")?.as_array()?;
    catalog
        .iter()
        .filter(|s| s.get("type").and_then(|t| t.as_str()) == Some("object-store"))
        .flat_map(|s| {
            s.get("endpoints")
                .and_then(|e| e.as_array())
                .into_iter()
                .flatten()
        })
        .find(|e| {
            e.get("interface").and_then(|i| i.as_str()) == Some("public")
                && region.is_none_or(|r| {
                    e.get("region").and_then(|x| x.as_str()) == Some(r)
                        || e.get("region_id").and_then(|x| x.as_str()) == Some(r)
                })
        })
        .and_then(|e| e.get("url")?.as_str())
        .map(|u| u.trim_end_matches('/').to_string())
}

#[async_trait]
impl Store for SwiftStore {
    fn describe(&self) -> String {
        let prefix = if self.cfg.prefix.is_empty() {
            String::new()
        } else {
            format!("/{}", self.cfg.prefix)
        };
        format!(
            "Swift container {}{prefix} ({:?})",
            self.cfg.container, self.cfg.auth
        )
    }

    fn listing_has_attrs(&self) -> bool {
        false
    }

    fn check_key(&self, key: &str) -> StoreResult<()> {
        self.writable(key).map(|_| ())
    }

    fn lookup_fetch_bytes(&self) -> u64 {
        128 << 10
    }

    async fn head(&self, key: &str) -> StoreResult<Option<ObjectMeta>> {
        if key.is_empty() {
            return Ok(None);
        }
        self.head_full(key, &self.full(key)).await
    }

    async fn stat(&self, key: &str) -> StoreResult<Option<Node>> {
        if key.is_empty() {
            return Ok(Some(Node::Dir(implied_dir(""))));
        }
        // The file and the first key below it, in parallel: one round trip.
        let (file, dir) = tokio::join!(self.head(key), self.dir_below(key));
        let (file, dir) = (file?, dir?);
        match dir {
            Some(dir) => {
                if file.is_some() {
                    self.warn_skip(
                        &self.full(key),
                        "a file and a directory share this name; showing the directory",
                    );
                }
                Ok(Some(Node::Dir(dir)))
            }
            None => Ok(file.map(Node::File)),
        }
    }

    async fn stat_without_file(&self, key: &str) -> StoreResult<Option<Node>> {
        if key.is_empty() {
            return Ok(Some(Node::Dir(implied_dir(""))));
        }
        Ok(self.dir_below(key).await?.map(Node::Dir))
    }

    async fn get(
        &self,
        key: &str,
        range: Option<Range<u64>>,
        if_none_match: Option<&str>,
    ) -> StoreResult<GetResult> {
        let full = self.full(key);
        let mut h = HeaderMap::new();
        if let Some(r) = &range {
            if r.start >= r.end {
                let meta = self.head(key).await?.ok_or(StoreError::NotFound)?;
                if if_none_match == Some(meta.version.as_str()) {
                    return Ok(GetResult::NotModified);
                }
                return Ok(GetResult::Body {
                    meta,
                    body: futures::stream::empty().boxed(),
                });
            }
            if let Ok(v) = HeaderValue::from_str(&format!("bytes={}-{}", r.start, r.end - 1)) {
                h.insert("range", v);
            }
        }
        if let Some(v) = if_none_match.and_then(|v| HeaderValue::from_str(&format!("\"{v}\"")).ok())
        {
            h.insert("if-none-match", v);
        }
        let r = self.send(Method::GET, &enc(&full), &[], h, None).await?;
        let mut meta = match r.status() {
            StatusCode::NOT_MODIFIED => return Ok(GetResult::NotModified),
            StatusCode::RANGE_NOT_SATISFIABLE => {
                let meta = self.head(key).await?.ok_or(StoreError::NotFound)?;
                return Ok(GetResult::Body {
                    meta,
                    body: futures::stream::empty().boxed(),
                });
            }
            s if s.is_success() => meta_from(key, r.headers()),
            s => return Err(status_error("GET", &full, s)),
        };
        // A ranged answer gives the object's size after the `/` of Content-Range.
        if let Some(total) = header(r.headers(), "content-range")
            .and_then(|v| v.rsplit('/').next())
            .and_then(|v| v.parse::<u64>().ok())
        {
            meta.size = total;
            meta.version = version_of(
                header(r.headers(), "etag").map(|e| e.trim_matches('"')),
                total,
                Some(meta.modified),
            );
        }
        let body = r
            .bytes_stream()
            .map_err(move |e| StoreError::Unavailable(format!("GET {full:?}: {e}")))
            .boxed();
        Ok(GetResult::Body { meta, body })
    }

    async fn put(&self, key: &str, src: &Path, attrs: &Attrs) -> StoreResult<ObjectMeta> {
        let full = self.writable(key)?;
        let size = tokio::fs::metadata(src)
            .await
            .map_err(|e| StoreError::from_io(e, key))?
            .len();
        let attrs = Attrs {
            mtime: Some(attrs.mtime.unwrap_or_else(SystemTime::now)),
            ..attrs.clone()
        };
        let mut h = meta_headers(&attrs, S_IFREG, 0o644);
        if let Ok(v) = HeaderValue::from_str(&content_type_of(key)) {
            h.insert("content-type", v);
        }
        if size > self.cfg.slo_threshold {
            // Replacing an earlier large object leaves its segments behind
            // unless it goes first; a reader meanwhile sees the old or none.
            self.put_slo(&full, src, size, h).await?;
        } else {
            let r = self
                .send(
                    Method::PUT,
                    &enc(&full),
                    &[],
                    h,
                    Some(BodySource::File {
                        path: src,
                        range: 0..size,
                    }),
                )
                .await?;
            if !r.status().is_success() {
                return Err(status_error("PUT", &full, r.status()));
            }
        }
        self.head(key)
            .await?
            .ok_or_else(|| StoreError::Other(format!("{full:?}: missing right after its upload")))
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        let full = self.writable(key)?;
        // Deletes a large object's segments with it; a plain object as usual.
        let r = self
            .send(
                Method::DELETE,
                &enc(&full),
                &[("multipart-manifest", "delete")],
                HeaderMap::new(),
                None,
            )
            .await?;
        // For a plain object the SLO middleware answers 400, or 200 with
        // "Not an SLO manifest" among its errors: then delete it plainly.
        let status = r.status();
        let plain = match status {
            StatusCode::BAD_REQUEST => true,
            s if s.is_success() => {
                let text = r.text().await.unwrap_or_default();
                text.contains("Not an SLO manifest") || text.contains("\"Number Deleted\": 0")
            }
            _ => false,
        };
        let r = if plain {
            self.send(Method::DELETE, &enc(&full), &[], HeaderMap::new(), None)
                .await?
        } else {
            return match status {
                s if s.is_success() || s == StatusCode::NOT_FOUND => Ok(()),
                s => Err(status_error("DELETE", &full, s)),
            };
        };
        match r.status() {
            s if s.is_success() || s == StatusCode::NOT_FOUND => Ok(()),
            s => Err(status_error("DELETE", &full, s)),
        }
    }

    async fn list(
        &self,
        prefix: &str,
        delimiter: bool,
        token: Option<String>,
    ) -> StoreResult<ListPage> {
        let list_full = self.full(prefix);
        let limit = PAGE.to_string();
        let mut q = vec![
            ("format", "json"),
            ("prefix", list_full.as_str()),
            ("limit", limit.as_str()),
        ];
        if delimiter {
            q.push(("delimiter", "/"));
        }
        if let Some(t) = &token {
            q.push(("marker", t.as_str()));
        }
        let r = self
            .send(Method::GET, "", &q, HeaderMap::new(), None)
            .await?;
        if !r.status().is_success() {
            return Err(status_error("LIST", &list_full, r.status()));
        }
        let listed: Vec<Listed> = r.json().await.map_err(|e| transport("listing", e))?;
        let mut page = ListPage {
            next: (listed.len() >= PAGE)
                .then(|| {
                    listed
                        .last()
                        .and_then(|l| l.name.clone().or(l.subdir.clone()))
                })
                .flatten(),
            ..ListPage::default()
        };
        let mut dir_names = std::collections::HashSet::new();
        let rel = |full: &str| {
            full.strip_prefix(self.root.as_str())
                .unwrap_or(full)
                .to_string()
        };
        for l in &listed {
            let (full, is_dir) = match (&l.subdir, &l.name) {
                (Some(d), _) => (d.clone(), true),
                (None, Some(n)) if n.ends_with('/') => (n.clone(), true),
                (None, Some(n)) => (n.clone(), false),
                _ => continue,
            };
            if full == list_full {
                continue; // the marker of the listed directory itself
            }
            let rest = full[list_full.len().min(full.len())..].to_string();
            if is_dir {
                let name = rest.trim_end_matches('/');
                if delimiter && !name.contains('/') && valid_path(name) {
                    if dir_names.insert(name.to_string()) {
                        page.dirs
                            .push(implied_dir(rel(&full).trim_end_matches('/')));
                    }
                } else if !valid_path(name) {
                    self.warn_skip(&full, "not a valid directory name");
                }
                continue;
            }
            if !valid_path(&rest) {
                self.warn_skip(&full, "not a valid file name");
                continue;
            }
            let size = l.bytes.unwrap_or(0);
            let modified = l.last_modified.as_deref().and_then(parse_listing_time);
            page.files.push(ObjectMeta {
                key: rel(&full),
                size,
                version: version_of(l.hash.as_deref(), size, modified),
                modified: modified.unwrap_or(UNIX_EPOCH),
                attrs: Attrs::default(),
            });
        }
        if delimiter {
            page.files.retain(|f| {
                let clash = dir_names.contains(&f.key[prefix.len().min(f.key.len())..]);
                if clash {
                    self.warn_skip(
                        &self.full(&f.key),
                        "a file and a directory share this name; showing the directory",
                    );
                }
                !clash
            });
        }
        Ok(page)
    }

    async fn copy(&self, from: &str, to: &str) -> StoreResult<ObjectMeta> {
        let (src, dst) = (self.writable(from)?, self.writable(to)?);
        let mut h = HeaderMap::new();
        let source = format!("/{}/{}", enc(&self.cfg.container), enc(&src));
        if let Ok(v) = HeaderValue::from_str(&source) {
            h.insert("x-copy-from", v);
        }
        let r = self.send(Method::PUT, &enc(&dst), &[], h, None).await?;
        if !r.status().is_success() {
            return Err(status_error("COPY", &src, r.status()));
        }
        self.head(to).await?.ok_or(StoreError::NotFound)
    }

    async fn create_dir(&self, key: &str, attrs: &Attrs) -> StoreResult<()> {
        let full = format!("{}/", self.writable(key)?);
        let mut h = meta_headers(attrs, S_IFDIR, 0o755);
        h.insert("content-type", HeaderValue::from_static(DIR_CONTENT_TYPE));
        let r = self
            .send(
                Method::PUT,
                &enc(&full),
                &[],
                h,
                Some(BodySource::Bytes(Vec::new())),
            )
            .await?;
        if !r.status().is_success() {
            return Err(status_error("PUT", &full, r.status()));
        }
        Ok(())
    }

    async fn remove_dir(&self, key: &str) -> StoreResult<()> {
        let full = format!("{}/", self.writable(key)?);
        let r = self
            .send(Method::DELETE, &enc(&full), &[], HeaderMap::new(), None)
            .await?;
        match r.status() {
            s if s.is_success() || s == StatusCode::NOT_FOUND => Ok(()),
            s => Err(status_error("DELETE", &full, s)),
        }
    }

    async fn set_attrs(&self, key: &str, attrs: &Attrs) -> StoreResult<Option<ObjectMeta>> {
        let full = self.writable(key)?;
        let (target, type_bits, default_mode, current) = match self.head(key).await? {
            Some(m) => (full.clone(), S_IFREG, 0o644, m.attrs),
            None => {
                let marker = format!("{full}/");
                let current = self.head_full(key, &marker).await?.map(|m| m.attrs);
                match current {
                    Some(a) => (marker, S_IFDIR, 0o755, a),
                    // An implied directory: make its marker to hold them.
                    None => {
                        self.create_dir(key, &current.unwrap_or_default().merged(attrs))
                            .await?;
                        return Ok(None);
                    }
                }
            }
        };
        // POST replaces all user metadata: send the whole set.
        let mut h = meta_headers(&current.merged(attrs), type_bits, default_mode);
        if type_bits == S_IFDIR {
            h.insert("content-type", HeaderValue::from_static(DIR_CONTENT_TYPE));
        }
        let r = self.send(Method::POST, &enc(&target), &[], h, None).await?;
        if !r.status().is_success() {
            return Err(status_error("POST", &target, r.status()));
        }
        if type_bits == S_IFDIR {
            return Ok(None);
        }
        self.head(key).await
    }
}

/// An auth service's status: credentials refused (a clear message, no
/// retry), another failure, or success.
fn auth_answer(status: StatusCode, service: &str, refused: &str) -> StoreResult<()> {
    if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
        return Err(StoreError::PermissionDenied(format!("{service} {refused}")));
    }
    if !status.is_success() {
        return Err(StoreError::Unavailable(format!("{service}: HTTP {status}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_times_parse_as_utc() {
        let t = parse_listing_time("2026-11-22T23:18:12.500000").unwrap();
        let d = t.duration_since(UNIX_EPOCH).unwrap();
        assert_eq!(d.as_secs(), 1_795_389_492);
        assert_eq!(d.subsec_millis(), 500);
        assert_eq!(
            parse_listing_time("1970-01-01T00:00:00").unwrap(),
            UNIX_EPOCH
        );
        assert!(parse_listing_time("yesterday").is_none());
    }

    #[test]
    fn keystone_catalog_gives_the_public_object_store() {
        let body = r#"{"token": {"catalog": [
            {"type": "identity", "endpoints": [{"interface": "public", "region": "r1", "url": "http://k/v3"}]},
            {"type": "object-store", "endpoints": [
                {"interface": "internal", "region": "r1", "url": "http://internal/v1/AUTH_p"},
                {"interface": "public", "region": "r1", "url": "http://one/v1/AUTH_p/"},
                {"interface": "public", "region": "r2", "url": "http://two/v1/AUTH_p"}]}]}}"#;
        assert_eq!(
            object_store_endpoint(body, None).as_deref(),
            Some("http://one/v1/AUTH_p")
        );
        assert_eq!(
            object_store_endpoint(body, Some("r2")).as_deref(),
            Some("http://two/v1/AUTH_p")
        );
        assert_eq!(object_store_endpoint(body, Some("r3")), None);
        assert_eq!(object_store_endpoint("not json", None), None);
    }

    #[test]
    fn auth_debug_never_shows_secrets() {
        let a = Auth::V1 {
            url: "http://x/auth/v1.0".into(),
            user: "u".into(),
            key: "s3cr3t".into(),
        };
        assert!(!format!("{a:?}").contains("s3cr3t"));
    }
}
