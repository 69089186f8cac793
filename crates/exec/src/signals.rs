//! The one intake of SIGTERM and SIGINT of a gorgon-rs process, installed once when the
//! process starts its work: a signal that arrives at any moment after that waits in it until
//! the process looks (a stream installed later would not see it).

use tokio::signal::unix::{signal, Signal, SignalKind};

/// A signal that asks a process to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopSignal {
    /// SIGINT: Ctrl-C in a terminal.
    Interrupt,
    /// SIGTERM: a service manager, CI, `kill`.
    Terminate,
}

impl std::fmt::Display for StopSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StopSignal::Interrupt => "SIGINT",
            StopSignal::Terminate => "SIGTERM",
        })
    }
}

/// The process's SIGTERM and SIGINT streams.
pub struct StopSignals {
    terminate: Option<Signal>,
    interrupt: Option<Signal>,
}

impl StopSignals {
    /// Installs the handlers (inside a Tokio runtime).
    pub fn install() -> StopSignals {
        // Without a handler the default action (exit) still applies, which is acceptable.
        let install = |kind: SignalKind, name: &str| match signal(kind) {
            Ok(stream) => Some(stream),
            Err(error) => {
                tracing::warn!(%error, "cannot handle {name}");
                None
            }
        };
        StopSignals {
            terminate: install(SignalKind::terminate(), "SIGTERM"),
            interrupt: install(SignalKind::interrupt(), "SIGINT"),
        }
    }

    /// Resolves at the next SIGTERM or SIGINT (or at one that came since the last call).
    pub async fn recv(&mut self) -> StopSignal {
        tokio::select! {
            () = next(&mut self.terminate) => StopSignal::Terminate,
            () = next(&mut self.interrupt) => StopSignal::Interrupt,
        }
    }

    /// Resolves at the next SIGINT only (a second Ctrl-C while the run stops).
    pub async fn interrupt(&mut self) {
        next(&mut self.interrupt).await;
    }
}

async fn next(signal: &mut Option<Signal>) {
    if let Some(stream) = signal {
        if stream.recv().await.is_some() {
            return;
        }
    }
    std::future::pending().await
}
