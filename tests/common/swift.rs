//! One Swift server (S3 API and native API on one port) per test binary,
//! started by scripts/swift-start.sh on free loopback ports and stopped by
//! its recorded PIDs when the binary exits. MEDIAFS_TEST_S3_ENDPOINT points
//! the tests at a running server instead.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Instant;

pub const KEY: &str = "test:tester";
pub const SECRET: &str = "testing";

pub struct Swift {
    /// http://127.0.0.1:PORT (S3 API; the Swift API is under /auth/v1.0, /v1).
    pub endpoint: String,
}

static STARTED: OnceLock<PathBuf> = OnceLock::new();
static SERVER: OnceLock<Swift> = OnceLock::new();

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

extern "C" fn stop_swift() {
    if let Some(dir) = STARTED.get() {
        let _ = Command::new(repo().join("scripts/swift-stop.sh"))
            .arg(dir)
            .stdout(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(dir);
    }
}

pub fn swift() -> &'static Swift {
    SERVER.get_or_init(|| {
        if let Ok(endpoint) = std::env::var("MEDIAFS_TEST_S3_ENDPOINT") {
            return Swift { endpoint };
        }
        // A port that looked free can be taken before the server binds it
        // (by another test binary's server): try again on other ports.
        let t = Instant::now();
        let mut failures = String::new();
        let port = (0..3)
            .find_map(|_| {
                let dir = tempfile::Builder::new()
                    .prefix("mediafs-swift-")
                    .tempdir()
                    .expect("temporary directory")
                    .keep();
                let out = Command::new(repo().join("scripts/swift-start.sh"))
                    .arg("auto")
                    .arg(&dir)
                    .stdin(Stdio::null())
                    .stderr(Stdio::inherit())
                    .output()
                    .expect("running scripts/swift-start.sh");
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                if !out.status.success() {
                    // swift-start.sh stopped what it had started.
                    let _ = std::fs::remove_dir_all(&dir);
                    failures += &text;
                    return None;
                }
                STARTED.set(dir).unwrap();
                // SAFETY: registering a plain extern "C" function.
                unsafe { libc::atexit(stop_swift) };
                text.lines()
                    .find_map(|l| l.strip_prefix("port="))
                    .map(str::to_string)
            })
            .unwrap_or_else(|| panic!("swift-start.sh failed 3 times:\n{failures}"));
        eprintln!(
            "swift started on port {port} in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        Swift {
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    })
}

/// Create `bucket` (fine if it exists), retrying while the server answers 503:
/// a loaded single-node Swift sometimes does for a moment.
pub async fn create_bucket(client: &aws_sdk_s3::Client, bucket: &str) {
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let Err(e) = client.create_bucket().bucket(bucket).send().await else {
            return;
        };
        let code = aws_sdk_s3::error::ProvideErrorMetadata::code(&e).unwrap_or("");
        if code == "BucketAlreadyOwnedByYou" || code == "BucketAlreadyExists" {
            return;
        }
        let busy = e.raw_response().map(|r| r.status().as_u16()) == Some(503);
        assert!(
            busy && Instant::now() < deadline,
            "create bucket {bucket}: {}",
            aws_sdk_s3::error::DisplayErrorContext(&e)
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

impl Swift {
    /// Another S3 client (what other tools would use).
    pub fn s3_client(&self) -> aws_sdk_s3::Client {
        use aws_sdk_s3::config::{
            BehaviorVersion, Credentials, Region, RequestChecksumCalculation,
        };
        let conf = aws_sdk_s3::config::Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(&self.endpoint)
            .force_path_style(true)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .credentials_provider(Credentials::new(KEY, SECRET, None, None, "test"))
            .build();
        aws_sdk_s3::Client::from_conf(conf)
    }

    pub async fn create_bucket(&self, bucket: &str) {
        create_bucket(&self.s3_client(), bucket).await
    }

    /// Mount flags and environment for an S3 mount of this server.
    pub fn s3_mount_args(&self) -> (Vec<String>, Vec<(String, String)>) {
        (
            vec![
                "--endpoint".into(),
                self.endpoint.clone(),
                "--region".into(),
                "us-east-1".into(),
                "--path-style".into(),
            ],
            vec![
                ("AWS_ACCESS_KEY_ID".into(), KEY.into()),
                ("AWS_SECRET_ACCESS_KEY".into(), SECRET.into()),
            ],
        )
    }
}
