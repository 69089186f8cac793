//! `gorgon fleet -- COMMAND...` on a listener: the command runs in a scratch folder of its
//! own, as the listener's user, within the time the originator gave, and only on listeners
//! whose config sets `allow_fleet_commands: true` (with a signing key, only when signed, as
//! every message the listener acts on).

use std::time::Duration;

use gorgon_exec::ShellCommand;
use gorgon_protocol::FleetOutcome;

use crate::settings::ListenerSettings;

/// Runs `argv` as `settings` allow, within `timeout_seconds`.
pub(crate) async fn run(
    settings: &ListenerSettings,
    argv: &[String],
    timeout_seconds: f64,
) -> FleetOutcome {
    if !settings.allow_fleet_commands {
        tracing::info!(
            ?argv,
            "refusing a fleet command: allow_fleet_commands is not set"
        );
        return FleetOutcome::Refused {
            reason: "this listener does not run fleet commands (set \"allow_fleet_commands\": true in its gorgon_listener.json)".into(),
        };
    }
    let Some(command) = shlex::try_join(argv.iter().map(String::as_str))
        .ok()
        .filter(|c| !c.is_empty())
    else {
        return FleetOutcome::Refused {
            reason: "the command is empty or holds a NUL byte".into(),
        };
    };
    let scratch = match tempfile::Builder::new().prefix("gorgon-fleet-").tempdir() {
        Ok(scratch) => scratch,
        Err(error) => {
            return FleetOutcome::Refused {
                reason: format!("cannot make a scratch folder: {error}"),
            }
        }
    };
    let limit = Duration::try_from_secs_f64(timeout_seconds)
        .ok()
        .filter(|limit| !limit.is_zero());
    tracing::info!(command, "running a fleet command");
    let outcome = ShellCommand::new(command, scratch.path())
        .timeout(limit)
        .run()
        .await;
    FleetOutcome::Ran {
        success: outcome.success(),
        exit: outcome.description,
        output: outcome.output,
    }
}
