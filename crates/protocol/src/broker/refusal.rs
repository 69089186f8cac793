//! Logging refused messages without letting a flood of them flood the log.

use std::time::Duration;

/// Logs a refused message, at most once a minute per sender and kind of refusal (`kind`:
/// the reason without what varies in it, such as a job's age): a flood of forged messages
/// must not flood the log. Only the refusals of the last minute are remembered, so senders
/// that name themselves anew each time cannot grow the record without bound either.
pub fn log_refusal(sender: &str, kind: &'static str, reason: &dyn std::fmt::Display) {
    type Logged = std::collections::HashMap<(String, &'static str), std::time::Instant>;
    static LOGGED: std::sync::Mutex<Option<Logged>> = std::sync::Mutex::new(None);
    const QUIET: Duration = Duration::from_secs(60);
    let mut logged = LOGGED.lock().unwrap_or_else(|e| e.into_inner());
    let logged = logged.get_or_insert_with(Default::default);
    let now = std::time::Instant::now();
    logged.retain(|_, at| now.duration_since(*at) < QUIET);
    let key = (sender.to_owned(), kind);
    if logged.contains_key(&key) {
        return;
    }
    logged.insert(key, now);
    tracing::warn!(sender, "refusing a message: {reason} (the same refusal from this sender is not logged again for a minute)");
}
