//! Property tests of the decoders that read untrusted input: the broker envelope (and so
//! every message, the stdin and stdout lines of workers included), the runner protocol's
//! lines, a worker's assignment and the JSON-with-comments config reader. Random bytes,
//! truncated, oversized, deeply nested and mutated valid inputs never panic and give a value
//! or a typed error. Each case is at most a few KB (the oversized ones are built once), and
//! the case counts keep the whole file to a few seconds.

use gorgon_protocol::config_file::strip_comments;
use gorgon_protocol::message::{DecodeError, MAX_MESSAGE_BYTES};
use gorgon_protocol::{
    Envelope, FileResult, FileStatus, JobDefinition, Message, RunnerMessage, TestResult,
    TestStatus, WorkerAssignment,
};
use proptest::prelude::*;
use proptest::sample::Index;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        max_shrink_iters: 256,
        ..ProptestConfig::default()
    }
}

/// Valid encodings of messages of several shapes, to mutate.
fn valid_envelopes() -> Vec<Vec<u8>> {
    let job = uuid::Uuid::from_u128(7);
    let finished = Message::FileFinished(FileResult {
        host: "h1".into(),
        worker_id: 1,
        file: "spec/a_spec.rb".into(),
        status: FileStatus::Failed,
        seconds: 0.5,
        exit: "exit status 1".into(),
        output: "expected 1\n got 2".into(),
        tests: vec![TestResult {
            name: "adds".into(),
            classname: "Cart".into(),
            file: Some("spec/a_spec.rb".into()),
            line: Some(3),
            status: TestStatus::Failed,
            seconds: 0.1,
            message: Some("boom".into()),
            details: None,
            id: Some("spec/a_spec.rb:3".into()),
        }],
        impact: None,
    });
    let started = Message::FileStarted {
        host: "h1".into(),
        worker_id: 2,
        file: "t/b.sh".into(),
    };
    let definition = JobDefinition::with_command("src/", "sh {file}", Default::default());
    let job_message = Message::Job {
        definition: Box::new(definition),
        reply_to: "replies".into(),
    };
    [
        finished,
        started,
        job_message,
        Message::JobDone { host: "h".into() },
    ]
    .into_iter()
    .map(|message| Envelope::new(job, message).encode())
    .collect()
}

/// Valid runner-protocol lines, to mutate.
fn valid_runner_lines() -> Vec<String> {
    vec![
        r#"{"type":"hello","protocol":1,"runner":"rspec 3.12","batches":true}"#.to_owned(),
        r#"{"type":"file_done","file":"spec/a_spec.rb","outcome":"completed","tests":[{"name":"x","classname":"A","status":"passed","seconds":0.1,"file":"spec/a_spec.rb","line":2}]}"#.to_owned(),
        r#"{"type":"file_done","file":"t.py","outcome":"load_error","message":"ImportError","tests":[]}"#.to_owned(),
    ]
}

/// Applies byte flips, a cut and an insertion to `bytes`.
fn mutate(mut bytes: Vec<u8>, flips: &[(Index, u8)], cut: Option<Index>, insert: &[u8]) -> Vec<u8> {
    if bytes.is_empty() {
        return insert.to_vec();
    }
    for (at, byte) in flips {
        let at = at.index(bytes.len());
        bytes[at] = *byte;
    }
    if let Some(cut) = cut {
        bytes.truncate(cut.index(bytes.len() + 1));
    }
    let at = insert.len() % (bytes.len() + 1);
    bytes.splice(at..at, insert.iter().copied());
    bytes
}

/// Nested arrays and objects `depth` deep around a valid-looking message.
fn nested(depth: usize) -> String {
    let mut text = String::with_capacity(depth * 8 + 64);
    for _ in 0..depth {
        text.push_str("{\"message\":[");
    }
    text.push('1');
    for _ in 0..depth {
        text.push_str("]}");
    }
    text
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn random_bytes_give_an_envelope_or_a_typed_error(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = Envelope::decode(&bytes);
    }

    #[test]
    fn mutated_envelopes_never_panic_and_what_decodes_encodes_again(
        which in any::<Index>(),
        flips in prop::collection::vec((any::<Index>(), any::<u8>()), 0..6),
        cut in prop::option::of(any::<Index>()),
        insert in prop::collection::vec(any::<u8>(), 0..16),
    ) {
        let valid = valid_envelopes();
        let bytes = mutate(valid[which.index(valid.len())].clone(), &flips, cut, &insert);
        if let Ok(envelope) = Envelope::decode(&bytes) {
            prop_assert_eq!(Envelope::decode(&envelope.encode()).ok(), Some(envelope));
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash(depth in 1usize..4000) {
        let text = nested(depth);
        prop_assert!(Envelope::decode(text.as_bytes()).is_err());
        prop_assert!(RunnerMessage::decode(&text).is_err());
        prop_assert!(serde_json::from_str::<WorkerAssignment>(&text).is_err());
    }

    #[test]
    fn random_and_mutated_runner_lines_decode_or_fail_cleanly(
        which in any::<Index>(),
        flips in prop::collection::vec((any::<Index>(), any::<u8>()), 0..6),
        cut in prop::option::of(any::<Index>()),
        noise in ".{0,256}",
    ) {
        let _ = RunnerMessage::decode(&noise);
        let lines = valid_runner_lines();
        let bytes = mutate(lines[which.index(lines.len())].clone().into_bytes(), &flips, cut, &[]);
        let _ = RunnerMessage::decode(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn assignments_that_do_not_decode_are_errors(noise in ".{0,512}", cut in any::<Index>()) {
        let _ = serde_json::from_str::<WorkerAssignment>(&noise);
        let assignment = serde_json::to_string(&sample_assignment()).unwrap();
        let truncated = &assignment[..cut.index(assignment.len())];
        prop_assert!(serde_json::from_str::<WorkerAssignment>(truncated).is_err());
    }

    #[test]
    fn the_config_reader_takes_any_text(text in "(.|\n){0,512}", slashes in "[/*\"\\\\\n a]{0,64}") {
        for text in [text, slashes] {
            let stripped = strip_comments(&text);
            // Comments become spaces: line and column numbers of errors stay right.
            prop_assert_eq!(stripped.matches('\n').count(), text.matches('\n').count());
            let _ = serde_json::from_str::<serde_json::Value>(&stripped);
        }
    }
}

fn sample_assignment() -> WorkerAssignment {
    WorkerAssignment {
        job_id: uuid::Uuid::from_u128(9),
        definition: JobDefinition::with_command("src/", "sh {file}", Default::default()),
        reply_to: "replies".into(),
        broker: Default::default(),
        host: "h1".into(),
        workspace: "/tmp/ws".into(),
        slots: 2,
        worker_id: Some(1),
        warm_runner: None,
        ruby_preload: None,
    }
}

#[test]
fn an_oversized_message_is_refused_unread() {
    let mut bytes = valid_envelopes().remove(0);
    bytes.resize(MAX_MESSAGE_BYTES + 1, b' ');
    assert!(matches!(
        Envelope::decode(&bytes),
        Err(DecodeError::TooLarge(n)) if n == MAX_MESSAGE_BYTES + 1
    ));
}
