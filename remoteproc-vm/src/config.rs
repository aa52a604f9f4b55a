//! Remotes described in TOML:
//!
//! ```toml
//! [[remote]]
//! name = "echo"            # letters, digits, '.', '_', '-'; unique
//! image = "echo"           # a built-in image name, or a path to an ELF (has a '/' or a '.')
//! backend = "kvm"          # "kvm" (default) or "sysfs"
//! memory = "16M"           # kvm only: bytes (integer) or "16M"/"16MiB"/"1G"/"0x1000000";
//!                          #   a multiple of 2 MiB, at most 1 GiB; default 16 MiB
//! recovery = "restart"     # "restart" (default) or "none"
//! max_restarts = 3         # kvm only, with recovery = "restart"; default 3
//! ring = "split"           # kvm only: "split" (default) or "packed" virtqueues, asked of the
//!                          #   firmware through the vamp platform entry (an older firmware
//!                          #   that cannot run packed rings gets split ones)
//!
//! [[remote]]
//! name = "r5-0"
//! image = "/srv/fw/r5_echo.elf"
//! backend = "sysfs"
//! sysfs_path = "/sys/class/remoteproc/remoteproc0"   # sysfs only, required
//! recovery = "none"        # sysfs: the kernel's `recovery` (enabled/disabled), set at start
//! ```
//!
//! Relative image paths are taken from the current directory. Unknown keys are refused.

use crate::image::ImageSource;
use serde::Deserialize;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use vamp_rpmsg::transport::RingFormat;

/// Memory of a KVM remote when the config does not say.
pub const DEFAULT_KVM_MEMORY: u64 = 16 << 20;
/// KVM memory comes in multiples of this.
pub const KVM_MEMORY_GRANULE: u64 = 2 << 20;
/// Most memory of a KVM remote.
pub const MAX_KVM_MEMORY: u64 = 1 << 30;
/// Restarts allowed when the config does not say.
pub const DEFAULT_MAX_RESTARTS: u32 = 3;

/// Why a config could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not valid TOML, or a key of the wrong type or unknown.
    #[error("{0}")]
    Toml(#[from] toml::de::Error),
    /// A value is not allowed.
    #[error("remote {remote}: {field}: {why}")]
    Invalid {
        /// The remote's name (or `#N` if it has none).
        remote: String,
        /// The key.
        field: &'static str,
        /// Why.
        why: String,
    },
    /// Two remotes share a name.
    #[error("two remotes are called {0:?}")]
    Duplicate(String),
    /// No `[[remote]]`.
    #[error("no [[remote]] in the config")]
    Empty,
    /// A built-in image that does not exist.
    #[error("remote {remote}: no built-in image called {image:?}")]
    UnknownImage {
        /// The remote.
        remote: String,
        /// The image name.
        image: String,
    },
}

/// Where a remote's image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ImageRef {
    /// An ELF file.
    Path(PathBuf),
    /// An image built into the program (`crate::images`).
    Builtin(String),
}

impl std::fmt::Display for ImageRef {
    /// The path, or the built-in image's name, as a config would say it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageRef::Path(p) => write!(f, "{}", p.display()),
            ImageRef::Builtin(name) => f.write_str(name),
        }
    }
}

impl ImageRef {
    /// Reads a config value: a path if it holds a `/` or a `.`, else a built-in image name.
    pub fn parse(s: &str) -> ImageRef {
        if s.contains('/') || s.contains('.') {
            ImageRef::Path(PathBuf::from(s))
        } else {
            ImageRef::Builtin(s.to_string())
        }
    }

    /// The image to load; `builtin` looks up built-in images by name.
    pub fn source(
        &self,
        remote: &str,
        builtin: impl Fn(&str) -> Option<&'static [u8]>,
    ) -> Result<ImageSource, ConfigError> {
        match self {
            ImageRef::Path(p) => Ok(ImageSource::File(p.clone())),
            ImageRef::Builtin(name) => {
                builtin(name)
                    .map(ImageSource::Static)
                    .ok_or_else(|| ConfigError::UnknownImage {
                        remote: remote.to_string(),
                        image: name.clone(),
                    })
            }
        }
    }
}

/// What runs a remote.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackendSpec {
    /// A KVM micro-VM with this much memory.
    Kvm {
        /// Bytes of RAM.
        memory: u64,
        /// The virtqueue format asked of its firmware.
        ring: RingFormat,
    },
    /// A physical core behind Linux's remoteproc sysfs.
    Sysfs {
        /// Its sysfs directory (`/sys/class/remoteproc/remoteprocN`).
        path: PathBuf,
    },
}

/// What to do when a remote crashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Recovery {
    /// Leave it crashed.
    None,
    /// Stop, reload and start it, at most `max_restarts` times.
    Restart {
        /// Most restarts.
        max_restarts: u32,
    },
}

impl Recovery {
    /// The restarts after a crash this policy allows (0 for [`Recovery::None`]).
    pub fn max_restarts(self) -> u32 {
        match self {
            Recovery::None => 0,
            Recovery::Restart { max_restarts } => max_restarts,
        }
    }
}

/// One `[[remote]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteSpec {
    /// Name.
    pub name: String,
    /// Image.
    pub image: ImageRef,
    /// Backend.
    pub backend: BackendSpec,
    /// Crash policy.
    pub recovery: Recovery,
}

/// A whole config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemotesConfig {
    /// The remotes, in file order.
    pub remotes: Vec<RemoteSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    remote: Vec<RawRemote>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawSize {
    Bytes(i64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRemote {
    name: Option<String>,
    image: Option<String>,
    backend: Option<String>,
    sysfs_path: Option<PathBuf>,
    memory: Option<RawSize>,
    recovery: Option<String>,
    max_restarts: Option<u32>,
    ring: Option<String>,
}

/// Reads a size: bytes, hex (`0x...`), or a number with `K`/`M`/`G` (`KiB`... too).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        return u64::from_str_radix(&hex.replace('_', ""), 16).ok();
    }
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '_')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let num: u64 = num.replace('_', "").parse().ok()?;
    let shift = match unit.trim() {
        "" | "B" => 0,
        "K" | "KB" | "KiB" | "k" => 10,
        "M" | "MB" | "MiB" => 20,
        "G" | "GB" | "GiB" => 30,
        _ => return None,
    };
    num.checked_mul(1 << shift)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

impl RemoteSpec {
    fn from_raw(raw: RawRemote, position: usize) -> Result<RemoteSpec, ConfigError> {
        let label = raw
            .name
            .clone()
            .unwrap_or_else(|| format!("#{}", position + 1));
        let invalid = |field: &'static str, why: String| ConfigError::Invalid {
            remote: label.clone(),
            field,
            why,
        };
        let name = raw
            .name
            .clone()
            .ok_or_else(|| invalid("name", "missing".into()))?;
        if !valid_name(&name) {
            return Err(invalid(
                "name",
                format!("{name:?} must be 1-64 letters, digits, '.', '_' or '-'"),
            ));
        }
        let image = match raw.image.as_deref().map(str::trim) {
            None => return Err(invalid("image", "missing".into())),
            Some("") => return Err(invalid("image", "empty".into())),
            Some(s) => ImageRef::parse(s),
        };
        let backend = match raw.backend.as_deref().unwrap_or("kvm") {
            "kvm" => {
                if raw.sysfs_path.is_some() {
                    return Err(invalid("sysfs_path", "only for backend = \"sysfs\"".into()));
                }
                let memory = match &raw.memory {
                    None => DEFAULT_KVM_MEMORY,
                    Some(RawSize::Bytes(b)) => u64::try_from(*b)
                        .map_err(|_| invalid("memory", format!("{b} is negative")))?,
                    Some(RawSize::Text(t)) => parse_size(t).ok_or_else(|| {
                        invalid(
                            "memory",
                            format!("{t:?} is not a size (bytes, 0x..., 16M, 1G)"),
                        )
                    })?,
                };
                if memory == 0 || memory % KVM_MEMORY_GRANULE != 0 || memory > MAX_KVM_MEMORY {
                    return Err(invalid(
                        "memory",
                        format!(
                            "{memory:#x} bytes: a KVM remote needs a multiple of 2 MiB, at most 1 GiB"
                        ),
                    ));
                }
                let ring = match raw.ring.as_deref() {
                    None => RingFormat::Split,
                    Some(name) => RingFormat::from_name(name).ok_or_else(|| {
                        invalid(
                            "ring",
                            format!("{name:?} is neither \"split\" nor \"packed\""),
                        )
                    })?,
                };
                BackendSpec::Kvm { memory, ring }
            }
            "sysfs" => {
                if raw.ring.is_some() {
                    return Err(invalid(
                        "ring",
                        "only for backend = \"kvm\" (the kernel's driver picks a core's rings)"
                            .into(),
                    ));
                }
                if raw.memory.is_some() {
                    return Err(invalid(
                        "memory",
                        "only for backend = \"kvm\" (a physical core has its own)".into(),
                    ));
                }
                let path = raw
                    .sysfs_path
                    .clone()
                    .filter(|p| !p.as_os_str().is_empty())
                    .ok_or_else(|| {
                        invalid(
                            "sysfs_path",
                            "required for backend = \"sysfs\" (e.g. /sys/class/remoteproc/remoteproc0)"
                                .into(),
                        )
                    })?;
                if let ImageRef::Builtin(b) = &image {
                    return Err(invalid(
                        "image",
                        format!(
                            "{b:?} is a built-in KVM image; a sysfs remote needs an ELF file path"
                        ),
                    ));
                }
                BackendSpec::Sysfs { path }
            }
            other => {
                return Err(invalid(
                    "backend",
                    format!("{other:?} is neither \"kvm\" nor \"sysfs\""),
                ));
            }
        };
        let recovery = match raw.recovery.as_deref().unwrap_or("restart") {
            "restart" => Recovery::Restart {
                max_restarts: raw.max_restarts.unwrap_or(DEFAULT_MAX_RESTARTS),
            },
            "none" => {
                if raw.max_restarts.is_some_and(|m| m > 0) {
                    return Err(invalid(
                        "max_restarts",
                        "needs recovery = \"restart\"".into(),
                    ));
                }
                Recovery::None
            }
            other => {
                return Err(invalid(
                    "recovery",
                    format!("{other:?} is neither \"restart\" nor \"none\""),
                ));
            }
        };
        // The kernel recovers a core behind sysfs as often as it crashes: a limit would be a
        // promise nothing keeps.
        if matches!(backend, BackendSpec::Sysfs { .. }) && raw.max_restarts.is_some() {
            return Err(invalid(
                "max_restarts",
                "not for backend = \"sysfs\" (the kernel restarts a core without limit)".into(),
            ));
        }
        Ok(RemoteSpec {
            name,
            image,
            backend,
            recovery,
        })
    }
}

/// A `[[remote]]` table inside another file (the hub's topology reads them this way): the
/// same keys and checks as in a remotes file.
impl<'de> Deserialize<'de> for RemoteSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = RawRemote::deserialize(d)?;
        RemoteSpec::from_raw(raw, 0).map_err(serde::de::Error::custom)
    }
}

impl RemotesConfig {
    /// Parses and validates a config.
    ///
    /// ```
    /// use vamp_remoteproc::config::{BackendSpec, ImageRef, Recovery, RemotesConfig};
    ///
    /// let config = RemotesConfig::parse(
    ///     r#"
    ///     [[remote]]
    ///     name = "echo"
    ///     image = "echo"          # a built-in image
    ///     memory = "16M"
    ///     [[remote]]
    ///     name = "r5-0"
    ///     image = "/lib/firmware/r5-echo.elf"
    ///     backend = "sysfs"
    ///     sysfs_path = "/sys/class/remoteproc/remoteproc0"
    ///     recovery = "none"
    ///     "#,
    /// )?;
    /// assert_eq!(config.remotes[0].image, ImageRef::Builtin("echo".into()));
    /// assert!(matches!(config.remotes[0].backend, BackendSpec::Kvm { memory: 0x100_0000, .. }));
    /// assert!(matches!(config.remotes[1].backend, BackendSpec::Sysfs { .. }));
    /// assert_eq!(config.remotes[1].recovery, Recovery::None);
    /// // What is wrong is named, not guessed at.
    /// let bad = RemotesConfig::parse("[[remote]]\nname = \"x\"\nimage = \"echo\"\nmemory = \"3M\"\n");
    /// assert!(bad.unwrap_err().to_string().contains("memory"));
    /// # Ok::<(), vamp_remoteproc::config::ConfigError>(())
    /// ```
    pub fn parse(text: &str) -> Result<RemotesConfig, ConfigError> {
        let raw: RawConfig = toml::from_str(text)?;
        if raw.remote.is_empty() {
            return Err(ConfigError::Empty);
        }
        let mut names = HashSet::new();
        let mut remotes = Vec::new();
        for (i, r) in raw.remote.into_iter().enumerate() {
            let spec = RemoteSpec::from_raw(r, i)?;
            if !names.insert(spec.name.clone()) {
                return Err(ConfigError::Duplicate(spec.name));
            }
            remotes.push(spec);
        }
        Ok(RemotesConfig { remotes })
    }

    /// Reads, parses and validates a config file.
    pub fn load(path: impl AsRef<Path>) -> Result<RemotesConfig, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text)
    }

    /// The remote called `name`.
    pub fn remote(&self, name: &str) -> Option<&RemoteSpec> {
        self.remotes.iter().find(|r| r.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        RemotesConfig::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn defaults_apply() {
        let c = RemotesConfig::parse("[[remote]]\nname = \"a\"\nimage = \"echo\"\n").unwrap();
        assert_eq!(
            c.remotes,
            vec![RemoteSpec {
                name: "a".into(),
                image: ImageRef::Builtin("echo".into()),
                backend: BackendSpec::Kvm {
                    ring: RingFormat::Split,
                    memory: DEFAULT_KVM_MEMORY
                },
                recovery: Recovery::Restart { max_restarts: 3 },
            }]
        );
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("16M"), Some(16 << 20));
        assert_eq!(parse_size("16MiB"), Some(16 << 20));
        assert_eq!(parse_size("1G"), Some(1 << 30));
        assert_eq!(parse_size("0x200000"), Some(2 << 20));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("12Q"), None);
        assert_eq!(parse_size("99999999999999999999G"), None);
    }

    #[test]
    fn bad_configs_say_what_is_wrong() {
        let cases = [
            ("", "no [[remote]]"),
            ("[[remote]]\nimage = \"echo\"\n", "#1: name: missing"),
            ("[[remote]]\nname = \"a b\"\nimage = \"echo\"\n", "name"),
            ("[[remote]]\nname = \"a\"\n", "a: image: missing"),
            ("[[remote]]\nname = \"a\"\nimage = \"\"\n", "image: empty"),
            (
                "[[remote]]\nname = \"a\"\nimage = \"echo\"\nbackend = \"xen\"\n",
                "backend: \"xen\"",
            ),
            (
                "[[remote]]\nname = \"a\"\nimage = \"echo\"\nmemory = 1000\n",
                "multiple of 2 MiB",
            ),
            (
                "[[remote]]\nname = \"a\"\nimage = \"echo\"\nmemory = \"2T\"\n",
                "not a size",
            ),
            (
                "[[remote]]\nname = \"a\"\nimage = \"echo\"\nmemory = -2\n",
                "negative",
            ),
            (
                "[[remote]]\nname = \"a\"\nimage = \"echo\"\nmemory = \"2G\"\n",
                "at most 1 GiB",
            ),
            (
                "[[remote]]\nname = \"a\"\nimage = \"echo\"\nsysfs_path = \"/x\"\n",
                "sysfs_path: only for",
            ),
            (
                "[[remote]]\nname = \"a\"\nimage = \"a.elf\"\nbackend = \"sysfs\"\n",
                "sysfs_path: required",
            ),
            (
                "[[remote]]\nname = \"a\"\nimage = \"echo\"\nbackend = \"sysfs\"\nsysfs_path = \"/x\"\n",
                "needs an ELF file path",
            ),
            (
                "[[remote]]\nname = \"a\"\nimage = \"a.elf\"\nbackend = \"sysfs\"\nsysfs_path = \"/x\"\nmemory = 4096\n",
                "memory: only for",
            ),
            (
                "[[remote]]\nname = \"a\"\nimage = \"a.elf\"\nbackend = \"sysfs\"\nsysfs_path = \"/x\"\nmax_restarts = 2\n",
                "max_restarts: not for backend = \"sysfs\"",
            ),
            (
                "[[remote]]\nname = \"a\"\nimage = \"echo\"\nrecovery = \"sometimes\"\n",
                "recovery: \"sometimes\"",
            ),
            (
                "[[remote]]\nname = \"a\"\nimage = \"echo\"\nrecovery = \"none\"\nmax_restarts = 2\n",
                "max_restarts: needs",
            ),
            (
                "[[remote]]\nname = \"a\"\nimage = \"echo\"\nmax_restarts = -1\n",
                "max_restarts",
            ),
            (
                "[[remote]]\nname = \"a\"\nimage = \"echo\"\ncolour = 1\n",
                "unknown field",
            ),
            (
                "[[remote]]\nname = \"a\"\nimage = \"echo\"\n[[remote]]\nname = \"a\"\nimage = \"x.elf\"\n",
                "two remotes are called \"a\"",
            ),
        ];
        for (text, want) in cases {
            let e = err(text);
            assert!(e.contains(want), "{text:?}: {e:?} lacks {want:?}");
        }
    }

    #[test]
    fn images_resolve() {
        assert_eq!(ImageRef::parse("echo"), ImageRef::Builtin("echo".into()));
        assert_eq!(ImageRef::parse("fw.elf"), ImageRef::Path("fw.elf".into()));
        assert_eq!(ImageRef::parse("out/fw"), ImageRef::Path("out/fw".into()));
        let lookup = |n: &str| (n == "echo").then_some(&b"\x7fELF"[..]);
        assert!(matches!(
            ImageRef::Builtin("echo".into()).source("r", lookup),
            Ok(ImageSource::Static(_))
        ));
        let e = ImageRef::Builtin("nope".into())
            .source("r", lookup)
            .unwrap_err();
        assert_eq!(e.to_string(), "remote r: no built-in image called \"nope\"");
    }
}
