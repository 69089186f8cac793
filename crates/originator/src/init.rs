//! `gorgon init`: looks at a project (RSpec, Minitest, pytest, or shell tests) and writes a
//! commented `gorgon.json` for it, never over an existing one.

use std::path::{Path, PathBuf};

use gorgon_protocol::config_file::host_port;

/// The name of the file `gorgon init` writes.
pub const CONFIG_FILE: &str = "gorgon.json";

/// Folders never searched for tests: dependencies, build output, virtual environments.
const SKIPPED_DIRS: &[&str] = &[
    "node_modules",
    "vendor",
    "target",
    "venv",
    "env",
    "site-packages",
    "build",
    "dist",
    "tmp",
    "log",
];
/// How deep the search for test files goes.
const MAX_DEPTH: usize = 8;

/// Why `gorgon init` wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{0} already exists; gorgon init never overwrites it (remove or rename it first, or edit it by hand)")]
    Exists(PathBuf),
    #[error("--{flag}: {problem}")]
    BadAddress { flag: &'static str, problem: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The kinds of project `gorgon init` knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProjectKind {
    Rspec,
    Minitest,
    Pytest,
    /// Shell scripts (or anything else) run by a command per file.
    Command,
}

impl ProjectKind {
    /// The names accepted by `--force-kind`.
    pub const NAMES: [&'static str; 4] = ["rspec", "minitest", "pytest", "command"];

    pub fn name(self) -> &'static str {
        match self {
            ProjectKind::Rspec => "rspec",
            ProjectKind::Minitest => "minitest",
            ProjectKind::Pytest => "pytest",
            ProjectKind::Command => "command",
        }
    }

    pub fn from_name(name: &str) -> Option<ProjectKind> {
        match name {
            "rspec" => Some(ProjectKind::Rspec),
            "minitest" => Some(ProjectKind::Minitest),
            "pytest" => Some(ProjectKind::Pytest),
            "command" => Some(ProjectKind::Command),
            _ => None,
        }
    }

    /// The kind as a person would write it: `RSpec`, `pytest`, ...
    pub fn title(self) -> &'static str {
        match self {
            ProjectKind::Rspec => "RSpec",
            ProjectKind::Minitest => "Minitest",
            ProjectKind::Pytest => "pytest",
            ProjectKind::Command => "shell test",
        }
    }
}

/// What `gorgon init` was asked for.
#[derive(Clone, Debug, Default)]
pub struct InitOptions {
    /// The project root, where `gorgon.json` is written.
    pub dir: PathBuf,
    /// `HOST[:PORT]` of RabbitMQ.
    pub broker: Option<String>,
    /// `HOST[:PORT]` of the file server's rsync daemon.
    pub file_server: Option<String>,
    pub force_kind: Option<ProjectKind>,
}

/// What was written.
#[derive(Debug)]
pub struct Initialized {
    pub path: PathBuf,
    pub kind: ProjectKind,
    /// Whether the kind was detected (false when forced, or when nothing was recognised).
    pub detected: bool,
    pub files: Vec<String>,
}

/// Detects the project and writes its `gorgon.json`.
pub fn init(options: &InitOptions) -> Result<Initialized, InitError> {
    let path = options.dir.join(CONFIG_FILE);
    if path.exists() {
        return Err(InitError::Exists(path));
    }
    let (broker_host, broker_port) = address("broker", options.broker.as_deref(), 5672)?;
    let (server_host, server_port) = address(
        "file-server",
        options.file_server.as_deref(),
        gorgon_exec::rsync::DEFAULT_DAEMON_PORT,
    )?;
    let detected = detect(&options.dir);
    let kind = options
        .force_kind
        .or(detected)
        .unwrap_or(ProjectKind::Command);
    let files = globs(kind, &options.dir);
    let text = render(&Rendered {
        project: &project_name(&options.dir),
        kind,
        files: &files,
        database_per_worker: names_databases_per_worker(&options.dir),
        broker: (&broker_host, broker_port),
        file_server: (&server_host, server_port),
    });
    // `create_new` keeps the promise never to overwrite, even against a file that appeared
    // since the check above.
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .and_then(|mut file| std::io::Write::write_all(&mut file, text.as_bytes()));
    match written {
        Ok(()) => Ok(Initialized {
            path,
            kind,
            detected: options.force_kind.is_none() && detected.is_some(),
            files,
        }),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
            Err(InitError::Exists(path))
        }
        Err(source) => Err(InitError::Write { path, source }),
    }
}

fn address(
    flag: &'static str,
    text: Option<&str>,
    default_port: u16,
) -> Result<(String, u16), InitError> {
    match text {
        None => Ok(("127.0.0.1".to_owned(), default_port)),
        Some(text) => host_port(text, default_port).map_err(|e| InitError::BadAddress {
            flag,
            problem: e.to_string(),
        }),
    }
}

/// The kind of project in `dir`, if it is one of the known test frameworks.
pub fn detect(dir: &Path) -> Option<ProjectKind> {
    let specs = find(&dir.join("spec"), &is_spec_file);
    if !specs.is_empty() {
        // `*_spec.rb` files are RSpec's, unless the suite loads Minitest (minitest/spec).
        return Some(if loads_minitest_only(dir, &specs) {
            ProjectKind::Minitest
        } else {
            ProjectKind::Rspec
        });
    }
    if !find(&dir.join("test"), &|name| name.ends_with("_test.rb")).is_empty() {
        return Some(ProjectKind::Minitest);
    }
    let pytest_config = dir.join("conftest.py").is_file()
        || dir.join("pytest.ini").is_file()
        || std::fs::read_to_string(dir.join("pyproject.toml"))
            .is_ok_and(|text| text.contains("pytest"));
    if pytest_config || !find(dir, &is_pytest_file).is_empty() {
        return Some(ProjectKind::Pytest);
    }
    None
}

fn is_spec_file(name: &str) -> bool {
    name.ends_with("_spec.rb")
}

/// How many spec files [`loads_minitest_only`] reads besides the helpers.
const SPEC_FILES_READ: usize = 20;

/// Whether a suite of `*_spec.rb` files is a Minitest suite: no `.rspec`, and its helpers
/// (the `spec/` files whose name holds "helper") and first spec files mention Minitest and
/// never RSpec.
fn loads_minitest_only(dir: &Path, specs: &[PathBuf]) -> bool {
    if dir.join(".rspec").is_file() {
        return false;
    }
    let helpers = find(&dir.join("spec"), &|name| {
        name.ends_with(".rb") && name.contains("helper")
    });
    let texts: Vec<String> = helpers
        .iter()
        .chain(specs.iter().take(SPEC_FILES_READ))
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .collect();
    let mentions = |word: &str| texts.iter().any(|text| text.contains(word));
    mentions("minitest") && !mentions("rspec") && !mentions("RSpec")
}

fn is_pytest_file(name: &str) -> bool {
    name.ends_with(".py") && (name.starts_with("test_") || name.ends_with("_test.py"))
}

/// The `files` globs for a project of `kind`.
fn globs(kind: ProjectKind, dir: &Path) -> Vec<String> {
    match kind {
        ProjectKind::Rspec => vec!["spec/**/*_spec.rb".into()],
        ProjectKind::Minitest
            if find(&dir.join("test"), &|n| n.ends_with("_test.rb")).is_empty() =>
        {
            vec!["spec/**/*_spec.rb".into()]
        }
        ProjectKind::Minitest => vec!["test/**/*_test.rb".into()],
        ProjectKind::Command => vec!["tests/**/*_test.sh".into()],
        ProjectKind::Pytest => {
            // One pair of globs per top folder that holds tests, so that a virtual
            // environment or a vendored package beside them is never searched.
            let mut tops: Vec<Option<String>> = Vec::new();
            for file in find(dir, &is_pytest_file) {
                let relative = file.strip_prefix(dir).unwrap_or(&file);
                let top = (relative.components().count() > 1)
                    .then(|| relative.components().next())
                    .flatten()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned());
                if !tops.contains(&top) {
                    tops.push(top);
                }
            }
            if tops.is_empty() {
                tops.push(Some("tests".into()));
            }
            tops.sort();
            tops.iter()
                .flat_map(|top| match top {
                    Some(top) => [format!("{top}/**/test_*.py"), format!("{top}/**/*_test.py")],
                    None => ["test_*.py".to_owned(), "*_test.py".to_owned()],
                })
                .collect()
        }
    }
}

/// Files under `dir` whose name satisfies `wanted`, skipping hidden and dependency folders.
fn find(dir: &Path, wanted: &dyn Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![(dir.to_owned(), 0)];
    while let Some((folder, depth)) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                let skipped = name.starts_with('.') || SKIPPED_DIRS.contains(&name.as_str());
                if !skipped && depth < MAX_DEPTH {
                    pending.push((entry.path(), depth + 1));
                }
            } else if kind.is_file() && wanted(&name) {
                found.push(entry.path());
            }
        }
    }
    found.sort();
    found
}

/// Whether the project's `config/database.yml` names a database per worker from
/// parallel_tests' `TEST_ENV_NUMBER`, which every worker carries (docs/databases.md).
fn names_databases_per_worker(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("config/database.yml"))
        .is_ok_and(|text| text.contains("TEST_ENV_NUMBER"))
}

/// The callbacks that make each worker's database of a Rails project whose `database.yml`
/// names it from `TEST_ENV_NUMBER`: any adapter, the schema loaded per worker.
const RAILS_DATABASE_CALLBACKS: &str = r#"
    // config/database.yml names each worker's database from TEST_ENV_NUMBER: each worker
    // makes its own before its first file. With PostgreSQL, a template made once per host in
    // before_creating_workers and copied per worker is faster (docs/databases.md).
    "callbacks": { "before_start": "RAILS_ENV=test bin/rails db:drop db:create db:schema:load" },"#;

fn project_name(dir: &Path) -> String {
    std::path::absolute(dir)
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "this project".to_owned())
}

struct Rendered<'a> {
    project: &'a str,
    kind: ProjectKind,
    files: &'a [String],
    /// `config/database.yml` names a database per worker: the callbacks make them.
    database_per_worker: bool,
    broker: (&'a str, u16),
    file_server: (&'a str, u16),
}

/// The commented `gorgon.json`. Values go through serde_json so that any name is escaped.
fn render(config: &Rendered) -> String {
    let json = |value: &str| serde_json::Value::from(value).to_string();
    let files = serde_json::Value::from(config.files.to_vec()).to_string();
    let (runner, exclude) = match config.kind {
        ProjectKind::Rspec => (r#"{ "kind": "rspec" }"#, r#"[".git", "log", "tmp"]"#),
        ProjectKind::Minitest => (r#"{ "kind": "minitest" }"#, r#"[".git", "log", "tmp"]"#),
        ProjectKind::Pytest => (
            r#"{ "kind": "pytest" }"#,
            r#"[".git", ".venv", "__pycache__", ".pytest_cache"]"#,
        ),
        ProjectKind::Command => (
            r#"{ "kind": "command", "command": "sh {file}" }"#,
            r#"[".git"]"#,
        ),
    };
    format!(
        r#"// gorgon.json for {project} ({title} project), written by `gorgon init`.
// `//` comments are allowed. config/gorgon.json.sample and docs/configuration.md describe every key.
// Put the broker password in gorgon_secret.json beside this file, out of version control.
{{
  // The RabbitMQ broker shared by this project and the listeners.
  "connection": {{ "host": {broker_host}, "port": {broker_port}, "username": "guest", "password": "guest", "vhost": "/" }},

  // The machine running `gorgon start_rsync DIR`. The listeners pull the project from it, so
  // this name must resolve on every one of them.
  "file_server": {{ "host": {server_host}, "port": {server_port} }},

  // The test files, relative to this folder. `gorgon start FILE...` replaces them for one run.
  "files": {files},

  "job": {{
    // rsync --exclude patterns, applied when pushing and when pulling.
    "sync": {{ "exclude": {exclude} }},
    // How a worker runs one test file.
    "runner": {runner},{callbacks}
    // Seconds to wait for a first listener to take the job.
    "listener_wait": 60
  }},

  // Timings of earlier runs, so that the slowest files are queued first.
  "runtime_file": "gorgon-runtime.json",
  // The files that did not pass; `gorgon start --failed` runs just those again.
  "failed_files": "gorgon-failed-files.json",
  // A JUnit XML report of every run, for CI (or `gorgon start --junit PATH`):
  // "junit_file": "gorgon-junit.xml",

  // Only listeners with the same cluster_id take this project's jobs.
  "cluster_id": "default"
}}
"#,
        project = config.project,
        title = config.kind.title(),
        callbacks = if config.database_per_worker {
            RAILS_DATABASE_CALLBACKS
        } else {
            ""
        },
        broker_host = json(config.broker.0),
        broker_port = config.broker.1,
        server_host = json(config.file_server.0),
        server_port = config.file_server.1,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Settings;

    fn project(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        dir
    }

    /// Runs `init` and loads what it wrote the way `gorgon start` does.
    fn init_and_load(dir: &Path, options: InitOptions) -> (Initialized, Settings) {
        let done = init(&InitOptions {
            dir: dir.to_owned(),
            ..options
        })
        .unwrap();
        let settings = Settings::load(&done.path).unwrap();
        (done, settings)
    }

    #[test]
    fn an_rspec_project_gets_the_rspec_runner() {
        let dir = project(&[("spec/models/cart_spec.rb", ""), ("Gemfile", "")]);
        let (done, settings) = init_and_load(dir.path(), InitOptions::default());
        assert_eq!(done.kind, ProjectKind::Rspec);
        assert!(done.detected);
        assert_eq!(settings.files, ["spec/**/*_spec.rb"]);
        assert_eq!(settings.runner.kind, gorgon_protocol::RunnerKind::Rspec);
        assert_eq!(settings.broker.host, "127.0.0.1");
        assert_eq!(settings.broker.port, 5672);
        assert_eq!(settings.file_server().unwrap().port, 43434);
        assert_eq!(
            settings.failed_files,
            dir.path().join("gorgon-failed-files.json")
        );
        let text = std::fs::read_to_string(&done.path).unwrap();
        assert!(text.starts_with("// gorgon.json for "), "{text}");
        assert!(text.contains("(RSpec project)"), "{text}");
    }

    #[test]
    fn a_rails_database_per_worker_gets_the_callbacks_that_make_them() {
        let yml =
            "test:\n  adapter: postgresql\n  database: shop_test<%= ENV['TEST_ENV_NUMBER'] %>\n";
        let dir = project(&[
            ("spec/models/cart_spec.rb", ""),
            ("config/database.yml", yml),
        ]);
        let (_, settings) = init_and_load(dir.path(), InitOptions::default());
        assert_eq!(
            settings.callbacks.remote.before_start.as_deref(),
            Some("RAILS_ENV=test bin/rails db:drop db:create db:schema:load")
        );
        assert!(settings.config_keys.unknown.is_empty());
        let plain = project(&[
            ("spec/models/cart_spec.rb", ""),
            ("config/database.yml", "test:\n  database: shop_test\n"),
        ]);
        let (_, settings) = init_and_load(plain.path(), InitOptions::default());
        assert_eq!(settings.callbacks.remote.before_start, None);
    }

    #[test]
    fn a_minitest_project_gets_the_minitest_runner() {
        let dir = project(&[("test/models/cart_test.rb", "")]);
        let (done, settings) = init_and_load(dir.path(), InitOptions::default());
        assert_eq!(done.kind, ProjectKind::Minitest);
        assert_eq!(settings.files, ["test/**/*_test.rb"]);
        assert_eq!(settings.runner.kind, gorgon_protocol::RunnerKind::Minitest);
    }

    #[test]
    fn a_minitest_spec_suite_of_spec_files_is_told_by_what_it_loads() {
        // minitest/spec files named *_spec.rb, whose helper loads Minitest.
        let dir = project(&[
            (
                "spec/spec_helper.rb",
                "require 'minitest/autorun'\nrequire 'minitest/spec'\n",
            ),
            (
                "spec/core/dataset_spec.rb",
                "require_relative '../spec_helper'\ndescribe 'Dataset' do\nend\n",
            ),
        ]);
        let (done, settings) = init_and_load(dir.path(), InitOptions::default());
        assert_eq!(done.kind, ProjectKind::Minitest);
        assert_eq!(settings.files, ["spec/**/*_spec.rb"]);
        assert_eq!(settings.runner.kind, gorgon_protocol::RunnerKind::Minitest);
        // An RSpec suite whose helper also mentions Minitest (say, its assertions) stays RSpec,
        // and so does any suite with an .rspec file.
        let dir = project(&[
            (
                "spec/spec_helper.rb",
                "require 'minitest'\nRSpec.configure { |c| c.expect_with :minitest }\n",
            ),
            ("spec/cart_spec.rb", "RSpec.describe('Cart') {}\n"),
        ]);
        assert_eq!(detect(dir.path()), Some(ProjectKind::Rspec));
        let dir = project(&[
            (".rspec", "--require spec_helper\n"),
            ("spec/spec_helper.rb", "require 'minitest/autorun'\n"),
            ("spec/cart_spec.rb", ""),
        ]);
        assert_eq!(detect(dir.path()), Some(ProjectKind::Rspec));
    }

    #[test]
    fn a_pytest_project_gets_globs_for_the_folders_holding_tests() {
        let dir = project(&[
            ("tests/unit/test_cart.py", ""),
            ("pkg/tax_test.py", ""),
            ("test_root.py", ""),
            (".venv/lib/site-packages/x/test_theirs.py", ""),
        ]);
        let (done, settings) = init_and_load(dir.path(), InitOptions::default());
        assert_eq!(done.kind, ProjectKind::Pytest);
        assert_eq!(
            settings.files,
            [
                "test_*.py",
                "*_test.py",
                "pkg/**/test_*.py",
                "pkg/**/*_test.py",
                "tests/**/test_*.py",
                "tests/**/*_test.py"
            ]
        );
        assert_eq!(settings.runner.kind, gorgon_protocol::RunnerKind::Pytest);
        let files = crate::files::expand(dir.path(), &settings.files, false).unwrap();
        assert_eq!(
            files,
            ["test_root.py", "pkg/tax_test.py", "tests/unit/test_cart.py"]
        );
    }

    #[test]
    fn pytest_is_recognised_by_its_configuration_alone() {
        for marker in [
            ("conftest.py", ""),
            ("pytest.ini", "[pytest]\n"),
            ("pyproject.toml", "[tool.pytest.ini_options]\n"),
        ] {
            let dir = project(&[marker]);
            assert_eq!(detect(dir.path()), Some(ProjectKind::Pytest), "{marker:?}");
        }
        let dir = project(&[("pyproject.toml", "[tool.black]\n")]);
        assert_eq!(detect(dir.path()), None);
    }

    #[test]
    fn anything_else_gets_a_shell_command_runner() {
        let dir = project(&[("tests/math/add_test.sh", "exit 0\n")]);
        let (done, settings) = init_and_load(
            dir.path(),
            InitOptions {
                broker: Some("rabbit.internal:5673".into()),
                file_server: Some("files.internal".into()),
                ..InitOptions::default()
            },
        );
        assert_eq!(done.kind, ProjectKind::Command);
        assert!(!done.detected);
        assert_eq!(settings.files, ["tests/**/*_test.sh"]);
        assert_eq!(settings.runner.kind, gorgon_protocol::RunnerKind::Command);
        assert_eq!(settings.runner.command, "sh {file}");
        assert_eq!(settings.broker.host, "rabbit.internal");
        assert_eq!(settings.broker.port, 5673);
        assert_eq!(settings.file_server().unwrap().host, "files.internal");
        assert_eq!(settings.file_server().unwrap().port, 43434);
    }

    #[test]
    fn a_forced_kind_wins_over_detection() {
        let dir = project(&[("spec/a_spec.rb", "")]);
        let (done, settings) = init_and_load(
            dir.path(),
            InitOptions {
                force_kind: Some(ProjectKind::Command),
                ..InitOptions::default()
            },
        );
        assert_eq!(done.kind, ProjectKind::Command);
        assert_eq!(settings.runner.command, "sh {file}");
    }

    #[test]
    fn an_existing_file_is_never_overwritten() {
        let dir = project(&[("gorgon.json", "{\"mine\": true}")]);
        let error = init(&InitOptions {
            dir: dir.path().to_owned(),
            ..InitOptions::default()
        })
        .unwrap_err();
        assert!(matches!(error, InitError::Exists(_)));
        assert!(error
            .to_string()
            .ends_with("gorgon.json already exists; gorgon init never overwrites it (remove or rename it first, or edit it by hand)"));
        assert_eq!(
            std::fs::read_to_string(dir.path().join("gorgon.json")).unwrap(),
            "{\"mine\": true}"
        );
    }

    #[test]
    fn a_bad_address_is_named_with_its_flag() {
        let dir = project(&[]);
        let error = init(&InitOptions {
            dir: dir.path().to_owned(),
            broker: Some("mq:amqp".into()),
            ..InitOptions::default()
        })
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "--broker: mq:amqp is not HOST[:PORT]: amqp is not a port number"
        );
        assert!(!dir.path().join("gorgon.json").exists());
    }
}
