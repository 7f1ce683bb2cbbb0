//! Member kubeconfigs, from a Secret's bytes or a file, checked strictly enough that a
//! broken one is reported by what is wrong with it rather than by a connection failure
//! much later.
//!
//! ```text
//!  bytes ─► UTF-8 ─► YAML (kube's Kubeconfig) ─► context ─► cluster.server (http/https URL)
//!                                                   └────► user (must exist if named)
//!        ─► kube::Config for exactly that context
//! ```

use std::path::Path;

use kube::config::{Context, KubeConfigOptions, Kubeconfig};

use super::Error;

/// Reads a kubeconfig file (`spec.kubeconfigPath`).
pub async fn kube_config_from_path(path: &Path) -> Result<kube::Config, Error> {
    let bytes = tokio::fs::read(path)
        .await
        .map_err(|source| Error::KubeconfigFile {
            path: path.to_owned(),
            source,
        })?;
    kube_config_from_bytes(&bytes).await
}

/// Parses a kubeconfig (YAML) held in memory, e.g. a Secret's `data.kubeconfig`. The
/// context used is `current-context`, or the only context when there is one.
pub async fn kube_config_from_bytes(bytes: &[u8]) -> Result<kube::Config, Error> {
    let kc = parse(bytes)?;
    let context_name = chosen_context(&kc)?;
    let context = context_named(&kc, &context_name)?;
    let cluster_name = context.cluster.clone();
    let server = server_url(&kc, &context_name, &cluster_name)?;
    check_user(&kc, &context_name, context)?;
    let config = config_for(kc, &context_name, &cluster_name).await?;
    if server.scheme_str() == Some("https") {
        check_tls_material(&config, &context_name)?;
    }
    Ok(config)
}

fn bad(reason: String) -> Error {
    Error::Kubeconfig(reason)
}

fn parse(bytes: &[u8]) -> Result<Kubeconfig, Error> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        bad(format!(
            "not UTF-8 text (invalid byte at offset {})",
            e.valid_up_to()
        ))
    })?;
    if text.trim().is_empty() {
        return Err(bad("empty document".to_owned()));
    }
    // The parser's message can quote the document (a token, a key); only its shape is
    // reported, never the text.
    Kubeconfig::from_yaml(text)
        .map_err(|e| bad(format!("not a kubeconfig: {}", redact(&error_chain(&e)))))
}

/// `current-context`, or the only context; several without a current one is ambiguous.
fn chosen_context(kc: &Kubeconfig) -> Result<String, Error> {
    match (&kc.current_context, kc.contexts.as_slice()) {
        (Some(c), _) if !c.is_empty() => Ok(c.clone()),
        (_, [only]) => Ok(only.name.clone()),
        (_, []) => Err(bad("no contexts defined".to_owned())),
        (_, many) => Err(bad(format!(
            "current-context is not set and there are {} contexts to choose from",
            many.len()
        ))),
    }
}

fn context_named<'a>(kc: &'a Kubeconfig, name: &str) -> Result<&'a Context, Error> {
    kc.contexts
        .iter()
        .find(|c| c.name == name)
        .ok_or_else(|| {
            bad(format!(
                "current-context {name:?} is not among the contexts"
            ))
        })?
        .context
        .as_ref()
        .ok_or_else(|| bad(format!("context {name:?} is empty")))
}

/// The context's cluster's server, which must be an http(s) URL with a host.
fn server_url(kc: &Kubeconfig, context_name: &str, cluster_name: &str) -> Result<http::Uri, Error> {
    if cluster_name.is_empty() {
        return Err(bad(format!("context {context_name:?} names no cluster")));
    }
    let cluster = kc
        .clusters
        .iter()
        .find(|c| c.name == cluster_name)
        .ok_or_else(|| {
            bad(format!(
                "context {context_name:?} refers to cluster {cluster_name:?}, which is not defined"
            ))
        })?;
    let server = cluster
        .cluster
        .as_ref()
        .and_then(|c| c.server.as_deref())
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| bad(format!("cluster {cluster_name:?} has no server URL")))?;
    let uri: http::Uri = server.parse().map_err(|e| {
        bad(format!(
            "cluster {cluster_name:?} server {server:?} is not a URL: {e}"
        ))
    })?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        return Err(bad(format!(
            "cluster {cluster_name:?} server {server:?} must be an http:// or https:// URL with a host"
        )));
    }
    Ok(uri)
}

/// A user the context names must be defined; a context may name none.
fn check_user(kc: &Kubeconfig, context_name: &str, context: &Context) -> Result<(), Error> {
    match context.user.as_deref().filter(|u| !u.is_empty()) {
        Some(user) if !kc.auth_infos.iter().any(|a| a.name == user) => Err(bad(format!(
            "context {context_name:?} refers to user {user:?}, which is not defined"
        ))),
        _ => Ok(()),
    }
}

/// kube's configuration for exactly `context_name`, with a CA that holds a certificate.
async fn config_for(
    kc: Kubeconfig,
    context_name: &str,
    cluster_name: &str,
) -> Result<kube::Config, Error> {
    let options = KubeConfigOptions {
        context: Some(context_name.to_owned()),
        ..KubeConfigOptions::default()
    };
    // What remains (certificate and key material, auth plugins) kube checks itself; its
    // message is kept whole, with the context it concerns.
    let config = kube::Config::from_custom_kubeconfig(kc, &options)
        .await
        .map_err(|e| bad(format!("context {context_name:?}: {}", error_chain(&e))))?;
    if config
        .root_cert
        .as_ref()
        .is_some_and(|certs| certs.is_empty())
    {
        // A CA field whose text holds no PEM block would leave nothing to trust.
        return Err(bad(format!(
            "cluster {cluster_name:?}: certificate-authority(-data) holds no PEM certificate"
        )));
    }
    Ok(config)
}

/// kube parses certificates only when a client is built; building the TLS configuration
/// now turns a bad CA or client key into this error, not a connection failure later.
fn check_tls_material(config: &kube::Config, context_name: &str) -> Result<(), Error> {
    // The provider is process-wide; one may be installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    kube::client::ConfigExt::rustls_client_config(config).map_err(|e| {
        bad(format!(
            "context {context_name:?}: TLS material: {}",
            error_chain(&e)
        ))
    })?;
    Ok(())
}

/// `text` with every quoted part (`"…"`, `'…'`, `` `…` ``) replaced by `<redacted>`,
/// and cut to 300 characters: what a parse error says about where and what kind of
/// problem, without the values it may quote from a Secret.
pub(crate) fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(300));
    let mut quote: Option<char> = None;
    for c in text.chars() {
        match quote {
            Some(q) if c == q => {
                out.push_str("<redacted>");
                out.push(c);
                quote = None;
            }
            Some(_) => {}
            None if matches!(c, '"' | '\'' | '`') => {
                out.push(c);
                quote = Some(c);
            }
            None => out.push(c),
        }
        if out.len() >= 300 {
            out.push('…');
            break;
        }
    }
    if quote.is_some() {
        out.push_str("<redacted>");
    }
    out
}

/// An error and its sources on one line: kube's top-level messages hide the cause.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    // Bounded by the chain's length; error chains are short and finite.
    while let Some(s) = source {
        let s_text = s.to_string();
        if !out.contains(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_broken_kubeconfig_is_reported_without_the_values_it_holds() {
        // A token pasted where a flag belongs: the parser's message quotes it.
        let text = "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: \"https://x\", insecure-skip-tls-verify: \"s3cr3t-token-value\"}\ncontexts: []\n";
        let Err(Error::Kubeconfig(why)) = kube_config_from_bytes(text.as_bytes()).await else {
            panic!("accepted");
        };
        assert!(why.starts_with("not a kubeconfig"), "{why}");
        // The parser itself quotes the value, which is why it is redacted.
        let raw = error_chain(&Kubeconfig::from_yaml(text).unwrap_err());
        assert!(
            !why.contains("s3cr3t"),
            "the error quotes the Secret: {why}"
        );
        assert!(raw.contains("s3cr3t"), "{raw}");
    }

    #[test]
    fn redaction_keeps_the_shape_and_drops_quoted_values() {
        assert_eq!(
            redact("invalid type: string \"abc\", expected struct AuthInfo at line 7"),
            "invalid type: string \"<redacted>\", expected struct AuthInfo at line 7"
        );
        assert_eq!(redact("unterminated 'abc"), "unterminated '<redacted>");
        assert!(redact(&"x".repeat(1000)).chars().count() <= 301);
    }
}
