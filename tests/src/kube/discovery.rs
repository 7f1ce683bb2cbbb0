//! Discovery documents: `/version`, `/api`, `/apis`, `/apis/{group}` and the
//! APIResourceLists kubectl reads short names, scopes and verbs from. Built from the
//! store's registry on every request, so a new CRD is discoverable at once.
//!
//! `/openapi/v3` is a skeleton: per group version, one PATCH operation per kind that
//! declares the `fieldValidation` query parameter. That is what kubectl looks for to
//! leave validation to the server (which prunes or, with `Strict`, rejects unknown fields
//! of custom resources), so `kubectl apply` works without `--validate=false`. There are
//! no schemas in it: `kubectl explain` still does not work.

use std::sync::Arc;

use serde_json::{Value, json};

use super::store::{ApiError, ApiResult, ResourceDef, Store};

pub(super) fn version() -> Value {
    json!({
        "major": "1", "minor": "32", "gitVersion": "v1.32.0-lifeline-emulator",
        "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z", "goVersion": "none", "compiler": "rustc",
        "platform": "linux/amd64",
    })
}

fn group_json(group: &str, resources: &[Arc<ResourceDef>]) -> Value {
    let mut versions: Vec<String> = Vec::new();
    let mut preferred = None;
    for r in resources.iter().filter(|r| r.group == group) {
        preferred.get_or_insert_with(|| r.preferred_version().to_owned());
        for v in &r.versions {
            if !versions.contains(v) {
                versions.push(v.clone());
            }
        }
    }
    let gv = |v: &str| json!({"groupVersion": format!("{group}/{v}"), "version": v});
    json!({
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": group,
        "versions": versions.iter().map(|v| gv(v)).collect::<Vec<_>>(),
        "preferredVersion": gv(preferred.as_deref().unwrap_or("v1")),
    })
}

pub(super) fn api_groups(store: &Store) -> Value {
    let resources = store.resources();
    let mut groups: Vec<&str> = Vec::new();
    for r in &resources {
        if !r.group.is_empty() && !groups.contains(&r.group.as_str()) {
            groups.push(&r.group);
        }
    }
    json!({
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": groups.iter().map(|g| group_json(g, &resources)).collect::<Vec<_>>(),
    })
}

pub(super) fn api_group(store: &Store, group: &str) -> ApiResult<Value> {
    let resources = store.resources();
    if !resources.iter().any(|r| r.group == group) {
        return Err(ApiError::no_route());
    }
    Ok(group_json(group, &resources))
}

pub(super) fn resource_list(store: &Store, group: &str, version: &str) -> ApiResult<Value> {
    let defs: Vec<Arc<ResourceDef>> = store
        .resources()
        .into_iter()
        .filter(|r| r.group == group && r.versions.iter().any(|v| v == version))
        .collect();
    if defs.is_empty() {
        return Err(ApiError::no_route());
    }
    let mut resources = Vec::new();
    for d in &defs {
        let mut r = json!({
            "name": d.plural, "singularName": d.singular, "namespaced": d.namespaced, "kind": d.kind,
            "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
        });
        if !d.short_names.is_empty() {
            r["shortNames"] = json!(d.short_names);
        }
        if !d.categories.is_empty() {
            r["categories"] = json!(d.categories);
        }
        resources.push(r);
        if d.status_subresource {
            resources.push(json!({
                "name": format!("{}/status", d.plural), "singularName": "", "namespaced": d.namespaced,
                "kind": d.kind, "verbs": ["get", "patch", "update"],
            }));
        }
    }
    let gv = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    Ok(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    )
}

fn group_versions(store: &Store) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for r in store.resources() {
        for v in &r.versions {
            let gv = (r.group.clone(), v.clone());
            if !out.contains(&gv) {
                out.push(gv);
            }
        }
    }
    out
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// The OpenAPI v3 index: one entry per served group version.
pub(super) fn openapi_root(store: &Store) -> Value {
    let paths: serde_json::Map<String, Value> = group_versions(store)
        .into_iter()
        .map(|(g, v)| {
            let p = gv_path(&g, &v);
            // The hash changes with the group version's kinds, so kubectl refetches a
            // document after a CRD adds one (it caches by URL).
            let kinds: String = store
                .resources()
                .iter()
                .filter(|r| r.group == g && r.versions.contains(&v))
                .map(|r| format!("{}/{};", r.plural, r.kind))
                .collect();
            (p.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={:016x}", fnv1a(&kinds))}))
        })
        .collect();
    json!({"paths": paths})
}

/// A group version's OpenAPI v3 document, reduced to PATCH operations.
pub(super) fn openapi_group_version(store: &Store, group: &str, version: &str) -> ApiResult<Value> {
    let defs: Vec<Arc<ResourceDef>> = store
        .resources()
        .into_iter()
        .filter(|r| r.group == group && r.versions.iter().any(|v| v == version))
        .collect();
    if defs.is_empty() {
        return Err(ApiError::no_route());
    }
    let mut paths = serde_json::Map::new();
    for d in defs {
        let scope = if d.namespaced {
            "namespaces/{namespace}/"
        } else {
            ""
        };
        let path = format!("/{}/{scope}{}/{{name}}", gv_path(group, version), d.plural);
        let patch = json!({
            "operationId": format!("patch{}", d.kind),
            "x-kubernetes-action": "patch",
            "x-kubernetes-group-version-kind": {"group": group, "version": version, "kind": d.kind},
            "parameters": [
                {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
            ],
            "responses": {"200": {"description": "OK"}},
        });
        paths.insert(path, json!({"patch": patch}));
    }
    Ok(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0-lifeline-emulator"},
        "paths": paths,
        "components": {"schemas": {}},
    }))
}

/// FNV-1a, 64 bit: a stable, dependency-free content hash for cache-busting URLs.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
