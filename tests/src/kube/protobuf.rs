//! Just enough Kubernetes protobuf decoding for kubectl's typed create commands.
//!
//! kubectl's typed clients (`kubectl create namespace`, `create secret`, `create
//! configmap`) send `application/vnd.kubernetes.protobuf` and do not fall back to JSON
//! on `415`. The body is the magic `k8s\0` followed by a `runtime.Unknown` message
//! (`typeMeta` = 1 {apiVersion = 1, kind = 2}, `raw` = 2). `raw` is the object, whose
//! field 1 is always `ObjectMeta`. This module reads the envelope, the metadata fields a
//! client sets (name, generateName, namespace, labels, annotations, finalizers) and the
//! bodies of Namespace, ConfigMap and Secret; other kinds are refused with `415`.

use base64::Engine as _;
use serde_json::{Map, Value, json};

/// One decoded field value.
#[derive(Debug, Clone, Copy)]
enum Wire<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

fn varint(buf: &[u8], pos: &mut usize) -> Result<u64, String> {
    let mut out = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos).ok_or("truncated varint")?;
        *pos += 1;
        out |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(out);
        }
    }
    Err("varint too long".into())
}

/// Splits a message into `(field number, value)` pairs.
fn fields(buf: &[u8]) -> Result<Vec<(u64, Wire<'_>)>, String> {
    let mut pos = 0;
    let mut out = Vec::new();
    while pos < buf.len() {
        let tag = varint(buf, &mut pos)?;
        let value = match tag & 7 {
            0 => Wire::Varint(varint(buf, &mut pos)?),
            1 | 5 => {
                pos += if tag & 7 == 1 { 8 } else { 4 };
                Wire::Fixed
            }
            2 => {
                let len = usize::try_from(varint(buf, &mut pos)?).map_err(|_| "length overflow")?;
                let end = pos
                    .checked_add(len)
                    .filter(|e| *e <= buf.len())
                    .ok_or("truncated field")?;
                let bytes = &buf[pos..end];
                pos = end;
                Wire::Bytes(bytes)
            }
            other => return Err(format!("unsupported wire type {other}")),
        };
        out.push((tag >> 3, value));
    }
    if pos > buf.len() {
        return Err("truncated fixed-width field".into());
    }
    Ok(out)
}

fn string(w: Wire<'_>) -> Result<String, String> {
    match w {
        Wire::Bytes(b) => {
            String::from_utf8(b.to_vec()).map_err(|_| "string field is not UTF-8".into())
        }
        _ => Err("expected a string field".into()),
    }
}

fn bytes(w: Wire<'_>) -> Result<&[u8], String> {
    match w {
        Wire::Bytes(b) => Ok(b),
        _ => Err("expected a bytes field".into()),
    }
}

/// A `map<string, string>` entry (key = 1, value = 2); `as_base64` for `map<string, bytes>`.
fn map_entry(w: Wire<'_>, as_base64: bool) -> Result<(String, Value), String> {
    let mut key = String::new();
    let mut value = Value::String(String::new());
    for (n, f) in fields(bytes(w)?)? {
        match n {
            1 => key = string(f)?,
            2 if as_base64 => {
                value = json!(base64::engine::general_purpose::STANDARD.encode(bytes(f)?))
            }
            2 => value = json!(string(f)?),
            _ => {}
        }
    }
    Ok((key, value))
}

fn object_meta(buf: &[u8]) -> Result<Value, String> {
    let mut meta = Map::new();
    let mut labels = Map::new();
    let mut annotations = Map::new();
    let mut finalizers = Vec::new();
    for (n, f) in fields(buf)? {
        match n {
            1 => drop(meta.insert("name".into(), json!(string(f)?))),
            2 => drop(meta.insert("generateName".into(), json!(string(f)?))),
            3 => drop(meta.insert("namespace".into(), json!(string(f)?))),
            11 => {
                let (k, v) = map_entry(f, false)?;
                labels.insert(k, v);
            }
            12 => {
                let (k, v) = map_entry(f, false)?;
                annotations.insert(k, v);
            }
            14 => finalizers.push(json!(string(f)?)),
            _ => {}
        }
    }
    if !labels.is_empty() {
        meta.insert("labels".into(), Value::Object(labels));
    }
    if !annotations.is_empty() {
        meta.insert("annotations".into(), Value::Object(annotations));
    }
    if !finalizers.is_empty() {
        meta.insert("finalizers".into(), Value::Array(finalizers));
    }
    Ok(Value::Object(meta))
}

/// Decodes a protobuf-encoded object into its JSON form.
pub fn decode(body: &[u8]) -> Result<Value, String> {
    let envelope = body
        .strip_prefix(b"k8s\0")
        .ok_or("missing the k8s protobuf magic")?;
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    for (n, f) in fields(envelope)? {
        match n {
            1 => {
                for (m, g) in fields(bytes(f)?)? {
                    match m {
                        1 => api_version = string(g)?,
                        2 => kind = string(g)?,
                        _ => {}
                    }
                }
            }
            2 => raw = bytes(f)?,
            _ => {}
        }
    }
    let mut obj = json!({"apiVersion": api_version, "kind": kind});
    for (n, f) in fields(raw)? {
        match (kind.as_str(), n) {
            (_, 1) => obj["metadata"] = object_meta(bytes(f)?)?,
            ("Namespace", 2) => {
                let finalizers: Result<Vec<Value>, String> = fields(bytes(f)?)?
                    .into_iter()
                    .filter(|(m, _)| *m == 1)
                    .map(|(_, g)| string(g).map(Value::String))
                    .collect();
                obj["spec"] = json!({"finalizers": finalizers?});
            }
            ("Namespace", _) => {}
            ("ConfigMap" | "Secret", 2) => {
                let (k, v) = map_entry(f, kind == "Secret")?;
                obj["data"][k] = v;
            }
            ("ConfigMap", 3) => {
                let (k, v) = map_entry(f, true)?;
                obj["binaryData"][k] = v;
            }
            ("ConfigMap", 4) | ("Secret", 5) => {
                if let Wire::Varint(b) = f {
                    obj["immutable"] = json!(b != 0);
                }
            }
            ("Secret", 3) => obj["type"] = json!(string(f)?),
            ("Secret", 4) => {
                let (k, v) = map_entry(f, false)?;
                obj["stringData"][k] = v;
            }
            ("ConfigMap" | "Secret", _) => {}
            (other, _) => {
                return Err(format!(
                    "protobuf bodies of kind {other:?} are not supported; send JSON"
                ));
            }
        }
    }
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(n: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![(n << 3) | 2, u8::try_from(payload.len()).unwrap()];
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn a_namespace_from_kubectl_create_decodes() {
        let label = [field(1, b"team"), field(2, b"shop")].concat();
        let meta = [field(1, b"shop"), field(11, &label)].concat();
        let raw = field(1, &meta);
        let type_meta = [field(1, b"v1"), field(2, b"Namespace")].concat();
        let body = [b"k8s\0".to_vec(), field(1, &type_meta), field(2, &raw)].concat();
        let obj = decode(&body).unwrap();
        assert_eq!(
            obj,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": {"team": "shop"}}})
        );
        assert!(decode(b"k8s\0\x0a\xff").is_err());
        assert!(decode(b"nope").is_err());
    }
}
