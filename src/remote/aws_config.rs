//! The region and endpoint from the AWS CLI's shared config, resolved the way the AWS CLI
//! resolves them. opendal's S3 service only reads `AWS_REGION`/`AWS_DEFAULT_REGION` and
//! `AWS_ENDPOINT_URL` itself; a profile's `region`, `endpoint_url` and `services` section are
//! never read, so a runner configured only through `AWS_PROFILE` would sign for the wrong
//! region and talk to AWS instead of its server. Credentials are not handled here: reqsign's
//! default chain already reads them in the AWS CLI's order (environment, then the profile in
//! the credentials file, then the config file, SSO, web identity, `credential_process`, ECS,
//! IMDS).

use std::collections::HashMap;
use std::path::PathBuf;

/// What opendal would pick when given no endpoint: an explicit value, so that
/// `AWS_IGNORE_CONFIGURED_ENDPOINT_URLS` also overrides the `AWS_ENDPOINT_URL` opendal reads.
const AWS_DEFAULT_ENDPOINT: &str = "https://s3.amazonaws.com";

/// The AWS CLI's own fallback when nothing names a region; self-hosted servers rarely care.
const DEFAULT_REGION: &str = "us-east-1";

#[derive(Debug, PartialEq)]
pub struct Settings {
    pub region: String,
    /// `None`: nothing configured here, opendal falls back to its own defaults.
    pub endpoint: Option<String>,
}

/// Region and endpoint, each from the first source that sets it, in the AWS CLI's order:
/// - region: `AWS_REGION`, `AWS_DEFAULT_REGION`, the profile's `region`, `us-east-1`;
/// - endpoint: `AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`, the profile's `services` section
///   (`s3 =` / `endpoint_url =`), the profile's `endpoint_url`; none of them when
///   `AWS_IGNORE_CONFIGURED_ENDPOINT_URLS` (or the profile's `ignore_configured_endpoint_urls`)
///   is true.
///
/// The profile is `AWS_PROFILE` (else `default`) in `AWS_CONFIG_FILE` (else `~/.aws/config`).
/// A profile named by `AWS_PROFILE` that neither the config nor the credentials file defines is
/// an error, as in the AWS CLI: otherwise a typo silently falls through to unsigned or other
/// credentials and surfaces later as a baffling 403.
///
/// `env` returns a variable's value, `None` for unset or empty.
pub fn resolve(env: &dyn Fn(&str) -> Option<String>) -> Result<Settings, String> {
    let explicit = env("AWS_PROFILE");
    let name = explicit.clone().unwrap_or_else(|| "default".into());
    let config_path = file_path(env, "AWS_CONFIG_FILE", "config");
    let config = config_path.as_ref().map(read).unwrap_or_default();
    let profile = profile_section(&config, &name);
    if explicit.is_some() && profile.is_none() {
        let creds_path = file_path(env, "AWS_SHARED_CREDENTIALS_FILE", "credentials");
        let creds = creds_path.as_ref().map(read).unwrap_or_default();
        if !creds.contains_key(&name) {
            let shown = |p: &Option<PathBuf>| p.as_ref().map_or("(no HOME)".into(), |p| p.display().to_string());
            return Err(format!(
                "AWS_PROFILE={name}: no such profile in {} or {}",
                shown(&config_path),
                shown(&creds_path)
            ));
        }
    }
    let prop = |k: &str| profile.and_then(|s| s.props.get(k)).filter(|v| !v.is_empty()).cloned();

    let region = env("AWS_REGION")
        .or_else(|| env("AWS_DEFAULT_REGION"))
        .or_else(|| prop("region"))
        .unwrap_or_else(|| DEFAULT_REGION.into());

    // The variable, when set, decides (`false` there overrides `true` in the profile).
    let ignore = env("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS")
        .or_else(|| prop("ignore_configured_endpoint_urls"))
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let endpoint = if ignore {
        Some(AWS_DEFAULT_ENDPOINT.to_string())
    } else {
        env("AWS_ENDPOINT_URL_S3")
            .or_else(|| env("AWS_ENDPOINT_URL"))
            .or_else(|| {
                let services = config.get(&format!("services {}", prop("services")?))?;
                services
                    .nested
                    .get("s3")?
                    .get("endpoint_url")
                    .filter(|v| !v.is_empty())
                    .cloned()
            })
            .or_else(|| prop("endpoint_url"))
    };
    Ok(Settings { region, endpoint })
}

/// `$VAR` (a leading `~/` is the home directory, as the AWS CLI expands it), else
/// `~/.aws/NAME`; `None` without a home directory.
fn file_path(env: &dyn Fn(&str) -> Option<String>, var: &str, name: &str) -> Option<PathBuf> {
    let home = || env("HOME").map(PathBuf::from);
    match env(var) {
        Some(p) => match p.strip_prefix("~/") {
            Some(rest) => home().map(|h| h.join(rest)),
            None => Some(PathBuf::from(p)),
        },
        None => home().map(|h| h.join(".aws").join(name)),
    }
}

/// An unreadable or missing file is an empty one, as for the AWS CLI and reqsign.
fn read(path: &PathBuf) -> HashMap<String, Section> {
    std::fs::read_to_string(path).map(|t| parse(&t)).unwrap_or_default()
}

/// The config file names a profile `[profile NAME]`; only the default one may be `[default]`.
fn profile_section<'a>(config: &'a HashMap<String, Section>, name: &str) -> Option<&'a Section> {
    let named = config.get(&format!("profile {name}"));
    if name == "default" {
        config.get("default").or(named)
    } else {
        named
    }
}

#[derive(Debug, Default)]
struct Section {
    props: HashMap<String, String>,
    /// Indented `key = value` lines under a `key =` line (`s3 =` / `  endpoint_url = …` in a
    /// `services` section).
    nested: HashMap<String, HashMap<String, String>>,
}

/// The INI dialect of the AWS CLI's files (Python's configparser as botocore uses it): `[name]`
/// sections (inner whitespace collapsed, so `[profile  ci]` is `profile ci`), `key = value`
/// with lowercase keys, whole-line `#`/`;` comments, indented lines nesting under the key
/// above them.
fn parse(text: &str) -> HashMap<String, Section> {
    let mut out: HashMap<String, Section> = HashMap::new();
    let mut section: Option<String> = None;
    // The key lines may be nested under, and that key line's indent.
    let mut parent: Option<(String, usize)> = None;
    for line in text.lines() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') || t.starts_with(';') {
            continue;
        }
        if let Some(name) = t.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
            let name = name.split_whitespace().collect::<Vec<_>>().join(" ");
            out.entry(name.clone()).or_default();
            section = Some(name);
            parent = None;
            continue;
        }
        let (Some(s), Some((k, v))) = (&section, t.split_once('=')) else {
            continue;
        };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_string());
        let s = out.entry(s.clone()).or_default();
        // configparser: a line continues the key above it only when indented deeper than it,
        // so a uniformly indented section is plain keys.
        let indent = line.len() - line.trim_start().len();
        match &parent {
            Some((p, pi)) if indent > *pi => {
                s.nested.entry(p.clone()).or_default().insert(k, v);
            }
            _ => {
                s.props.insert(k.clone(), v);
                parent = Some((k, indent));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(files: &[(&str, &str)], vars: &[(&str, &str)]) -> Result<Settings, String> {
        let d = tempfile::tempdir().unwrap();
        let mut vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        vars.insert("HOME".into(), d.path().display().to_string());
        std::fs::create_dir(d.path().join(".aws")).unwrap();
        for (name, text) in files {
            std::fs::write(d.path().join(".aws").join(name), text).unwrap();
        }
        resolve(&|k| vars.get(k).cloned())
    }

    const CONFIG: &str = "\
[default]
region = eu-west-1

[profile  ci]
# a comment
Region = eu-central-1
endpoint_url = http://profile:9000
services = local

[services local]
s3 =
  endpoint_url = http://service:9000
sqs =
  endpoint_url = http://other:1

[profile plain]
endpoint_url = http://plain:9000

[profile ignoring]
endpoint_url = http://plain:9000
ignore_configured_endpoint_urls = true

[profile indented]
  region = eu-north-1
  endpoint_url = http://indented:9000
";

    #[test]
    fn the_profile_gives_region_and_endpoint_below_the_environment() {
        let f = [("config", CONFIG)];
        let s = |region: &str, endpoint: Option<&str>| Settings {
            region: region.into(),
            endpoint: endpoint.map(Into::into),
        };
        assert_eq!(with(&f, &[]), Ok(s("eu-west-1", None)));
        assert_eq!(
            with(&f, &[("AWS_PROFILE", "ci")]),
            Ok(s("eu-central-1", Some("http://service:9000")))
        );
        assert_eq!(
            with(&f, &[("AWS_PROFILE", "plain")]),
            Ok(s("us-east-1", Some("http://plain:9000")))
        );
        assert_eq!(
            with(&f, &[("AWS_PROFILE", "ignoring")]),
            Ok(s("us-east-1", Some(AWS_DEFAULT_ENDPOINT)))
        );
        // The variable set to false overrides the profile's true.
        assert_eq!(
            with(
                &f,
                &[
                    ("AWS_PROFILE", "ignoring"),
                    ("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "false")
                ]
            ),
            Ok(s("us-east-1", Some("http://plain:9000")))
        );
        // Uniformly indented keys are keys, not continuations of the first (configparser).
        assert_eq!(
            with(&f, &[("AWS_PROFILE", "indented")]),
            Ok(s("eu-north-1", Some("http://indented:9000")))
        );
        let env = [
            ("AWS_PROFILE", "ci"),
            ("AWS_DEFAULT_REGION", "ap-south-1"),
            ("AWS_ENDPOINT_URL", "http://env:1"),
        ];
        assert_eq!(with(&f, &env), Ok(s("ap-south-1", Some("http://env:1"))));
        let env = [
            ("AWS_PROFILE", "ci"),
            ("AWS_REGION", "us-west-2"),
            ("AWS_DEFAULT_REGION", "ap-south-1"),
            ("AWS_ENDPOINT_URL", "http://env:1"),
            ("AWS_ENDPOINT_URL_S3", "http://env-s3:1"),
        ];
        assert_eq!(with(&f, &env), Ok(s("us-west-2", Some("http://env-s3:1"))));
        let env = [
            ("AWS_ENDPOINT_URL", "http://env:1"),
            ("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "true"),
        ];
        assert_eq!(with(&f, &env), Ok(s("eu-west-1", Some(AWS_DEFAULT_ENDPOINT))));
    }

    #[test]
    fn a_named_profile_must_exist_in_one_of_the_files() {
        // Defined only in the credentials file: fine (region and endpoint then default).
        let f = [
            ("config", CONFIG),
            ("credentials", "[creds-only]\naws_access_key_id = A\n"),
        ];
        assert!(with(&f, &[("AWS_PROFILE", "creds-only")]).is_ok());
        // `[ci]` in the config file is not the profile `ci` (it must be `[profile ci]`).
        let err = with(&[("config", "[typo]\nregion = x\n")], &[("AWS_PROFILE", "typo")]).unwrap_err();
        assert!(err.starts_with("AWS_PROFILE=typo: no such profile in "), "{err}");
        // No files and no AWS_PROFILE: the defaults.
        assert_eq!(
            with(&[], &[]),
            Ok(Settings {
                region: "us-east-1".into(),
                endpoint: None
            })
        );
    }

    #[test]
    fn an_explicit_file_path_may_start_with_the_home_directory() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("cfg"), "[profile x]\nregion = sa-east-1\n").unwrap();
        let home = d.path().display().to_string();
        let vars = |k: &str| match k {
            "HOME" => Some(home.clone()),
            "AWS_CONFIG_FILE" => Some("~/cfg".into()),
            "AWS_PROFILE" => Some("x".into()),
            _ => None,
        };
        assert_eq!(resolve(&vars).unwrap().region, "sa-east-1");
    }
}
