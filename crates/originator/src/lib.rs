//! The originator: `gorgon start` (push the tree, queue the files, follow the run, report)
//! and `gorgon ping`.

pub mod artifacts;
pub mod drain;
pub mod engine;
pub mod engines;
pub mod errors;
pub mod events;
pub mod files;
pub mod fleet;
pub mod html;
pub mod impact;
pub mod init;
pub mod junit;
pub mod links;
pub mod lost;
pub mod pack;
pub mod phases;
pub mod ping;
pub mod quarantine;
pub mod replay;
pub mod rerun;
pub mod retries;
pub mod run;
pub mod run_core;
pub mod settings;
pub mod state;
pub mod status;
pub mod tree;
pub mod view;

pub use engines::ci;
pub use errors::StartError;
pub use ping::{ping, PingError};
pub use run::start;
pub use settings::{Settings, StartOptions};
