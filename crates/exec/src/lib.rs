//! Running child processes for every gorgon-rs role: shell commands in their own process
//! groups with captured output, the named callbacks, the job's process tags, keeping a
//! job's processes contained (its host process as their subreaper, its cgroup), and rsync
//! (push, pull, daemon).

pub mod callback;
pub mod cgroup;
pub mod grace;
pub mod lines;
pub mod output;
pub mod procs;
pub mod reaper;
pub mod rsync;
pub mod shell;
pub mod signals;
pub mod tags;
pub mod tail;
pub mod tree;

pub use callback::{run_callback, CallbackFailure};
pub use output::OutputBuffer;
pub use shell::{
    describe_status, terminate_group, CommandOutcome, OutputTap, RunningGroups, ShellCommand,
};
