//! `vamp`: the user's front door to vamp's RPMsg engine.

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use vamp::{bench, demo, guest_apps, native_apps};
use vamp_rpmsg::native::NativePaths;
use vamp_rpmsg::transport::RingFormat;

#[derive(Parser, Debug)]
#[command(
    name = "vamp",
    version,
    about = "virtual AMP: RPMsg and remoteproc for supervised AMP"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs the main demonstration: two processes, one in each virtio role, find each other
    /// by name service and exchange echo messages.
    Demo {
        /// Messages to exchange.
        #[arg(long, default_value_t = 1000)]
        count: u32,
    },
    /// A native guest of a vhost-user hub (vamp's own frontend, no QEMU): offers an echo under
    /// a name, or pings a name another guest offers.
    Guest {
        /// The hub's vhost-user socket for this guest.
        #[arg(long)]
        socket: PathBuf,
        /// Offer an echo service under this name until a pinger says stop.
        #[arg(long, conflicts_with = "ping")]
        offer: Option<String>,
        /// Find this name through the hub and ping it.
        #[arg(long)]
        ping: Option<String>,
        /// Requests to send with --ping.
        #[arg(long, default_value_t = 100)]
        count: u32,
        /// Seconds to wait for the name or an echo.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
        /// Prefix of this guest's output lines.
        #[arg(long, default_value = "guest")]
        tag: String,
    },
    /// One side of a native-Linux link (OpenAMP's native machine: shared file + UNIX socket).
    Native {
        /// Which side: `remote` echoes (device role), `host` pings (driver role).
        ///
        /// The remote returns every buffer the host sent with the used length set to the
        /// buffer's readable length: OpenAMP hosts size recycled transmit buffers by it.
        #[arg(long, value_enum)]
        role: Role,
        /// With `--role host`: send this many echo requests, verify each, print a summary
        /// (default 10; with `--protocol sample` 100, all OpenAMP's rpmsg-sample-echo answers).
        #[arg(long)]
        ping: Option<u32>,
        /// Which of OpenAMP's echo protocols to speak. `demo`: channel
        /// "rpmsg-openamp-demo-channel" (OpenAMP's rpmsg-echo / msg-test-rpmsg-ping), ended by
        /// the shutdown word. `sample`: channel "rpmsg-client-sample" (OpenAMP's
        /// rpmsg-sample-echo / rpmsg-sample-ping, Linux's rpmsg_client_sample), "hello world!"
        /// messages ended by "goodbye!", after which the remote withdraws the channel.
        /// Host: default `demo`. Remote: default both; OpenAMP's ping programs print
        /// "ERROR: Unexpected name service" for a channel they did not ask for, so give the
        /// one they speak.
        #[arg(long, value_enum)]
        protocol: Option<ProtocolArg>,
        /// The shared file.
        #[arg(long, default_value = vamp_rpmsg::native::DEFAULT_SHM_PATH)]
        shm: PathBuf,
        /// The kick socket.
        #[arg(long, default_value = vamp_rpmsg::native::DEFAULT_SOCKET_PATH)]
        socket: PathBuf,
        /// Seconds to wait for the other side (remote: 0 = forever).
        #[arg(long, default_value_t = 30)]
        timeout: u64,
        /// With `--role host`: the virtqueue format to ask for (default `split`). `packed` needs
        /// a vamp remote (it declares packed rings in its vamp platform entry); any other
        /// remote, OpenAMP's included, gets split rings. A vamp remote follows the host's
        /// choice, so the remote takes no `--ring`.
        #[arg(long, value_enum)]
        ring: Option<RingArg>,
    },
    /// Measures round trips, throughput, scaling, hub memory and remote start time side by
    /// side with this machine's floors, and prints a table.
    Bench {
        /// Fewer samples: a smoke run (well under 20 s).
        #[arg(long)]
        quick: bool,
        /// Also write every figure, with units and ratios, to this JSON file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Internal: the `vhost-user-rpmsg` hub (the same program; `vamp bench` runs its
    /// busy-poll hub rows on it, in a process of its own).
    #[command(hide = true, name = "vhost-user-rpmsg")]
    VhostUserRpmsg {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Internal: the other side of one `vamp bench` measurement.
    #[command(hide = true)]
    BenchPeer {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum ProtocolArg {
    /// "rpmsg-openamp-demo-channel", OpenAMP's echo demo.
    Demo,
    /// "rpmsg-client-sample", OpenAMP's and Linux's rpmsg client sample.
    Sample,
}

impl From<ProtocolArg> for native_apps::Protocol {
    fn from(p: ProtocolArg) -> Self {
        match p {
            ProtocolArg::Demo => native_apps::Protocol::Demo,
            ProtocolArg::Sample => native_apps::Protocol::Sample,
        }
    }
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum RingArg {
    /// Split virtqueues: the default, what OpenAMP and Linux's remoteproc run.
    Split,
    /// Packed virtqueues (virtio 1.1), between vamp peers.
    Packed,
}

impl From<RingArg> for RingFormat {
    fn from(r: RingArg) -> Self {
        match r {
            RingArg::Split => RingFormat::Split,
            RingArg::Packed => RingFormat::Packed,
        }
    }
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// Driver role: owns the buffers, sends the pings.
    Host,
    /// Device role: announces the echo channel and echoes.
    Remote,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo { count } => demo::run(count),
        Command::Bench { quick, json } => {
            return match bench::run(&bench::BenchOptions { quick, json }) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => {
                    eprintln!("vamp bench: some figures could not be measured (see the table)");
                    ExitCode::FAILURE
                }
                Err(e) => {
                    eprintln!("vamp bench: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::VhostUserRpmsg { args } => {
            let program = std::iter::once(bench::HUB_COMMAND.to_string());
            return vamp_vmm_backend::cli::run(program.chain(args));
        }
        Command::BenchPeer { args } => {
            return match bench::run_peer(&args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("vamp bench-peer: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::Guest {
            socket,
            offer,
            ping,
            count,
            timeout,
            tag,
        } => match (offer, ping) {
            (Some(name), _) => guest_apps::run_offer(&socket, &name, &tag).map(|_| true),
            (None, Some(name)) => {
                let timeout = Duration::from_secs(timeout.max(1));
                guest_apps::run_ping(&socket, &name, count, timeout, &tag).map(|s| s.all_matched())
            }
            (None, None) => {
                eprintln!("vamp guest: give --offer NAME or --ping NAME");
                return ExitCode::FAILURE;
            }
        },
        Command::Native {
            role,
            ping,
            protocol,
            shm,
            socket,
            timeout,
            ring,
        } => {
            let paths = NativePaths { shm, socket };
            match role {
                Role::Remote if ring.is_some() => {
                    eprintln!("vamp native: --ring is the host's choice (the remote follows it)");
                    return ExitCode::FAILURE;
                }
                Role::Remote => {
                    let timeout = (timeout > 0).then(|| Duration::from_secs(timeout));
                    let protocols = match protocol {
                        Some(p) => vec![p.into()],
                        None => vec![native_apps::Protocol::Demo, native_apps::Protocol::Sample],
                    };
                    native_apps::run_echo_remote(&paths, timeout, &protocols, "remote")
                        .map(|_| true)
                }
                Role::Host => {
                    let protocol = protocol.map_or(native_apps::Protocol::Demo, Into::into);
                    let default_count = match protocol {
                        native_apps::Protocol::Demo => 10,
                        native_apps::Protocol::Sample => vamp_rpmsg::apps::SAMPLE_COUNT,
                    };
                    native_apps::run_ping_host_on(
                        &paths,
                        Duration::from_secs(timeout.max(1)),
                        ping.unwrap_or(default_count),
                        protocol,
                        ring.map_or(RingFormat::Split, Into::into),
                        "host",
                    )
                    .map(|s| s.all_matched())
                }
            }
        }
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("vamp: {e}");
            ExitCode::FAILURE
        }
    }
}
