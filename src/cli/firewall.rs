//! Network partitions between local nodes for the chaos harness: `iptables` rules that drop
//! packets between two nodes' loopback addresses (each node has its own 127.x address, and
//! its connections to peers leave from it — see `replication::transport::TcpDialer`).
//! Clients on 127.0.0.1 still reach every node, as clients on the far side of a partition
//! would. The rules live in a chain of their own, removed when the `Firewall` is dropped,
//! and drop only packets to this run's cluster ports (`base + 200 ..= base + 299`, TCP and
//! UDP): runs side by side share the 127.x addresses, and one run's partition must not cut
//! another's nodes.

use anyhow::{bail, Context};
use std::net::IpAddr;
use std::process::Command;

pub struct Firewall {
    /// This run's chain (runs on other ports keep theirs).
    chain: String,
    /// This run's cluster ports, as iptables writes a range (`first:last`).
    ports: String,
}

fn iptables(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("iptables")
        .arg("-w")
        .args(args)
        .output()
        .context("running iptables")?;
    if !out.status.success() {
        bail!(
            "iptables {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Whether this process runs as root (iptables would fail otherwise).
fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl Firewall {
    /// Set up the chain of the run whose ports start at `base` (its cluster ports are
    /// `base + 200` on); root and `iptables` needed. An error says why partitions cannot be
    /// made here.
    pub fn new(base: u16) -> anyhow::Result<Firewall> {
        if !is_root() {
            bail!("partitions need root (for iptables)");
        }
        let chain = format!("CAIRN_CHAOS_{base}");
        let ports = format!("{}:{}", base + 200, base + 299);
        // Left over from a run that was killed: start clean.
        let _ = iptables(&["-D", "OUTPUT", "-j", &chain]);
        let _ = iptables(&["-F", &chain]);
        let _ = iptables(&["-X", &chain]);
        iptables(&["-N", &chain])?;
        iptables(&["-I", "OUTPUT", "-j", &chain])?;
        Ok(Firewall { chain, ports })
    }

    /// Drop everything between the nodes at `a` and `b`, both ways.
    pub fn cut(&mut self, a: IpAddr, b: IpAddr) -> anyhow::Result<()> {
        for (src, dst) in [(a, b), (b, a)] {
            let (s, d) = (src.to_string(), dst.to_string());
            for proto in ["tcp", "udp"] {
                iptables(&[
                    "-A",
                    &self.chain,
                    "-s",
                    &s,
                    "-d",
                    &d,
                    "-p",
                    proto,
                    "--dport",
                    &self.ports,
                    "-j",
                    "DROP",
                ])?;
            }
        }
        Ok(())
    }

    /// Cut every node of `side` off from every node not in it.
    pub fn split(&mut self, side: &[IpAddr], all: &[IpAddr]) -> anyhow::Result<()> {
        for a in side {
            for b in all.iter().filter(|b| !side.contains(b)) {
                self.cut(*a, *b)?;
            }
        }
        Ok(())
    }

    /// Remove every cut.
    pub fn heal(&mut self) -> anyhow::Result<()> {
        iptables(&["-F", &self.chain])
    }
}

impl Drop for Firewall {
    fn drop(&mut self) {
        let _ = iptables(&["-F", &self.chain]);
        let _ = iptables(&["-D", "OUTPUT", "-j", &self.chain]);
        let _ = iptables(&["-X", &self.chain]);
    }
}
