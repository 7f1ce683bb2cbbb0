//! Label and field selectors, parsed from the query string of list and watch requests.
//!
//! Label selectors follow the Kubernetes grammar: comma-separated requirements, each one
//! of `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k` (exists), `!k` (absent),
//! `k>n`, `k<n`. Field selectors are `path=v`, `path==v`, `path!=v` where the path is a
//! dotted path into the object (`metadata.name`, `metadata.namespace`, `spec.type`, ...).
//! A real API server only accepts a per-resource list of field paths; the emulator is
//! more lenient and evaluates any dotted path, a missing field reading as `""`.

use serde_json::Value;

/// One parsed label requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
    Gt(String, i64),
    Lt(String, i64),
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<Requirement>);

/// A parsed field selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector(Vec<(String, bool, String)>);

/// Splits at commas that are not inside parentheses (`a in (x,y),b` has two terms).
fn split_terms(s: &str) -> Vec<&str> {
    let mut terms = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                terms.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&s[start..]);
    terms
        .into_iter()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect()
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 317
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
}

fn valid_value(v: &str) -> bool {
    v.len() <= 63
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

fn key(k: &str) -> Result<String, String> {
    let k = k.trim();
    if valid_key(k) {
        Ok(k.to_owned())
    } else {
        Err(format!("invalid label key {k:?}"))
    }
}

fn value(v: &str) -> Result<String, String> {
    let v = v.trim();
    if valid_value(v) {
        Ok(v.to_owned())
    } else {
        Err(format!("invalid label value {v:?}"))
    }
}

impl LabelSelector {
    /// Parses a `labelSelector` query value.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        for term in split_terms(s) {
            reqs.push(Self::parse_term(term)?);
        }
        Ok(Self(reqs))
    }

    fn parse_term(term: &str) -> Result<Requirement, String> {
        if let Some(k) = term.strip_prefix('!') {
            return Ok(Requirement::NotExists(key(k)?));
        }
        if let Some(open) = term.find('(') {
            let close = term
                .rfind(')')
                .filter(|c| *c > open && term[*c + 1..].trim().is_empty())
                .ok_or_else(|| format!("unbalanced parentheses in {term:?}"))?;
            let values = term[open + 1..close]
                .split(',')
                .map(value)
                .collect::<Result<Vec<_>, _>>()?;
            let head = term[..open].trim_end();
            if let Some(k) = head.strip_suffix("notin").filter(|k| k.ends_with(' ')) {
                return Ok(Requirement::NotIn(key(k)?, values));
            }
            if let Some(k) = head.strip_suffix("in").filter(|k| k.ends_with(' ')) {
                return Ok(Requirement::In(key(k)?, values));
            }
            return Err(format!("expected 'in' or 'notin' in {term:?}"));
        }
        if let Some((k, v)) = term.split_once("!=") {
            return Ok(Requirement::NotEq(key(k)?, value(v)?));
        }
        if let Some((k, v)) = term.split_once("==") {
            return Ok(Requirement::Eq(key(k)?, value(v)?));
        }
        if let Some((k, v)) = term.split_once('=') {
            return Ok(Requirement::Eq(key(k)?, value(v)?));
        }
        for (sym, gt) in [('>', true), ('<', false)] {
            if let Some((k, v)) = term.split_once(sym) {
                let n: i64 = v
                    .trim()
                    .parse()
                    .map_err(|_| format!("{v:?} is not an integer"))?;
                let k = key(k)?;
                return Ok(if gt {
                    Requirement::Gt(k, n)
                } else {
                    Requirement::Lt(k, n)
                });
            }
        }
        Ok(Requirement::Exists(key(term)?))
    }

    /// Whether an object's `metadata.labels` satisfy every requirement.
    pub fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels").and_then(Value::as_object);
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Requirement::Eq(k, v) => get(k) == Some(v.as_str()),
            Requirement::NotEq(k, v) => get(k) != Some(v.as_str()),
            Requirement::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Requirement::NotIn(k, vs) => !get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::NotExists(k) => get(k).is_none(),
            Requirement::Gt(k, n) => get(k)
                .and_then(|x| x.parse::<i64>().ok())
                .is_some_and(|x| x > *n),
            Requirement::Lt(k, n) => get(k)
                .and_then(|x| x.parse::<i64>().ok())
                .is_some_and(|x| x < *n),
        })
    }
}

impl FieldSelector {
    /// Parses a `fieldSelector` query value.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        for term in split_terms(s) {
            let (path, eq, v) = if let Some((p, v)) = term.split_once("!=") {
                (p, false, v)
            } else if let Some((p, v)) = term.split_once("==") {
                (p, true, v)
            } else if let Some((p, v)) = term.split_once('=') {
                (p, true, v)
            } else {
                return Err(format!("invalid field selector term {term:?}"));
            };
            let path = path.trim();
            if path.is_empty() || !path.chars().all(|c| c.is_ascii_alphanumeric() || c == '.') {
                return Err(format!("invalid field path {path:?}"));
            }
            reqs.push((path.to_owned(), eq, v.trim().to_owned()));
        }
        Ok(Self(reqs))
    }

    /// Whether every `path (=|!=) value` holds for the object.
    pub fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(path, eq, v)| {
            let mut cur = Some(obj);
            for part in path.split('.') {
                cur = cur.and_then(|c| c.get(part));
            }
            let actual = match cur {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            };
            (actual == *v) == *eq
        })
    }

    /// Whether the selector has no requirements.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_selector_grammar_covers_every_operator() {
        let obj = json!({"metadata": {"labels": {"app": "web", "tier": "front", "n": "5"}}});
        let cases = [
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("app in (web, api)", true),
            ("app notin (web,api)", false),
            ("tier", true),
            ("!tier", false),
            ("!missing", true),
            ("n>3,n<6", true),
            ("app=web,tier=back", false),
            ("", true),
        ];
        for (sel, want) in cases {
            assert_eq!(
                LabelSelector::parse(sel).unwrap().matches(&obj),
                want,
                "{sel}"
            );
        }
        assert!(LabelSelector::parse("app in (web").is_err());
        assert!(LabelSelector::parse("a b=c").is_err());
    }

    #[test]
    fn field_selector_reads_dotted_paths() {
        let obj = json!({"metadata": {"name": "a", "namespace": "ns"}, "type": "Opaque"});
        assert!(
            FieldSelector::parse("metadata.name=a,metadata.namespace!=x")
                .unwrap()
                .matches(&obj)
        );
        assert!(
            !FieldSelector::parse("metadata.name==b")
                .unwrap()
                .matches(&obj)
        );
        assert!(FieldSelector::parse("type=Opaque").unwrap().matches(&obj));
        assert!(FieldSelector::parse("metadata.name").is_err());
    }
}
