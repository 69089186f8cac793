//! Reading Gorgon's configuration files: JSON with `//` and `/* */` comments, and an optional
//! second file deep-merged over the first (`gorgon_secret.json` over `gorgon.json`).

use std::path::{Path, PathBuf};

use serde_json::Value;

/// A configuration file that could not be read or parsed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not valid JSON: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path} must hold a JSON object at the top level")]
    NotAnObject { path: PathBuf },
}

/// Reads `path` as a JSON object, then deep-merges `overlay` over it when that file exists.
pub fn load_merged(path: &Path, overlay: Option<&Path>) -> Result<Value, ConfigFileError> {
    let mut base = load(path)?;
    if let Some(overlay) = overlay.filter(|p| p.exists()) {
        deep_merge(&mut base, load(overlay)?);
    }
    Ok(base)
}

/// Reads one JSON-with-comments file holding an object.
pub fn load(path: &Path) -> Result<Value, ConfigFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    let value: Value =
        serde_json::from_str(&strip_comments(&text)).map_err(|source| ConfigFileError::Parse {
            path: path.to_owned(),
            source,
        })?;
    if !value.is_object() {
        return Err(ConfigFileError::NotAnObject {
            path: path.to_owned(),
        });
    }
    Ok(value)
}

/// Replaces comments outside strings with spaces, keeping newlines so that parse errors still
/// point at the right line and column.
pub fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    let mut in_string = false;
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            match c {
                '\\' => {
                    if let Some(escaped) = chars.next() {
                        out.push(escaped);
                    }
                }
                '"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match (c, chars.peek()) {
            ('"', _) => {
                in_string = true;
                out.push(c);
            }
            ('/', Some('/')) => {
                for next in chars.by_ref() {
                    if next == '\n' {
                        out.push('\n');
                        break;
                    }
                    out.push(' ');
                }
            }
            ('/', Some('*')) => {
                chars.next();
                out.push_str("  ");
                let mut previous = ' ';
                for next in chars.by_ref() {
                    out.push(if next == '\n' { '\n' } else { ' ' });
                    if previous == '*' && next == '/' {
                        break;
                    }
                    previous = next;
                }
            }
            _ => out.push(c),
        }
    }
    out
}

/// Merges `overlay` into `base`: objects merge key by key, recursively; anything else
/// (arrays included) in the overlay replaces what was there.
pub fn deep_merge(base: &mut Value, overlay: Value) {
    match (base, overlay) {
        (Value::Object(base), Value::Object(overlay)) => {
            for (key, value) in overlay {
                match base.get_mut(&key) {
                    Some(existing) => deep_merge(existing, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, overlay) => *base = overlay,
    }
}

/// One object of a configuration file and what gorgon-rs knows of its keys, for
/// [`check_keys`].
#[derive(Clone, Copy, Debug)]
pub struct Section {
    /// Where the object is, as dotted keys: `""` for the top of the file, `"job.sync"`.
    pub at: &'static str,
    /// The keys gorgon-rs reads here.
    pub known: &'static [&'static str],
    /// Keys accepted and not used: Ruby Gorgon's (the amqp gem's `connection.timeout`), or
    /// another role's (a secrets file shared with `start_rsync`). One informational line each.
    pub ignored: &'static [&'static str],
    /// The object decides whom the cluster trusts (the broker and its TLS, the file server,
    /// what leaves this machine): a key nobody reads in it is refused, not ignored.
    pub guarded: bool,
    /// Keys of an unguarded object that decide whom the cluster trusts (the signing keys at
    /// the top of a file), known as `known` are: a key near one of them, or one whose name
    /// speaks of keys and secrets ([`SECURITY_WORDS`]), is refused too.
    pub guarded_keys: &'static [&'static str],
}

/// The objects every config file (`gorgon.json`, `gorgon_listener.json`) has: its top, which
/// reads `top` and the keys that decide whom the cluster trusts ([`TRUST_KEYS`]) and accepts
/// Gorgon's `bin_gem_path`; `connection` and its `tls`
/// ([`crate::connection::CONNECTION_SECTIONS`]); and `file_server`, guarded, which reads
/// `file_server` and accepts `file_server_ignored` (the other role's keys).
pub const fn shared_sections(
    top: &'static [&'static str],
    file_server: &'static [&'static str],
    file_server_ignored: &'static [&'static str],
) -> [Section; 4] {
    let [connection, tls] = crate::connection::CONNECTION_SECTIONS;
    [
        Section {
            at: "",
            known: top,
            ignored: &["bin_gem_path"],
            guarded: false,
            guarded_keys: TRUST_KEYS,
        },
        connection,
        tls,
        Section {
            at: "file_server",
            known: file_server,
            ignored: file_server_ignored,
            guarded: true,
            guarded_keys: &[],
        },
    ]
}

/// The keys at the top of every config file that decide whom the cluster trusts (the
/// `guarded_keys` of the top of `gorgon.json` and `gorgon_listener.json`): the broker, the
/// file server and the signing keys.
pub const TRUST_KEYS: &[&str] = &[
    "connection",
    "file_server",
    "signing_key",
    "signing_key_file",
    "previous_signing_key",
    "previous_signing_key_file",
];

impl Section {
    /// Whether gorgon-rs reads `key` here.
    fn knows(&self, key: &str) -> bool {
        self.known.contains(&key) || self.guarded_keys.contains(&key)
    }
}

/// Words that make an unknown key in a section with `guarded_keys` a refused one: such a key
/// was surely meant to protect something.
pub const SECURITY_WORDS: [&str; 7] = ["sign", "key", "secret", "password", "tls", "ssl", "cert"];

/// A key of a configuration file that gorgon-rs does not read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownKey {
    /// Its path in the file: `job.retires`.
    pub key: String,
    /// The known key nearest to it (by edit distance, or the same key in another object),
    /// when one is near enough to be what was meant.
    pub nearest: Option<String>,
}

impl std::fmt::Display for UnknownKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unknown key {}", self.key)?;
        match &self.nearest {
            Some(nearest) => write!(f, " (did you mean {nearest}?)"),
            None => Ok(()),
        }
    }
}

/// What the keys of a configuration file say besides their values.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyReport {
    /// Keys accepted and not used ([`Section::ignored`]), by path.
    pub ignored: Vec<String>,
    /// Keys nobody reads outside the guarded places: each is a warning, and is ignored.
    pub unknown: Vec<UnknownKey>,
}

impl KeyReport {
    /// The informational lines: one per key accepted and not used.
    pub fn ignored_lines(&self) -> Vec<String> {
        self.ignored
            .iter()
            .map(|key| {
                format!("{key} is not used by gorgon-rs (a key of Ruby Gorgon's, or of another role's file); ignored")
            })
            .collect()
    }

    /// The warnings: one per unknown key, naming the nearest known one.
    pub fn warning_lines(&self) -> Vec<String> {
        self.unknown
            .iter()
            .map(|key| format!("{key}; ignored"))
            .collect()
    }
}

/// An unknown key where a mistake could leave the cluster unguarded (a misspelt
/// `signing_key_file` runs it unsigned): refused rather than ignored.
#[derive(Debug, thiserror::Error)]
#[error("{key}: a key nobody reads in {place} is refused, since ignoring it could leave the cluster unguarded; fix or remove it")]
pub struct GuardedKey {
    pub key: UnknownKey,
    /// The guarded place it is in, in words: `connection`, `file_server`, or the keys that
    /// decide whom the cluster trusts (at the top of a file).
    pub place: String,
}

/// Sorts the keys of `config` by `sections`: keys accepted and not used, unknown keys (each
/// with the nearest known key), and the first unknown key of a guarded place as an error.
pub fn check_keys(config: &Value, sections: &[Section]) -> Result<KeyReport, GuardedKey> {
    let mut report = KeyReport::default();
    for section in sections {
        let object = section
            .at
            .split('.')
            .filter(|part| !part.is_empty())
            .try_fold(config, |value, part| value.get(part))
            .and_then(Value::as_object);
        let prefix = match section.at {
            "" => String::new(),
            at => format!("{at}."),
        };
        for key in object.into_iter().flat_map(|object| object.keys()) {
            if section.knows(key) {
                continue;
            }
            if section.ignored.contains(&key.as_str()) {
                report.ignored.push(format!("{prefix}{key}"));
                continue;
            }
            let near = nearest_of(key, section.known.iter().chain(section.guarded_keys));
            let unknown = UnknownKey {
                key: format!("{prefix}{key}"),
                nearest: near
                    .map(|known| format!("{prefix}{known}"))
                    .or_else(|| elsewhere(key, section, sections)),
            };
            if let Some(place) = guarded_place(section, key, near) {
                return Err(GuardedKey {
                    key: unknown,
                    place,
                });
            }
            report.unknown.push(unknown);
        }
    }
    Ok(report)
}

/// Where an unknown `key` of `section` is refused (in words), if it is; `near` is the known
/// key nearest to it.
fn guarded_place(section: &Section, key: &str, near: Option<&str>) -> Option<String> {
    if section.guarded {
        return Some(section.at.to_owned());
    }
    let lower = key.to_lowercase();
    let near_guarded = near.is_some_and(|near| section.guarded_keys.contains(&near));
    let sounds_guarded =
        !section.guarded_keys.is_empty() && SECURITY_WORDS.iter().any(|word| lower.contains(word));
    (near_guarded || sounds_guarded).then(|| {
        format!(
            "the keys that decide whom the cluster trusts ({})",
            section.guarded_keys.join(", ")
        )
    })
}

/// The path of `key` in another section of `sections` that knows it (a key put in the wrong
/// object: `retries` at the top for `job.retries`).
fn elsewhere(key: &str, section: &Section, sections: &[Section]) -> Option<String> {
    sections
        .iter()
        .filter(|other| other.at != section.at && other.knows(key))
        .map(|other| match other.at {
            "" => key.to_owned(),
            at => format!("{at}.{key}"),
        })
        .next()
}

/// The key of `known` nearest to `key`, when it is near enough to be a slip: at most one
/// edit per three characters (and always one), a swap of two neighbours counting one. Of
/// two as near, the one of the closer length (`hots` is `host`, not `hosts`).
pub fn nearest<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    nearest_of(key, known.iter())
}

/// [`nearest`] among `known`.
fn nearest_of<'a, 'k: 'a>(key: &str, known: impl Iterator<Item = &'a &'k str>) -> Option<&'k str> {
    let key = key.to_lowercase();
    let length = key.chars().count();
    let allowed = (length / 3).max(1);
    known
        .map(|candidate| (edit_distance(&key, &candidate.to_lowercase()), *candidate))
        .filter(|(distance, _)| *distance <= allowed)
        .min_by_key(|(distance, candidate)| (*distance, candidate.chars().count().abs_diff(length)))
        .map(|(_, candidate)| candidate)
}

/// The optimal string alignment distance: insertions, deletions, substitutions and swaps of
/// neighbouring characters, one each.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // rows[i][j]: the distance between the first i characters of a and the first j of b.
    let mut rows: Vec<Vec<usize>> = (0..=a.len())
        .map(|i| (0..=b.len()).map(|j| if i == 0 { j } else { i }).collect())
        .collect();
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (rows[i - 1][j] + 1)
                .min(rows[i][j - 1] + 1)
                .min(rows[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = best;
        }
    }
    rows[a.len()][b.len()]
}

/// A value of a configuration file of the wrong type, named by its key's path
/// (`files: invalid type: string "t/*.sh", expected a sequence`).
#[derive(Debug, thiserror::Error)]
#[error("{}{source}", key_prefix(key))]
pub struct WrongType {
    /// The path of the key (`job.runner.args`, `phases[1].files`); empty for the whole file.
    pub key: String,
    #[source]
    pub source: serde_json::Error,
}

fn key_prefix(key: &str) -> String {
    match key {
        "" => String::new(),
        key => format!("{key}: "),
    }
}

/// Reads `value` (found at `prefix`, `""` for a whole file) as a `T`; a value of the wrong
/// type is named by its key's path.
pub fn from_value<T: serde::de::DeserializeOwned>(
    value: Value,
    prefix: &str,
) -> Result<T, WrongType> {
    serde_path_to_error::deserialize(value).map_err(|error| {
        let inner = error.path().to_string();
        let key = match (prefix, inner.as_str()) {
            (prefix, ".") => prefix.to_owned(),
            ("", inner) => inner.to_owned(),
            (prefix, inner) => format!("{prefix}.{inner}"),
        };
        WrongType {
            key,
            source: error.into_inner(),
        }
    })
}

/// A `HOST[:PORT]` written on a command line that is not one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("{text} is not HOST[:PORT]")]
    NotHostPort { text: String },
    #[error("{text} is not HOST[:PORT]: a ']' is missing")]
    Unclosed { text: String },
    #[error("{text} is not HOST[:PORT]: the host is missing")]
    NoHost { text: String },
    #[error("{text} is not HOST[:PORT]: {port} is not a port number")]
    BadPort { text: String, port: String },
}

/// Splits a `HOST[:PORT]` written on a command line, with `default_port` when none is given.
/// An IPv6 address is written in brackets: `[::1]:5672`.
pub fn host_port(text: &str, default_port: u16) -> Result<(String, u16), AddressError> {
    let text = text.trim();
    let (host, port) = match text.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((host, "")) => (host, None),
            Some((host, port)) => match port.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return Err(AddressError::NotHostPort { text: text.into() }),
            },
            None => return Err(AddressError::Unclosed { text: text.into() }),
        },
        None => match text.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        },
    };
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(AddressError::NoHost { text: text.into() });
    }
    let port =
        match port {
            None => default_port,
            Some(port) => port.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
                AddressError::BadPort {
                    text: text.into(),
                    port: port.into(),
                }
            })?,
        };
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    #[test]
    fn host_and_port_are_split() {
        use super::host_port;
        assert_eq!(host_port("mq", 5672), Ok(("mq".into(), 5672)));
        assert_eq!(host_port("mq:5673", 5672), Ok(("mq".into(), 5673)));
        assert_eq!(host_port("[::1]:99", 5672), Ok(("::1".into(), 99)));
        assert_eq!(host_port("[::1]", 5672), Ok(("::1".into(), 5672)));
        assert!(host_port("mq:http", 5672)
            .unwrap_err()
            .to_string()
            .contains("http is not a port number"));
        assert!(host_port(":5672", 5672)
            .unwrap_err()
            .to_string()
            .contains("host is missing"));
    }

    use super::*;
    use serde_json::json;

    #[test]
    fn the_nearest_key_is_one_slip_away_at_most_a_third_of_the_name() {
        let known = [
            "signing_key",
            "signing_key_file",
            "retries",
            "host",
            "hosts",
        ];
        assert_eq!(nearest("signing_key_fil", &known), Some("signing_key_file"));
        assert_eq!(nearest("Signing_Key", &known), Some("signing_key"));
        assert_eq!(nearest("retires", &known), Some("retries"));
        assert_eq!(nearest("hots", &known), Some("host"));
        assert_eq!(nearest("hostz", &known), Some("hosts"));
        assert_eq!(nearest("colour", &known), None);
        assert_eq!(nearest("rtrs", &known), None);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("abcd", "abdc"), 1);
    }

    const SECTIONS: [Section; 3] = [
        Section {
            at: "",
            known: &["job", "guard", "signing_key"],
            ignored: &["bin_gem_path"],
            guarded: false,
            guarded_keys: &["guard", "signing_key"],
        },
        Section {
            at: "job",
            known: &["retries", "sync"],
            ignored: &[],
            guarded: false,
            guarded_keys: &[],
        },
        Section {
            at: "guard",
            known: &["host"],
            ignored: &["timeout"],
            guarded: true,
            guarded_keys: &[],
        },
    ];

    #[test]
    fn keys_are_sorted_into_ignored_unknown_and_refused() {
        let report = check_keys(
            &json!({"bin_gem_path": "/x", "retries": 1, "zz": 1, "job": {"retires": 2, "tls": 1},
                    "guard": {"host": "h", "timeout": 5}}),
            &SECTIONS,
        )
        .unwrap();
        assert_eq!(report.ignored, ["bin_gem_path", "guard.timeout"]);
        assert_eq!(
            report.warning_lines(),
            [
                "unknown key retries (did you mean job.retries?); ignored",
                "unknown key zz; ignored",
                "unknown key job.retires (did you mean job.retries?); ignored",
                // Words of keys and secrets weigh only where the guarded keys are.
                "unknown key job.tls; ignored",
            ]
        );
        for (config, said) in [
            (json!({"guard": {"hots": "h"}}), "unknown key guard.hots (did you mean guard.host?): a key nobody reads in guard is refused"),
            (json!({"signing_ky": "k"}), "unknown key signing_ky (did you mean signing_key?): a key nobody reads in the keys that decide whom the cluster trusts (guard, signing_key) is refused"),
            (json!({"gaurd": {}}), "unknown key gaurd (did you mean guard?)"),
            (json!({"tls_cert": "c.pem"}), "unknown key tls_cert: a key nobody reads in the keys"),
            (json!({"my_password": "p"}), "unknown key my_password: a key nobody reads in the keys"),
        ] {
            let refused = check_keys(&config, &SECTIONS).unwrap_err().to_string();
            assert!(refused.starts_with(said), "{config}: {refused}");
        }
        // A guarded object that is not an object (a type error, told by serde) is skipped.
        assert_eq!(
            check_keys(&json!({"guard": true}), &SECTIONS).unwrap(),
            KeyReport::default()
        );
    }

    #[test]
    fn a_value_of_the_wrong_type_is_named_by_its_path() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Config {
            files: Vec<String>,
            #[serde(default)]
            job: Option<Job>,
        }
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Job {
            args: Vec<String>,
        }
        let named = |value: Value, prefix: &str| {
            from_value::<Config>(value, prefix).unwrap_err().to_string()
        };
        assert_eq!(
            named(json!({"files": "tests/*_test.sh"}), ""),
            "files: invalid type: string \"tests/*_test.sh\", expected a sequence"
        );
        assert_eq!(
            named(json!({"files": [], "job": {"args": ["a", 2]}}), ""),
            "job.args[1]: invalid type: integer `2`, expected a string"
        );
        assert_eq!(
            named(json!({"files": [3]}), "connection"),
            "connection.files[0]: invalid type: integer `3`, expected a string"
        );
        assert_eq!(
            named(json!("rabbit"), "connection"),
            "connection: invalid type: string \"rabbit\", expected struct Config"
        );
    }

    #[test]
    fn comments_are_ignored_but_strings_kept() {
        let text = r#"{
            // a line comment
            "rsync_transport": "ssh", // or "anonymous"
            /* a block
               comment */ "url": "http://x/y//z", "s": "a\"//b"
        }"#;
        let value: Value = serde_json::from_str(&strip_comments(text)).unwrap();
        assert_eq!(
            value,
            json!({"rsync_transport": "ssh", "url": "http://x/y//z", "s": "a\"//b"})
        );
    }

    #[test]
    fn parse_errors_keep_their_line() {
        let text = "{\n // c\n \"a\": ,\n}";
        let err = serde_json::from_str::<Value>(&strip_comments(text)).unwrap_err();
        assert_eq!(err.line(), 3);
    }

    #[test]
    fn deep_merge_merges_objects_and_replaces_the_rest() {
        let mut base =
            json!({"connection": {"host": "h", "password": "x"}, "files": ["a"], "k": 1});
        deep_merge(
            &mut base,
            json!({"connection": {"password": "secret"}, "files": ["b"], "new": true}),
        );
        assert_eq!(
            base,
            json!({"connection": {"host": "h", "password": "secret"}, "files": ["b"], "k": 1, "new": true})
        );
    }

    #[test]
    fn load_merged_uses_the_overlay_only_when_present() {
        let dir = std::env::temp_dir().join(format!("gorgon-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let main = dir.join("gorgon.json");
        let secret = dir.join("gorgon_secret.json");
        std::fs::write(&main, r#"{"connection": {"host": "h"}} // trailing"#).unwrap();
        let merged = load_merged(&main, Some(&secret)).unwrap();
        assert_eq!(merged, json!({"connection": {"host": "h"}}));
        std::fs::write(&secret, r#"{"connection": {"password": "p"}}"#).unwrap();
        let merged = load_merged(&main, Some(&secret)).unwrap();
        assert_eq!(
            merged,
            json!({"connection": {"host": "h", "password": "p"}})
        );
        std::fs::write(&main, "[1]").unwrap();
        assert!(matches!(
            load_merged(&main, None),
            Err(ConfigFileError::NotAnObject { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
