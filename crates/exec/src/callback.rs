//! The callbacks of `gorgon.json`: shell commands run at fixed moments, whose failure is
//! reported with its output rather than ignored.

use gorgon_protocol::CallbackName;

use crate::shell::ShellCommand;

/// A callback that did not succeed.
#[derive(Debug, thiserror::Error)]
#[error("the {callback} callback failed ({status})")]
pub struct CallbackFailure {
    pub callback: CallbackName,
    pub status: String,
    pub output: String,
}

/// Runs `command` (when configured) as the named callback, and returns its output (also
/// logged).
pub async fn run_callback(
    callback: CallbackName,
    command: Option<&str>,
    base: &ShellCommand,
) -> Result<String, CallbackFailure> {
    let Some(command) = command.filter(|c| !c.trim().is_empty()) else {
        return Ok(String::new());
    };
    tracing::info!(%callback, command, "running callback");
    let outcome = ShellCommand {
        command: command.to_owned(),
        ..base.clone()
    }
    .run()
    .await;
    if !outcome.output.is_empty() {
        tracing::info!(%callback, output = %outcome.output.trim_end(), "callback output");
    }
    if outcome.success() {
        Ok(outcome.output)
    } else {
        Err(CallbackFailure {
            callback,
            status: outcome.description,
            output: outcome.output,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn absent_callbacks_succeed_and_failures_carry_output() {
        let base = ShellCommand::new("", std::env::temp_dir());
        assert!(run_callback(CallbackName::AfterSync, None, &base)
            .await
            .is_ok());
        assert!(run_callback(CallbackName::AfterSync, Some("true"), &base)
            .await
            .is_ok());
        let failure = run_callback(
            CallbackName::AfterSync,
            Some("echo bundle install failed; exit 7"),
            &base,
        )
        .await
        .unwrap_err();
        assert_eq!(failure.callback, CallbackName::AfterSync);
        assert_eq!(failure.status, "exit status 7");
        assert!(failure.output.contains("bundle install failed"));
    }
}
