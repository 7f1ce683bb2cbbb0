//! Reading Lifeline documents from YAML text: size limits, multi-document streams,
//! `apiVersion`/`kind` dispatch, and typed decoding with field paths in every error.

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;

use crate::{API_VERSION, FailoverPolicy, MemberCluster, validate, validate::Problem};

/// Largest document file accepted. Policy files are small; anything bigger is a mistake
/// (or hostile) and is refused before parsing.
pub const MAX_FILE_BYTES: usize = 1024 * 1024;

/// A decoded Lifeline resource.
#[derive(Clone, Debug)]
pub enum Document {
    FailoverPolicy(FailoverPolicy),
    MemberCluster(MemberCluster),
}

impl Document {
    /// `Kind/name` (with namespace for policies) for messages.
    pub fn describe(&self) -> String {
        match self {
            Document::FailoverPolicy(p) => format!("FailoverPolicy {}", p.id()),
            Document::MemberCluster(c) => {
                format!("MemberCluster {}", c.metadata.name.as_deref().unwrap_or(""))
            }
        }
    }
}

/// Checks the size of a file's contents and that it is not blank.
pub fn check_size(bytes: &[u8]) -> Result<(), Problem> {
    if bytes.len() > MAX_FILE_BYTES {
        return Err(Problem::new(
            "",
            format!(
                "file is {} bytes; the limit is {MAX_FILE_BYTES} bytes",
                bytes.len()
            ),
        ));
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(Problem::new(
            "",
            "file is empty: expected at least one YAML document",
        ));
    }
    Ok(())
}

/// Parses a YAML stream into one JSON value per document. Syntax errors carry the
/// line and column.
pub fn parse_yaml_stream(text: &str) -> Result<Vec<Value>, Problem> {
    // The parser's default budget stops at 1,024 documents; a policy file of many small
    // documents is legitimate, and the 1 MiB file limit already bounds the work.
    let mut budget = serde_saphyr::Budget::default();
    budget.max_documents = 65_536;
    budget.max_nodes = 1_000_000;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    let docs: Vec<Value> = serde_saphyr::from_multiple_with_options(text, options)
        .map_err(|e| Problem::new("", yaml_error(&e)))?;
    let docs: Vec<Value> = docs.into_iter().filter(|d| !d.is_null()).collect();
    if docs.is_empty() {
        return Err(Problem::new(
            "",
            "file is empty: expected at least one YAML document",
        ));
    }
    Ok(docs)
}

fn yaml_error(e: &serde_saphyr::Error) -> String {
    let text = e.to_string();
    // The first line carries the message and position; the rest is a source snippet
    // that is noise in a one-line report.
    let first = text.lines().next().unwrap_or("").trim();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    format!("YAML syntax error: {first}")
}

/// Decodes a value into `T`, naming the field path of the first type error.
pub fn decode<T: DeserializeOwned>(value: Value) -> Result<T, Problem> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        Problem::new(path, e.into_inner().to_string())
    })
}

/// Decodes one document by its `apiVersion` and `kind`, then validates it.
///
/// Returns the document when it decoded (even if invalid, so cross-document checks can
/// still run) together with every problem found.
pub fn decode_document(value: Value) -> (Option<Document>, Vec<Problem>) {
    let kind = value.get("kind").and_then(Value::as_str).map(str::to_owned);
    let api_version = value
        .get("apiVersion")
        .and_then(Value::as_str)
        .map(str::to_owned);
    if api_version.as_deref() != Some(API_VERSION) {
        let found = api_version.map_or_else(|| "nothing".to_owned(), |v| format!("{v:?}"));
        return (
            None,
            vec![Problem::new(
                "apiVersion",
                format!("must be {API_VERSION:?}, found {found}"),
            )],
        );
    }
    match kind.as_deref() {
        Some("FailoverPolicy") => match decode::<FailoverPolicy>(value) {
            Ok(p) => {
                let problems = validate::failover_policy(&p);
                (Some(Document::FailoverPolicy(p)), problems)
            }
            Err(problem) => (None, vec![problem]),
        },
        Some("MemberCluster") => match decode::<MemberCluster>(value) {
            Ok(c) => {
                let problems = validate::member_cluster(&c);
                (Some(Document::MemberCluster(c)), problems)
            }
            Err(problem) => (None, vec![problem]),
        },
        Some(other) => (
            None,
            vec![Problem::new(
                "kind",
                format!("unknown kind {other:?}: expected FailoverPolicy or MemberCluster"),
            )],
        ),
        None => (
            None,
            vec![Problem::new(
                "kind",
                "is required (FailoverPolicy or MemberCluster)",
            )],
        ),
    }
}

/// The last good set of policy documents, kept by the store so steering goes on when
/// the policy source is broken or unreachable at start.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicySnapshot {
    pub policies: Vec<crate::FailoverPolicy>,
    pub clusters: Vec<crate::MemberCluster>,
}
