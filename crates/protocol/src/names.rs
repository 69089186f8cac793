//! Exchange and queue names, and the hidden subcommand that starts a worker. Everything that
//! belongs to one job is scoped by its id, and everything that belongs to a cluster by the
//! cluster id, so two originators on one broker never see each other's files, replies, pings
//! or cancels.

use uuid::Uuid;

const PREFIX: &str = "gorgon-rs";

/// The cluster used when `cluster_id` is not configured.
pub const DEFAULT_CLUSTER: &str = "default";

/// Fanout exchange on which originators publish jobs and pings to every listener of a cluster.
pub fn jobs_exchange(cluster: &str) -> String {
    format!("{PREFIX}.{cluster}.jobs")
}

/// Fanout exchange on which a starting listener announces its queue, so that running jobs
/// reach listeners that join late.
pub fn announcements_exchange(cluster: &str) -> String {
    format!("{PREFIX}.{cluster}.announcements")
}

/// A listener's own queue, bound to its cluster's jobs exchange.
pub fn listener_queue(cluster: &str, listener: Uuid) -> String {
    format!("{PREFIX}.{cluster}.listener.{listener}")
}

/// The queue that holds one file message per test file of a job.
pub fn files_queue(job: Uuid) -> String {
    format!("{PREFIX}.job.{job}.files")
}

/// The originator's queue for replies: workers, worker managers and listeners publish to it
/// through the default exchange. It lives while the originator consumes it, so it vanishes
/// with the originator: a late publisher sees its message returned, and worker managers that
/// find it gone stop the job's workers.
pub fn reply_queue(job: Uuid) -> String {
    format!("{PREFIX}.job.{job}.replies")
}

/// Fanout exchange that carries control messages (cancel) to every worker manager of a job.
pub fn control_exchange(job: Uuid) -> String {
    format!("{PREFIX}.job.{job}.control")
}

/// The originator's queue for listener announcements during one job.
pub fn announcement_queue(job: Uuid) -> String {
    format!("{PREFIX}.job.{job}.announcements")
}

/// The job id of CI build `build` on `cluster` (`gorgon work --build-id`): every node of the
/// build computes the same one, whatever its checkout's folder is called.
pub fn build_job_id(cluster: &str, build: &str) -> Uuid {
    let name = format!("{PREFIX}/{cluster}/{build}");
    Uuid::new_v5(&Uuid::NAMESPACE_URL, name.as_bytes())
}

/// A CI build's log: a stream (RabbitMQ 3.9+) that holds the build's definition and then
/// every reply of its nodes, in one order, for every node and reporter to read from the start.
pub fn build_log(job: Uuid) -> String {
    format!("{PREFIX}.build.{job}.log")
}

/// The exclusive queue a CI node holds while it fills the build's files queue.
pub fn build_lock(job: Uuid) -> String {
    format!("{PREFIX}.build.{job}.filling")
}

/// The queue whose one message says that the build's files queue was filled.
pub fn build_filled(job: Uuid) -> String {
    format!("{PREFIX}.build.{job}.filled")
}

/// The queue a reporter leaves (for a while) once it reported the build: nodes and
/// reporters that come later find the build over.
pub fn build_over(job: Uuid) -> String {
    format!("{PREFIX}.build.{job}.over")
}

/// The queue on which `gorgon ping` collects answers.
pub fn ping_queue(ping: Uuid) -> String {
    format!("{PREFIX}.ping.{ping}")
}

/// The hidden subcommand of the `gorgon` binary that runs a worker (started by the worker
/// pool of a worker manager or of `gorgon start --local`).
pub const WORKER_SUBCOMMAND: &str = "__work";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_scoped_names_differ_between_jobs_and_roles() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        assert_ne!(files_queue(a), files_queue(b));
        assert_ne!(reply_queue(a), reply_queue(b));
        assert_ne!(control_exchange(a), control_exchange(b));
        let names = [
            files_queue(a),
            reply_queue(a),
            control_exchange(a),
            announcement_queue(a),
        ];
        for (i, x) in names.iter().enumerate() {
            assert!(x.contains(&a.to_string()));
            for y in &names[i + 1..] {
                assert_ne!(x, y);
            }
        }
    }

    #[test]
    fn cluster_scoped_names_differ_between_clusters() {
        assert_eq!(jobs_exchange("default"), "gorgon-rs.default.jobs");
        assert_ne!(jobs_exchange("a"), jobs_exchange("b"));
        assert_ne!(announcements_exchange("a"), announcements_exchange("b"));
        assert_ne!(jobs_exchange("a"), announcements_exchange("a"));
    }
}
