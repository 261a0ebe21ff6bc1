//! The object-storage client: an opendal `Operator` (S3 or a filesystem path) behind retry with
//! jitter, per-request timeouts and a concurrency limit, driven by one process-wide tokio
//! runtime that only remote work uses (rustic's pattern: the rest of envsnap stays synchronous).
//! Every failure becomes one [`Error::Remote`] line naming the remote URL, the operation, the
//! object and the HTTP status.

use super::url::{RemoteUrl, Scheme};
use crate::error::{Error, Result};
use opendal::layers::{ConcurrentLimitLayer, RetryEvent, RetryInterceptor, RetryLayer, TimeoutLayer};
use opendal::{ErrorKind, Operator};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Requests in flight at once (S3 throughput comes from parallel connections).
pub const CONCURRENCY: usize = 16;

/// What a command cost on the remote; the CLI reports it as the `remote` JSON object.
#[derive(Debug, Default)]
pub struct Stats {
    pub requests: AtomicU64,
    pub retries: AtomicU64,
    pub bytes_down: AtomicU64,
    pub bytes_up: AtomicU64,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct StatsReport {
    pub url: String,
    pub requests: u64,
    pub retries: u64,
    pub bytes_down: u64,
    pub bytes_up: u64,
    pub seconds: f64,
}

struct CountRetries(Arc<Stats>);

impl RetryInterceptor for CountRetries {
    fn intercept(&self, _event: RetryEvent<'_>) {
        // A retry is another request on the wire.
        self.0.requests.fetch_add(1, Ordering::Relaxed);
        self.0.retries.fetch_add(1, Ordering::Relaxed);
    }
}

/// The one runtime for remote I/O, created on first use: a purely local command never starts it.
fn runtime() -> Result<&'static tokio::runtime::Runtime> {
    static RT: OnceLock<std::result::Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .thread_name("envsnap-remote")
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(|e| Error::Remote(format!("cannot start the remote I/O runtime: {e}")))
}

pub struct Client {
    pub url: RemoteUrl,
    op: Operator,
    pub stats: Arc<Stats>,
    started: Instant,
}

impl Client {
    pub fn new(url: RemoteUrl) -> Result<Client> {
        // With default features off, opendal registers no HTTP transport by itself: without
        // this every request fails.
        opendal::install_default();
        let stats = Arc::new(Stats::default());
        let bad = |e: opendal::Error| Error::Remote(format!("remote {url}: {}", e.message()));
        let op = match &url.scheme {
            Scheme::S3 { bucket, prefix } => {
                let mut b = opendal::services::S3::default()
                    .bucket(bucket)
                    .root(&format!("/{}", super::layout::root_under(prefix)));
                // Region and endpoint as the AWS CLI resolves them, profile included: opendal
                // alone reads only the environment for these (credentials it resolves itself,
                // environment before profile, as the AWS CLI does).
                let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
                let aws = super::aws_config::resolve(&env).map_err(|e| Error::Remote(format!("remote {url}: {e}")))?;
                b = b.region(&aws.region);
                if let Some(e) = &aws.endpoint {
                    b = b.endpoint(e);
                }
                if env("ENVSNAP_S3_VIRTUAL_HOST").is_some_and(|v| v == "1" || v == "true") {
                    b = b.enable_virtual_host_style();
                }
                Operator::new(b).map_err(bad)?
            }
            Scheme::File { path } => {
                let root = path.join(super::layout::VERSION_DIR);
                // Without an atomic write dir opendal's fs writes straight into the final
                // name, so a push killed mid-write leaves a torn pack or index under its
                // content name (S3 PUTs are atomic; this makes file:// remotes match). The
                // temp dir sits beside the layout, on the same filesystem, outside every
                // prefix envsnap lists.
                let tmp = path.join(super::layout::TMP_DIR);
                let mut b = opendal::services::Fs::default().root(&root.to_string_lossy());
                // A remote this user may only read (a read-only mount, another user's cache)
                // cannot hold the temp dir, and needs none: restores work without it, and a
                // write fails on its own with a clear error.
                if std::fs::create_dir_all(&tmp).is_ok() {
                    b = b.atomic_write_dir(&tmp.to_string_lossy());
                }
                Operator::new(b).map_err(bad)?
            }
        };
        let op = op
            .layer(
                TimeoutLayer::new()
                    .with_timeout(Duration::from_secs(120))
                    .with_io_timeout(Duration::from_secs(60)),
            )
            .layer(
                RetryLayer::new()
                    .with_jitter()
                    .with_max_times(6)
                    .with_min_delay(Duration::from_millis(100))
                    .with_max_delay(Duration::from_secs(5))
                    .with_notify(CountRetries(stats.clone())),
            )
            .layer(ConcurrentLimitLayer::new(CONCURRENCY));
        Ok(Client {
            url,
            op,
            stats,
            started: Instant::now(),
        })
    }

    /// Run remote work to completion on the remote runtime.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> Result<F::Output> {
        Ok(runtime()?.block_on(f))
    }

    pub fn report(&self) -> StatsReport {
        StatsReport {
            url: self.url.to_string(),
            requests: self.stats.requests.load(Ordering::Relaxed),
            retries: self.stats.retries.load(Ordering::Relaxed),
            bytes_down: self.stats.bytes_down.load(Ordering::Relaxed),
            bytes_up: self.stats.bytes_up.load(Ordering::Relaxed),
            seconds: self.started.elapsed().as_secs_f64(),
        }
    }

    fn count(&self) {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// One line naming the remote, the operation, the object and the HTTP status, with a hint.
    pub fn error(&self, what: &str, path: &str, e: &opendal::Error) -> Error {
        let text = format!("{e}");
        let status = http_status(&text);
        let code = s3_code(&text);
        let hint = match (e.kind(), status, code.as_deref()) {
            (_, _, Some("NoSuchBucket")) => {
                "the bucket does not exist: create it or fix the URL (--remote / ENVSNAP_REMOTE)"
            }
            (ErrorKind::PermissionDenied, _, _) | (_, Some(401 | 403), _) => {
                "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) and the bucket's policy"
            }
            (ErrorKind::NotFound, _, _) => "the object is missing on the remote",
            (_, None, _) if unreachable(&text) => "cannot reach the server: check AWS_ENDPOINT_URL and the network",
            (_, None, _) => "the transfer failed",
            _ => "the server refused the request",
        };
        let status = match (status, code) {
            (Some(s), Some(c)) => format!("HTTP {s} {c}"),
            (Some(s), None) => format!("HTTP {s}"),
            (None, _) => format!("no HTTP response ({})", first_line(e.message())),
        };
        Error::Remote(format!("remote {}: {what} {path} failed: {status}: {hint}", self.url))
    }

    pub async fn read(&self, path: &str) -> Result<Vec<u8>> {
        self.count();
        let b = self.op.read(path).await.map_err(|e| self.error("read", path, &e))?;
        self.stats.bytes_down.fetch_add(b.len() as u64, Ordering::Relaxed);
        Ok(b.to_vec())
    }

    /// `None` when the object does not exist.
    pub async fn read_opt(&self, path: &str) -> Result<Option<Vec<u8>>> {
        self.count();
        match self.op.read(path).await {
            Ok(b) => {
                self.stats.bytes_down.fetch_add(b.len() as u64, Ordering::Relaxed);
                Ok(Some(b.to_vec()))
            }
            Err(e) if e.kind() == ErrorKind::NotFound && s3_code(&e.to_string()).as_deref() != Some("NoSuchBucket") => {
                Ok(None)
            }
            Err(e) => Err(self.error("read", path, &e)),
        }
    }

    /// Bytes `start..end` of an object; a short answer (a truncated object) is an error.
    pub async fn read_range(&self, path: &str, start: u64, end: u64) -> Result<Vec<u8>> {
        self.count();
        let r = self.op.read_with(path).range(start..end).await;
        self.range_result(path, start, end, r)
    }

    /// [`Self::read_range`], but `None` when the object does not exist: a pack gc deleted
    /// after this process read the index naming it (the caller refreshes the index and retries).
    pub async fn read_range_opt(&self, path: &str, start: u64, end: u64) -> Result<Option<Vec<u8>>> {
        self.count();
        match self.op.read_with(path).range(start..end).await {
            Err(e) if e.kind() == ErrorKind::NotFound && s3_code(&e.to_string()).as_deref() != Some("NoSuchBucket") => {
                Ok(None)
            }
            r => self.range_result(path, start, end, r).map(Some),
        }
    }

    fn range_result(&self, path: &str, start: u64, end: u64, r: opendal::Result<opendal::Buffer>) -> Result<Vec<u8>> {
        let b = r.map_err(|e| {
            // A range past the end (a filesystem says so; S3 answers 416): truncated.
            let t = e.to_string();
            if e.kind() == ErrorKind::RangeNotSatisfied || t.contains("range exceeds") || t.contains("too little data")
            {
                Error::Remote(format!(
                    "remote {}: {path} is truncated or corrupt: bytes {start}..{end} are not all there",
                    self.url
                ))
            } else {
                self.error("read", path, &e)
            }
        })?;
        self.stats.bytes_down.fetch_add(b.len() as u64, Ordering::Relaxed);
        if (b.len() as u64) != end - start {
            return Err(Error::Remote(format!(
                "remote {}: {path} is truncated or corrupt: asked for bytes {start}..{end}, got {} bytes",
                self.url,
                b.len()
            )));
        }
        Ok(b.to_vec())
    }

    pub async fn write(&self, path: &str, data: Vec<u8>) -> Result<()> {
        self.count();
        let n = data.len() as u64;
        self.op
            .write(path, data)
            .await
            .map_err(|e| self.error("write", path, &e))?;
        self.stats.bytes_up.fetch_add(n, Ordering::Relaxed);
        Ok(())
    }

    pub async fn exists(&self, path: &str) -> Result<bool> {
        self.count();
        match self.op.stat(path).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(self.error("stat", path, &e)),
        }
    }

    pub async fn delete(&self, path: &str) -> Result<()> {
        self.count();
        self.op.delete(path).await.map_err(|e| self.error("delete", path, &e))
    }

    /// Every object whose path starts with `prefix` (paths relative to the layout root, with
    /// their sizes), following every page of the listing. On a filesystem remote the parent
    /// directory is listed and filtered: a directory lister has no prefix semantics.
    pub async fn list(&self, prefix: &str) -> Result<Vec<Listed>> {
        use futures::TryStreamExt;
        let dir = match self.url.scheme {
            Scheme::File { .. } => &prefix[..prefix.rfind('/').map(|i| i + 1).unwrap_or(0)],
            Scheme::S3 { .. } => prefix,
        };
        self.count();
        let lister = match self.op.lister_with(dir).recursive(true).await {
            Ok(l) => l,
            Err(e) if e.kind() == ErrorKind::NotFound && matches!(self.url.scheme, Scheme::File { .. }) => {
                return Ok(Vec::new())
            }
            Err(e) => return Err(self.error("list", prefix, &e)),
        };
        let entries: Vec<opendal::Entry> = lister.try_collect().await.map_err(|e| {
            if e.kind() == ErrorKind::NotFound {
                Error::Remote(format!("remote {}: list {prefix} failed: {}", self.url, e.message()))
            } else {
                self.error("list", prefix, &e)
            }
        })?;
        // S3 returns up to 1,000 keys per page: count the pages as requests.
        self.stats
            .requests
            .fetch_add((entries.len() as u64).saturating_sub(1) / 1000, Ordering::Relaxed);
        Ok(entries
            .into_iter()
            .filter(|e| e.metadata().mode().is_file() && e.path().starts_with(prefix))
            .map(|e| Listed {
                path: e.path().to_string(),
                size: e.metadata().content_length(),
                modified_ns: e.metadata().last_modified().map(to_ns),
            })
            .collect())
    }

    /// When an object was last written (`None`: the server does not say).
    pub async fn modified(&self, path: &str) -> Result<Option<i64>> {
        self.count();
        match self.op.stat(path).await {
            Ok(m) => Ok(m.last_modified().map(to_ns)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.error("stat", path, &e)),
        }
    }
}

/// One object of a listing.
#[derive(Clone, Debug)]
pub struct Listed {
    pub path: String,
    pub size: u64,
    /// The server's last-modified time: only ever compared against gc's grace period (hours),
    /// never used to order saves (it has one-second resolution).
    pub modified_ns: Option<i64>,
}

fn to_ns(t: opendal::raw::Timestamp) -> i64 {
    let t: std::time::SystemTime = t.into();
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// No connection at all (refused, DNS, TLS), as reqwest words it.
fn unreachable(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    ["error sending request", "connect", "dns", "tls", "timed out"]
        .iter()
        .any(|w| t.contains(w))
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

/// The HTTP status opendal records in an error's `response` context (`Parts { status: 403, …`).
fn http_status(text: &str) -> Option<u16> {
    let i = text.find("status: ")? + "status: ".len();
    text[i..].get(..3)?.parse().ok()
}

/// The S3 error code from the response body (`code: "NoSuchBucket"`).
fn s3_code(text: &str) -> Option<String> {
    let i = text.find("code: \"")? + "code: \"".len();
    let end = text[i..].find('"')?;
    Some(text[i..i + end].to_string()).filter(|c| !c.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_and_code_are_found_in_opendal_error_text() {
        let t = r#"PermissionDenied (permanent) at read, context: { response: Parts { status: 403, version: HTTP/1.1 } } => S3Error { code: "InvalidAccessKeyId", message: "x" }"#;
        assert_eq!(http_status(t), Some(403));
        assert_eq!(s3_code(t).as_deref(), Some("InvalidAccessKeyId"));
        assert_eq!(http_status("no response"), None);
    }

    /// A push killed mid-write once left a torn pack index under its content name on a
    /// file:// remote (opendal's fs service writes in place unless given a temp dir).
    #[test]
    fn a_file_remote_object_is_invisible_until_its_write_completes() {
        let d = tempfile::tempdir().unwrap();
        let url = RemoteUrl::parse(&format!("file://{}", d.path().display())).unwrap();
        let c = Client::new(url).unwrap();
        let final_path = d.path().join(super::super::layout::VERSION_DIR).join("index/abc");
        c.block_on(async {
            let mut w = c.op.writer("index/abc").await.unwrap();
            w.write(vec![7u8; 100_000]).await.unwrap();
            assert!(!final_path.exists(), "half-written object visible");
            w.close().await.unwrap();
        })
        .unwrap();
        assert_eq!(std::fs::read(&final_path).unwrap(), vec![7u8; 100_000]);
    }
}
