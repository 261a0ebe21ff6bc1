//! Per-install identity: files a package's maintainer script generates for one machine (a
//! machine id, a self-signed key pair, a database cluster with its system identifier). Copying
//! them would give every root that restores the snapshot the same identity, and the same private
//! key: a secret leaked by design. So `save apt` leaves them out of the payload and records which
//! ones the install created; a restore keeps the target's own when it has one, else runs the
//! command the package's maintainer script runs to create it, inside ROOT. See docs/apt.md.

use serde::{Deserialize, Serialize};
use std::path::Path;
use std::process::Command;

/// One kind of per-install identity.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Identity {
    /// `/etc/machine-id` (systemd, or dbus on systems without systemd).
    MachineId,
    /// `/var/lib/dbus/machine-id` (dbus's postinst: `dbus-uuidgen --ensure`).
    DbusMachineId,
    /// ssl-cert's snakeoil key pair (its postinst: `make-ssl-cert generate-default-snakeoil`).
    Snakeoil,
    /// openssh-server's host keys (its postinst: `ssh-keygen -A`).
    SshHostKeys,
    /// A PostgreSQL cluster created by postgresql's postinst (`pg_createcluster VERSION NAME`):
    /// its data directory holds a unique system identifier, its configuration names it.
    PgCluster { version: String, name: String },
}

const SNAKEOIL_KEY: &str = "etc/ssl/private/ssl-cert-snakeoil.key";
const SNAKEOIL_PEM: &str = "etc/ssl/certs/ssl-cert-snakeoil.pem";

impl Identity {
    /// The identity a root-relative path belongs to, if any. `link` is a symlink's target.
    pub fn of(rel: &str, link: Option<&[u8]>) -> Option<Identity> {
        match rel {
            "etc/machine-id" if link.is_none() => return Some(Identity::MachineId),
            "var/lib/dbus/machine-id" if link.is_none() => return Some(Identity::DbusMachineId),
            SNAKEOIL_KEY | SNAKEOIL_PEM => return Some(Identity::Snakeoil),
            _ => {}
        }
        if let Some(name) = rel.strip_prefix("etc/ssh/ssh_host_") {
            if link.is_none() && (name.ends_with("_key") || name.ends_with("_key.pub")) {
                return Some(Identity::SshHostKeys);
            }
        }
        // The certificate's `<subject hash>.0` link, named after this machine's host name.
        if rel.starts_with("etc/ssl/certs/") && link == Some(b"ssl-cert-snakeoil.pem".as_slice()) {
            return Some(Identity::Snakeoil);
        }
        for prefix in ["etc/postgresql/", "var/lib/postgresql/"] {
            if let Some(rest) = rel.strip_prefix(prefix) {
                let mut parts = rest.split('/');
                if let (Some(v), Some(c)) = (parts.next(), parts.next()) {
                    if !v.is_empty() && v.chars().all(|ch| ch.is_ascii_digit() || ch == '.') && !c.is_empty() {
                        return Some(Identity::PgCluster {
                            version: v.to_string(),
                            name: c.to_string(),
                        });
                    }
                }
            }
        }
        None
    }

    /// What it is, for messages.
    pub fn describe(&self) -> String {
        match self {
            Identity::MachineId => "/etc/machine-id".into(),
            Identity::DbusMachineId => "/var/lib/dbus/machine-id".into(),
            Identity::Snakeoil => format!("the snakeoil key pair (/{SNAKEOIL_KEY}, /{SNAKEOIL_PEM})"),
            Identity::SshHostKeys => "the SSH host keys (/etc/ssh/ssh_host_*_key)".into(),
            Identity::PgCluster { version, name } => format!(
                "PostgreSQL cluster {version}/{name} (/etc/postgresql/{version}/{name}, /var/lib/postgresql/{version}/{name})"
            ),
        }
    }

    /// Whether ROOT already has its own (then the restore keeps it).
    fn present(&self, root: &Path) -> bool {
        let nonempty = |rel: &str| std::fs::symlink_metadata(root.join(rel)).is_ok_and(|m| m.len() > 0);
        match self {
            Identity::MachineId => nonempty("etc/machine-id"),
            Identity::DbusMachineId => std::fs::symlink_metadata(root.join("var/lib/dbus/machine-id")).is_ok(),
            Identity::Snakeoil => nonempty(SNAKEOIL_KEY) && nonempty(SNAKEOIL_PEM),
            Identity::SshHostKeys => std::fs::read_dir(root.join("etc/ssh")).is_ok_and(|rd| {
                rd.flatten().any(|e| {
                    let n = e.file_name();
                    let n = n.to_string_lossy();
                    n.starts_with("ssh_host_") && n.ends_with("_key")
                })
            }),
            Identity::PgCluster { version, name } => {
                std::fs::symlink_metadata(root.join(format!("etc/postgresql/{version}/{name}"))).is_ok()
            }
        }
    }

    /// The command the package's maintainer script runs to create it.
    fn command(&self, root: &Path) -> Vec<String> {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect();
        match self {
            Identity::MachineId if root.join("usr/bin/systemd-machine-id-setup").exists() => {
                v(&["systemd-machine-id-setup"])
            }
            Identity::MachineId => v(&["dbus-uuidgen", "--ensure=/etc/machine-id"]),
            Identity::DbusMachineId => v(&["dbus-uuidgen", "--ensure"]),
            Identity::Snakeoil => v(&["make-ssl-cert", "generate-default-snakeoil", "--force-overwrite"]),
            Identity::SshHostKeys => v(&["ssh-keygen", "-A"]),
            Identity::PgCluster { version, name } => v(&["pg_createcluster", "--quiet", version, name]),
        }
    }

    /// Keep the target's, or regenerate it in ROOT. Returns a line for the restore's report; a
    /// command that fails is reported (the rest of the restore is complete), never fatal.
    pub fn regenerate(&self, root: &Path) -> String {
        if self.present(root) {
            return format!("kept the target's own {}", self.describe());
        }
        let argv = self.command(root);
        let mut cmd = if root == Path::new("/") {
            Command::new(&argv[0])
        } else {
            let mut c = Command::new("chroot");
            c.arg(root).arg(&argv[0]);
            c
        };
        cmd.args(&argv[1..])
            .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let shown = argv.join(" ");
        match crate::process::run_with_timeout(cmd, std::time::Duration::from_secs(120)) {
            Ok((true, _, _)) => format!("regenerated {} (`{shown}`), not copied", self.describe()),
            Ok((false, _, err)) => format!(
                "left out {}: `{shown}` failed in {} ({}); run it there to create one",
                self.describe(),
                root.display(),
                String::from_utf8_lossy(&err).trim().lines().last().unwrap_or("")
            ),
            Err(e) => format!(
                "left out {}: cannot run `{shown}` in {} ({e}); run it there to create one",
                self.describe(),
                root.display()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_paths() {
        assert_eq!(Identity::of("etc/machine-id", None), Some(Identity::MachineId));
        assert_eq!(Identity::of("etc/machine-id", Some(b"/run/machine-id")), None);
        assert_eq!(Identity::of(SNAKEOIL_KEY, None), Some(Identity::Snakeoil));
        assert_eq!(
            Identity::of("etc/ssl/certs/1a2b3c4d.0", Some(b"ssl-cert-snakeoil.pem")),
            Some(Identity::Snakeoil)
        );
        assert_eq!(Identity::of("etc/ssl/certs/1a2b3c4d.0", Some(b"other.pem")), None);
        assert_eq!(
            Identity::of("etc/ssh/ssh_host_ed25519_key", None),
            Some(Identity::SshHostKeys)
        );
        assert_eq!(
            Identity::of("etc/ssh/ssh_host_ed25519_key.pub", None),
            Some(Identity::SshHostKeys)
        );
        assert_eq!(Identity::of("etc/ssh/sshd_config", None), None);
        let pg = Some(Identity::PgCluster {
            version: "15".into(),
            name: "main".into(),
        });
        assert_eq!(Identity::of("var/lib/postgresql/15/main/global/pg_control", None), pg);
        assert_eq!(Identity::of("etc/postgresql/15/main", None), pg);
        assert_eq!(Identity::of("var/lib/postgresql/15", None), None);
        assert_eq!(Identity::of("var/lib/postgresql/.psql_history", None), None);
        assert_eq!(Identity::of("etc/postgresql-common/createcluster.conf", None), None);
    }
}
