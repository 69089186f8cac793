//! The built-in persistent runners (`rspec`, `minitest`, `pytest`): adapter scripts embedded
//! in the binary and written out at run time, so that listeners need nothing beyond the test
//! framework itself.

use std::path::Path;

use gorgon_protocol::RunnerKind;

/// One built-in runner: its scripts and the interpreter that runs the main one.
struct Adapter {
    /// (file name, contents); the first is the one the interpreter runs.
    scripts: &'static [(&'static str, &'static str)],
    /// Used unless `job.runner.command` names another (e.g. `bundle exec ruby`).
    interpreter: &'static str,
}

const RUBY_SUPPORT: (&str, &str) = (
    "gorgon_runner.rb",
    include_str!("../adapters/gorgon_runner.rb"),
);

const RSPEC: Adapter = Adapter {
    scripts: &[
        (
            "gorgon_rspec.rb",
            include_str!("../adapters/gorgon_rspec.rb"),
        ),
        RUBY_SUPPORT,
    ],
    interpreter: "ruby",
};

const MINITEST: Adapter = Adapter {
    scripts: &[
        (
            "gorgon_minitest.rb",
            include_str!("../adapters/gorgon_minitest.rb"),
        ),
        RUBY_SUPPORT,
    ],
    interpreter: "ruby",
};

const PYTEST: Adapter = Adapter {
    scripts: &[(
        "gorgon_pytest.py",
        include_str!("../adapters/gorgon_pytest.py"),
    )],
    interpreter: "python3",
};

/// Writes the adapter of a built-in runner into `dir` and returns the shell command that
/// starts it; `None` for the kinds that are not built in.
pub fn write_adapter(
    kind: RunnerKind,
    interpreter: &str,
    dir: &Path,
) -> std::io::Result<Option<String>> {
    let adapter = match kind {
        RunnerKind::Rspec => &RSPEC,
        RunnerKind::Minitest => &MINITEST,
        RunnerKind::Pytest => &PYTEST,
        RunnerKind::Command | RunnerKind::Persistent => return Ok(None),
    };
    for (name, text) in adapter.scripts {
        std::fs::write(dir.join(name), text)?;
    }
    let main = dir.join(adapter.scripts[0].0);
    let main = shlex::try_quote(&main.to_string_lossy())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?
        .into_owned();
    let interpreter = match interpreter.trim() {
        "" => adapter.interpreter,
        chosen => chosen,
    };
    // `exec` makes the interpreter the group leader the worker watches, not a shell.
    Ok(Some(format!("exec {interpreter} {main}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adapters_are_written_with_the_chosen_interpreter() {
        let dir = tempfile::tempdir().unwrap();
        let command = write_adapter(RunnerKind::Rspec, "", dir.path())
            .unwrap()
            .unwrap();
        assert!(command.starts_with("exec ruby "), "{command}");
        assert!(command.ends_with("gorgon_rspec.rb"), "{command}");
        assert!(dir.path().join("gorgon_runner.rb").exists());
        let command = write_adapter(RunnerKind::Pytest, "poetry run python", dir.path())
            .unwrap()
            .unwrap();
        assert!(command.starts_with("exec poetry run python "), "{command}");
        assert!(write_adapter(RunnerKind::Command, "", dir.path())
            .unwrap()
            .is_none());
    }
}
