//! Remote URLs: `s3://bucket[/prefix]` and `file:///absolute/path`.

use crate::error::{Error, Result};
use std::fmt;
use std::path::PathBuf;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scheme {
    S3 { bucket: String, prefix: String },
    File { path: PathBuf },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteUrl {
    /// As the user wrote it (minus a trailing `/`): what every message names.
    text: String,
    pub scheme: Scheme,
}

impl fmt::Display for RemoteUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl RemoteUrl {
    pub fn parse(s: &str) -> Result<RemoteUrl> {
        let bad = |why: &str| {
            Error::Usage(format!(
                "bad remote URL {s:?}: {why} (expected s3://BUCKET[/PREFIX] or file:///PATH)"
            ))
        };
        let text = s.trim_end_matches('/').to_string();
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let prefix = prefix.trim_matches('/');
            if bucket.is_empty() {
                return Err(bad("no bucket"));
            }
            let valid_bucket = bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
            if !valid_bucket {
                return Err(bad("a bucket name is lowercase letters, digits, '-' and '.'"));
            }
            if prefix.split('/').any(|c| c == "." || c == "..") || prefix.contains("//") {
                return Err(bad("the prefix has '.', '..' or empty components"));
            }
            return Ok(RemoteUrl {
                text,
                scheme: Scheme::S3 {
                    bucket: bucket.to_string(),
                    prefix: prefix.to_string(),
                },
            });
        }
        if let Some(path) = s.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(bad("a file remote needs an absolute path (file:///srv/cache)"));
            }
            return Ok(RemoteUrl {
                text,
                scheme: Scheme::File {
                    path: PathBuf::from(path),
                },
            });
        }
        Err(bad("unknown scheme"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_s3_and_file_urls_and_refuses_others() {
        let u = RemoteUrl::parse("s3://ci-cache/team/envsnap/").unwrap();
        assert_eq!(
            u.scheme,
            Scheme::S3 {
                bucket: "ci-cache".into(),
                prefix: "team/envsnap".into()
            }
        );
        assert_eq!(u.to_string(), "s3://ci-cache/team/envsnap");
        let u = RemoteUrl::parse("s3://b").unwrap();
        assert_eq!(
            u.scheme,
            Scheme::S3 {
                bucket: "b".into(),
                prefix: "".into()
            }
        );
        let u = RemoteUrl::parse("file:///srv/cache").unwrap();
        assert_eq!(
            u.scheme,
            Scheme::File {
                path: "/srv/cache".into()
            }
        );
        for bad in ["http://x", "s3://", "s3://Upper/x", "file://rel/path", "s3://b/../x"] {
            assert!(RemoteUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
