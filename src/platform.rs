//! Platforms (`os/arch[/variant]`) and choosing one image from a multi-arch index.
//!
//! Matching follows what containerd and docker do: architecture aliases are
//! normalised (`x86_64` → `amd64`, `aarch64` → `arm64`), and a missing variant
//! on one side matches the architecture's default variant on the other
//! (`arm64` ≡ `arm64/v8`, `arm` ≡ `arm/v7`, `amd64` ≡ `amd64/v1`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Errors about platforms.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlatformError {
    /// `--platform` did not parse.
    #[error("invalid platform {0:?}: expected OS/ARCH[/VARIANT], e.g. linux/amd64 or linux/arm/v7")]
    Malformed(String),
}

/// An OS / architecture / variant triple.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// Operating system, e.g. `linux`.
    pub os: String,
    /// Architecture in OCI/Go spelling, e.g. `amd64`, `arm64`.
    pub architecture: String,
    /// CPU variant, e.g. `v7` for `arm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// A platform from its parts, with the architecture normalised.
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Platform {
        Platform {
            os: os.to_ascii_lowercase(),
            architecture: normalize_arch(architecture).to_string(),
            variant: variant.filter(|v| !v.is_empty()).map(str::to_string),
        }
    }

    /// The platform of the machine ocidisk runs on.
    pub fn host() -> Platform {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
            "mips64" if cfg!(target_endian = "little") => "mips64le",
            other => other,
        };
        let variant = if arch == "arm" { Some("v7") } else { None };
        Platform::new(std::env::consts::OS, arch, variant)
    }

    /// Whether an image for `candidate` serves a request for `self`.
    pub fn matches(&self, candidate: &Platform) -> bool {
        if self.os != candidate.os
            || normalize_arch(&self.architecture) != normalize_arch(&candidate.architecture)
        {
            return false;
        }
        let default = default_variant(&self.architecture);
        let want = self.variant.as_deref().or(default);
        let have = candidate.variant.as_deref().or(default);
        want == have
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl FromStr for Platform {
    type Err = PlatformError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok_part = |p: &str| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        };
        match parts.as_slice() {
            [os, arch] if ok_part(os) && ok_part(arch) => Ok(Platform::new(os, arch, None)),
            [os, arch, variant] if ok_part(os) && ok_part(arch) && ok_part(variant) => {
                Ok(Platform::new(os, arch, Some(variant)))
            }
            _ => Err(PlatformError::Malformed(s.to_string())),
        }
    }
}

fn normalize_arch(arch: &str) -> &str {
    match arch {
        "x86_64" | "x86-64" => "amd64",
        "aarch64" => "arm64",
        "i386" | "i686" => "386",
        "armhf" => "arm",
        other => other,
    }
}

fn default_variant(arch: &str) -> Option<&'static str> {
    match normalize_arch(arch) {
        "arm64" => Some("v8"),
        "arm" => Some("v7"),
        "amd64" => Some("v1"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_displays() {
        let p: Platform = "linux/arm/v7".parse().unwrap();
        assert_eq!(p.variant.as_deref(), Some("v7"));
        assert_eq!(p.to_string(), "linux/arm/v7");
        assert_eq!(
            "linux/x86_64".parse::<Platform>().unwrap().to_string(),
            "linux/amd64"
        );
        for bad in ["linux", "linux/", "/amd64", "a/b/c/d", "linux/am d64", ""] {
            assert!(bad.parse::<Platform>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn default_variants_match_missing_ones() {
        let arm64: Platform = "linux/arm64".parse().unwrap();
        let arm64v8: Platform = "linux/arm64/v8".parse().unwrap();
        assert!(arm64.matches(&arm64v8) && arm64v8.matches(&arm64));
        let armv7: Platform = "linux/arm/v7".parse().unwrap();
        let armv6: Platform = "linux/arm/v6".parse().unwrap();
        let arm: Platform = "linux/arm".parse().unwrap();
        assert!(arm.matches(&armv7));
        assert!(!armv7.matches(&armv6));
        assert!(!arm64.matches(&"linux/amd64".parse().unwrap()));
        assert!(!arm64.matches(&"windows/arm64".parse().unwrap()));
    }

    #[test]
    fn host_is_well_formed() {
        let h = Platform::host();
        assert_eq!(h.to_string().parse::<Platform>().unwrap(), h);
    }
}
