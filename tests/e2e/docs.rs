//! The documentation's links: every relative link of `README.md` and `docs/*.md` names a file
//! that exists and, with an `#anchor`, a heading of that page; external links are checked
//! for their form only, so the test needs no network.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One page's links and the anchors its headings make.
struct Page {
    links: Vec<String>,
    anchors: BTreeSet<String>,
}

/// Reads a Markdown page into its links and heading anchors, skipping fenced code blocks.
fn read_page(text: &str) -> Page {
    let mut links = Vec::new();
    let mut anchors = BTreeSet::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut fence: Option<&str> = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if let Some(open) = fence {
            if trimmed.starts_with(open) {
                fence = None;
            }
            continue;
        }
        if let Some(marker) = ["```", "~~~"].into_iter().find(|m| trimmed.starts_with(m)) {
            fence = Some(marker);
            continue;
        }
        if let Some(heading) = heading_text(trimmed) {
            // GitHub numbers a repeated heading's anchor: `name`, `name-1`, `name-2`...
            let slug = slug(&heading);
            let count = seen.entry(slug.clone()).or_insert(0);
            anchors.insert(match *count {
                0 => slug.clone(),
                n => format!("{slug}-{n}"),
            });
            *count += 1;
        }
        links.extend(line_links(line));
    }
    Page { links, anchors }
}

/// The text of an ATX heading (`## Title ##`), or `None` for any other line.
fn heading_text(line: &str) -> Option<String> {
    let level = line.chars().take_while(|c| *c == '#').count();
    let rest = &line[level..];
    if !(1..=6).contains(&level) || !(rest.is_empty() || rest.starts_with(' ')) {
        return None;
    }
    Some(rest.trim().trim_end_matches('#').trim().to_owned())
}

/// GitHub's anchor for a heading: its rendered text in lower case, without punctuation but
/// `-` and `_`, each space a `-`.
fn slug(heading: &str) -> String {
    let mut rendered = String::new();
    let mut rest = heading;
    // A link in a heading renders as its text.
    while let Some(start) = rest.find('[') {
        rendered.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        match after.find("](").and_then(|mid| {
            let close = after[mid..].find(')')?;
            Some((mid, mid + close))
        }) {
            Some((mid, close)) => {
                rendered.push_str(&after[..mid]);
                rest = &after[close + 1..];
            }
            None => {
                rendered.push('[');
                rest = after;
            }
        }
    }
    rendered.push_str(rest);
    rendered
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The targets of a line's inline links and images (`[text](target)`, `![alt](target)`)
/// and of a reference definition (`[name]: target`), leaving out code spans.
fn line_links(line: &str) -> Vec<String> {
    let text = without_code_spans(line);
    let mut targets = Vec::new();
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        if let Some(end) = trimmed.find("]:") {
            if let Some(target) = trimmed[end + 2..].split_whitespace().next() {
                targets.push(target.to_owned());
            }
        }
    }
    let mut rest = text.as_str();
    while let Some(start) = rest.find("](") {
        let after = &rest[start + 2..];
        // The target ends at the `)` that closes the one opened, so `a_(b).md` stays whole.
        let mut depth = 0usize;
        let end = after
            .char_indices()
            .find(|(_, c)| match c {
                '(' => {
                    depth += 1;
                    false
                }
                ')' if depth == 0 => true,
                ')' => {
                    depth -= 1;
                    false
                }
                _ => false,
            })
            .map_or(after.len(), |(i, _)| i);
        let inside = after[..end].trim();
        let target = match inside.strip_prefix('<') {
            Some(angled) => angled.split('>').next().unwrap_or_default(),
            // A title (`[a](b.md "Title")`) follows the target after a space.
            None => inside.split_whitespace().next().unwrap_or_default(),
        };
        targets.push(target.to_owned());
        rest = &after[end..];
    }
    targets
}

/// The line with its code spans (`` `...` ``) blanked, since a link in code is not a link.
fn without_code_spans(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut in_code = false;
    for c in line.chars() {
        if c == '`' {
            in_code = !in_code;
            out.push(' ');
        } else if in_code {
            out.push(' ');
        } else {
            out.push(c);
        }
    }
    out
}

/// Every broken link of the pages under `root` (`README.md` and `docs/*.md`), one sentence
/// each naming the page, the link and why.
fn broken_links(root: &Path) -> Vec<String> {
    let mut pages = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/ can be read")
        .map(|entry| entry.expect("docs/ can be listed").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    let mut read: BTreeMap<PathBuf, Page> = BTreeMap::new();
    let mut page_of = |path: &Path| -> Option<BTreeSet<String>> {
        let path = path.canonicalize().ok()?;
        if !read.contains_key(&path) {
            let text = std::fs::read_to_string(&path).ok()?;
            read.insert(path.clone(), read_page(&text));
        }
        Some(read[&path].anchors.clone())
    };
    let mut problems = Vec::new();
    for page in &pages {
        let text = std::fs::read_to_string(page).expect("a documentation page can be read");
        let name = page
            .strip_prefix(root)
            .unwrap_or(page)
            .display()
            .to_string();
        for link in read_page(&text).links {
            if let Some(why) = link_problem(page, &link, &mut page_of) {
                // Paths relative to the repository read better than absolute ones.
                let why = why.replace(&format!("{}/", root.display()), "");
                problems.push(format!("{name}: link `{link}`: {why}"));
            }
        }
    }
    problems
}

/// Why `link` on `page` is broken, or `None` when it holds.
fn link_problem(
    page: &Path,
    link: &str,
    anchors_of: &mut impl FnMut(&Path) -> Option<BTreeSet<String>>,
) -> Option<String> {
    if link.is_empty() {
        return Some("the link has no target".to_owned());
    }
    if let Some(address) = link
        .strip_prefix("https://")
        .or_else(|| link.strip_prefix("http://"))
    {
        let host = address.split(['/', '?', '#']).next().unwrap_or_default();
        let well_formed = host.contains('.')
            && !host.starts_with('.')
            && !host.ends_with('.')
            && !link.contains(char::is_whitespace);
        return (!well_formed).then(|| "the web address is malformed".to_owned());
    }
    if link.contains("://") || link.starts_with("mailto:") {
        return None;
    }
    let (file, anchor) = match link.split_once('#') {
        Some((file, anchor)) => (file, Some(anchor)),
        None => (link, None),
    };
    if file.starts_with('/') {
        return Some("an absolute path does not resolve on GitHub; use a relative one".to_owned());
    }
    let target = match file {
        "" => page.to_owned(),
        file => page.parent().unwrap_or(Path::new(".")).join(file),
    };
    if !target.exists() {
        return Some(format!("{} does not exist", target.display()));
    }
    let anchor = anchor?;
    if target.is_dir() || target.extension().is_none_or(|ext| ext != "md") {
        return Some("an anchor needs a Markdown page".to_owned());
    }
    match anchors_of(&target) {
        Some(anchors) if anchors.contains(anchor) => None,
        Some(_) => Some(format!(
            "no heading of {} has the anchor #{anchor}",
            target.display()
        )),
        None => Some(format!("{} cannot be read", target.display())),
    }
}

#[test]
fn every_link_of_the_readme_and_the_docs_holds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let problems = broken_links(root);
    assert!(
        problems.is_empty(),
        "broken links in the documentation:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_link_check_names_each_kind_of_broken_link() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("docs")).unwrap();
    std::fs::write(
        root.path().join("README.md"),
        "# The project\n\n## Quick start: `gorgon start --local`\n\n\
         [ok](#quick-start-gorgon-start---local) [page](docs/a.md#second-part)\n\
         [gone](docs/missing.md) [no heading](#nowhere) [web](https://example.com/x)\n\
         [bad web](https://nohost) `[in code](docs/missing-too.md)`\n\n\
         ```\n[in a fence](docs/missing-as-well.md)\n```\n",
    )
    .unwrap();
    std::fs::write(
        root.path().join("docs/a.md"),
        "# A\n\n## Second part\n\n[back](../README.md#the-project) [other](a.md#third-part)\n",
    )
    .unwrap();
    let problems = broken_links(root.path());
    let expected = [
        ("README.md: link `docs/missing.md`", "does not exist"),
        ("README.md: link `#nowhere`", "has the anchor #nowhere"),
        ("README.md: link `https://nohost`", "malformed"),
        (
            "docs/a.md: link `a.md#third-part`",
            "has the anchor #third-part",
        ),
    ];
    assert_eq!(problems.len(), expected.len(), "{problems:#?}");
    for ((start, why), problem) in expected.iter().zip(&problems) {
        assert!(
            problem.starts_with(start) && problem.contains(why),
            "expected {start} ... {why}, got {problem}"
        );
    }
}

#[test]
fn anchors_are_made_as_github_makes_them() {
    assert_eq!(
        slug("Running on one machine: `gorgon start --local`"),
        "running-on-one-machine-gorgon-start---local"
    );
    assert_eq!(
        slug("`gorgon.json` (the project)"),
        "gorgonjson-the-project"
    );
    assert_eq!(
        slug("Exit codes of `gorgon start`"),
        "exit-codes-of-gorgon-start"
    );
    assert_eq!(
        slug("The job's Ruby preload process"),
        "the-jobs-ruby-preload-process"
    );
    assert_eq!(slug("allow_root and [links](x.md)"), "allow_root-and-links");
    let page = read_page("# Same\n## Same\n### Same\n");
    assert!(["same", "same-1", "same-2"]
        .iter()
        .all(|a| page.anchors.contains(*a)));
}
