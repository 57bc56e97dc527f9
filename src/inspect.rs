//! `inspect`: what an image is, without fetching its layers.
//!
//! Resolves the reference (index, platform, manifest, config), and reports
//! the digests, platforms, runtime config and layers, as text for people or
//! JSON for scripts.

use std::fmt::Write as _;

use serde::Serialize;

use crate::cache::BlobCache;
use crate::digest::Digest;
use crate::platform::Platform;
use crate::pull::PullOptions;
use crate::source::manifest::{Compression, RuntimeConfig};
use crate::source::{ResolvedImage, Source, SourceError, resolve};

/// An image described for `ocidisk inspect`.
#[derive(Debug, Clone, Serialize)]
pub struct ImageInfo {
    /// The reference as resolved.
    pub reference: String,
    /// The image manifest's digest (absent for docker archives).
    pub digest: Option<Digest>,
    /// The index digest, when the reference named an index.
    pub index_digest: Option<Digest>,
    /// The platforms the index offers.
    pub platforms: Vec<Platform>,
    /// The platform chosen (from the image config).
    pub platform: Platform,
    /// The config digest (the image ID docker shows).
    pub config_digest: Digest,
    /// When the image was built, as its config says.
    pub created: Option<String>,
    /// Entrypoint, cmd, env, user, working dir, labels.
    pub config: RuntimeConfig,
    /// The layers, bottom first.
    pub layers: Vec<LayerInfo>,
    /// Compressed size of all layers.
    pub layers_size: u64,
}

/// One layer for `inspect`.
#[derive(Debug, Clone, Serialize)]
pub struct LayerInfo {
    /// Blob digest.
    pub digest: Digest,
    /// Media type.
    pub media_type: String,
    /// Compression.
    pub compression: Compression,
    /// Compressed size.
    pub size: u64,
    /// Uncompressed digest.
    pub diff_id: Digest,
}

impl From<&ResolvedImage> for ImageInfo {
    fn from(img: &ResolvedImage) -> Self {
        ImageInfo {
            reference: img.location.clone(),
            digest: img.manifest_digest.clone(),
            index_digest: img.index.as_ref().map(|(d, _)| d.clone()),
            platforms: img
                .index
                .as_ref()
                .map(|(_, i)| i.platforms())
                .unwrap_or_else(|| vec![img.platform.clone()]),
            platform: img.platform.clone(),
            config_digest: img.manifest.config.digest.clone(),
            created: img.config.created.clone(),
            config: img.config.config.clone().unwrap_or_default(),
            layers: img
                .layers
                .iter()
                .map(|l| LayerInfo {
                    digest: l.descriptor.digest.clone(),
                    media_type: l.descriptor.media_type.clone(),
                    compression: l.compression,
                    size: l.descriptor.size,
                    diff_id: l.diff_id.clone(),
                })
                .collect(),
            layers_size: img.layers_size(),
        }
    }
}

/// Resolve an image and describe it. Fetches manifests and config only.
pub async fn inspect(opts: &PullOptions, cache: &BlobCache) -> Result<ImageInfo, SourceError> {
    let source = Source::open(&opts.location, &opts.source).await?;
    // Like skopeo inspect: reading metadata is not using the image, so no
    // trust policy applies.
    let img = resolve(&source, &opts.location, cache, opts.platform.as_ref(), None).await?;
    Ok(ImageInfo::from(&img))
}

/// `1536` → `1.5 KiB`.
pub fn human_size(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

impl ImageInfo {
    /// The human-readable report.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let list = |v: &Option<Vec<String>>| match v {
            Some(v) => serde_json::to_string(v).unwrap_or_default(),
            None => "-".into(),
        };
        let _ = writeln!(s, "Reference:   {}", self.reference);
        if let Some(d) = &self.digest {
            let _ = writeln!(s, "Digest:      {d}");
        }
        if let Some(d) = &self.index_digest {
            let _ = writeln!(s, "Index:       {d}");
        }
        let platforms: Vec<String> = self.platforms.iter().map(|p| p.to_string()).collect();
        let _ = writeln!(s, "Platform:    {}", self.platform);
        if self.index_digest.is_some() {
            let _ = writeln!(s, "Platforms:   {}", platforms.join(", "));
        }
        let _ = writeln!(s, "Config:      {}", self.config_digest);
        if let Some(c) = &self.created {
            let _ = writeln!(s, "Created:     {c}");
        }
        let c = &self.config;
        let _ = writeln!(s, "Entrypoint:  {}", list(&c.entrypoint));
        let _ = writeln!(s, "Cmd:         {}", list(&c.cmd));
        let _ = writeln!(
            s,
            "User:        {}",
            c.user.as_deref().filter(|u| !u.is_empty()).unwrap_or("-")
        );
        let _ = writeln!(
            s,
            "WorkingDir:  {}",
            c.working_dir
                .as_deref()
                .filter(|u| !u.is_empty())
                .unwrap_or("-")
        );
        match &c.env {
            Some(env) if !env.is_empty() => {
                let _ = writeln!(s, "Env:");
                for e in env {
                    let _ = writeln!(s, "  {e}");
                }
            }
            _ => {
                let _ = writeln!(s, "Env:         -");
            }
        }
        let _ = writeln!(
            s,
            "Layers:      {} ({} compressed)",
            self.layers.len(),
            human_size(self.layers_size)
        );
        for l in &self.layers {
            let _ = writeln!(
                s,
                "  {}  {:>10}  {}",
                l.digest,
                human_size(l.size),
                l.media_type
            );
        }
        let _ = writeln!(
            s,
            "Boot (--init): {} (add ro for a --read-only disk; NAME=VALUE words set env, -- ARGS replace Cmd)",
            crate::init_layer::BOOT_ARGS
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(48_700_000), "46.4 MiB");
    }
}
