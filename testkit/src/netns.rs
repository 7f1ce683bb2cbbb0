//! A network namespace of the test's own, joined to the host by a veth pair: a "remote
//! host" whose packets can really be dropped.
//!
//! ```text
//!   host namespace                         namespace `llt-<pid>-<n>`
//!   veth host side  10.250.X.Y+1/30 ◄──────► veth ns side  10.250.X.Y+2/30
//!                                           └ black_hole(true): replies to 10.250.X.Y+1
//!                                             are routed into a blackhole (no RST)
//! ```
//!
//! A process in the namespace (started with [`Netns::command`]) is reached from the host
//! at [`Netns::addr`]. The link is routed directly, never through the machine's default
//! route, so no proxy on the way can answer for it. Needs root and `ip` (iproute2);
//! [`Netns::create`] says so in its error otherwise. Dropping it deletes the namespace,
//! which removes both ends of the link.

use std::{
    net::{IpAddr, Ipv4Addr},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A network namespace with one veth link to the host.
#[derive(Debug)]
pub struct Netns {
    name: String,
    host: Ipv4Addr,
    inside: Ipv4Addr,
}

impl Netns {
    /// Creates the namespace and its link. The /30 is picked from the process id and a
    /// counter, so concurrent tests and benchmarks do not collide.
    pub fn create() -> Result<Self, String> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let slot = std::process::id().wrapping_mul(7).wrapping_add(n) % 16_384;
        let (third, fourth) = ((slot >> 6) as u8, ((slot & 63) << 2) as u8);
        let ns = Netns {
            name: format!("llt-{}-{n}", std::process::id()),
            host: Ipv4Addr::new(10, 250, third, fourth | 1),
            inside: Ipv4Addr::new(10, 250, third, fourth | 2),
        };
        // veth names are limited to 15 bytes.
        let (host_if, ns_if) = (format!("llh{slot:x}"), format!("lln{slot:x}"));
        ip(&["netns", "add", &ns.name])?;
        let setup = || -> Result<(), String> {
            ip(&[
                "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
            ])?;
            ip(&["link", "set", &ns_if, "netns", &ns.name])?;
            ip(&["addr", "add", &format!("{}/30", ns.host), "dev", &host_if])?;
            ip(&["link", "set", &host_if, "up"])?;
            ns.ip(&["addr", "add", &format!("{}/30", ns.inside), "dev", &ns_if])?;
            ns.ip(&["link", "set", &ns_if, "up"])?;
            ns.ip(&["link", "set", "lo", "up"])
        };
        // On failure `ns` is dropped, which deletes the namespace (and a half-made link).
        setup().map(|()| ns)
    }

    /// The namespace's address, reachable from the host.
    pub fn addr(&self) -> IpAddr {
        IpAddr::V4(self.inside)
    }

    /// The host's end of the link (the source address of the host's connections).
    pub fn host_addr(&self) -> IpAddr {
        IpAddr::V4(self.host)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Turns the black hole on or off: while on, everything the namespace sends back to
    /// the host is dropped inside it, so the host's connection attempts and requests get
    /// no answer at all (no RST, no ICMP), as from a host that vanished.
    pub fn black_hole(&self, on: bool) -> Result<(), String> {
        let host = format!("{}/32", self.host);
        if on {
            self.ip(&["route", "add", "blackhole", &host])
        } else {
            self.ip(&["route", "del", "blackhole", &host])
        }
    }

    fn ip(&self, args: &[&str]) -> Result<(), String> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Processes still inside would keep the namespace's network alive: kill them.
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        let _ = ip(&["netns", "del", &self.name]);
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("running `ip {}` (needs iproute2): {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed (needs root): {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
