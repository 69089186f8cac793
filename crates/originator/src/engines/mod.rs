//! The three ways a run's files reach workers, each an engine over the same run core: through
//! the broker to listeners (`distributed`), to worker processes on this machine (`local`), and
//! to the nodes of a CI build (`ci`).

pub mod ci;
pub(crate) mod distributed;
pub(crate) mod local;
