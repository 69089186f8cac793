//! The built-in persistent runners (`rspec`, `minitest`, `pytest`): adapter scripts embedded
//! in the binary and written out at run time, so that listeners need nothing beyond the test
//! framework itself.

use std::path::Path;

use gorgon_protocol::RunnerKind;

/// One built-in runner: its scripts and the interpreter that runs the main one.
struct Adapter {
    /// Its `job.runner.kind`, which its warm runner takes as its first argument.
    kind: &'static str,
    /// (file name, contents); the first is the one the interpreter runs.
    scripts: &'static [(&'static str, &'static str)],
    /// Used unless `job.runner.command` names another (e.g. `bundle exec ruby`).
    interpreter: &'static str,
    /// The warm runner a listener keeps for it (see `warm.rs`): (file name, contents).
    warm: (&'static str, &'static str),
}

const RUBY_WARM: (&str, &str) = ("gorgon_warm.rb", include_str!("../adapters/gorgon_warm.rb"));

/// Loads RSpec's built-in matchers once; beside every Ruby script that loads RSpec.
const RUBY_MATCHERS: (&str, &str) = (
    "gorgon_rspec_matchers.rb",
    include_str!("../adapters/gorgon_rspec_matchers.rb"),
);

const RUBY_SUPPORT: (&str, &str) = (
    "gorgon_runner.rb",
    include_str!("../adapters/gorgon_runner.rb"),
);

/// Records what each file runs in a recording run (`docs/impact.md`); beside
/// `gorgon_runner.rb`, which loads it.
const RUBY_IMPACT: (&str, &str) = (
    "gorgon_impact.rb",
    include_str!("../adapters/gorgon_impact.rb"),
);

/// The stand-in for Ruby Gorgon's callbacks (`Gorgon::DefaultCallbacks`), which the Ruby
/// runners and the job's Ruby preload process load, and which runs one method of a callbacks
/// class as a program.
pub const CALLBACKS_SHIM: &str = include_str!("../adapters/gorgon_callbacks.rb");

const RUBY_CALLBACKS: (&str, &str) = ("gorgon_callbacks.rb", CALLBACKS_SHIM);

const RSPEC: Adapter = Adapter {
    kind: "rspec",
    scripts: &[
        (
            "gorgon_rspec.rb",
            include_str!("../adapters/gorgon_rspec.rb"),
        ),
        RUBY_SUPPORT,
        RUBY_IMPACT,
        RUBY_CALLBACKS,
        RUBY_MATCHERS,
    ],
    interpreter: "ruby",
    warm: RUBY_WARM,
};

const MINITEST: Adapter = Adapter {
    kind: "minitest",
    scripts: &[
        (
            "gorgon_minitest.rb",
            include_str!("../adapters/gorgon_minitest.rb"),
        ),
        RUBY_SUPPORT,
        RUBY_IMPACT,
        RUBY_CALLBACKS,
    ],
    interpreter: "ruby",
    warm: RUBY_WARM,
};

const PYTEST: Adapter = Adapter {
    kind: "pytest",
    scripts: &[
        (
            "gorgon_pytest.py",
            include_str!("../adapters/gorgon_pytest.py"),
        ),
        (
            "gorgon_impact.py",
            include_str!("../adapters/gorgon_impact.py"),
        ),
    ],
    interpreter: "python3",
    warm: ("gorgon_warm.py", include_str!("../adapters/gorgon_warm.py")),
};

/// A built-in runner's adapter, written out.
pub struct WrittenAdapter {
    /// The shell command that starts it.
    pub command: String,
    /// The script the interpreter runs (a warm runner's fork runs it too).
    pub script: std::path::PathBuf,
}

fn adapter(kind: RunnerKind) -> Option<&'static Adapter> {
    match kind {
        RunnerKind::Rspec => Some(&RSPEC),
        RunnerKind::Minitest => Some(&MINITEST),
        RunnerKind::Pytest => Some(&PYTEST),
        RunnerKind::Command | RunnerKind::Persistent => None,
    }
}

/// Whether gorgon-rs ships the runner of this kind.
pub fn is_built_in(kind: RunnerKind) -> bool {
    adapter(kind).is_some()
}

/// Writes the adapter of a built-in runner into `dir`; `None` for the kinds that are not
/// built in.
pub fn write_adapter(
    kind: RunnerKind,
    interpreter: &str,
    dir: &Path,
) -> std::io::Result<Option<WrittenAdapter>> {
    let Some(adapter) = adapter(kind) else {
        return Ok(None);
    };
    for (name, text) in adapter.scripts {
        std::fs::write(dir.join(name), text)?;
    }
    let script = dir.join(adapter.scripts[0].0);
    // `exec` makes the interpreter the group leader the worker watches, not a shell.
    let command = format!(
        "exec {} {}",
        chosen_interpreter(adapter, interpreter),
        quoted(&script)?
    );
    Ok(Some(WrittenAdapter { command, script }))
}

/// Writes the warm runner of a built-in runner kind into `dir` and returns the shell command
/// that starts it serving on `socket`; `None` for the kinds that are not built in.
pub fn write_warm_runner(
    kind: RunnerKind,
    interpreter: &str,
    dir: &Path,
    socket: &Path,
) -> std::io::Result<Option<String>> {
    let Some(adapter) = adapter(kind) else {
        return Ok(None);
    };
    let (name, text) = adapter.warm;
    let script = dir.join(name);
    std::fs::write(&script, text)?;
    if adapter.warm == RUBY_WARM {
        std::fs::write(dir.join(RUBY_MATCHERS.0), RUBY_MATCHERS.1)?;
    }
    Ok(Some(format!(
        "exec {} {} {} {}",
        chosen_interpreter(adapter, interpreter),
        quoted(&script)?,
        adapter.kind,
        quoted(socket)?
    )))
}

/// Whether a built-in runner of this kind runs in Ruby (and so can load a Gorgon
/// callbacks class and fork from the job's Ruby preload process).
pub fn is_ruby(kind: RunnerKind) -> bool {
    adapter(kind).is_some_and(|adapter| adapter.warm == RUBY_WARM)
}

/// Writes the job's Ruby preload process into `dir` and returns the shell command that
/// starts it: it loads the frameworks of `kinds` and the callbacks class `class_file`, runs
/// its `before_creating_workers`, then serves forks on `socket` as a warm runner does, and
/// runs `after_creating_workers` when its stdin ends and its forks have ended.
pub fn write_ruby_preload(
    kinds: &[RunnerKind],
    interpreter: &str,
    dir: &Path,
    socket: &Path,
    class_file: &str,
) -> std::io::Result<String> {
    for (name, text) in [RUBY_WARM, RUBY_CALLBACKS, RUBY_MATCHERS] {
        std::fs::write(dir.join(name), text)?;
    }
    let quote = |text: &str| {
        shlex::try_quote(text)
            .map(|quoted| quoted.into_owned())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
    };
    let mut command = format!(
        "exec {} {} preload {} {}",
        chosen_interpreter(&RSPEC, interpreter),
        quoted(&dir.join(RUBY_WARM.0))?,
        quoted(socket)?,
        quote(class_file)?
    );
    for kind in kinds.iter().filter_map(|kind| adapter(*kind)) {
        command.push(' ');
        command.push_str(kind.kind);
    }
    Ok(command)
}

fn chosen_interpreter(adapter: &Adapter, interpreter: &str) -> String {
    match interpreter.trim() {
        "" => adapter.interpreter.to_owned(),
        chosen => chosen.to_owned(),
    }
}

fn quoted(path: &Path) -> std::io::Result<String> {
    shlex::try_quote(&path.to_string_lossy())
        .map(|quoted| quoted.into_owned())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adapters_are_written_with_the_chosen_interpreter() {
        let dir = tempfile::tempdir().unwrap();
        let command = write_adapter(RunnerKind::Rspec, "", dir.path())
            .unwrap()
            .unwrap()
            .command;
        assert!(command.starts_with("exec ruby "), "{command}");
        assert!(command.ends_with("gorgon_rspec.rb"), "{command}");
        assert!(dir.path().join("gorgon_runner.rb").exists());
        let command = write_adapter(RunnerKind::Pytest, "poetry run python", dir.path())
            .unwrap()
            .unwrap()
            .command;
        assert!(command.starts_with("exec poetry run python "), "{command}");
        assert!(write_adapter(RunnerKind::Command, "", dir.path())
            .unwrap()
            .is_none());
    }
}
