//! Reading a JUnit XML report (as written by most test frameworks) into per-test results, for
//! the `command` runner when its command names `{junit}`.

use gorgon_protocol::{TestResult, TestStatus};
use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

/// Why a JUnit report could not be read.
#[derive(Debug, thiserror::Error)]
pub enum JunitError {
    #[error("the JUnit report is not well-formed XML at byte {position}: {source}")]
    Xml {
        position: u64,
        #[source]
        source: quick_xml::Error,
    },
    #[error("cannot read the JUnit report {}: {source}", path.display())]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Longest message or details kept per test, in bytes.
const MAX_TEXT: usize = 8 * 1024;

/// Every `<testcase>` of the report, with its status from a `<failure>`, `<error>` or
/// `<skipped>` child (passed when it has none).
pub fn parse(xml: &str) -> Result<Vec<TestResult>, JunitError> {
    let mut reader = Reader::from_str(xml);
    let mut tests = Vec::new();
    let mut current: Option<TestResult> = None;
    // Inside a failure or error element, whose text is the test's details.
    let mut in_problem = false;
    loop {
        let event = reader.read_event().map_err(|source| JunitError::Xml {
            position: reader.buffer_position(),
            source,
        })?;
        let (element, empty) = match event {
            Event::Start(element) => (element, false),
            Event::Empty(element) => (element, true),
            Event::Text(text) if in_problem => {
                if let Some(test) = current.as_mut() {
                    let text = text
                        .unescape()
                        .map(|t| t.into_owned())
                        .unwrap_or_else(|_| String::from_utf8_lossy(&text).into_owned());
                    append_details(test, &text);
                }
                continue;
            }
            Event::CData(text) if in_problem => {
                if let Some(test) = current.as_mut() {
                    append_details(test, &String::from_utf8_lossy(&text));
                }
                continue;
            }
            Event::End(element) => {
                match element.local_name().as_ref() {
                    b"testcase" => tests.extend(current.take()),
                    b"failure" | b"error" => in_problem = false,
                    _ => {}
                }
                continue;
            }
            Event::Eof => break,
            _ => continue,
        };
        if element.local_name().as_ref() == b"testcase" {
            let test = test_case(&element);
            if empty {
                tests.push(test);
            } else {
                current = Some(test);
            }
            continue;
        }
        let Some(test) = current.as_mut() else {
            continue;
        };
        let status = match element.local_name().as_ref() {
            b"failure" => TestStatus::Failed,
            b"error" => TestStatus::Errored,
            b"skipped" => TestStatus::Skipped,
            _ => continue,
        };
        // A failure or error outranks a skip seen on the same test.
        if test.status == TestStatus::Passed || status != TestStatus::Skipped {
            test.status = status;
        }
        if let Some(message) = attribute(&element, b"message") {
            test.message = Some(bounded(message));
        }
        in_problem = status != TestStatus::Skipped && !empty;
    }
    Ok(tests)
}

fn append_details(test: &mut TestResult, text: &str) {
    let details = test.details.get_or_insert_with(String::new);
    details.push_str(text);
    *details = bounded(details.trim().to_owned());
}

fn test_case(element: &BytesStart) -> TestResult {
    let name = attribute(element, b"name").unwrap_or_default();
    TestResult {
        name,
        classname: attribute(element, b"classname").unwrap_or_default(),
        file: attribute(element, b"file"),
        line: attribute(element, b"line").and_then(|l| l.trim().parse().ok()),
        status: TestStatus::Passed,
        seconds: attribute(element, b"time")
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0.0),
        message: None,
        details: None,
        id: None,
    }
}

fn attribute(element: &BytesStart, name: &[u8]) -> Option<String> {
    element
        .attributes()
        .flatten()
        .find(|a| a.key.local_name().as_ref() == name)
        .and_then(|a| a.unescape_value().ok().map(|v| v.into_owned()))
}

fn bounded(mut text: String) -> String {
    if text.len() > MAX_TEXT {
        let mut cut = MAX_TEXT;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("\n[... trimmed ...]");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_test_case_is_read() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<testsuites>
  <testsuite name="cart" tests="4">
    <testcase name="adds tax" classname="Cart" file="spec/cart_spec.rb" line="7" time="0.25">
      <failure message="expected 121, got 120" type="AssertionError">spec/cart_spec.rb:8 &amp; more</failure>
    </testcase>
    <testcase name="counts" classname="Cart" time="0.01"/>
    <testcase name="charges" classname="Pay"><error message="boom"><![CDATA[trace <here>]]></error></testcase>
    <testcase name="prints" classname="Pay"><skipped message="no printer"/></testcase>
  </testsuite>
</testsuites>"#;
        let tests = parse(xml).unwrap();
        assert_eq!(tests.len(), 4, "{tests:?}");
        assert_eq!(tests[0].name, "adds tax");
        assert_eq!(tests[0].status, TestStatus::Failed);
        assert_eq!(tests[0].file.as_deref(), Some("spec/cart_spec.rb"));
        assert_eq!(tests[0].line, Some(7));
        assert_eq!(tests[0].seconds, 0.25);
        assert_eq!(tests[0].message.as_deref(), Some("expected 121, got 120"));
        assert_eq!(
            tests[0].details.as_deref(),
            Some("spec/cart_spec.rb:8 & more")
        );
        assert_eq!(tests[1].status, TestStatus::Passed);
        assert_eq!(tests[1].name, "counts");
        assert_eq!(tests[2].status, TestStatus::Errored);
        assert_eq!(tests[2].details.as_deref(), Some("trace <here>"));
        assert_eq!(tests[3].status, TestStatus::Skipped);
        assert_eq!(tests[3].message.as_deref(), Some("no printer"));
    }

    #[test]
    fn broken_xml_is_an_error() {
        let error = parse("<testsuite><testcase name='a'></testsuite>").unwrap_err();
        assert!(error.to_string().contains("not well-formed"), "{error}");
    }
}
