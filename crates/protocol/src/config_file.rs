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

/// The keys of the object `value` that are not in `known`, each named by its path in the file
/// (`prefix` and the key: `job.sync.source_tree_path`); none when `value` is not an object.
pub fn unknown_keys(value: &Value, prefix: &str, known: &[&str]) -> Vec<String> {
    value
        .as_object()
        .into_iter()
        .flat_map(|object| object.keys())
        .filter(|key| !known.contains(&key.as_str()))
        .map(|key| format!("{prefix}{key}"))
        .collect()
}

/// The informational line that names a key of a config file gorgon-rs does not use.
pub fn unused_key_line(key: &str) -> String {
    format!("{key} is not used by gorgon-rs (a key of Ruby Gorgon's, or unknown); ignored")
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
