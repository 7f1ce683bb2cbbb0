//! Loading sets of Lifeline files: configuration files and FailoverPolicy/MemberCluster
//! documents, validated one by one and then as a set.
//!
//! Used by `lifeline validate` and by the `files` policy source, so both report the same
//! problems in the same words.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use lifeline_crds::{
    FailoverPolicy, MemberCluster,
    document::{self, Document},
    validate::{self, DocumentRef, Problem},
};
use serde_json::Value;

use crate::config::Config;

/// Where the policy documents come from.
#[derive(Debug, Clone)]
pub enum Documents {
    /// Files, re-read when they change.
    Files(Vec<PathBuf>),
    /// A fixed set (the demo).
    Inline {
        policies: Vec<lifeline_crds::FailoverPolicy>,
        clusters: Vec<lifeline_crds::MemberCluster>,
    },
    /// CRs in the management cluster, watched from `run` (in-cluster configuration
    /// when no kubeconfig is given).
    Kubernetes {
        kubeconfig: Option<PathBuf>,
        namespace: Option<String>,
    },
}

/// Where a document sits: a file and, for multi-document files, its 1-based position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub file: PathBuf,
    /// 1-based index of the document in its file; `None` when the file holds one.
    pub document: Option<usize>,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.document {
            Some(n) => write!(f, "{}#{n}", self.file.display()),
            None => write!(f, "{}", self.file.display()),
        }
    }
}

/// A problem with the place it was found, printed as `file: field.path: problem`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub origin: Origin,
    pub problem: Problem,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.origin, self.problem)
    }
}

/// Everything read from a set of files.
#[derive(Debug, Default)]
pub struct Loaded {
    pub configs: Vec<(Origin, Config)>,
    pub policies: Vec<(Origin, FailoverPolicy)>,
    pub clusters: Vec<(Origin, MemberCluster)>,
    /// Every problem, per document and across documents.
    pub problems: Vec<Report>,
}

impl Loaded {
    /// True when nothing was wrong.
    pub fn is_valid(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Reads every file, validates each document, then runs the cross-document checks
/// against the zones of `zones` plus those of any configuration file in the set.
pub fn load(paths: &[PathBuf], zones: &[validate::ZoneRule]) -> Loaded {
    let mut loaded = Loaded::default();
    for path in paths {
        load_file(path, &mut loaded);
    }
    let mut all_zones = zones.to_vec();
    for (_, config) in &loaded.configs {
        all_zones.extend(config.zone_rules());
    }
    let policies: Vec<&FailoverPolicy> = loaded.policies.iter().map(|(_, p)| p).collect();
    let clusters: Vec<&MemberCluster> = loaded.clusters.iter().map(|(_, c)| c).collect();
    for set_problem in validate::cross_check(&policies, &clusters, &all_zones) {
        let origin = match set_problem.document {
            DocumentRef::Policy(i) => loaded.policies[i].0.clone(),
            DocumentRef::Cluster(i) => loaded.clusters[i].0.clone(),
        };
        loaded.problems.push(Report {
            origin,
            problem: set_problem.problem,
        });
    }
    loaded
}

fn load_file(path: &Path, loaded: &mut Loaded) {
    let docs = match read_documents(path) {
        Ok(docs) => docs,
        Err(problem) => {
            let whole = Origin {
                file: path.to_owned(),
                document: None,
            };
            return loaded.report(&whole, [problem]);
        }
    };
    let multi = docs.len() > 1;
    for (i, value) in docs.into_iter().enumerate() {
        let origin = Origin {
            file: path.to_owned(),
            document: multi.then_some(i + 1),
        };
        loaded.add_document(origin, value);
    }
}

/// The YAML documents in a file, or the one problem that keeps it from being read.
fn read_documents(path: &Path) -> Result<Vec<Value>, Problem> {
    let unreadable = |e: std::io::Error| Problem::new("", format!("cannot read file: {e}"));
    // Refuse oversized files before reading them whole.
    let size = std::fs::metadata(path).map_err(unreadable)?.len();
    if size > document::MAX_FILE_BYTES as u64 {
        return Err(Problem::new(
            "",
            format!(
                "file is {size} bytes; the limit is {} bytes",
                document::MAX_FILE_BYTES
            ),
        ));
    }
    let bytes = std::fs::read(path).map_err(unreadable)?;
    document::check_size(&bytes)?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|e| Problem::new("", format!("file is not UTF-8: {e}")))?;
    document::parse_yaml_stream(text)
}

impl Loaded {
    /// Keeps one document by what it is (a resource, or else a configuration) if it is
    /// valid, and reports its problems either way.
    fn add_document(&mut self, origin: Origin, value: Value) {
        if is_resource(&value) {
            let (doc, problems) = document::decode_document(value);
            self.report(&origin, problems);
            match doc {
                Some(Document::FailoverPolicy(p)) => self.policies.push((origin, p)),
                Some(Document::MemberCluster(c)) => self.clusters.push((origin, c)),
                None => {}
            }
        } else {
            match Config::from_value(value) {
                Ok(config) => self.configs.push((origin, config)),
                Err(problems) => self.report(&origin, problems),
            }
        }
    }

    fn report(&mut self, origin: &Origin, problems: impl IntoIterator<Item = Problem>) {
        self.problems
            .extend(problems.into_iter().map(|problem| Report {
                origin: origin.clone(),
                problem,
            }));
    }
}

/// A document with `apiVersion` or `kind` is a resource; anything else is read as a
/// configuration file (whose own keys are checked strictly).
fn is_resource(value: &Value) -> bool {
    value.get("kind").is_some() || value.get("apiVersion").is_some()
}
