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
    let whole = Origin {
        file: path.to_owned(),
        document: None,
    };
    let report = |loaded: &mut Loaded, origin: &Origin, problem: Problem| {
        loaded.problems.push(Report {
            origin: origin.clone(),
            problem,
        })
    };
    // Refuse oversized files before reading them whole.
    match std::fs::metadata(path) {
        Ok(meta) if meta.len() > document::MAX_FILE_BYTES as u64 => {
            let problem = Problem::new(
                "",
                format!(
                    "file is {} bytes; the limit is {} bytes",
                    meta.len(),
                    document::MAX_FILE_BYTES
                ),
            );
            return report(loaded, &whole, problem);
        }
        Ok(_) => {}
        Err(e) => {
            return report(
                loaded,
                &whole,
                Problem::new("", format!("cannot read file: {e}")),
            );
        }
    }
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            return report(
                loaded,
                &whole,
                Problem::new("", format!("cannot read file: {e}")),
            );
        }
    };
    if let Err(p) = document::check_size(&bytes) {
        return report(loaded, &whole, p);
    }
    let text = match std::str::from_utf8(&bytes) {
        Ok(t) => t,
        Err(e) => {
            return report(
                loaded,
                &whole,
                Problem::new("", format!("file is not UTF-8: {e}")),
            );
        }
    };
    let docs = match document::parse_yaml_stream(text) {
        Ok(d) => d,
        Err(p) => return report(loaded, &whole, p),
    };
    let multi = docs.len() > 1;
    for (i, value) in docs.into_iter().enumerate() {
        let origin = Origin {
            file: path.to_owned(),
            document: multi.then_some(i + 1),
        };
        if is_resource(&value) {
            let (doc, problems) = document::decode_document(value);
            for p in problems {
                report(loaded, &origin, p);
            }
            match doc {
                Some(Document::FailoverPolicy(p)) => loaded.policies.push((origin, p)),
                Some(Document::MemberCluster(c)) => loaded.clusters.push((origin, c)),
                None => {}
            }
        } else {
            match Config::from_value(value) {
                Ok(config) => loaded.configs.push((origin, config)),
                Err(problems) => {
                    for p in problems {
                        report(loaded, &origin, p);
                    }
                }
            }
        }
    }
}

/// A document with `apiVersion` or `kind` is a resource; anything else is read as a
/// configuration file (whose own keys are checked strictly).
fn is_resource(value: &Value) -> bool {
    value.get("kind").is_some() || value.get("apiVersion").is_some()
}
