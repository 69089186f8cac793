//! `job.sync.exclude` patterns matched as rsync matches them, so that the tree the
//! originator lists (its manifest, its links) is the tree rsync pushes.

/// A pattern this matcher cannot hold; it is refused rather than guessed at, since a tree
/// listed otherwise than rsync pushes it would be refused by every listener.
#[derive(Debug, thiserror::Error)]
#[error("job.sync.exclude has the pattern \"{pattern}\", which gorgon-rs cannot match as rsync does ({reason}); write it with `*`, `**`, `?` and `[...]` only")]
pub struct ExcludeError {
    pub pattern: String,
    pub reason: String,
}

/// One `job.sync.exclude` pattern: a trailing `/` matches only folders; a leading `/`
/// anchors it at the project root; a pattern with a `/` or `**` is matched against the end
/// of the path, at a folder boundary, and one without against the name alone; `*` stops
/// at `/`, `**` does not.
#[derive(Debug)]
pub struct Exclude {
    pattern: glob::Pattern,
    anchored: bool,
    folders_only: bool,
    whole_path: bool,
}

impl Exclude {
    pub fn new(raw: &str) -> Result<Exclude, ExcludeError> {
        let refuse = |reason: String| ExcludeError {
            pattern: raw.to_owned(),
            reason,
        };
        let (inner, folders_only) = match raw.strip_suffix('/') {
            Some(inner) => (inner, true),
            None => (raw, false),
        };
        let (inner, anchored) = match inner.strip_prefix('/') {
            Some(inner) => (inner, true),
            None => (inner, false),
        };
        if inner.contains('\\') {
            return Err(refuse("a backslash".into()));
        }
        let pattern = glob::Pattern::new(inner).map_err(|e| refuse(e.msg.to_owned()))?;
        Ok(Exclude {
            pattern,
            anchored,
            folders_only,
            whole_path: anchored || inner.contains('/') || inner.contains("**"),
        })
    }

    /// Every pattern of `raw`, or the first that cannot be matched.
    pub fn all(raw: &[String]) -> Result<Vec<Exclude>, ExcludeError> {
        raw.iter().map(|pattern| Exclude::new(pattern)).collect()
    }

    /// Whether it keeps `relative` (a path below the root, `/` between its parts) from the
    /// push.
    pub fn matches(&self, relative: &str, is_folder: bool) -> bool {
        let options = glob::MatchOptions {
            require_literal_separator: true,
            ..glob::MatchOptions::new()
        };
        if self.folders_only && !is_folder {
            return false;
        }
        if !self.whole_path {
            let name = relative.rsplit('/').next().unwrap_or(relative);
            return self.pattern.matches_with(name, options);
        }
        if self.anchored {
            return self.pattern.matches_with(relative, options);
        }
        std::iter::once(relative)
            .chain(
                relative
                    .match_indices('/')
                    .map(|(at, _)| &relative[at + 1..]),
            )
            .any(|tail| self.pattern.matches_with(tail, options))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_as_rsync_matches_them() {
        let cases = [
            (".git", ".git", true, true),
            (".git", "a/.git", true, true),
            ("tmp/", "tmp", false, false),
            ("tmp/", "a/tmp", true, true),
            ("/log", "log", false, true),
            ("/log", "a/log", false, false),
            ("a/b", "x/a/b", false, true),
            ("a/b", "xa/b", false, false),
            ("*.key", "d/e/k.key", false, true),
            ("cache/*", "cache/x/y", false, false),
            ("cache/**", "cache/x/y", false, true),
        ];
        for (pattern, path, is_folder, expected) in cases {
            let exclude = Exclude::new(pattern).unwrap();
            assert_eq!(
                exclude.matches(path, is_folder),
                expected,
                "{pattern} on {path}"
            );
        }
    }

    #[test]
    fn patterns_it_cannot_match_are_refused_by_name() {
        let error = Exclude::new("a**b").unwrap_err().to_string();
        assert!(
            error.starts_with("job.sync.exclude has the pattern \"a**b\""),
            "{error}"
        );
        assert!(Exclude::new("a\\*").is_err());
        assert!(Exclude::all(&["log/".into(), "[".into()]).is_err());
    }
}
