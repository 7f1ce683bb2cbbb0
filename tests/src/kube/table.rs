//! Server-side printing: `meta.k8s.io/v1` `Table` responses, which kubectl asks for with
//! `Accept: application/json;as=Table;v=v1;g=meta.k8s.io`.
//!
//! Columns are NAME followed by the resource's printer columns (a CRD's
//! `additionalPrinterColumns`), or NAME and AGE when it has none. Cells are computed with
//! a small JSONPath subset (`.a.b`, `[0]`, `[?(@.type=="Ready")]`); `date` columns are
//! shown as an age (`5m`), as the real server does. kubectl adds the NAMESPACE column
//! itself from each row's object metadata.

use serde_json::{Value, json};

use super::store::{PrinterColumn, ResourceDef, now_rfc3339};

/// The columns of a resource's table.
fn columns(def: &ResourceDef) -> Vec<PrinterColumn> {
    let mut cols = vec![PrinterColumn {
        name: "Name".into(),
        kind: "string".into(),
        json_path: ".metadata.name".into(),
        priority: 0,
    }];
    if def.columns.is_empty() {
        cols.push(PrinterColumn {
            name: "Age".into(),
            kind: "date".into(),
            json_path: ".metadata.creationTimestamp".into(),
            priority: 0,
        });
    } else {
        cols.extend(def.columns.iter().cloned());
    }
    cols
}

fn column_definitions(def: &ResourceDef) -> Value {
    Value::Array(
        columns(def)
            .into_iter()
            .map(|c| {
                let format = if c.name == "Name" { "name" } else { "" };
                let kind = if c.kind == "date" { "string" } else { c.kind.as_str() };
                json!({"name": c.name, "type": kind, "format": format, "description": "", "priority": c.priority})
            })
            .collect(),
    )
}

/// One row: the cells, and the object (full, or only its metadata).
fn row(def: &ResourceDef, obj: &Value, full_object: bool) -> Value {
    let cells: Vec<Value> = columns(def)
        .iter()
        .map(|c| {
            let v = eval(obj, &c.json_path);
            if c.kind == "date" {
                v.as_ref()
                    .and_then(Value::as_str)
                    .map(|t| json!(age(t)))
                    .unwrap_or(Value::Null)
            } else {
                v.unwrap_or(Value::Null)
            }
        })
        .collect();
    let object = if full_object {
        obj.clone()
    } else {
        json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj.get("metadata").cloned().unwrap_or_default()})
    };
    json!({"cells": cells, "object": object})
}

/// A whole table for a list (or a one-row table for a watch event).
pub fn table<'a>(
    def: &ResourceDef,
    objects: impl IntoIterator<Item = &'a Value>,
    metadata: Value,
    full_object: bool,
) -> Value {
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": column_definitions(def),
        "rows": objects.into_iter().map(|o| row(def, o, full_object)).collect::<Vec<_>>(),
    })
}

/// Evaluates the JSONPath subset printer columns use; several matches join with `,`.
pub fn eval(obj: &Value, path: &str) -> Option<Value> {
    let mut current = vec![obj.clone()];
    let mut rest = path.trim().trim_start_matches('{').trim_end_matches('}');
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            let field = &r[..end];
            rest = &r[end..];
            if field.is_empty() {
                continue;
            }
            current = current
                .iter()
                .filter_map(|v| v.get(field).cloned())
                .collect();
        } else if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']')?;
            // A filter's value may contain `]`; find the closing `)]` instead.
            let (inner, after) = if r.starts_with("?(") {
                let close = r.find(")]")?;
                (&r[..close + 1], &r[close + 2..])
            } else {
                (&r[..end], &r[end + 1..])
            };
            rest = after;
            current =
                if let Some(filter) = inner.strip_prefix("?(").and_then(|f| f.strip_suffix(')')) {
                    let (lhs, rhs) = filter.split_once("==")?;
                    let key = lhs.trim().strip_prefix("@.")?;
                    let want = rhs.trim().trim_matches(|c| c == '"' || c == '\'');
                    current
                        .iter()
                        .filter_map(Value::as_array)
                        .flatten()
                        .filter(|item| {
                            item.get(key).is_some_and(|v| {
                                v.as_str().map_or_else(|| v.to_string(), str::to_owned) == want
                            })
                        })
                        .cloned()
                        .collect()
                } else if inner == "*" {
                    current
                        .iter()
                        .filter_map(Value::as_array)
                        .flatten()
                        .cloned()
                        .collect()
                } else {
                    let idx: usize = inner.trim().parse().ok()?;
                    current.iter().filter_map(|v| v.get(idx).cloned()).collect()
                };
        } else {
            return None;
        }
    }
    match current.len() {
        0 => None,
        1 => current.pop(),
        _ => Some(json!(
            current
                .iter()
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                .collect::<Vec<_>>()
                .join(",")
        )),
    }
}

/// The age of an RFC 3339 timestamp, in kubectl's short form.
pub fn age(timestamp: &str) -> String {
    use k8s_openapi::jiff::Timestamp;
    let (Ok(then), Ok(now)) = (
        timestamp.parse::<Timestamp>(),
        now_rfc3339().parse::<Timestamp>(),
    ) else {
        return "<invalid>".into();
    };
    human_duration((now.as_second() - then.as_second()).max(0))
}

/// Formats seconds the way Kubernetes' `HumanDuration` does.
pub fn human_duration(secs: i64) -> String {
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86400);
    if secs < 120 {
        format!("{secs}s")
    } else if m < 10 {
        let s = secs % 60;
        if s == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{s}s")
        }
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        let mm = m % 60;
        if mm == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{mm}m")
        }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        let hh = h % 24;
        if hh == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{hh}h")
        }
    } else if d < 365 * 2 {
        format!("{d}d")
    } else {
        format!("{}y", d / 365)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonpath_subset_reads_fields_indexes_and_filters() {
        let obj = json!({"spec": {"h": "x"}, "status": {"conditions": [
            {"type": "Degraded", "status": "False"}, {"type": "Ready", "status": "True"}]}});
        assert_eq!(eval(&obj, ".spec.h"), Some(json!("x")));
        assert_eq!(
            eval(&obj, ".status.conditions[0].type"),
            Some(json!("Degraded"))
        );
        assert_eq!(
            eval(&obj, r#".status.conditions[?(@.type=="Ready")].status"#),
            Some(json!("True"))
        );
        assert_eq!(eval(&obj, ".status.missing"), None);
    }

    #[test]
    fn durations_read_like_kubectl() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(150), "2m30s");
        assert_eq!(human_duration(3600 * 5 + 60), "5h1m");
        assert_eq!(human_duration(86400 * 3), "3d");
    }
}
