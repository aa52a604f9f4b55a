//! The hub's topology: guests and their sockets, host services, and channels (whose
//! announced names are offered to whom). Read from TOML:
//!
//! ```toml
//! # The status socket (`vhost-user-rpmsg status`); `--control-socket` overrides it.
//! control_socket = "/tmp/vamp-hub.ctl"
//!
//! [[guest]]
//! name = "alice"
//! socket = "/tmp/vamp-alice.sock"
//!
//! [[guest]]
//! name = "bob"
//! socket = "/tmp/vamp-bob.sock"
//! poll = true                   # the hub polls bob's rings, his kicks off (see --poll)
//! poll_quiet_ms = 20            # back to kicks after 20 ms without traffic (default 100)
//!
//! # A host echo service announced to both guests.
//! [[service]]
//! type = "echo"
//! name = "rpmsg-client-sample"
//! guests = ["alice", "bob"]     # omitted: every guest
//!
//! # Names alice announces are offered to bob.
//! [[channel]]
//! from = "alice"
//! to = ["bob"]
//! names = ["rpmsg-raw"]         # omitted: any name
//!
//! # An R5 behind the kernel's remoteproc (dom0): its channels offered to alice only.
//! [[remote]]
//! name = "r5-0"
//! image = "/srv/firmware/vamp-r5-echo.elf"
//! backend = "sysfs"
//! sysfs_path = "/sys/class/remoteproc/remoteproc0"
//! recovery = "restart"
//!
//! [[channel]]
//! from = "r5-0"
//! to = ["alice"]
//! names = ["rpmsg-client-sample"]
//! ```

use crate::vhost_user::poll::{DEFAULT_QUIET, MAX_QUIET_MS};
use serde::Deserialize;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What is wrong with a topology.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML does not parse or has unknown keys.
    #[error("parsing {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (with line and column).
        message: String,
    },
    /// The topology is inconsistent.
    #[error("{0}")]
    Invalid(String),
}

/// One guest: a vhost-user socket the hub listens on.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestSpec {
    /// Name used in channels and logs.
    pub name: String,
    /// The vhost-user socket QEMU (or another frontend) connects to.
    pub socket: PathBuf,
    /// The hub polls this guest's rings with its kicks turned off, back to kicks after a
    /// quiet period (crate::vhost_user::poll); `--poll` sets it for every guest.
    #[serde(default)]
    pub poll: bool,
    /// The quiet period of polling, in milliseconds (1 to [`MAX_QUIET_MS`]); unset: the
    /// command line's `--poll-quiet-ms`, else [`DEFAULT_QUIET`].
    #[serde(default)]
    pub poll_quiet_ms: Option<u64>,
}

impl GuestSpec {
    /// A guest on `socket`, not polled.
    pub fn new(name: impl Into<String>, socket: impl Into<PathBuf>) -> Self {
        GuestSpec {
            name: name.into(),
            socket: socket.into(),
            poll: false,
            poll_quiet_ms: None,
        }
    }

    /// The quiet period after which polling this guest backs off to kicks, if it is polled.
    pub fn poll_quiet(&self) -> Option<Duration> {
        self.poll.then(|| {
            self.poll_quiet_ms
                .map_or(DEFAULT_QUIET, Duration::from_millis)
        })
    }
}

/// Checks a polling quiet period (`poll_quiet_ms`, `--poll-quiet-ms`).
pub fn check_quiet_ms(ms: u64) -> Result<(), String> {
    if (1..=MAX_QUIET_MS).contains(&ms) {
        Ok(())
    } else {
        Err(format!(
            "a polling quiet period of {ms} ms: it must be 1 to {MAX_QUIET_MS} ms"
        ))
    }
}

/// What a host service does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum ServiceKind {
    /// Sends every message back to its sender (Linux's rpmsg_client_sample and OpenAMP's echo
    /// demo talk to it). Announced as "rpmsg-raw", it gives guests a /dev/rpmsgN from rpmsg_char.
    Echo,
}

/// A service of the hub itself, announced to guests.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// What it does.
    #[serde(rename = "type")]
    pub kind: ServiceKind,
    /// The name it is announced under (at most 31 bytes).
    pub name: String,
    /// Guests it is announced to; `None` means every guest.
    #[serde(default)]
    pub guests: Option<Vec<String>>,
}

/// Names one guest announces that other guests may see.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelSpec {
    /// The announcing guest.
    pub from: String,
    /// The guests that see its names.
    pub to: Vec<String>,
    /// The names offered; `None` means any.
    #[serde(default)]
    pub names: Option<Vec<String>>,
}

/// A remote the hub starts and drives: a `[[remote]]` table with remoteproc-vm's keys (see
/// configs/remotes.toml). A KVM remote runs in the hub's process; a core behind the kernel's
/// remoteproc (`backend = "sysfs"` with `sysfs_path`, dom0's R5s; see configs/dom0-hub.toml)
/// is started or adopted through sysfs and its channels bridged (crate::remote::bridge).
pub use vamp_remoteproc::config::RemoteSpec;

/// A whole topology.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// Where the hub answers status and metrics requests (crate::control); none if unset.
    #[serde(default)]
    pub control_socket: Option<PathBuf>,
    /// The guests, one socket each.
    #[serde(default, rename = "guest")]
    pub guests: Vec<GuestSpec>,
    /// Remotes the hub starts and drives.
    #[serde(default, rename = "remote")]
    pub remotes: Vec<RemoteSpec>,
    /// Host services.
    #[serde(default, rename = "service")]
    pub services: Vec<ServiceSpec>,
    /// Channels between guests.
    #[serde(default, rename = "channel")]
    pub channels: Vec<ChannelSpec>,
}

impl Topology {
    /// Reads and checks a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })
    }

    /// Parses and checks TOML text.
    ///
    /// ```
    /// use vamp_vmm_backend::config::Topology;
    ///
    /// let topology = Topology::parse(
    ///     r#"
    ///     [[guest]]
    ///     name = "alice"
    ///     socket = "/run/vamp/alice.sock"
    ///     [[guest]]
    ///     name = "bob"
    ///     socket = "/run/vamp/bob.sock"
    ///     [[channel]]
    ///     from = "alice"
    ///     to = ["bob"]
    ///     names = ["sensor-data"]
    ///     "#,
    /// )?;
    /// assert_eq!(topology.link_index("bob"), Some(1));
    /// // alice's "sensor-data" reaches bob; nothing else of hers does, and nothing of his reaches her.
    /// assert!(topology.offers("alice", b"sensor-data", "bob"));
    /// assert!(!topology.offers("alice", b"other", "bob"));
    /// assert!(!topology.offers("bob", b"sensor-data", "alice"));
    /// // A channel to a guest that does not exist is refused when the file is read.
    /// assert!(Topology::parse("[[guest]]\nname = \"a\"\nsocket = \"/s\"\n[[channel]]\nfrom = \"a\"\nto = [\"nobody\"]\n").is_err());
    /// # Ok::<(), vamp_vmm_backend::config::ConfigError>(())
    /// ```
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let topology: Topology = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: e.to_string(),
        })?;
        topology.validate()?;
        Ok(topology)
    }

    /// A topology without a file: guests `guest0..` on `sockets`, every guest seeing every
    /// other guest's names, and `echo` services announced to all.
    pub fn all_to_all(sockets: Vec<PathBuf>, echo: &[String]) -> Result<Self, ConfigError> {
        let guests: Vec<GuestSpec> = sockets
            .into_iter()
            .enumerate()
            .map(|(i, socket)| GuestSpec::new(format!("guest{i}"), socket))
            .collect();
        let channels = guests
            .iter()
            .map(|g| ChannelSpec {
                from: g.name.clone(),
                to: guests
                    .iter()
                    .filter(|o| o.name != g.name)
                    .map(|o| o.name.clone())
                    .collect(),
                names: None,
            })
            .filter(|c| !c.to.is_empty())
            .collect();
        let mut t = Topology {
            control_socket: None,
            guests,
            remotes: Vec::new(),
            services: Vec::new(),
            channels,
        };
        t.add_echo(echo);
        t.validate()?;
        Ok(t)
    }

    /// Polls every guest (`all`: `--poll`), and gives `quiet_ms` (`--poll-quiet-ms`) to
    /// the guests whose entry sets no quiet period of its own.
    pub fn set_polling(&mut self, all: bool, quiet_ms: Option<u64>) {
        for g in &mut self.guests {
            g.poll |= all;
            if g.poll_quiet_ms.is_none() {
                g.poll_quiet_ms = quiet_ms;
            }
        }
    }

    /// Adds echo services announced to every guest.
    pub fn add_echo(&mut self, names: &[String]) {
        for name in names {
            self.services.push(ServiceSpec {
                kind: ServiceKind::Echo,
                name: name.clone(),
                guests: None,
            });
        }
    }

    /// Checks names, references and limits.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.guests.is_empty() && self.remotes.is_empty() {
            return invalid("the topology has no guest and no remote".into());
        }
        let mut names = HashSet::new();
        let mut sockets = HashSet::new();
        for g in &self.guests {
            if g.name.is_empty() {
                return invalid("a guest has an empty name".into());
            }
            if !names.insert(g.name.as_str()) {
                return invalid(format!("guest \"{}\" is defined twice", g.name));
            }
            if !sockets.insert(&g.socket) {
                return invalid(format!(
                    "socket {} is used by two guests",
                    g.socket.display()
                ));
            }
            if let Some(ms) = g.poll_quiet_ms {
                check_quiet_ms(ms).map_err(|e| {
                    ConfigError::Invalid(format!("guest \"{}\": poll_quiet_ms: {e}", g.name))
                })?;
            }
        }
        for r in &self.remotes {
            if r.name.is_empty() {
                return invalid("a remote has an empty name".into());
            }
            if !names.insert(r.name.as_str()) {
                return invalid(format!("\"{}\" names two guests or remotes", r.name));
            }
        }
        let known = |who: &str, what: &str| -> Result<(), ConfigError> {
            if names.contains(who) {
                Ok(())
            } else {
                Err(ConfigError::Invalid(format!(
                    "{what} names unknown guest \"{who}\""
                )))
            }
        };
        let mut service_names = HashSet::new();
        for s in &self.services {
            check_rpmsg_name(&s.name, "service")?;
            if !service_names.insert(s.name.as_str()) {
                return invalid(format!("service \"{}\" is defined twice", s.name));
            }
            for g in s.guests.iter().flatten() {
                known(g, &format!("service \"{}\"", s.name))?;
            }
        }
        for c in &self.channels {
            known(&c.from, "a channel")?;
            for g in &c.to {
                known(g, &format!("the channel from \"{}\"", c.from))?;
                if g == &c.from {
                    return invalid(format!("the channel from \"{g}\" lists {g} as a receiver"));
                }
            }
            for n in c.names.iter().flatten() {
                check_rpmsg_name(n, "channel")?;
            }
        }
        Ok(())
    }

    /// Index of a guest or remote (its link) by name: guests first, then remotes.
    pub fn link_index(&self, name: &str) -> Option<usize> {
        self.guests
            .iter()
            .map(|g| &g.name)
            .chain(self.remotes.iter().map(|r| &r.name))
            .position(|n| n == name)
    }

    /// Whether `to` may see the name `name` that `from` announced.
    pub fn offers(&self, from: &str, name: &[u8], to: &str) -> bool {
        from != to
            && self.channels.iter().any(|c| {
                c.from == from
                    && c.to.iter().any(|t| t == to)
                    && c.names
                        .as_ref()
                        .is_none_or(|ns| ns.iter().any(|n| n.as_bytes() == name))
            })
    }

    /// The services announced to `guest`.
    pub fn services_for<'a>(
        &'a self,
        guest: &'a str,
    ) -> impl Iterator<Item = (usize, &'a ServiceSpec)> {
        self.services.iter().enumerate().filter(move |(_, s)| {
            s.guests
                .as_ref()
                .is_none_or(|gs| gs.iter().any(|g| g == guest))
        })
    }
}

fn check_rpmsg_name(name: &str, what: &str) -> Result<(), ConfigError> {
    if name.is_empty() || name.len() > 31 || name.contains('\0') {
        return Err(ConfigError::Invalid(format!(
            "{what} name \"{name}\" must be 1 to 31 bytes without NUL (the name-service field is 32)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
        [[guest]]
        name = "alice"
        socket = "/tmp/a.sock"
        [[guest]]
        name = "bob"
        socket = "/tmp/b.sock"
        [[guest]]
        name = "carol"
        socket = "/tmp/c.sock"
        [[service]]
        type = "echo"
        name = "rpmsg-client-sample"
        guests = ["alice"]
        [[channel]]
        from = "alice"
        to = ["bob"]
        names = ["rpmsg-raw"]
        [[channel]]
        from = "bob"
        to = ["alice", "carol"]
    "#;

    #[test]
    fn parses_and_answers_acl_questions() {
        let t = Topology::parse(EXAMPLE).unwrap();
        assert_eq!(t.guests.len(), 3);
        assert!(t.offers("alice", b"rpmsg-raw", "bob"));
        assert!(
            !t.offers("alice", b"other", "bob"),
            "name not in the channel"
        );
        assert!(
            !t.offers("alice", b"rpmsg-raw", "carol"),
            "carol is not a receiver"
        );
        assert!(t.offers("bob", b"anything", "carol"));
        assert!(!t.offers("bob", b"anything", "bob"));
        assert_eq!(t.services_for("alice").count(), 1);
        assert_eq!(t.services_for("bob").count(), 0);
    }

    #[test]
    fn refuses_bad_topologies_with_reasons() {
        let cases = [
            ("", "no guest and no remote"),
            (
                "[[guest]]\nname = \"a\"\nsocket = \"/s\"\n[[guest]]\nname = \"a\"\nsocket = \"/t\"",
                "defined twice",
            ),
            (
                "[[guest]]\nname = \"a\"\nsocket = \"/s\"\n[[guest]]\nname = \"b\"\nsocket = \"/s\"",
                "used by two guests",
            ),
            (
                "[[guest]]\nname = \"a\"\nsocket = \"/s\"\n[[channel]]\nfrom = \"x\"\nto = []",
                "unknown guest \"x\"",
            ),
            (
                "[[guest]]\nname = \"a\"\nsocket = \"/s\"\n[[channel]]\nfrom = \"a\"\nto = [\"a\"]",
                "as a receiver",
            ),
            (
                "[[guest]]\nname = \"a\"\nsocket = \"/s\"\n[[service]]\ntype = \"echo\"\nname = \"0123456789012345678901234567890123\"",
                "1 to 31 bytes",
            ),
            (
                "[[guest]]\nname = \"a\"\nsocket = \"/s\"\n[[service]]\ntype = \"teleport\"\nname = \"x\"",
                "unknown variant",
            ),
            (
                "[[guest]]\nname = \"a\"\nsocket = \"/s\"\ncolour = \"red\"",
                "unknown field",
            ),
            ("[[guest]\nname = ", "parsing"),
        ];
        for (text, want) in cases {
            let err = Topology::parse(text).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn the_control_socket_is_read() {
        let t = Topology::parse(&format!("control_socket = \"/run/h.ctl\"\n{EXAMPLE}")).unwrap();
        assert_eq!(t.control_socket, Some(PathBuf::from("/run/h.ctl")));
        assert_eq!(Topology::parse(EXAMPLE).unwrap().control_socket, None);
    }

    #[test]
    fn a_core_behind_the_kernel_is_a_remote_whose_channels_rules_apply() {
        let t = Topology::parse(
            "[[guest]]\nname = \"domu\"\nsocket = \"/s\"\n\
             [[remote]]\nname = \"r5-0\"\nimage = \"/fw/r5.elf\"\nbackend = \"sysfs\"\n\
             sysfs_path = \"/sys/class/remoteproc/remoteproc0\"\n\
             [[channel]]\nfrom = \"r5-0\"\nto = [\"domu\"]\nnames = [\"rpmsg-client-sample\"]\n",
        )
        .unwrap();
        assert!(matches!(
            t.remotes[0].backend,
            vamp_remoteproc::config::BackendSpec::Sysfs { .. }
        ));
        assert_eq!(t.link_index("r5-0"), Some(1));
        assert!(t.offers("r5-0", b"rpmsg-client-sample", "domu"));
        assert!(!t.offers("r5-0", b"rpmsg-openamp-demo-channel", "domu"));
    }

    #[test]
    fn all_to_all_default() {
        let t = Topology::all_to_all(
            vec!["/a".into(), "/b".into(), "/c".into()],
            &["echo".into()],
        )
        .unwrap();
        assert!(t.offers("guest0", b"x", "guest2"));
        assert!(t.offers("guest2", b"x", "guest1"));
        assert_eq!(t.services_for("guest1").count(), 1);
    }

    #[test]
    fn example_configs_in_the_repo_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            // configs/remotes*.toml are remoteproc-vm's remote lists (tested there).
            let remotes = path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("remotes"));
            if path.extension().is_some_and(|e| e == "toml") && !remotes {
                Topology::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                n += 1;
            }
        }
        assert!(n > 0, "configs/ holds example topologies");
    }
}
