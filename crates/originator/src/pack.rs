//! Quick files packed several to a message of the files queue ([`Message::Files`]), so that
//! the broker handles one message for many files, not one each.
//!
//! What is quick is what the runtime file says: a unit packs only when an earlier run
//! recorded its time, and a pack holds consecutive such units (in queue order, slowest
//! first) whose recorded times add up to at most `job.pack_seconds` (0.25 s by default),
//! and at most [`MAX_BATCH_FILES`]. A unit without a recorded time is never packed: it may
//! take minutes, and a first run's worker managers hold what a pack holds until its files
//! are done. A pack is a fraction of a second of work, which a host spreads over its idle
//! slots; one unit alone goes as the [`Message::File`] it always was.

use gorgon_protocol::{Message, MAX_BATCH_FILES};

use crate::files::History;

/// `job.pack_seconds` unless the configuration says otherwise: as much expected work as a
/// worker's own batch of quick files holds.
pub const DEFAULT_PACK_SECONDS: f64 = gorgon_protocol::job::DEFAULT_BATCH_SECONDS;

/// The messages that queue `units` (in their order): quick ones packed by
/// `pack_seconds` of recorded time, the others one a message.
pub fn messages(units: Vec<String>, history: &History, pack_seconds: f64) -> Vec<Message> {
    let mut messages = Vec::new();
    let mut pack: Vec<String> = Vec::new();
    let mut packed_seconds = 0.0;
    for unit in units {
        let quick = history
            .get(&unit)
            .copied()
            .filter(|seconds| *seconds >= 0.0 && *seconds <= pack_seconds);
        let Some(seconds) = quick else {
            messages.extend(close(&mut pack));
            messages.push(Message::file(unit));
            continue;
        };
        if pack.len() == MAX_BATCH_FILES || packed_seconds + seconds > pack_seconds {
            messages.extend(close(&mut pack));
        }
        if pack.is_empty() {
            packed_seconds = 0.0;
        }
        packed_seconds += seconds;
        pack.push(unit);
    }
    messages.extend(close(&mut pack));
    messages
}

/// The message of the pack gathered so far (a lone unit as a file of its own), leaving
/// none.
fn close(pack: &mut Vec<String>) -> Option<Message> {
    match std::mem::take(pack).as_slice() {
        [] => None,
        [unit] => Some(Message::file(unit.clone())),
        units => Some(Message::Files {
            files: units.to_vec(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn units(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    fn files(names: &[&str]) -> Message {
        Message::Files {
            files: units(names),
        }
    }

    #[test]
    fn quick_files_with_history_share_messages_up_to_the_seconds_others_go_alone() {
        let history: History = [
            ("slow", 3.0),
            ("a", 0.1),
            ("b", 0.1),
            ("c", 0.1),
            ("d", 0.02),
        ]
        .into_iter()
        .map(|(unit, seconds)| (unit.to_owned(), seconds))
        .collect();
        let queued = units(&["slow", "new", "a", "b", "c", "d", "unknown", "e"]);
        assert_eq!(
            messages(queued, &history, 0.25),
            vec![
                Message::file("slow"),
                Message::file("new"),
                files(&["a", "b"]),
                files(&["c", "d"]),
                Message::file("unknown"),
                Message::file("e"),
            ]
        );
        // 0 packs nothing, whatever the history.
        let queued = units(&["a", "b", "c"]);
        assert_eq!(
            messages(queued, &history, 0.0),
            vec![Message::file("a"), Message::file("b"), Message::file("c")]
        );
    }

    #[test]
    fn a_pack_holds_at_most_the_batch_limit_of_files_however_quick() {
        let names: Vec<String> = (0..250).map(|i| format!("t/{i:03}.sh")).collect();
        let history: History = names.iter().map(|n| (n.clone(), 0.0)).collect();
        let packed = messages(names.clone(), &history, 0.25);
        let sizes: Vec<usize> = packed
            .iter()
            .map(|message| match message {
                Message::Files { files } => files.len(),
                _ => 1,
            })
            .collect();
        assert_eq!(sizes, [100, 100, 50]);
        let unpacked: Vec<String> = packed
            .into_iter()
            .flat_map(|message| match message {
                Message::Files { files } => files,
                Message::File { file, .. } => vec![file],
                other => panic!("not a file: {other:?}"),
            })
            .collect();
        assert_eq!(unpacked, names, "every unit once, in queue order");
    }
}
