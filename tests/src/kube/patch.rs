//! The three patch flavours the emulator accepts, applied to JSON values.
//!
//! - JSON merge patch (RFC 7386): objects merge recursively, `null` deletes, anything
//!   else replaces. Strategic merge patch on built-in types is approximated by this too
//!   (lists are replaced instead of merged by key).
//! - JSON patch (RFC 6902): a list of `add/remove/replace/move/copy/test` operations on
//!   JSON pointers; any failing operation rejects the whole patch.
//! - Server-side apply: approximated as "merge the applied fields into the live object"
//!   (objects recursively, lists and scalars replaced, no field ownership).

use serde_json::Value;

/// Applies an RFC 7386 merge patch in place.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    let Value::Object(map) = target else { return };
    for (k, v) in patch {
        if v.is_null() {
            map.remove(k);
        } else {
            merge_patch(map.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// Merges the fields of an applied configuration into the live object.
pub fn apply_merge(target: &mut Value, applied: &Value) {
    match (target, applied) {
        (Value::Object(live), Value::Object(applied)) => {
            for (k, v) in applied {
                match live.get_mut(k) {
                    Some(existing) if existing.is_object() && v.is_object() => {
                        apply_merge(existing, v)
                    }
                    _ => {
                        live.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (target, applied) => *target = applied.clone(),
    }
}

/// Decodes one JSON pointer token (`~1` is `/`, `~0` is `~`).
fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

/// Splits a pointer into its parent pointer and the last (unescaped) token.
fn split_pointer(path: &str) -> Result<(&str, String), String> {
    if path.is_empty() {
        return Err("the root cannot be the target of this operation".into());
    }
    let idx = path
        .rfind('/')
        .ok_or_else(|| format!("invalid JSON pointer {path:?}"))?;
    Ok((&path[..idx], unescape(&path[idx + 1..])))
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<(), String> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (parent, last) = split_pointer(path)?;
    let parent = doc
        .pointer_mut(parent)
        .ok_or_else(|| format!("path {path:?} does not exist"))?;
    match parent {
        Value::Object(map) => {
            map.insert(last, value);
            Ok(())
        }
        Value::Array(items) => {
            let idx = if last == "-" {
                items.len()
            } else {
                last.parse::<usize>()
                    .map_err(|_| format!("invalid array index {last:?}"))?
            };
            if idx > items.len() {
                return Err(format!("array index {idx} out of bounds"));
            }
            items.insert(idx, value);
            Ok(())
        }
        _ => Err(format!("parent of {path:?} is not a container")),
    }
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, String> {
    let (parent, last) = split_pointer(path)?;
    let parent = doc
        .pointer_mut(parent)
        .ok_or_else(|| format!("path {path:?} does not exist"))?;
    match parent {
        Value::Object(map) => map
            .remove(&last)
            .ok_or_else(|| format!("path {path:?} does not exist")),
        Value::Array(items) => {
            let idx = last
                .parse::<usize>()
                .map_err(|_| format!("invalid array index {last:?}"))?;
            if idx >= items.len() {
                return Err(format!("array index {idx} out of bounds"));
            }
            Ok(items.remove(idx))
        }
        _ => Err(format!("parent of {path:?} is not a container")),
    }
}

/// Applies an RFC 6902 JSON patch, returning the patched copy.
pub fn json_patch(doc: &Value, ops: &Value) -> Result<Value, String> {
    let ops = ops
        .as_array()
        .ok_or("a JSON patch must be a list of operations")?;
    let mut doc = doc.clone();
    for op in ops {
        let name = op
            .get("op")
            .and_then(Value::as_str)
            .ok_or("operation without \"op\"")?;
        let path = op
            .get("path")
            .and_then(Value::as_str)
            .ok_or("operation without \"path\"")?;
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| format!("{name} without \"value\""))
        };
        let from = || {
            op.get("from")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("{name} without \"from\""))
        };
        match name {
            "add" => add(&mut doc, path, value()?)?,
            "remove" => {
                remove(&mut doc, path)?;
            }
            "replace" => {
                let slot = doc
                    .pointer_mut(path)
                    .ok_or_else(|| format!("path {path:?} does not exist"))?;
                *slot = value()?;
            }
            "move" => {
                let moved = remove(&mut doc, from()?)?;
                add(&mut doc, path, moved)?;
            }
            "copy" => {
                let copied = doc
                    .pointer(from()?)
                    .cloned()
                    .ok_or("copy source does not exist")?;
                add(&mut doc, path, copied)?;
            }
            "test" => {
                if doc.pointer(path) != Some(&value()?) {
                    return Err(format!("test failed at {path:?}"));
                }
            }
            other => return Err(format!("unknown JSON patch operation {other:?}")),
        }
    }
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_merges_objects_and_deletes_nulls() {
        let mut doc = json!({"a": {"b": 1, "c": 2}, "l": [1, 2]});
        merge_patch(&mut doc, &json!({"a": {"b": null, "d": 3}, "l": [3]}));
        assert_eq!(doc, json!({"a": {"c": 2, "d": 3}, "l": [3]}));
    }

    #[test]
    fn json_patch_runs_every_operation_and_rejects_failures() {
        let doc = json!({"a": [1, 2], "b": {"c": "x"}});
        let ops = json!([
            {"op": "add", "path": "/a/-", "value": 3},
            {"op": "replace", "path": "/b/c", "value": "y"},
            {"op": "copy", "from": "/b/c", "path": "/d"},
            {"op": "move", "from": "/d", "path": "/e"},
            {"op": "remove", "path": "/a/0"},
            {"op": "test", "path": "/e", "value": "y"}
        ]);
        assert_eq!(
            json_patch(&doc, &ops).unwrap(),
            json!({"a": [2, 3], "b": {"c": "y"}, "e": "y"})
        );
        assert!(json_patch(&doc, &json!([{"op": "remove", "path": "/zz"}])).is_err());
        assert!(json_patch(&doc, &json!([{"op": "test", "path": "/a/0", "value": 9}])).is_err());
        assert!(json_patch(&doc, &json!({"op": "add"})).is_err());
    }

    #[test]
    fn apply_merge_keeps_unmentioned_fields() {
        let mut doc = json!({"spec": {"a": 1, "b": [1]}, "status": {"x": 1}});
        apply_merge(&mut doc, &json!({"spec": {"b": [2]}}));
        assert_eq!(doc, json!({"spec": {"a": 1, "b": [2]}, "status": {"x": 1}}));
    }
}
