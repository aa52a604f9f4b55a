//! What vamp's tests share outside the engine (the engine's own doubles are in
//! `vamp_rpmsg::testing`): temporary directories, child processes that are always reaped,
//! log files read back for failure reports, and output captured in memory. A dev-dependency
//! only: nothing here is part of vamp.

mod dir;
pub mod elf;
mod log;
mod output;
mod process;
pub mod remote_core;

pub use dir::TempDir;
pub use log::{count_lines, log_tail, read_lossy, rest_of_line, tail};
pub use output::SharedOutput;
pub use process::{Proc, wait_for_paths};
