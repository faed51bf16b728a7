//! The dataplanes kube-proxy programs, how to read each one, and which one a node uses.
//!
//! One `Source` is one mode in one address family: kube-proxy programs IPv4 and IPv6 separately
//! (`iptables`/`ip6tables`, tables `ip kube-proxy`/`ip6 kube-proxy`).

use std::{fmt, process::Command};

use thiserror::Error;

use super::{iptables, model::Backends, nft};

/// kube-proxy's proxy mode as programmed in this kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mode {
    /// `--proxy-mode=iptables` with the nf_tables backend of iptables (`iptables-nft`, the
    /// default of current distributions): the rules live in nf_tables table `nat`.
    IptablesNft,
    /// `--proxy-mode=iptables` with the legacy x_tables backend (`iptables-legacy`).
    IptablesLegacy,
    /// `--proxy-mode=nftables`: table `kube-proxy`.
    Nftables,
    /// `--proxy-mode=ipvs`: IPVS virtual and real servers.
    Ipvs,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::IptablesNft => "iptables-nft",
            Self::IptablesLegacy => "iptables-legacy",
            Self::Nftables => "nftables",
            Self::Ipvs => "ipvs",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// NFPROTO_IPV4 / NFPROTO_IPV6, the family byte of nf_tables netlink messages.
    pub fn nfproto(self) -> u8 {
        match self {
            Self::V4 => 2,
            Self::V6 => 10,
        }
    }
}

/// One dataplane to read: a mode in one address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Source {
    pub mode: Mode,
    pub family: Family,
}

#[derive(Debug, Error)]
pub enum ReadError {
    #[error("failed to run {program} (install iptables/nftables; `./x setup` does): {source}")]
    Spawn {
        program: &'static str,
        source: std::io::Error,
    },
    #[error("`{program}` failed: {stderr}")]
    Failed {
        program: &'static str,
        stderr: String,
    },
    #[error("{program} printed something kube-proxy's parser cannot read: {message}")]
    Parse {
        program: &'static str,
        message: String,
    },
    #[error("{0} is not read by this agent yet")]
    Unsupported(Mode),
}

/// Every source that nf_tables notifications can trigger.
pub const NF_TABLES_SOURCES: [Source; 4] = [
    Source {
        mode: Mode::IptablesNft,
        family: Family::V4,
    },
    Source {
        mode: Mode::IptablesNft,
        family: Family::V6,
    },
    Source {
        mode: Mode::Nftables,
        family: Family::V4,
    },
    Source {
        mode: Mode::Nftables,
        family: Family::V6,
    },
];

impl Source {
    /// The nf_tables table whose changes can change this source's routes.
    pub fn nf_table(self) -> Option<(u8, &'static str)> {
        match self.mode {
            Mode::IptablesNft => Some((self.family.nfproto(), "nat")),
            Mode::Nftables => Some((self.family.nfproto(), "kube-proxy")),
            Mode::IptablesLegacy | Mode::Ipvs => None,
        }
    }

    fn program(self) -> &'static str {
        match (self.mode, self.family) {
            (Mode::IptablesNft, Family::V4) => "iptables-nft-save",
            (Mode::IptablesNft, Family::V6) => "ip6tables-nft-save",
            (Mode::IptablesLegacy, Family::V4) => "iptables-legacy-save",
            (Mode::IptablesLegacy, Family::V6) => "ip6tables-legacy-save",
            (Mode::Nftables, _) => "nft",
            (Mode::Ipvs, _) => "ipvs",
        }
    }

    /// Reads the routes this dataplane holds now: one dump, then the mode's parser. An absent
    /// table is an empty dataplane.
    pub fn read(self) -> Result<Backends, ReadError> {
        let program = self.program();
        let parse_err = |message: String| ReadError::Parse { program, message };
        match self.mode {
            Mode::IptablesNft | Mode::IptablesLegacy => {
                let text = run(program, &["-t", "nat"])?;
                iptables::parse(&text).map_err(|e| parse_err(e.to_string()))
            }
            Mode::Nftables => {
                let family = self.nft_family();
                match run(program, &["-j", "list", "table", family, "kube-proxy"]) {
                    Ok(json) => nft::parse(&json).map_err(|e| parse_err(e.to_string())),
                    Err(e) if !self.nft_table_exists()? => {
                        tracing::trace!("no table {family} kube-proxy: {e}");
                        Ok(Backends::new())
                    }
                    Err(e) => Err(e),
                }
            }
            Mode::Ipvs => Err(ReadError::Unsupported(Mode::Ipvs)),
        }
    }

    fn nft_family(self) -> &'static str {
        match self.family {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }

    fn nft_table_exists(self) -> Result<bool, ReadError> {
        let tables = run("nft", &["list", "tables", self.nft_family()])?;
        Ok(tables.lines().any(|l| l.trim().ends_with(" kube-proxy")))
    }
}

fn run(program: &'static str, args: &[&str]) -> Result<String, ReadError> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|source| ReadError::Spawn { program, source })?;
    if !out.status.success() {
        return Err(ReadError::Failed {
            program,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    String::from_utf8(out.stdout).map_err(|e| ReadError::Parse {
        program,
        message: e.to_string(),
    })
}
