//! The exit codes of `gorgon start`, documented in the README; one place so every path agrees.

/// Every queued file ran and passed.
pub const SUCCESS: i32 = 0;
/// At least one file failed or crashed, a callback failed, or files were left unrun.
pub const FAILURE: i32 = 1;
/// Pushing the source tree to the file server failed.
pub const SYNC_FAILED: i32 = 2;
/// Bad configuration, no matching files, or the broker could not be reached.
pub const CONFIG_OR_BROKER: i32 = 3;
/// The user interrupted the run (Ctrl-C): 128 + SIGINT, as shells report it.
pub const INTERRUPTED: i32 = 130;
/// The run was stopped by SIGTERM: 128 + SIGTERM.
pub const TERMINATED: i32 = 143;
