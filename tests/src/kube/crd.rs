//! Custom resources: reading a CustomResourceDefinition into the resource it serves, and
//! what the API server does with its structural schema on every write — pruning fields
//! the schema does not know, filling in defaults, and validating values (type, enum,
//! bounds, lengths, item counts, required fields, patterns). CEL rules
//! (`x-kubernetes-validations`) and formats are not evaluated.

use std::collections::HashMap;
use std::sync::LazyLock;

use parking_lot::Mutex;
use serde_json::Value;

use super::store::{PrinterColumn, ResourceDef};

fn meta_name(obj: &Value) -> String {
    obj.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// Reads a CRD object into the resource it defines.
pub(super) fn crd_resource(crd: &Value) -> Result<ResourceDef, String> {
    let spec = crd.get("spec").ok_or("spec: Required value")?;
    let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    let strings = |v: Option<&Value>| -> Vec<String> {
        v.and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    let group = s(spec, "group").ok_or("spec.group: Required value")?;
    let names = spec.get("names").ok_or("spec.names: Required value")?;
    let plural = s(names, "plural").ok_or("spec.names.plural: Required value")?;
    let kind = s(names, "kind").ok_or("spec.names.kind: Required value")?;
    let scope = s(spec, "scope").ok_or("spec.scope: Required value")?;
    let namespaced = match scope.as_str() {
        "Namespaced" => true,
        "Cluster" => false,
        other => return Err(format!("spec.scope: Unsupported value: {other:?}")),
    };
    let name = meta_name(crd);
    if name != format!("{plural}.{group}") {
        return Err(format!(
            "metadata.name: Invalid value: {name:?}: must be spec.names.plural+\".\"+spec.group"
        ));
    }
    let versions = spec
        .get("versions")
        .and_then(Value::as_array)
        .ok_or("spec.versions: Required value")?;
    let served: Vec<&Value> = versions
        .iter()
        .filter(|v| v.get("served") != Some(&Value::Bool(false)))
        .collect();
    let storage = served
        .iter()
        .find(|v| v.get("storage") == Some(&Value::Bool(true)))
        .or(served.first())
        .ok_or("spec.versions: must have exactly one version marked as storage version")?;
    let storage_name = s(storage, "name").ok_or("spec.versions[].name: Required value")?;
    let mut version_names = vec![storage_name.clone()];
    version_names.extend(
        served
            .iter()
            .filter_map(|v| s(v, "name"))
            .filter(|n| *n != storage_name),
    );
    let columns = storage
        .get("additionalPrinterColumns")
        .and_then(Value::as_array)
        .map(|cols| {
            cols.iter()
                .filter_map(|c| {
                    Some(PrinterColumn {
                        name: s(c, "name")?,
                        kind: s(c, "type").unwrap_or_else(|| "string".into()),
                        json_path: s(c, "jsonPath")?,
                        priority: c.get("priority").and_then(Value::as_i64).unwrap_or(0),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(ResourceDef {
        singular: s(names, "singular").unwrap_or_else(|| kind.to_ascii_lowercase()),
        short_names: strings(names.get("shortNames")),
        categories: strings(names.get("categories")),
        status_subresource: storage.pointer("/subresources/status").is_some(),
        group,
        versions: version_names,
        kind,
        plural,
        namespaced,
        columns,
        custom: true,
        schema: storage.pointer("/schema/openAPIV3Schema").cloned(),
    })
}

/// Removes fields a structural schema does not know (`metadata`, `apiVersion` and `kind`
/// excepted) and returns their paths, as the API server prunes custom resources. A node
/// with `x-kubernetes-preserve-unknown-fields`, or with neither `properties` nor
/// `additionalProperties`, keeps everything (the latter is more lenient than Kubernetes).
pub fn prune_unknown(obj: &mut Value, schema: &Value) -> Vec<String> {
    fn walk(v: &mut Value, schema: &Value, path: &str, top: bool, unknown: &mut Vec<String>) {
        let preserve =
            schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
        match v {
            Value::Object(map) => {
                let props = schema.get("properties").and_then(Value::as_object);
                let extra = schema
                    .get("additionalProperties")
                    .filter(|a| !a.is_boolean() || **a == Value::Bool(true));
                if let Some(props) = props
                    && extra.is_none()
                    && !preserve
                {
                    let keep = |k: &str| {
                        props.contains_key(k)
                            || (top && matches!(k, "apiVersion" | "kind" | "metadata"))
                    };
                    let drop: Vec<String> = map.keys().filter(|k| !keep(k)).cloned().collect();
                    for k in drop {
                        map.remove(&k);
                        unknown.push(if path.is_empty() {
                            k
                        } else {
                            format!("{path}.{k}")
                        });
                    }
                }
                // A null where the schema does not allow one is dropped, not rejected
                // (and may then be defaulted), as the real server does.
                if let Some(props) = props {
                    map.retain(|k, v| {
                        !v.is_null()
                            || props
                                .get(k)
                                .is_none_or(|p| p.get("nullable") == Some(&Value::Bool(true)))
                    });
                }
                for (k, child) in map.iter_mut() {
                    let child_path = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    if let Some(p) = props.and_then(|p| p.get(k)) {
                        walk(child, p, &child_path, false, unknown);
                    } else if let Some(extra) = extra.filter(|e| e.is_object()) {
                        walk(child, extra, &child_path, false, unknown);
                    }
                }
            }
            Value::Array(items) => {
                if let Some(item_schema) = schema.get("items") {
                    for (i, item) in items.iter_mut().enumerate() {
                        walk(item, item_schema, &format!("{path}[{i}]"), false, unknown);
                    }
                }
            }
            _ => {}
        }
    }
    let mut unknown = Vec::new();
    walk(obj, schema, "", true, &mut unknown);
    unknown
}

/// Fills in the `default`s of a structural schema where the object lacks the field, as
/// the API server does for custom resources on every write.
pub(super) fn apply_defaults(obj: &mut Value, schema: &Value) {
    match obj {
        Value::Object(map) => {
            if let Some(Value::Object(props)) = schema.get("properties") {
                for (name, prop) in props {
                    if let (None, Some(default)) = (map.get(name), prop.get("default")) {
                        map.insert(name.clone(), default.clone());
                    }
                    if let Some(child) = map.get_mut(name) {
                        apply_defaults(child, prop);
                    }
                }
            }
            if let Some(extra) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                for child in map.values_mut() {
                    apply_defaults(child, extra);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for item in items {
                    apply_defaults(item, item_schema);
                }
            }
        }
        _ => {}
    }
}

/// Validates a custom resource against its schema; returns one message per violation,
/// worded like the API server's (`spec.ttl: Invalid value: 100000: spec.ttl in body
/// should be less than or equal to 86400`). `metadata` is not checked.
pub(super) fn validate(obj: &Value, schema: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    if let (Value::Object(map), Some(Value::Object(props))) = (obj, schema.get("properties")) {
        for (k, v) in map {
            if let (Some(p), false) = (
                props.get(k),
                matches!(k.as_str(), "metadata" | "apiVersion" | "kind"),
            ) {
                check(v, p, k, &mut errors);
            }
        }
    }
    errors
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn shown(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Object(_) | Value::Array(_) => format!("\"{}\"", type_name(v)),
        other => other.to_string(),
    }
}

/// Compiled patterns, shared: schemas are few and validations many.
static PATTERNS: LazyLock<Mutex<HashMap<String, Option<regex::Regex>>>> =
    LazyLock::new(Default::default);

fn matches_pattern(pattern: &str, text: &str) -> bool {
    let mut cache = PATTERNS.lock();
    let re = cache
        .entry(pattern.to_owned())
        .or_insert_with(|| regex::Regex::new(pattern).ok());
    // A pattern the regex engine cannot compile is not held against the object.
    re.as_ref().is_none_or(|re| re.is_match(text))
}

fn check(v: &Value, schema: &Value, path: &str, errors: &mut Vec<String>) {
    let invalid =
        |why: String| format!("{path}: Invalid value: {}: {path} in body {why}", shown(v));
    if v.is_null() {
        if schema.get("nullable") != Some(&Value::Bool(true)) && schema.get("type").is_some() {
            let want = schema["type"].as_str().unwrap_or_default().to_owned();
            errors.push(invalid(format!("must be of type {want}: \"null\"")));
        }
        return;
    }
    let int_or_string = schema.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    if let Some(want) = schema
        .get("type")
        .and_then(Value::as_str)
        .filter(|_| !int_or_string)
    {
        let have = type_name(v);
        let ok = have == want || (want == "number" && have == "integer");
        if !ok {
            errors.push(invalid(format!("must be of type {want}: \"{have}\"")));
            return;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(v)
    {
        let list: Vec<String> = allowed.iter().map(shown).collect();
        errors.push(format!(
            "{path}: Unsupported value: {}: supported values: {}",
            shown(v),
            list.join(", ")
        ));
    }
    let num = |k: &str| schema.get(k).and_then(Value::as_f64);
    if let Some(x) = v.as_f64() {
        if let Some(min) = num("minimum").filter(|m| x < *m) {
            errors.push(invalid(format!("should be greater than or equal to {min}")));
        }
        if let Some(max) = num("maximum").filter(|m| x > *m) {
            errors.push(invalid(format!("should be less than or equal to {max}")));
        }
    }
    if let Some(s) = v.as_str() {
        let len = s.chars().count() as f64;
        if let Some(min) = num("minLength").filter(|m| len < *m) {
            errors.push(invalid(format!("should be at least {min} chars long")));
        }
        if let Some(max) = num("maxLength").filter(|m| len > *m) {
            errors.push(invalid(format!("may not be longer than {max}")));
        }
        if let Some(p) = schema.get("pattern").and_then(Value::as_str)
            && !matches_pattern(p, s)
        {
            errors.push(invalid(format!("should match '{p}'")));
        }
    }
    match v {
        Value::Array(items) => {
            let n = items.len() as f64;
            if let Some(min) = num("minItems").filter(|m| n < *m) {
                errors.push(invalid(format!("should have at least {min} items")));
            }
            if let Some(max) = num("maxItems").filter(|m| n > *m) {
                errors.push(invalid(format!("should have at most {max} items")));
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    check(item, item_schema, &format!("{path}[{i}]"), errors);
                }
            }
        }
        Value::Object(map) => {
            for req in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(field) = req.as_str().filter(|f| !map.contains_key(*f)) {
                    errors.push(format!("{path}.{field}: Required value"));
                }
            }
            let props = schema.get("properties").and_then(Value::as_object);
            let extra = schema.get("additionalProperties").filter(|a| a.is_object());
            for (k, child) in map {
                if let Some(p) = props.and_then(|p| p.get(k)) {
                    check(child, p, &format!("{path}.{k}"), errors);
                } else if let Some(extra) = extra {
                    check(child, extra, &format!("{path}.{k}"), errors);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn custom_resources_get_their_schema_defaults() {
        let schema = json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
            "ttl": {"type": "integer", "default": 30},
            "failback": {"type": "object", "default": {}, "properties": {"holdDown": {"type": "string", "default": "60s"}}},
            "targets": {"type": "array", "items": {"type": "object", "properties": {"weight": {"type": "integer", "default": 100}}}},
        }}}});
        let mut obj = json!({"spec": {"ttl": 5, "targets": [{"cluster": "a"}, {"weight": 1}]}});
        apply_defaults(&mut obj, &schema);
        assert_eq!(
            obj,
            json!({"spec": {"ttl": 5, "failback": {"holdDown": "60s"},
            "targets": [{"cluster": "a", "weight": 100}, {"weight": 1}]}})
        );
    }

    #[test]
    fn custom_resources_lose_fields_their_schema_does_not_know() {
        let schema = json!({"type": "object", "properties": {
            "spec": {"type": "object", "properties": {
                "a": {"type": "string"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                "list": {"type": "array", "items": {"type": "object", "properties": {"x": {"type": "integer"}}}},
            }},
        }});
        let mut obj = json!({"apiVersion": "v", "kind": "K", "metadata": {"name": "n"}, "extra": 1,
            "spec": {"a": null, "typo": 2, "labels": {"any": "x"}, "free": {"any": {"deep": 1}}, "list": [{"x": 1, "y": 2}]}});
        let unknown = prune_unknown(&mut obj, &schema);
        assert_eq!(unknown, ["extra", "spec.typo", "spec.list[0].y"]);
        assert_eq!(
            obj,
            json!({"apiVersion": "v", "kind": "K", "metadata": {"name": "n"},
            "spec": {"labels": {"any": "x"}, "free": {"any": {"deep": 1}}, "list": [{"x": 1}]}})
        );
    }

    #[test]
    fn values_are_checked_against_types_enums_bounds_patterns_and_required_fields() {
        let schema = json!({"type": "object", "properties": {"spec": {"type": "object", "required": ["hostname"], "properties": {
            "hostname": {"type": "string"},
            "ttl": {"type": "integer", "minimum": 1.0, "maximum": 86400.0},
            "strategy": {"type": "string", "enum": ["Failover", "Weighted"]},
            "interval": {"type": "string", "pattern": "^[0-9]+s$"},
            "targets": {"type": "array", "minItems": 1, "items": {"type": "object", "properties": {"weight": {"type": "integer"}}}},
            "note": {"type": "string", "nullable": true},
        }}}});
        let good = json!({"metadata": {"name": 5}, "spec": {"hostname": "a", "ttl": 30, "strategy": "Weighted", "interval": "5s", "targets": [{"weight": 1}], "note": null}});
        assert!(
            validate(&good, &schema).is_empty(),
            "{:?}",
            validate(&good, &schema)
        );
        let bad = json!({"spec": {"ttl": 100000, "strategy": "Fastest", "interval": "5 minutes", "targets": [{"weight": "heavy"}]}});
        assert_eq!(
            validate(&bad, &schema),
            [
                "spec.hostname: Required value",
                "spec.interval: Invalid value: \"5 minutes\": spec.interval in body should match '^[0-9]+s$'",
                "spec.strategy: Unsupported value: \"Fastest\": supported values: \"Failover\", \"Weighted\"",
                "spec.targets[0].weight: Invalid value: \"heavy\": spec.targets[0].weight in body must be of type integer: \"string\"",
                "spec.ttl: Invalid value: 100000: spec.ttl in body should be less than or equal to 86400",
            ]
        );
        assert_eq!(
            validate(&json!({"spec": {"hostname": "a", "targets": []}}), &schema),
            [
                "spec.targets: Invalid value: \"array\": spec.targets in body should have at least 1 items"
            ]
        );
    }
}
