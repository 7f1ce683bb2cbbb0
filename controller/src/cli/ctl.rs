//! `lifeline ctl`: the operator's client. It works through the admin API of any replica
//! or, for break-glass use, straight against etcd — no Kubernetes API, no running leader.

use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use clap::Subcommand;
use lifeline_etcd::EtcdStore;
use serde_json::{Value, json};

use crate::admin::{self, OverrideRequest, Status};

/// Where `ctl` sends its commands.
#[derive(Debug)]
pub enum Target {
    /// A replica's admin API.
    Admin { url: String, token: Option<String> },
    /// etcd itself.
    Etcd {
        connect: lifeline_etcd::source::EtcdConnect,
        prefix: String,
    },
}

/// Runs a ctl command against `target`.
pub async fn run_on(target: Target, command: CtlCommand) -> anyhow::Result<String> {
    match target {
        Target::Admin { url, token } => run(&url, token.as_deref(), command).await,
        Target::Etcd { connect, prefix } => run_etcd(&connect, &prefix, command).await,
    }
}

/// The request an override command makes.
fn request(action: &str, args: OverrideArgs, weight: Option<u32>) -> OverrideRequest {
    OverrideRequest {
        cluster: args.cluster,
        policy: args.policy,
        action: action.to_owned(),
        weight,
        duration: args.duration,
        author: args.author,
        reason: args.reason,
    }
}

fn set_line(o: &lifeline_engine::Override) -> String {
    format!(
        "override {} set: {:?} {} until {}\n",
        o.id,
        o.action,
        o.cluster,
        lifeline_model::time::format(o.expires_at)
    )
}

/// Break-glass: the same commands, written to and read from etcd directly.
async fn run_etcd(
    connect: &lifeline_etcd::source::EtcdConnect,
    prefix: &str,
    command: CtlCommand,
) -> anyhow::Result<String> {
    let store = EtcdStore::connect(connect, prefix)
        .await
        .with_context(|| format!("cannot reach etcd at {}", connect.endpoints.join(",")))?;
    let now = std::time::SystemTime::now();
    match command {
        CtlCommand::Status => status_from_etcd(&store, now).await,
        CtlCommand::Overrides => overrides_from_etcd(&store, now).await,
        CtlCommand::Drain(args) => set_in_etcd(&store, request("drain", args, None), now).await,
        CtlCommand::Pin(args) => set_in_etcd(&store, request("pin", args, None), now).await,
        CtlCommand::Weight { args, weight } => {
            set_in_etcd(&store, request("weight", args, Some(weight)), now).await
        }
        CtlCommand::Release {
            fingerprint,
            reason,
            author,
        } => {
            let req = admin::ReleaseRequest {
                fingerprint,
                author,
                reason,
            };
            release_in_etcd(&store, req, now).await
        }
        CtlCommand::Clear { cluster, id } => clear_in_etcd(&store, cluster, id).await,
    }
}

/// The status table as the admin API would show it, with the leader named.
async fn status_from_etcd(store: &EtcdStore, now: SystemTime) -> anyhow::Result<String> {
    let decision = store.load_decision().await?.unwrap_or_default();
    let overrides = store.overrides().await?;
    let leader = store
        .leader_identity()
        .await?
        .unwrap_or_else(|| "none".to_owned());
    let mut status = admin::status_of(&decision, &overrides, now);
    status.held = store.policy_hold().await?;
    Ok(format!("leader: {leader}\n{}", render_status(&status)))
}

/// Active overrides and the audit trail, in the admin API's shape.
async fn overrides_from_etcd(store: &EtcdStore, now: SystemTime) -> anyhow::Result<String> {
    let overrides: Vec<Value> = store
        .overrides()
        .await?
        .into_iter()
        .filter(|o| o.is_active(now))
        .map(|o| serde_json::to_value(o).unwrap_or_default())
        .collect();
    let audit: Vec<Value> = store
        .audit()
        .await?
        .into_iter()
        .map(|e| serde_json::to_value(e).unwrap_or_default())
        .collect();
    Ok(render_overrides(
        &json!({ "overrides": overrides, "audit": audit }),
    ))
}

/// Writes an override after the checks the admin API makes: a known cluster and policy,
/// and room for one more.
async fn set_in_etcd(
    store: &EtcdStore,
    req: OverrideRequest,
    now: SystemTime,
) -> anyhow::Result<String> {
    // What the mirrored policy set defines; nothing mirrored yet accepts any name.
    let known = store
        .load_policies()
        .await
        .map(|p| admin::Known::of(&p))
        .context("reading the policy set to check the override against")?;
    let o = admin::override_from_request(req, &known, now)
        .map_err(|e| anyhow::anyhow!("override refused: {e}"))?;
    let all = store
        .overrides()
        .await
        .context("reading the overrides in force")?;
    // What the DNS servers will answer when they apply it on their own (a replica with
    // no leader does): a drain that would leave a name with no target is refused here,
    // as the servers would not apply it there.
    let leader = store
        .leader_identity()
        .await
        .context("reading who holds the leader lease")?;
    let mut notes = String::new();
    if o.policy.is_none() {
        let published = store
            .records()
            .await
            .context("reading the published records")?;
        let in_force: Vec<_> = all.into_iter().filter(|o| o.is_active(now)).collect();
        let preview = super::preview::of(&published, &in_force, &o, now);
        if o.action == lifeline_engine::OverrideAction::Drain && !preview.emptied.is_empty() {
            bail!(
                "override refused: draining {} would leave {} name(s) with no target, as no healthy tier is held in reserve for them: {}. The DNS servers would go on answering {} there. Bring a standby target back, or pin another cluster.",
                o.cluster,
                preview.emptied.len(),
                preview.emptied.join(", "),
                o.cluster,
            );
        }
        notes.push_str(&super::preview::render(&preview));
    } else {
        notes.push_str("a policy-scoped override is applied by the leader only\n");
    }
    if leader.is_none() {
        notes.push_str(
            "warning: no leader holds the lease; only what the replicas apply on their own takes effect (cluster-wide drains, pins and weights, within the tiers last published)\n",
        );
    }
    let by = o.author.clone();
    let max = lifeline_model::limits::OVERRIDES_MAX;
    if let Some(active) = store
        .put_override_within(&o, &by, max)
        .await
        .context("writing the override")?
    {
        bail!("override refused: {}", admin::Full::new(active, max));
    }
    Ok(format!("{}{notes}", set_line(&o)))
}

async fn release_in_etcd(
    store: &EtcdStore,
    req: admin::ReleaseRequest,
    now: SystemTime,
) -> anyhow::Result<String> {
    let held = store.policy_hold().await?;
    let release =
        admin::release_from_request(req, held.as_ref(), now).map_err(anyhow::Error::msg)?;
    store.release_policy_change(&release).await?;
    Ok(released_line(&release.fingerprint))
}

/// Removes the override `id`, or else every override of `cluster`; with neither, none.
async fn clear_in_etcd(
    store: &EtcdStore,
    cluster: Option<String>,
    id: Option<String>,
) -> anyhow::Result<String> {
    let by = std::env::var("USER").unwrap_or_else(|_| "unknown".to_owned());
    let removed = store
        .remove_overrides(
            move |o| match (&id, &cluster) {
                (Some(id), _) => &o.id == id,
                (None, Some(c)) => &o.cluster == c,
                (None, None) => false,
            },
            &by,
        )
        .await?;
    Ok(format!("cleared {} override(s)\n", removed.len()))
}

/// Operator commands.
#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Show every policy, its answers and its targets' health.
    Status,
    /// List active overrides and the audit trail.
    Overrides,
    /// Take a cluster out of answers.
    Drain(OverrideArgs),
    /// Answer only this cluster, whatever its health.
    Pin(OverrideArgs),
    /// Replace a cluster's weight.
    Weight {
        #[command(flatten)]
        args: OverrideArgs,
        /// New weight (0–1000).
        #[arg(long)]
        weight: u32,
    },
    /// Apply a held policy change (one that would stop serving many names at once).
    /// `status` shows what is held and its fingerprint.
    Release {
        /// Fingerprint of the held change, as `status` shows it.
        fingerprint: String,
        /// Why (logged with the release).
        #[arg(long)]
        reason: String,
        /// Who (defaults to $USER).
        #[arg(long, env = "USER", default_value = "unknown")]
        author: String,
    },
    /// Remove every override of a cluster (or one by `--id`).
    Clear {
        /// Cluster whose overrides are removed.
        #[arg(required_unless_present = "id")]
        cluster: Option<String>,
        /// Remove only this override.
        #[arg(long)]
        id: Option<String>,
    },
}

/// What every override needs.
#[derive(Debug, clap::Args)]
pub struct OverrideArgs {
    /// Member cluster name.
    pub cluster: String,
    /// Limit to one policy (`namespace/name`).
    #[arg(long)]
    pub policy: Option<String>,
    /// How long it lasts (e.g. 30m, 2h; at most 168h).
    #[arg(long = "for", default_value = "1h")]
    pub duration: String,
    /// Why (recorded in the audit trail).
    #[arg(long)]
    pub reason: String,
    /// Who (defaults to $USER).
    #[arg(long, env = "USER", default_value = "unknown")]
    pub author: String,
}

/// Runs a ctl command against `admin` (e.g. `http://127.0.0.1:8080`).
pub async fn run(admin: &str, token: Option<&str>, command: CtlCommand) -> anyhow::Result<String> {
    let api = AdminApi::new(admin, token)?;
    match command {
        CtlCommand::Status => {
            let v = api.send(api.get("/v1/status")).await?;
            let status: Status = serde_json::from_value(v).context("decoding the status")?;
            Ok(render_status(&status))
        }
        CtlCommand::Overrides => {
            let v = api.send(api.get("/v1/overrides")).await?;
            Ok(render_overrides(&v))
        }
        CtlCommand::Drain(args) => api.set_override(request("drain", args, None)).await,
        CtlCommand::Pin(args) => api.set_override(request("pin", args, None)).await,
        CtlCommand::Weight { args, weight } => {
            api.set_override(request("weight", args, Some(weight)))
                .await
        }
        CtlCommand::Release {
            fingerprint,
            reason,
            author,
        } => {
            let body = admin::ReleaseRequest {
                fingerprint,
                author,
                reason,
            };
            let v = api
                .send(api.post("/v1/policy-change/release").json(&body))
                .await?;
            Ok(released_line(v["fingerprint"].as_str().unwrap_or("?")))
        }
        CtlCommand::Clear { cluster, id } => api.clear(cluster, id).await,
    }
}

/// One replica's admin API.
struct AdminApi<'a> {
    client: reqwest::Client,
    /// The base URL without a trailing `/`.
    base: &'a str,
    token: Option<&'a str>,
}

impl<'a> AdminApi<'a> {
    fn new(admin: &'a str, token: Option<&'a str>) -> anyhow::Result<Self> {
        // Never through a proxy: the admin API is reached directly, and a proxy on the way
        // could answer for a dead replica.
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            client,
            base: admin.trim_end_matches('/'),
            token,
        })
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.get(format!("{}{path}", self.base))
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.post(format!("{}{path}", self.base))
    }

    /// Sends `r` with the token; an answer that is not a success is an error carrying
    /// the API's own message.
    async fn send(&self, r: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let r = match self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        };
        let base = self.base;
        let resp = r
            .send()
            .await
            .with_context(|| format!("cannot reach the admin API at {base}"))?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let msg = body["error"].as_str().unwrap_or("no error message");
            bail!("admin API answered {status}: {msg}");
        }
        Ok(body)
    }

    async fn set_override(&self, req: OverrideRequest) -> anyhow::Result<String> {
        let body = serde_json::to_value(req).unwrap_or_default();
        let v = self.send(self.post("/v1/overrides").json(&body)).await?;
        Ok(format!(
            "override {} set: {} {} until {}\n",
            v["id"].as_str().unwrap_or("?"),
            v["action"]["type"].as_str().unwrap_or("?"),
            v["cluster"].as_str().unwrap_or("?"),
            v["expiresAt"].as_str().unwrap_or("?")
        ))
    }

    /// Removes the override `id`, or else every override of `cluster`.
    async fn clear(&self, cluster: Option<String>, id: Option<String>) -> anyhow::Result<String> {
        let v = match (id, cluster) {
            (Some(id), _) => {
                self.send(
                    self.client
                        .delete(format!("{}/v1/overrides/{id}", self.base)),
                )
                .await?
            }
            (None, Some(cluster)) => {
                let mut url = reqwest::Url::parse(&format!("{}/v1/overrides", self.base))
                    .context("admin URL")?;
                url.query_pairs_mut().append_pair("cluster", &cluster);
                self.send(self.client.delete(url)).await?
            }
            (None, None) => bail!("give a cluster or --id"),
        };
        let n = v["cleared"].as_array().map_or(0, Vec::len);
        Ok(format!("cleared {n} override(s)\n"))
    }
}

fn released_line(fingerprint: &str) -> String {
    format!("policy change {fingerprint} released; the leader applies it within a few seconds\n")
}

/// A readable list of `{"overrides": [...], "audit": [...]}` as the admin API returns it.
fn render_overrides(v: &Value) -> String {
    let mut out = String::from("ACTIVE OVERRIDES\n");
    for o in v["overrides"].as_array().into_iter().flatten() {
        out += &format!(
            "  {:<36} {:<7} {:<16} until {}  by {}: {}\n",
            o["id"].as_str().unwrap_or(""),
            o["action"]["type"].as_str().unwrap_or(""),
            o["cluster"].as_str().unwrap_or(""),
            o["expiresAt"].as_str().unwrap_or(""),
            o["author"].as_str().unwrap_or(""),
            o["reason"].as_str().unwrap_or("")
        );
    }
    out += "AUDIT\n";
    for e in v["audit"].as_array().into_iter().flatten() {
        out += &format!(
            "  {} {:<8} {} by {}\n",
            e["at"].as_str().unwrap_or(""),
            e["action"].as_str().unwrap_or(""),
            e["override"]["id"].as_str().unwrap_or(""),
            e["by"].as_str().unwrap_or("")
        );
    }
    out
}

/// A readable table of the status document.
pub fn render_status(s: &Status) -> String {
    let mut out = format!(
        "revision {}   answers last changed {}   active overrides {}\n",
        s.revision,
        s.decision_age_seconds
            .map_or("never".to_owned(), |a| format!("{a:.0}s ago")),
        s.active_overrides
    );
    for a in &s.alarms {
        out += &format!("ALARM {}: {} (since {})\n", a.kind, a.message, a.since);
    }
    if let Some(h) = &s.held {
        out += &format!(
            "HELD policy change {}: {} (since {}); still serving the set in force\n  would remove: {}\n  apply it with: lifeline ctl release {} --reason \"...\"\n",
            h.fingerprint,
            h.reason,
            lifeline_model::time::format(h.since),
            h.removed.join(", "),
            h.fingerprint
        );
    }
    out += &format!(
        "{:<20} {:<34} {:<10} {:<9} {}\n",
        "POLICY", "HOSTNAME", "STRATEGY", "OUTCOME", "ANSWERS"
    );
    for p in &s.policies {
        out += &format!(
            "{:<20} {:<34} {:<10} {:<9} {}\n",
            p.name,
            p.hostname,
            p.strategy,
            p.outcome,
            if p.answers.is_empty() {
                "-".to_owned()
            } else {
                p.answers.join(",")
            }
        );
        for t in &p.targets {
            out += &format!(
                "    {:<16} {:<14} {} (since {})\n",
                t.cluster, t.state, t.reason, t.since
            );
        }
    }
    out
}
