//! Filling a build once: this checkout's units and digests, the lock under which the first
//! node queues the files and writes the build's definition, and the differences that keep a
//! node whose checkout differs out of the build.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use gorgon_protocol::broker::QueueLife;
use gorgon_protocol::{names, Envelope, Message};
use sha2::{Digest, Sha256};

use super::build::{unix_now, Build};
use super::{BUILD_QUEUE_EXPIRY, FILL_WAIT};
use crate::errors::StartError;
use crate::files;
use crate::settings::Settings;

/// This checkout's units (the configured files, in history order) and the digests of its
/// test files and configuration.
pub(super) fn local_units(
    settings: &Settings,
    history: &files::History,
) -> Result<(Vec<String>, BTreeMap<String, String>), StartError> {
    let root = &settings.project_root;
    let found = files::expand(root, &settings.files, false)?;
    if found.is_empty() {
        return Err(StartError::NoFiles(settings.files.join(", ")));
    }
    settings.check_runners(&found)?;
    let mut digests = BTreeMap::new();
    for file in &found {
        digests.insert(file.clone(), digest_of(&root.join(file))?);
    }
    let config = &settings.config_path;
    let config_name = config
        .strip_prefix(root)
        .unwrap_or(config)
        .to_string_lossy()
        .into_owned();
    digests.insert(config_name, digest_of(config)?);
    Ok((files::order(found, history, root), digests))
}

/// The SHA-256 of a file's content, in hex.
pub(super) fn digest_of(path: &Path) -> Result<String, StartError> {
    let bytes = std::fs::read(path).map_err(|source| StartError::BuildFile {
        path: path.to_owned(),
        source,
    })?;
    Ok(Sha256::digest(&bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect())
}

/// How this checkout (`here`) differs from the build's (`build`), file by file.
pub(super) fn differences(
    build: &BTreeMap<String, String>,
    here: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut differences = Vec::new();
    for (file, digest) in build {
        match here.get(file) {
            None => differences.push(format!("{file} is missing here")),
            Some(local) if local != digest => differences.push(format!("{file} differs")),
            Some(_) => {}
        }
    }
    for file in here.keys().filter(|file| !build.contains_key(*file)) {
        differences.push(format!("{file} is not in the build"));
    }
    differences
}

/// Fills the build's files queue unless another node did (or does): under the build's lock
/// (`locked`: this node's first try took it), the node that finds no "filled" marker
/// declares the job's queues, writes the build's definition to the log, queues the units
/// and sets the marker. True when this node filled. Calls that need not wait for each
/// other go together, a round trip each to a far broker.
pub(super) async fn fill_once(
    build: &Build,
    host: &str,
    units: &[String],
    digests: &BTreeMap<String, String>,
    locked: bool,
) -> Result<bool, StartError> {
    let job = build.job;
    let broker = &build.broker;
    let lock = names::build_lock(job);
    let deadline = Instant::now() + FILL_WAIT;
    let mut locked = locked;
    while !locked {
        if Instant::now() >= deadline {
            return Err(StartError::BuildLost(format!(
                "another node has held build {}'s lock for {} s without queueing its files",
                build.build_id,
                FILL_WAIT.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        locked = broker.try_declare_exclusive(&lock).await?;
    }
    let filled_marker = names::build_filled(job);
    let filled =
        matches!(broker.queue_counts(&filled_marker).await?, Some((count, _)) if count > 0);
    let life = QueueLife::Shared {
        unused_expiry: BUILD_QUEUE_EXPIRY,
    };
    if !filled {
        let defined = Message::BuildDefined {
            build_id: build.build_id.clone(),
            host: host.to_owned(),
            units: units.to_vec(),
            digests: digests.clone(),
            queued_at: unix_now(),
        };
        let (control, files) = (names::control_exchange(job), names::files_queue(job));
        let (exchange, queue) = tokio::join!(
            broker.declare_job_exchange(&control),
            broker.declare_queue(&files, life)
        );
        exchange?;
        queue?;
        let (log, defined_line) = (names::build_log(job), Envelope::new(job, defined.clone()));
        let (logged, marker) = tokio::join!(
            broker.send_to_queue(&log, &defined_line),
            broker.declare_queue(&filled_marker, life)
        );
        logged?;
        marker?;
        let messages = units
            .iter()
            .map(|unit| Envelope::new(job, Message::file(unit.clone())));
        broker.send_all_to_queue(&files, messages).await?;
        broker
            .send_to_queue(&filled_marker, &Envelope::new(job, defined))
            .await?;
        broker.delete_queue(&lock).await?;
    } else {
        // The manager checks that the job's control exchange exists.
        let control = names::control_exchange(job);
        let (exchange, unlocked) = tokio::join!(
            broker.declare_job_exchange(&control),
            broker.delete_queue(&lock)
        );
        exchange?;
        unlocked?;
    }
    Ok(!filled)
}
