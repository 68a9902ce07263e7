//! The raw-store side of `scripts/bench`: what a plain S3 client does at the
//! same concurrency as the filesystem under test, without a filesystem. Its
//! figures are the limit mediafs is measured against.
//!
//!     s3raw ENDPOINT BUCKET COMMAND ARGS...   (AWS_ACCESS_KEY_ID/SECRET from env)
//!
//! Commands (each prints one line `seconds=S bytes=B count=N`):
//!   get KEY PARTS PART_MIB          ranged GETs of the whole object, PARTS in flight
//!   random KEY COUNT SIZE           COUNT ranged GETs of SIZE bytes at random offsets, one at a time
//!   get-many PREFIX COUNT CONC      GET PREFIX00000.. with CONC in flight
//!   put-many PREFIX COUNT SIZE CONC PUT COUNT objects of SIZE bytes, CONC in flight
//!   put-file KEY FILE PART_MIB PAR  multipart upload of FILE, PAR parts in flight
//!   list PREFIX                     ListObjectsV2 of PREFIX with delimiter, all pages
//!   usage PREFIX                    objects and bytes under PREFIX (count=, bytes=)
//!   mkbucket                        create the bucket (fine if it exists)

use std::sync::Arc;
use std::time::Instant;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region, RequestChecksumCalculation};
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use futures::{StreamExt, TryStreamExt};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn arg<T: std::str::FromStr>(args: &[String], i: usize, what: &str) -> T {
    args.get(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("argument {i}: {what}"))
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    let (endpoint, bucket, cmd) = (&args[1], args[2].clone(), args[3].as_str());
    let key = std::env::var("AWS_ACCESS_KEY_ID")?;
    let secret = std::env::var("AWS_SECRET_ACCESS_KEY")?;
    let conf = aws_sdk_s3::config::Builder::new()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .credentials_provider(Credentials::new(key, secret, None, None, "bench"))
        .build();
    let c = Arc::new(Client::from_conf(conf));
    let t = Instant::now();
    let (bytes, count): (u64, u64) = match cmd {
        "mkbucket" => {
            let _ = c.create_bucket().bucket(&bucket).send().await;
            (0, 0)
        }
        "get" => {
            let k = args[4].clone();
            let parts: usize = arg(&args, 5, "parts in flight");
            let part = arg::<u64>(&args, 6, "part MiB") << 20;
            let size = c.head_object().bucket(&bucket).key(&k).send().await?;
            let size = size.content_length().unwrap_or(0) as u64;
            let n = futures::stream::iter((0..size.div_ceil(part)).map(|i| {
                let (c, b, k) = (c.clone(), bucket.clone(), k.clone());
                async move { get_range(&c, &b, &k, i * part, ((i + 1) * part).min(size)).await }
            }))
            .buffer_unordered(parts)
            .try_fold(0, |a, n| async move { Ok(a + n) })
            .await?;
            (n, 1)
        }
        "random" => {
            let k = &args[4];
            let count: u64 = arg(&args, 5, "count");
            let len: u64 = arg(&args, 6, "size");
            let size = c.head_object().bucket(&bucket).key(k).send().await?;
            let size = size.content_length().unwrap_or(0) as u64;
            let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
            let mut total = 0;
            for _ in 0..count {
                // xorshift: the same offsets on every run.
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let at = (x % (size - len)) & !4095;
                total += get_range(&c, &bucket, k, at, at + len).await?;
            }
            (total, count)
        }
        "get-many" => {
            let prefix = args[4].clone();
            let count: u64 = arg(&args, 5, "count");
            let conc: usize = arg(&args, 6, "concurrency");
            let n = futures::stream::iter((0..count).map(|i| {
                let (c, b) = (c.clone(), bucket.clone());
                let k = format!("{prefix}{i:05}");
                async move {
                    let o = c.get_object().bucket(&b).key(&k).send().await?;
                    Ok::<u64, Box<dyn std::error::Error + Send + Sync>>(
                        o.body.collect().await?.into_bytes().len() as u64,
                    )
                }
            }))
            .buffer_unordered(conc)
            .try_fold(0, |a, n| async move { Ok(a + n) })
            .await?;
            (n, count)
        }
        "put-many" => {
            let prefix = args[4].clone();
            let count: u64 = arg(&args, 5, "count");
            let size: usize = arg(&args, 6, "size");
            let conc: usize = arg(&args, 7, "concurrency");
            let body = bytes::Bytes::from(vec![b'x'; size]);
            futures::stream::iter((0..count).map(|i| {
                let (c, b, body) = (c.clone(), bucket.clone(), body.clone());
                let k = format!("{prefix}{i:05}");
                async move {
                    c.put_object()
                        .bucket(&b)
                        .key(&k)
                        .body(ByteStream::from(body))
                        .send()
                        .await?;
                    Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
                }
            }))
            .buffer_unordered(conc)
            .try_collect::<Vec<()>>()
            .await?;
            (size as u64 * count, count)
        }
        "put-file" => {
            let k = args[4].clone();
            let path = std::path::PathBuf::from(&args[5]);
            let part = arg::<u64>(&args, 6, "part MiB") << 20;
            let par: usize = arg(&args, 7, "parts in flight");
            let size = std::fs::metadata(&path)?.len();
            let id = c
                .create_multipart_upload()
                .bucket(&bucket)
                .key(&k)
                .send()
                .await?
                .upload_id()
                .unwrap_or_default()
                .to_string();
            let mut parts = futures::stream::iter((0..size.div_ceil(part)).map(|i| {
                let (c, b, k, id, path) = (
                    c.clone(),
                    bucket.clone(),
                    k.clone(),
                    id.clone(),
                    path.clone(),
                );
                async move {
                    let len = part.min(size - i * part);
                    let body = ByteStream::read_from()
                        .path(&path)
                        .offset(i * part)
                        .length(Length::Exact(len))
                        .build()
                        .await?;
                    let out = c
                        .upload_part()
                        .bucket(&b)
                        .key(&k)
                        .upload_id(&id)
                        .part_number(i as i32 + 1)
                        .body(body)
                        .send()
                        .await?;
                    Ok::<CompletedPart, Box<dyn std::error::Error + Send + Sync>>(
                        CompletedPart::builder()
                            .part_number(i as i32 + 1)
                            .set_e_tag(out.e_tag().map(str::to_string))
                            .build(),
                    )
                }
            }))
            .buffer_unordered(par)
            .try_collect::<Vec<_>>()
            .await?;
            parts.sort_by_key(|p| p.part_number());
            c.complete_multipart_upload()
                .bucket(&bucket)
                .key(&k)
                .upload_id(&id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await?;
            (size, 1)
        }
        "list" | "usage" => {
            let mut token = None;
            let (mut n, mut total) = (0, 0);
            loop {
                let out = c
                    .list_objects_v2()
                    .bucket(&bucket)
                    .prefix(&args[4])
                    .set_delimiter((cmd == "list").then(|| "/".to_string()))
                    .set_continuation_token(token)
                    .send()
                    .await?;
                n += out.contents().len() as u64;
                total += out
                    .contents()
                    .iter()
                    .map(|o| o.size().unwrap_or(0) as u64)
                    .sum::<u64>();
                token = out.next_continuation_token().map(str::to_string);
                if token.is_none() {
                    break;
                }
            }
            (total, n)
        }
        other => panic!("unknown command {other}"),
    };
    println!(
        "seconds={:.6} bytes={bytes} count={count}",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn get_range(c: &Client, bucket: &str, key: &str, start: u64, end: u64) -> Res<u64> {
    let o = c
        .get_object()
        .bucket(bucket)
        .key(key)
        .range(format!("bytes={start}-{}", end - 1))
        .send()
        .await?;
    let mut body = o.body;
    let mut n = 0;
    while let Some(chunk) = body.try_next().await? {
        n += chunk.len() as u64;
    }
    Ok(n)
}
