//! S3-compatible object store: `s3://BUCKET[/PREFIX]` (AWS S3, Ceph RGW,
//! MinIO, Garage, Swift with s3api, ...).
//!
//! Built on the AWS SDK (`aws-sdk-s3`): signing, XML, credentials (environment
//! and shared credentials file with profiles), retries with backoff and jitter,
//! and timeouts are all the SDK's. `object_store` was the first candidate, but
//! its `Path` type cannot name a key ending in `/` (so no directory markers, the
//! way s3fs-fuse and the S3 consoles make empty directories) and it fails a
//! whole listing on a key with an empty or `.`/`..` component, where we must
//! skip that one key.
//!
//! HTTPS endpoints are checked against the system's root certificates
//! (SSL_CERT_FILE / SSL_CERT_DIR apply); AWS_CA_BUNDLE is not read, so it
//! cannot break a plain-HTTP endpoint either.
//!
//! Layout in the bucket, compatible with s3fs-fuse:
//! - a file is the object `PREFIX/key`, with `x-amz-meta-mode` (decimal,
//!   including the file type bits), `-uid`, `-gid` and `-mtime` (decimal unix
//!   seconds) and a Content-Type from the file name;
//! - a directory is implied by any key below `key/`; an empty one is kept by a
//!   marker object `key/` (empty, `application/x-directory`), which also holds
//!   the directory's mode and owner.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use aws_config::environment::EnvironmentVariableCredentialsProvider;
use aws_config::meta::credentials::CredentialsProviderChain;
use aws_config::profile::ProfileFileCredentialsProvider;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, ProvideCredentials, Region, RequestChecksumCalculation,
    ResponseChecksumValidation, SharedCredentialsProvider,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, DateTime, Length};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, MetadataDirective};
use futures::{StreamExt, TryStreamExt};

use super::object_meta::{
    DIR_CONTENT_TYPE, S_IFDIR, S_IFREG, attrs_from, content_type_of, implied_dir, put_attrs,
    valid_path, version_of, writable_key,
};
use super::{
    Attrs, DirMeta, GetResult, ListPage, Node, ObjectMeta, PartPlan, Store, StoreError,
    StoreOptions, StoreResult, valid_name,
};

/// Largest object a single CopyObject may copy (S3's limit).
const MAX_SINGLE_COPY: u64 = 5 << 30;
/// S3 allows at most this many parts in one multipart upload.
const MAX_PARTS: u64 = 10_000;
/// Keys per listing page (S3's maximum).
const PAGE_KEYS: i32 = 1000;
/// Copies or deletes in flight while renaming a directory.
const TREE_PARALLELISM: usize = 8;
/// Attempts of the check at open: a store that is down fails the mount fast.
const PROBE_ATTEMPTS: u32 = 2;
/// Small objects (thumbnails) come whole with their lookup: see
/// `Store::lookup_fetch_bytes`.
const LOOKUP_FETCH_BYTES: u64 = 128 << 10;
/// Distinct skipped keys remembered so each is warned about once.
const WARNED_KEYS: usize = 10_000;

/// Where the credentials come from.
#[derive(Clone)]
pub enum CredentialSource {
    /// AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, else the
    /// shared credentials file (AWS_SHARED_CREDENTIALS_FILE or ~/.aws/credentials)
    /// with this profile (else AWS_PROFILE, else `default`).
    Standard { profile: Option<String> },
    /// Given keys (tests, embedding).
    Static {
        access_key_id: String,
        secret_access_key: String,
        session_token: Option<String>,
    },
}

impl std::fmt::Debug for CredentialSource {
    // Never prints a secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CredentialSource::Standard { profile } => {
                write!(f, "Standard {{ profile: {profile:?} }}")
            }
            CredentialSource::Static { access_key_id, .. } => {
                write!(f, "Static {{ access_key_id: {access_key_id:?} }}")
            }
        }
    }
}

/// Everything needed to open an S3 store.
#[derive(Debug, Clone)]
pub struct S3Config {
    pub bucket: String,
    /// Key prefix inside the bucket, without leading or trailing `/` ("" = all).
    pub prefix: String,
    /// Endpoint URL; `None` = AWS.
    pub endpoint: Option<String>,
    pub region: String,
    /// Path-style addressing (http://host/bucket/key).
    pub path_style: bool,
    pub credentials: CredentialSource,
    /// Time allowed to open a connection.
    pub connect_timeout: Duration,
    /// Time allowed from sending a request to the first byte of its answer.
    pub request_timeout: Duration,
    /// Attempts per request (first try included), with backoff and jitter.
    pub max_attempts: u32,
    /// Files larger than this are uploaded in parts.
    pub multipart_threshold: u64,
    /// Size of one part (grown if a file would need more than 10,000).
    pub part_size: u64,
    /// Parts uploaded at the same time.
    pub parallel_parts: usize,
    /// Objects larger than this are copied in parts (at most 5 GiB).
    pub copy_part_threshold: u64,
}

impl S3Config {
    /// The configuration for `s3://bucket/prefix` from the command-line options
    /// and the standard AWS environment variables.
    pub fn from_options(bucket: &str, prefix: &str, opts: &StoreOptions) -> Self {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let endpoint = opts
            .endpoint
            .clone()
            .or_else(|| env("AWS_ENDPOINT_URL_S3"))
            .or_else(|| env("AWS_ENDPOINT_URL"));
        let region = opts
            .region
            .clone()
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| "us-east-1".to_string());
        // A bucket cannot be a sub-domain of an IP address or of localhost.
        let path_style = opts.path_style || endpoint.as_deref().is_some_and(host_needs_path_style);
        S3Config {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            endpoint,
            region,
            path_style,
            credentials: CredentialSource::Standard {
                profile: opts.profile.clone(),
            },
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(60),
            max_attempts: 4,
            multipart_threshold: 16 << 20,
            part_size: 8 << 20,
            parallel_parts: 4,
            copy_part_threshold: MAX_SINGLE_COPY,
        }
    }

    /// The endpoint as shown to people.
    pub fn endpoint_label(&self) -> String {
        match &self.endpoint {
            Some(e) => e.clone(),
            None => format!("AWS S3 ({})", self.region),
        }
    }
}

fn host_needs_path_style(endpoint: &str) -> bool {
    let rest = endpoint.split_once("://").map_or(endpoint, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or("");
    let host = match authority.strip_prefix('[') {
        Some(v6) => return v6.contains(']'),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host == "localhost" || host.parse::<std::net::Ipv4Addr>().is_ok()
}

pub struct S3Store {
    client: Client,
    cfg: S3Config,
    /// `prefix/` or "".
    root: String,
    warned: Mutex<HashSet<String>>,
}

/// Result of one request, mapped to our errors.
type SdkResult<T, E> = Result<T, SdkError<E, aws_sdk_s3::config::http::HttpResponse>>;

fn status_of<E>(err: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> Option<u16> {
    err.raw_response().map(|r| r.status().as_u16())
}

/// Map an SDK error of a request about `key` to a store error.
fn store_error<E>(
    what: &str,
    key: &str,
    err: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = status_of(&err);
    let code = err.code().unwrap_or("").to_string();
    let text = match &err {
        // The store's own answer: its status, code and message say it all
        // (the SDK's Debug form of the raw response does not belong in a log).
        SdkError::ServiceError(_) => {
            let status = status.map_or_else(|| "?".to_string(), |s| s.to_string());
            let code = if code.is_empty() { "error" } else { &code };
            match err.message() {
                Some(m) => format!("{what} {key:?}: HTTP {status} {code}: {m}"),
                None => format!("{what} {key:?}: HTTP {status} {code}"),
            }
        }
        _ => format!("{what} {key:?}: {}", DisplayErrorContext(&err)),
    };
    match &err {
        SdkError::ServiceError(_) => match (status, code.as_str()) {
            (Some(404), _) | (_, "NoSuchKey") => StoreError::NotFound,
            (Some(403), _) => StoreError::PermissionDenied(text),
            (_, "EntityTooLarge") => StoreError::TooLarge(text),
            (Some(507), _) | (_, "QuotaExceeded") => StoreError::NoSpace(text),
            (Some(s), _) if s >= 500 || s == 429 => StoreError::Unavailable(text),
            (_, "SlowDown" | "RequestTimeout" | "ServiceUnavailable") => {
                StoreError::Unavailable(text)
            }
            _ => StoreError::Other(text),
        },
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            StoreError::Unavailable(text)
        }
        _ => StoreError::Other(text),
    }
}

/// The innermost causes of an error, for a one-line message: "tcp connect
/// error: Connection refused (os error 111)" rather than the whole chain.
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut chain = vec![err.to_string()];
    let mut cur = err.source();
    while let Some(e) = cur {
        chain.push(e.to_string());
        cur = e.source();
    }
    let n = chain.len();
    chain[n.saturating_sub(2)..].join(": ")
}

fn to_system_time(t: Option<&DateTime>) -> Option<SystemTime> {
    t.and_then(|t| SystemTime::try_from(*t).ok())
}

/// Percent-encoding of a copy source: everything but unreserved characters and `/`.
const COPY_SOURCE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'/')
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// What a HEAD tells about one object.
struct Head {
    size: u64,
    etag: Option<String>,
    modified: Option<SystemTime>,
    content_type: Option<String>,
    metadata: HashMap<String, String>,
}

impl Head {
    fn object_meta(&self, key: &str) -> ObjectMeta {
        ObjectMeta {
            key: key.to_string(),
            size: self.size,
            version: version_of(self.etag.as_deref(), self.size, self.modified),
            modified: self.modified.unwrap_or(UNIX_EPOCH),
            attrs: attrs_from(Some(&self.metadata)),
        }
    }
}

/// A directory known only from the keys below it (or the listing's prefixes).
impl S3Store {
    /// Open the bucket and check that it answers, with a clear message for
    /// missing credentials, wrong credentials, a missing bucket or an
    /// unreachable endpoint.
    pub async fn open(cfg: S3Config) -> Result<Self, String> {
        let provider = match &cfg.credentials {
            CredentialSource::Static {
                access_key_id,
                secret_access_key,
                session_token,
            } => SharedCredentialsProvider::new(Credentials::new(
                access_key_id,
                secret_access_key,
                session_token.clone(),
                None,
                "mediafs",
            )),
            CredentialSource::Standard { profile } => {
                let mut file = ProfileFileCredentialsProvider::builder();
                if let Some(p) = profile {
                    file = file.profile_name(p);
                }
                SharedCredentialsProvider::new(
                    CredentialsProviderChain::first_try(
                        "environment",
                        EnvironmentVariableCredentialsProvider::new(),
                    )
                    .or_else("shared credentials file", file.build()),
                )
            }
        };
        let creds = provider.provide_credentials().await.map_err(|e| {
            format!(
                "S3 bucket {}: no usable credentials: set AWS_ACCESS_KEY_ID and \
                 AWS_SECRET_ACCESS_KEY, or a profile in the shared credentials file \
                 (~/.aws/credentials or AWS_SHARED_CREDENTIALS_FILE{}): {}",
                cfg.bucket,
                match &cfg.credentials {
                    CredentialSource::Standard { profile: Some(p) } => format!(", profile {p}"),
                    _ => String::new(),
                },
                DisplayErrorContext(&e)
            )
        })?;
        let key_id = creds.access_key_id().to_string();

        let mut b = aws_sdk_s3::config::Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(cfg.region.clone()))
            .credentials_provider(provider)
            .force_path_style(cfg.path_style)
            // Checksums only where S3 requires them: many S3-compatible servers
            // reject the newer trailing-checksum uploads.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(cfg.max_attempts.max(1))
                    .with_initial_backoff(Duration::from_millis(200))
                    .with_max_backoff(Duration::from_secs(5)),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(cfg.connect_timeout)
                    .read_timeout(cfg.request_timeout)
                    .build(),
            );
        if let Some(e) = &cfg.endpoint {
            b = b.endpoint_url(e);
        }
        let client = Client::from_conf(b.build());
        let root = if cfg.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", cfg.prefix)
        };
        let store = S3Store {
            client,
            cfg,
            root,
            warned: Mutex::new(HashSet::new()),
        };
        store.check(&key_id).await?;
        Ok(store)
    }

    /// One small listing: proves the endpoint, the credentials and the bucket.
    async fn check(&self, key_id: &str) -> Result<(), String> {
        let cfg = &self.cfg;
        let result = self
            .client
            .list_objects_v2()
            .bucket(&cfg.bucket)
            .prefix(&self.root)
            .max_keys(1)
            .customize()
            .config_override(
                aws_sdk_s3::config::Builder::new()
                    .retry_config(RetryConfig::standard().with_max_attempts(PROBE_ATTEMPTS)),
            )
            .send()
            .await;
        let Err(err) = result else {
            return Ok(());
        };
        let where_ = format!("S3 bucket {} at {}", cfg.bucket, cfg.endpoint_label());
        let code = err.code().unwrap_or("").to_string();
        let detail = err.message().unwrap_or("").to_string();
        let timed_out = match &err {
            SdkError::TimeoutError(_) => true,
            SdkError::DispatchFailure(d) => d.is_timeout(),
            _ => false,
        };
        Err(match (&err, status_of(&err), code.as_str()) {
            _ if timed_out => format!(
                "{where_}: the endpoint did not answer in time ({}, {PROBE_ATTEMPTS} attempts)",
                root_cause(&err)
            ),
            (SdkError::DispatchFailure(_), _, _) => format!(
                "{where_}: cannot reach the endpoint ({}, after {PROBE_ATTEMPTS} attempts)",
                root_cause(&err),
            ),
            (_, _, "InvalidAccessKeyId") => format!(
                "{where_}: the store does not know the access key id {key_id:?} \
                 (InvalidAccessKeyId); check AWS_ACCESS_KEY_ID or the credentials profile"
            ),
            (_, _, "SignatureDoesNotMatch") => format!(
                "{where_}: the store refused the signature of access key id {key_id:?} \
                 (SignatureDoesNotMatch): wrong secret key (or a key id it does not know); \
                 check AWS_SECRET_ACCESS_KEY or the credentials profile"
            ),
            (_, _, "NoSuchBucket") | (_, Some(404), _) => format!(
                "{where_}: no such bucket (create it first, or check the name and the endpoint)"
            ),
            (_, _, "PermanentRedirect" | "AuthorizationHeaderMalformed") => format!(
                "{where_}: the bucket is in another region than {} ({code}: {detail}); \
                 pass --region",
                cfg.region
            ),
            (_, Some(403), _) => {
                format!("{where_}: access denied for access key id {key_id:?} ({code}: {detail})")
            }
            _ => format!("{where_}: {}", DisplayErrorContext(&err)),
        })
    }

    pub fn config(&self) -> &S3Config {
        &self.cfg
    }

    /// The full object key of a store key.
    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.root)
    }

    /// The full key of a file or directory about to be written, checked:
    /// every component a valid name, the whole within S3's key length.
    fn writable(&self, key: &str) -> StoreResult<String> {
        writable_key(&self.root, key)
    }

    fn marker(&self, key: &str) -> String {
        format!("{}{key}/", self.root)
    }

    /// The store key of a full object key (which is always below our root).
    fn rel<'a>(&self, full: &'a str) -> &'a str {
        full.strip_prefix(self.root.as_str()).unwrap_or(full)
    }

    fn warn_skip(&self, full: &str, why: &str) {
        let mut warned = self.warned.lock().unwrap();
        if warned.len() >= WARNED_KEYS {
            warned.clear();
        }
        if warned.insert(full.to_string()) {
            tracing::warn!(bucket = %self.cfg.bucket, key = %full, "skipping an object: {why}");
        }
    }

    /// The directory `key`, if any key lies below it: its marker object's
    /// attributes where there is one, else an implied directory.
    async fn dir_below(&self, key: &str) -> StoreResult<Option<DirMeta>> {
        let marker = self.marker(key);
        let below = self
            .client
            .list_objects_v2()
            .bucket(&self.cfg.bucket)
            .prefix(&marker)
            .max_keys(1)
            .send()
            .await
            .map_err(|e| store_error("LIST", &marker, e))?;
        let Some(first) = below.contents().first().and_then(|o| o.key()) else {
            return Ok(None);
        };
        if first != marker {
            return Ok(Some(implied_dir(key)));
        }
        // The marker holds the directory's own attributes.
        Ok(Some(match self.head_full(&marker).await? {
            Some(h) => DirMeta {
                key: key.to_string(),
                modified: h.modified,
                attrs: attrs_from(Some(&h.metadata)),
            },
            None => implied_dir(key),
        }))
    }

    async fn head_full(&self, full: &str) -> StoreResult<Option<Head>> {
        let r: SdkResult<_, _> = self
            .client
            .head_object()
            .bucket(&self.cfg.bucket)
            .key(full)
            .send()
            .await;
        match r {
            Ok(o) => {
                let size = o.content_length().unwrap_or(0).max(0) as u64;
                Ok(Some(Head {
                    size,
                    etag: o.e_tag().map(str::to_string),
                    modified: to_system_time(o.last_modified()),
                    content_type: o.content_type().map(str::to_string),
                    metadata: o.metadata().cloned().unwrap_or_default(),
                }))
            }
            Err(e) if status_of(&e) == Some(404) => Ok(None),
            Err(e) => Err(store_error("HEAD", full, e)),
        }
    }

    async fn put_empty(
        &self,
        full: &str,
        content_type: &str,
        md: HashMap<String, String>,
    ) -> StoreResult<()> {
        self.client
            .put_object()
            .bucket(&self.cfg.bucket)
            .key(full)
            .content_type(content_type)
            .set_metadata(Some(md))
            .content_length(0)
            .body(ByteStream::from_static(b""))
            .send()
            .await
            .map_err(|e| store_error("PUT", full, e))?;
        Ok(())
    }

    async fn delete_full(&self, full: &str) -> StoreResult<()> {
        let r = self
            .client
            .delete_object()
            .bucket(&self.cfg.bucket)
            .key(full)
            .send()
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Ok(()),
            Err(e) => Err(store_error("DELETE", full, e)),
        }
    }

    fn part_size_for(&self, size: u64, min_part: u64) -> u64 {
        const MIB: u64 = 1 << 20;
        let needed = size.div_ceil(MAX_PARTS).div_ceil(MIB) * MIB;
        min_part.max(needed).max(5 * MIB)
    }

    /// A multipart upload of `size` bytes whose parts come from `part`
    /// (called with upload id, part number, offset, length; returns the
    /// part's ETag), several at a time. Aborted on any failure, so a failed
    /// upload leaves no object and no stored parts behind. Returns the ETag.
    async fn multipart<F, Fut>(
        &self,
        full: &str,
        content_type: Option<&str>,
        md: HashMap<String, String>,
        size: u64,
        part_size: u64,
        part: F,
    ) -> StoreResult<Option<String>>
    where
        F: Fn(String, i32, u64, u64) -> Fut,
        Fut: Future<Output = StoreResult<Option<String>>>,
    {
        let upload_id = self.create_multipart(full, content_type, md).await?;
        let count = size.div_ceil(part_size).max(1);
        let parts = futures::stream::iter(0..count)
            .map(|i| {
                let offset = i * part_size;
                let len = part_size.min(size - offset);
                let number = i as i32 + 1;
                let fut = part(upload_id.clone(), number, offset, len);
                async move {
                    let etag = fut.await?;
                    Ok::<_, StoreError>(
                        CompletedPart::builder()
                            .part_number(number)
                            .set_e_tag(etag)
                            .build(),
                    )
                }
            })
            .buffer_unordered(self.cfg.parallel_parts.max(1))
            .try_collect::<Vec<_>>()
            .await;
        let completed = match parts {
            Ok(parts) => self.complete_multipart(full, &upload_id, parts).await,
            Err(e) => Err(e),
        };
        if completed.is_err() {
            self.abort_multipart(full, &upload_id).await;
        }
        completed
    }

    async fn create_multipart(
        &self,
        full: &str,
        content_type: Option<&str>,
        md: HashMap<String, String>,
    ) -> StoreResult<String> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.cfg.bucket)
            .key(full)
            .set_content_type(content_type.map(str::to_string))
            .set_metadata(Some(md))
            .send()
            .await
            .map_err(|e| store_error("create multipart upload", full, e))?;
        Ok(created
            .upload_id()
            .ok_or_else(|| StoreError::Other(format!("{full}: no upload id from the store")))?
            .to_string())
    }

    /// Returns the new object's ETag.
    async fn complete_multipart(
        &self,
        full: &str,
        upload_id: &str,
        mut parts: Vec<CompletedPart>,
    ) -> StoreResult<Option<String>> {
        parts.sort_by_key(|p| p.part_number());
        let out = self
            .client
            .complete_multipart_upload()
            .bucket(&self.cfg.bucket)
            .key(full)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| store_error("complete multipart upload", full, e))?;
        Ok(out.e_tag().map(str::to_string))
    }

    /// Best effort: a failure only leaves parts for the bucket's lifecycle
    /// rules to clean up, never a visible object.
    async fn abort_multipart(&self, full: &str, upload_id: &str) {
        let abort = self
            .client
            .abort_multipart_upload()
            .bucket(&self.cfg.bucket)
            .key(full)
            .upload_id(upload_id)
            .send()
            .await;
        if let Err(a) = abort {
            tracing::warn!(key = %full, "aborting a multipart upload: {}", DisplayErrorContext(&a));
        }
    }

    /// Bytes `offset..offset + len` of `src` as part `number`; returns its ETag.
    async fn send_part(
        &self,
        full: &str,
        upload_id: &str,
        number: i32,
        src: &Path,
        offset: u64,
        len: u64,
    ) -> StoreResult<Option<String>> {
        // Each part streams from the file: memory stays bounded whatever the
        // file size.
        let body = ByteStream::read_from()
            .path(src)
            .offset(offset)
            .length(Length::Exact(len))
            .build()
            .await
            .map_err(|e| StoreError::Other(format!("reading {}: {e}", src.display())))?;
        let out = self
            .client
            .upload_part()
            .bucket(&self.cfg.bucket)
            .key(full)
            .upload_id(upload_id)
            .part_number(number)
            .content_length(len as i64)
            .body(body)
            .send()
            .await
            .map_err(|e| store_error(&format!("upload part {number}"), full, e))?;
        Ok(out.e_tag().map(str::to_string))
    }

    async fn upload_file(
        &self,
        full: &str,
        src: &Path,
        size: u64,
        content_type: &str,
        md: HashMap<String, String>,
    ) -> StoreResult<Option<String>> {
        if size <= self.cfg.multipart_threshold {
            let body = ByteStream::from_path(src)
                .await
                .map_err(|e| StoreError::Other(format!("reading {}: {e}", src.display())))?;
            let out = self
                .client
                .put_object()
                .bucket(&self.cfg.bucket)
                .key(full)
                .content_type(content_type)
                .set_metadata(Some(md))
                .content_length(size as i64)
                .body(body)
                .send()
                .await
                .map_err(|e| store_error("PUT", full, e))?;
            return Ok(out.e_tag().map(str::to_string));
        }
        let part_size = self.part_size_for(size, self.cfg.part_size);
        self.multipart(
            full,
            Some(content_type),
            md,
            size,
            part_size,
            |upload_id, number, offset, len| async move {
                self.send_part(full, &upload_id, number, src, offset, len)
                    .await
            },
        )
        .await
    }

    /// Server-side copy of the object `from` (of `size` bytes) to `to`. With
    /// `replace`, the copy gets that content type and metadata instead of the
    /// source's. Returns the new ETag and modification time.
    async fn copy_full(
        &self,
        from: &str,
        to: &str,
        size: u64,
        replace: Option<(Option<String>, HashMap<String, String>)>,
    ) -> StoreResult<(Option<String>, Option<SystemTime>)> {
        let source = format!(
            "{}/{}",
            self.cfg.bucket,
            percent_encoding::utf8_percent_encode(from, COPY_SOURCE)
        );
        if size <= self.cfg.copy_part_threshold.min(MAX_SINGLE_COPY) {
            let mut req = self
                .client
                .copy_object()
                .bucket(&self.cfg.bucket)
                .key(to)
                .copy_source(&source);
            if let Some((content_type, md)) = replace {
                req = req
                    .metadata_directive(MetadataDirective::Replace)
                    .set_content_type(content_type)
                    .set_metadata(Some(md));
            }
            let out = req.send().await.map_err(|e| store_error("COPY", from, e))?;
            let result = out.copy_object_result();
            return Ok((
                result.and_then(|r| r.e_tag()).map(str::to_string),
                to_system_time(result.and_then(|r| r.last_modified())),
            ));
        }
        // Too large for one CopyObject: copy in parts, server-side.
        let (content_type, md) = match replace {
            Some(r) => r,
            None => {
                let head = self.head_full(from).await?.ok_or(StoreError::NotFound)?;
                (head.content_type, head.metadata)
            }
        };
        let part_size = self.part_size_for(size, self.cfg.copy_part_threshold.min(MAX_SINGLE_COPY));
        let source = &source;
        let etag = self
            .multipart(
                to,
                content_type.as_deref(),
                md,
                size,
                part_size,
                |upload_id, number, offset, len| async move {
                    let out = self
                        .client
                        .upload_part_copy()
                        .bucket(&self.cfg.bucket)
                        .key(to)
                        .upload_id(upload_id)
                        .part_number(number)
                        .copy_source(source)
                        .copy_source_range(format!("bytes={}-{}", offset, offset + len - 1))
                        .send()
                        .await
                        .map_err(|e| store_error(&format!("copy part {number}"), from, e))?;
                    Ok(out
                        .copy_part_result()
                        .and_then(|r| r.e_tag())
                        .map(str::to_string))
                },
            )
            .await?;
        Ok((etag, Some(SystemTime::now())))
    }

    /// Every raw object key below `dir_full` (which ends in `/`), with sizes.
    async fn all_below(&self, dir_full: &str) -> StoreResult<Vec<(String, u64)>> {
        let mut out = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.cfg.bucket)
            .prefix(dir_full)
            .max_keys(PAGE_KEYS)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| store_error("LIST", dir_full, e))?;
            for o in page.contents() {
                if let Some(k) = o.key() {
                    out.push((k.to_string(), o.size().unwrap_or(0).max(0) as u64));
                }
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl Store for S3Store {
    /// ListObjectsV2 carries no user metadata (x-amz-meta-mode etc.).
    fn listing_has_attrs(&self) -> bool {
        false
    }

    fn lookup_fetch_bytes(&self) -> u64 {
        LOOKUP_FETCH_BYTES
    }

    fn part_plan(&self) -> Option<PartPlan> {
        Some(PartPlan {
            threshold: self.cfg.multipart_threshold,
            part_size: self.cfg.part_size.max(5 << 20),
            max_parts: MAX_PARTS as u32,
            parallel: self.cfg.parallel_parts.max(1),
        })
    }

    async fn begin_upload(&self, key: &str, attrs: &Attrs) -> StoreResult<String> {
        let full = self.writable(key)?;
        let mut md = HashMap::new();
        put_attrs(&mut md, attrs, S_IFREG, 0o644);
        self.create_multipart(&full, Some(&content_type_of(key)), md)
            .await
    }

    async fn upload_part(
        &self,
        key: &str,
        upload: &str,
        number: u32,
        src: &Path,
        range: Range<u64>,
    ) -> StoreResult<String> {
        let full = self.writable(key)?;
        let number = i32::try_from(number)
            .map_err(|_| StoreError::TooLarge(format!("{key}: part number {number}")))?;
        let etag = self
            .send_part(
                &full,
                upload,
                number,
                src,
                range.start,
                range.end - range.start,
            )
            .await?;
        Ok(etag.unwrap_or_default())
    }

    async fn complete_upload(
        &self,
        key: &str,
        upload: &str,
        parts: &[(u32, String)],
        size: u64,
    ) -> StoreResult<ObjectMeta> {
        let full = self.writable(key)?;
        let parts = parts
            .iter()
            .map(|(n, tag)| {
                CompletedPart::builder()
                    .part_number(*n as i32)
                    .set_e_tag((!tag.is_empty()).then(|| tag.clone()))
                    .build()
            })
            .collect();
        self.complete_multipart(&full, upload, parts).await?;
        // The metadata was fixed when the upload began: ask for it as stored.
        let meta = self
            .head_full(&full)
            .await?
            .ok_or_else(|| StoreError::Other(format!("{full}: missing right after its upload")))?
            .object_meta(key);
        if meta.size != size {
            return Err(StoreError::Other(format!(
                "{full}: the store assembled {} bytes from the parts, not {size}",
                meta.size
            )));
        }
        Ok(meta)
    }

    async fn abort_upload(&self, key: &str, upload: &str) -> StoreResult<()> {
        let full = self.writable(key)?;
        self.abort_multipart(&full, upload).await;
        Ok(())
    }

    fn describe(&self) -> String {
        format!(
            "S3 bucket {}{}{} at {}{}",
            self.cfg.bucket,
            if self.cfg.prefix.is_empty() { "" } else { "/" },
            self.cfg.prefix,
            self.cfg.endpoint_label(),
            if self.cfg.path_style {
                " (path-style)"
            } else {
                ""
            }
        )
    }

    async fn head(&self, key: &str) -> StoreResult<Option<ObjectMeta>> {
        if key.is_empty() {
            return Ok(None);
        }
        Ok(self
            .head_full(&self.full(key))
            .await?
            .map(|h| h.object_meta(key)))
    }

    async fn stat(&self, key: &str) -> StoreResult<Option<Node>> {
        if key.is_empty() {
            return Ok(Some(Node::Dir(implied_dir(""))));
        }
        let full = self.full(key);
        // The file and the first key below it, in parallel: one round trip.
        let (head, dir) = tokio::join!(self.head_full(&full), self.dir_below(key));
        let (head, dir) = (head?, dir?);
        match dir {
            Some(dir) => {
                if head.is_some() {
                    self.warn_skip(
                        &full,
                        "a file and a directory share this name; showing the directory",
                    );
                }
                Ok(Some(Node::Dir(dir)))
            }
            None => Ok(head.map(|h| Node::File(h.object_meta(key)))),
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
        if let Some(r) = &range
            && r.start >= r.end
        {
            // An empty range: nothing to read, but the version still counts.
            let head = self.head_full(&full).await?.ok_or(StoreError::NotFound)?;
            let meta = head.object_meta(key);
            if if_none_match == Some(meta.version.as_str()) {
                return Ok(GetResult::NotModified);
            }
            return Ok(GetResult::Body {
                meta,
                body: futures::stream::empty().boxed(),
            });
        }
        let result = self
            .client
            .get_object()
            .bucket(&self.cfg.bucket)
            .key(&full)
            .set_range(
                range
                    .as_ref()
                    .map(|r| format!("bytes={}-{}", r.start, r.end - 1)),
            )
            .set_if_none_match(if_none_match.map(str::to_string))
            .send()
            .await;
        let out = match result {
            Ok(out) => out,
            Err(e) if status_of(&e) == Some(304) => return Ok(GetResult::NotModified),
            Err(e) if status_of(&e) == Some(416) => {
                // The range starts at or past the end: an empty read.
                let head = self.head_full(&full).await?.ok_or(StoreError::NotFound)?;
                return Ok(GetResult::Body {
                    meta: head.object_meta(key),
                    body: futures::stream::empty().boxed(),
                });
            }
            Err(e) => return Err(store_error("GET", &full, e)),
        };
        // A ranged answer gives the object's size after the `/` of Content-Range.
        let size = out
            .content_range()
            .and_then(|r| r.rsplit('/').next())
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(out.content_length().unwrap_or(0).max(0) as u64);
        let modified = to_system_time(out.last_modified());
        let meta = ObjectMeta {
            key: key.to_string(),
            size,
            version: version_of(out.e_tag(), size, modified),
            modified: modified.unwrap_or(UNIX_EPOCH),
            attrs: attrs_from(out.metadata()),
        };
        let body = futures::stream::try_unfold(out.body, move |mut body| {
            let full = full.clone();
            async move {
                match body.try_next().await {
                    Ok(Some(chunk)) => Ok(Some((chunk, body))),
                    Ok(None) => Ok(None),
                    Err(e) => Err(StoreError::Unavailable(format!("GET {full:?}: {e}"))),
                }
            }
        })
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
        let mut md = HashMap::new();
        put_attrs(&mut md, &attrs, S_IFREG, 0o644);
        let etag = self
            .upload_file(&full, src, size, &content_type_of(key), md)
            .await?;
        let modified = SystemTime::now();
        Ok(ObjectMeta {
            key: key.to_string(),
            size,
            version: version_of(etag.as_deref(), size, Some(modified)),
            modified,
            attrs: Attrs {
                mode: Some(attrs.mode.unwrap_or(0o644) & 0o7777),
                ..attrs
            },
        })
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        if key.is_empty() {
            return Err(StoreError::InvalidKey(key.to_string()));
        }
        self.delete_full(&self.full(key)).await
    }

    async fn list(
        &self,
        prefix: &str,
        delimiter: bool,
        token: Option<String>,
    ) -> StoreResult<ListPage> {
        let list_full = self.full(prefix);
        let out = self
            .client
            .list_objects_v2()
            .bucket(&self.cfg.bucket)
            .prefix(&list_full)
            .set_delimiter(delimiter.then(|| "/".to_string()))
            .set_continuation_token(token)
            .max_keys(PAGE_KEYS)
            .send()
            .await
            .map_err(|e| store_error("LIST", &list_full, e))?;
        let mut page = ListPage {
            next: out
                .next_continuation_token()
                .filter(|_| out.is_truncated() == Some(true))
                .map(str::to_string),
            ..ListPage::default()
        };
        let mut dir_names: HashSet<String> = HashSet::new();
        let mut add_dir = |this: &Self, page: &mut ListPage, full: &str| {
            let rel = this.rel(full).trim_end_matches('/');
            let name = &rel[prefix.len().min(rel.len())..];
            if !valid_name(name) || !full.ends_with('/') || full.len() <= list_full.len() {
                this.warn_skip(full, "not a valid directory name");
            } else if dir_names.insert(name.to_string()) {
                page.dirs.push(implied_dir(rel));
            }
        };
        for cp in out.common_prefixes() {
            if let Some(p) = cp.prefix() {
                add_dir(self, &mut page, p);
            }
        }
        let mut files = Vec::new();
        for o in out.contents() {
            let Some(full) = o.key() else { continue };
            if full == list_full {
                continue; // the marker of the listed directory itself
            }
            let rest = &full[list_full.len().min(full.len())..];
            if let Some(dir) = rest.strip_suffix('/') {
                // A marker: a directory below (with a delimiter, S3 reports
                // those as common prefixes; some servers do not).
                if delimiter && !dir.contains('/') {
                    add_dir(self, &mut page, full);
                } else if !valid_path(dir) {
                    self.warn_skip(full, "not a valid directory name");
                }
                continue;
            }
            if !valid_path(rest) {
                self.warn_skip(full, "not a valid file name");
                continue;
            }
            let size = o.size().unwrap_or(0).max(0) as u64;
            let modified = to_system_time(o.last_modified());
            files.push(ObjectMeta {
                key: self.rel(full).to_string(),
                size,
                version: version_of(o.e_tag(), size, modified),
                modified: modified.unwrap_or(UNIX_EPOCH),
                attrs: Attrs::default(),
            });
        }
        for f in files {
            if delimiter && dir_names.contains(&f.key[prefix.len()..]) {
                self.warn_skip(
                    &self.full(&f.key),
                    "a file and a directory share this name; showing the directory",
                );
            } else {
                page.files.push(f);
            }
        }
        Ok(page)
    }

    async fn copy(&self, from: &str, to: &str) -> StoreResult<ObjectMeta> {
        let to_full = self.writable(to)?;
        let from_full = self.full(from);
        let head = self
            .head_full(&from_full)
            .await?
            .ok_or(StoreError::NotFound)?;
        let (etag, modified) = self
            .copy_full(&from_full, &to_full, head.size, None)
            .await?;
        let modified = modified.unwrap_or_else(SystemTime::now);
        Ok(ObjectMeta {
            key: to.to_string(),
            size: head.size,
            version: version_of(etag.as_deref(), head.size, Some(modified)),
            modified,
            attrs: attrs_from(Some(&head.metadata)),
        })
    }

    async fn create_dir(&self, key: &str, attrs: &Attrs) -> StoreResult<()> {
        self.writable(&format!("{key}/x"))?;
        let mut md = HashMap::new();
        put_attrs(&mut md, attrs, S_IFDIR, 0o755);
        self.put_empty(&self.marker(key), DIR_CONTENT_TYPE, md)
            .await
    }

    async fn remove_dir(&self, key: &str) -> StoreResult<()> {
        if key.is_empty() {
            return Err(StoreError::InvalidKey(key.to_string()));
        }
        self.delete_full(&self.marker(key)).await
    }

    async fn set_attrs(&self, key: &str, attrs: &Attrs) -> StoreResult<Option<ObjectMeta>> {
        if key.is_empty() {
            return Ok(None); // the root has no object to keep them in
        }
        let full = self.full(key);
        if let Some(head) = self.head_full(&full).await? {
            // A file: copy it onto itself with the new metadata.
            let merged = attrs_from(Some(&head.metadata)).merged(attrs);
            let mut md = head.metadata.clone();
            put_attrs(&mut md, &merged, S_IFREG, 0o644);
            let (etag, modified) = self
                .copy_full(
                    &full,
                    &full,
                    head.size,
                    Some((head.content_type.clone(), md)),
                )
                .await?;
            let modified = modified.unwrap_or_else(SystemTime::now);
            return Ok(Some(ObjectMeta {
                key: key.to_string(),
                size: head.size,
                version: version_of(etag.as_deref(), head.size, Some(modified)),
                modified,
                attrs: merged,
            }));
        }
        // A directory: rewrite (or create) its marker with the attributes.
        let marker = self.marker(key);
        let (merged, mut md) = match self.head_full(&marker).await? {
            Some(h) => (attrs_from(Some(&h.metadata)).merged(attrs), h.metadata),
            None => {
                if !matches!(self.stat(key).await?, Some(Node::Dir(_))) {
                    return Err(StoreError::NotFound);
                }
                (attrs.clone(), HashMap::new())
            }
        };
        put_attrs(&mut md, &merged, S_IFDIR, 0o755);
        self.put_empty(&marker, DIR_CONTENT_TYPE, md).await?;
        Ok(None)
    }

    /// Copies every object below `from/` as it is (markers and their
    /// attributes included), then deletes the sources, markers last: other
    /// hosts may see both trees for a moment, never neither.
    async fn rename_dir(&self, from: &str, to: &str) -> StoreResult<()> {
        if from.is_empty() {
            return Err(StoreError::InvalidKey(from.to_string()));
        }
        self.writable(to)?;
        let src = self.marker(from);
        let dst = self.marker(to);
        let objects = self.all_below(&src).await?;
        if !objects.iter().any(|(k, _)| *k == src) {
            // Only implied: give the new directory a marker so it exists even
            // when empty.
            self.create_dir(to, &Attrs::default()).await?;
        }
        // Owned items: borrowed ones trip the Send check of async_trait.
        let copies: Vec<(String, String, u64)> = objects
            .iter()
            .map(|(k, size)| (k.clone(), format!("{dst}{}", &k[src.len()..]), *size))
            .collect();
        futures::stream::iter(copies)
            .map(|(k, target, size)| async move {
                self.copy_full(&k, &target, size, None).await.map(|_| ())
            })
            .buffer_unordered(TREE_PARALLELISM)
            .try_collect::<Vec<()>>()
            .await?;
        // Files first, then markers deepest first.
        let (mut markers, files): (Vec<String>, Vec<String>) = objects
            .into_iter()
            .map(|(k, _)| k)
            .partition(|k| k.ends_with('/'));
        futures::stream::iter(files)
            .map(|k| async move { self.delete_full(&k).await })
            .buffer_unordered(TREE_PARALLELISM)
            .try_collect::<Vec<()>>()
            .await?;
        markers.sort_by_key(|k| std::cmp::Reverse(k.len()));
        for k in markers {
            self.delete_full(&k).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::object_meta::parse_mtime;

    #[test]
    fn s3fs_metadata_round_trip() {
        let mut md = HashMap::new();
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let attrs = Attrs {
            mode: Some(0o644),
            uid: Some(33),
            gid: Some(34),
            mtime: Some(t),
        };
        put_attrs(&mut md, &attrs, S_IFREG, 0o600);
        assert_eq!(md["mode"], "33188");
        assert_eq!(md["uid"], "33");
        assert_eq!(md["gid"], "34");
        assert_eq!(md["mtime"], "1700000000");
        assert_eq!(attrs_from(Some(&md)), attrs);
        put_attrs(&mut md, &Attrs::default(), S_IFDIR, 0o755);
        assert_eq!(md["mode"], (0o040755).to_string());
    }

    #[test]
    fn mtime_with_fraction() {
        assert_eq!(
            parse_mtime("1700000000.5"),
            Some(UNIX_EPOCH + Duration::from_millis(1_700_000_000_500))
        );
        assert_eq!(parse_mtime("x"), None);
    }

    #[test]
    fn content_types() {
        assert_eq!(content_type_of("a/b.jpg"), "image/jpeg");
        assert_eq!(content_type_of("a/b.css"), "text/css");
        assert_eq!(content_type_of("noext"), "application/octet-stream");
    }

    #[test]
    fn path_style_hosts() {
        assert!(host_needs_path_style("http://127.0.0.1:9000"));
        assert!(host_needs_path_style("http://localhost/"));
        assert!(host_needs_path_style("http://[::1]:80"));
        assert!(!host_needs_path_style("https://s3.example.com"));
    }

    #[test]
    fn valid_paths() {
        assert!(valid_path("a/b.jpg"));
        assert!(!valid_path("a//b"));
        assert!(!valid_path("a/../b"));
        assert!(!valid_path(&"x".repeat(256)));
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let c = CredentialSource::Static {
            access_key_id: "AKID".into(),
            secret_access_key: "very-secret".into(),
            session_token: Some("tok".into()),
        };
        let s = format!("{c:?}");
        assert!(s.contains("AKID") && !s.contains("very-secret") && !s.contains("tok"));
    }
}
