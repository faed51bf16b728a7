//! Kubernetes API server versions and what each one accepts.
//!
//! Server-side apply rejects fields its schema does not declare ("field not declared in
//! schema"), so what the CLI writes depends on the server: `securityContext.appArmorProfile`
//! and `lifecycle.preStop.sleep` exist from 1.30 (the AppArmor annotation and an `exec` of
//! `sleep` before). The minimum is 1.23: the agents and the CLI watch `discovery.k8s.io/v1`
//! EndpointSlices (served since 1.21) and the oldest release the project was measured on is
//! 1.23 (docs/kubernetes-versions.md).

use std::{fmt, str::FromStr};

use serde::Serialize;

/// `major.minor` of an API server; patch level and vendor suffixes do not change its API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KubeVersion {
    pub major: u32,
    pub minor: u32,
}

impl KubeVersion {
    pub const fn new(major: u32, minor: u32) -> Self {
        Self { major, minor }
    }

    /// The oldest server kubectl-zdt supports.
    pub const MINIMUM: Self = Self::new(1, 23);
    /// `securityContext.appArmorProfile` (KEP-24, GA in 1.30).
    pub const APPARMOR_FIELD: Self = Self::new(1, 30);
    /// `lifecycle.preStop.sleep` (KEP-3960, beta and on by default in 1.30).
    pub const PRESTOP_SLEEP: Self = Self::new(1, 30);

    pub fn is_supported(self) -> bool {
        self >= Self::MINIMUM
    }

    pub fn has_apparmor_field(self) -> bool {
        self >= Self::APPARMOR_FIELD
    }

    /// How a preStop delay is written for this server.
    pub fn prestop_action(self) -> PreStopAction {
        if self >= Self::PRESTOP_SLEEP {
            PreStopAction::Sleep
        } else {
            PreStopAction::ExecSleep
        }
    }

    /// From `GET /version`: `gitVersion` when it parses, else `major`/`minor` (which managed
    /// clusters report as e.g. `"28+"`).
    pub fn from_version_info(git_version: &str, major: &str, minor: &str) -> Option<Self> {
        git_version.parse().ok().or_else(|| {
            Some(Self::new(
                leading_number(major.trim())?,
                leading_number(minor.trim())?,
            ))
        })
    }
}

fn leading_number(s: &str) -> Option<u32> {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    s[..end].parse().ok()
}

/// `v1.28.4`, `v1.23.17-eks-abc`, `1.30`, `v1.29.1+k3s1`, `1.28+` (GKE/EKS minors).
impl FromStr for KubeVersion {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let t = t.strip_prefix(['v', 'V']).unwrap_or(t);
        let mut parts = t.splitn(3, '.');
        let major = parts.next().and_then(leading_number);
        let minor = parts.next().and_then(leading_number);
        match (major, minor) {
            (Some(major), Some(minor)) => Ok(Self::new(major, minor)),
            _ => Err(format!(
                "{s:?} is not a Kubernetes version like v1.28 or 1.30.2"
            )),
        }
    }
}

impl fmt::Display for KubeVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}.{}", self.major, self.minor)
    }
}

/// The form of a preStop delay that a server accepts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PreStopAction {
    /// `lifecycle.preStop.sleep.seconds` (servers ≥ 1.30; needs nothing in the image).
    #[default]
    Sleep,
    /// `lifecycle.preStop.exec.command: ["sleep", "N"]`: older servers; the image needs a
    /// `sleep` binary.
    ExecSleep,
}

impl PreStopAction {
    /// The handler (the value of `lifecycle.preStop`) for a delay of `seconds`.
    pub fn handler(self, seconds: u64) -> serde_json::Value {
        match self {
            Self::Sleep => serde_json::json!({"sleep": {"seconds": seconds}}),
            Self::ExecSleep => {
                serde_json::json!({"exec": {"command": ["sleep", seconds.to_string()]}})
            }
        }
    }

    /// `preStop sleep 5 s`, `preStop exec sleep 5 s` (in advice lines).
    pub fn describe(self, seconds: u64) -> String {
        match self {
            Self::Sleep => format!("preStop sleep {seconds} s"),
            Self::ExecSleep => format!("preStop exec `sleep {seconds}`"),
        }
    }

    /// What the user must know about this form, if anything.
    pub fn caveat(self) -> Option<&'static str> {
        match self {
            Self::Sleep => None,
            Self::ExecSleep => Some(
                "the server predates preStop.sleep (Kubernetes 1.30): the hook execs `sleep`, so the image needs a sleep binary",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_read_as_servers_and_vendors_report_them() {
        for (text, want) in [
            ("v1.28.4", (1, 28)),
            ("v1.23.17-eks-abc", (1, 23)),
            ("1.30", (1, 30)),
            ("v1.29.1+k3s1", (1, 29)),
            ("v1.31.2-gke.1000", (1, 31)),
            ("1.28+", (1, 28)),
        ] {
            assert_eq!(
                text.parse::<KubeVersion>(),
                Ok(KubeVersion::new(want.0, want.1)),
                "{text}"
            );
        }
        assert!("latest".parse::<KubeVersion>().is_err());
        assert!("v1".parse::<KubeVersion>().is_err());
    }

    #[test]
    fn version_info_falls_back_to_major_and_minor_with_a_plus() {
        assert_eq!(
            KubeVersion::from_version_info("", "1", "28+"),
            Some(KubeVersion::new(1, 28))
        );
        assert_eq!(
            KubeVersion::from_version_info("v1.23.17-eks-abc", "1", "23+"),
            Some(KubeVersion::new(1, 23))
        );
        assert_eq!(KubeVersion::from_version_info("", "", ""), None);
    }

    #[test]
    fn fields_of_1_30_are_used_from_1_30_on() {
        assert!(!KubeVersion::new(1, 29).has_apparmor_field());
        assert!(KubeVersion::new(1, 30).has_apparmor_field());
        assert_eq!(
            KubeVersion::new(1, 28).prestop_action(),
            PreStopAction::ExecSleep
        );
        assert_eq!(
            KubeVersion::new(1, 31).prestop_action(),
            PreStopAction::Sleep
        );
        assert!(!KubeVersion::new(1, 22).is_supported());
        assert!(KubeVersion::new(1, 23).is_supported());
        assert!(KubeVersion::new(2, 0).is_supported());
    }
}
