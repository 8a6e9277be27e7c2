//! Real network partitions: every node in a network namespace of its own.
//!
//! [`NetLab::enter`] moves the calling thread into a new, private network
//! namespace (the hub: a bridge `10.77.0.254/24`, the Mesos emulator and
//! the test's own client), and creates one named namespace per node, each
//! with a veth on the hub's bridge (`10.77.0.{i+1}`). A partition is a set
//! of iptables DROP rules inside the nodes' namespaces: the kernel drops
//! the packets and open TCP connections stall, as on a real network, unlike
//! a proxy that closes them. Nothing outside the namespaces it created is
//! touched: the machine's own network, addresses and rules stay as they are.
//!
//! Needs CAP_SYS_ADMIN and CAP_NET_ADMIN (root), `ip` (iproute2) and
//! `iptables`. Call [`NetLab::enter`] on the thread that then builds the
//! tokio runtime, before building it: a namespace is per thread, and
//! threads (and processes) inherit it from the thread that creates them.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, bail};

/// Distinguishes the labs of one process in namespace names.
static LABS: AtomicU32 = AtomicU32::new(0);

/// Prefix of every namespace name a lab creates (stale ones, left by a
/// process that was killed, are removed by the next lab).
const NETNS_PREFIX: &str = "kaonlab-";

/// A private network of namespaces for one cluster (see the module docs).
pub struct NetLab {
    names: Vec<String>,
}

impl NetLab {
    /// The hub's address: the Mesos emulator and the test's client.
    pub const HUB_IP: &'static str = "10.77.0.254";

    /// Moves this thread into a new network namespace and creates `nodes`
    /// node namespaces wired to it (module docs).
    pub fn enter(nodes: usize) -> anyhow::Result<NetLab> {
        assert!((1..=9).contains(&nodes), "a lab holds 1..=9 nodes");
        remove_stale();
        // SAFETY: unshare(2) with CLONE_NEWNET changes only this thread's
        // network namespace; it touches no memory.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            bail!(
                "unshare(CLONE_NEWNET): {} (network-namespace tests need root: CAP_SYS_ADMIN and CAP_NET_ADMIN)",
                std::io::Error::last_os_error()
            );
        }
        let lab_id = LABS.fetch_add(1, Ordering::Relaxed);
        let mut lab = NetLab { names: Vec::new() };
        ip(&["link", "set", "lo", "up"])?;
        ip(&["link", "add", "br0", "type", "bridge"])?;
        ip(&["addr", "add", &format!("{}/24", Self::HUB_IP), "dev", "br0"])?;
        ip(&["link", "set", "br0", "up"])?;
        for i in 0..nodes {
            let name = format!("{NETNS_PREFIX}{}-{lab_id}-n{}", std::process::id(), i + 1);
            ip(&["netns", "add", &name])?;
            lab.names.push(name.clone());
            let veth = format!("veth{}", i + 1);
            ip(&[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &name,
            ])?;
            ip(&["link", "set", &veth, "master", "br0", "up"])?;
            ip(&["-n", &name, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                &name,
                "addr",
                "add",
                &format!("{}/24", lab.node_ip(i)),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &name, "link", "set", "eth0", "up"])?;
        }
        Ok(lab)
    }

    /// Number of node namespaces.
    pub fn nodes(&self) -> usize {
        self.names.len()
    }

    /// Node `i`'s address (0-based index).
    pub fn node_ip(&self, i: usize) -> String {
        format!("10.77.0.{}", i + 1)
    }

    /// A command that runs `program` inside node `i`'s namespace (`ip netns
    /// exec` execs it: the child's pid is the program's).
    pub fn command(&self, i: usize, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.names[i]]).arg(program);
        c
    }

    /// Drops every packet node `from` sends to node `to` (one direction: an
    /// asymmetric partition; call it both ways for a symmetric one).
    pub fn cut(&self, from: usize, to: usize) -> anyhow::Result<()> {
        let (src, dst) = (self.node_ip(from), self.node_ip(to));
        iptables(
            &self.names[from],
            &["-A", "OUTPUT", "-d", &dst, "-j", "DROP"],
        )?;
        iptables(&self.names[to], &["-A", "INPUT", "-s", &src, "-j", "DROP"])
    }

    /// Cuts node `i` off from every other node, both ways (it still reaches
    /// the hub: Mesos and the test's client).
    pub fn isolate(&self, i: usize) -> anyhow::Result<()> {
        for j in (0..self.nodes()).filter(|&j| j != i) {
            self.cut(i, j)?;
            self.cut(j, i)?;
        }
        Ok(())
    }

    /// Cuts node `i` off from the hub's TCP `port` (the Mesos master), both
    /// ways.
    pub fn cut_port(&self, i: usize, port: u16) -> anyhow::Result<()> {
        let p = port.to_string();
        let n = &self.names[i];
        iptables(
            n,
            &["-A", "OUTPUT", "-p", "tcp", "--dport", &p, "-j", "DROP"],
        )?;
        iptables(
            n,
            &["-A", "INPUT", "-p", "tcp", "--sport", &p, "-j", "DROP"],
        )
    }

    /// Removes every rule: the network is whole again.
    pub fn heal(&self) -> anyhow::Result<()> {
        for n in &self.names {
            iptables(n, &["-F", "INPUT"])?;
            iptables(n, &["-F", "OUTPUT"])?;
        }
        Ok(())
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = ip(&["netns", "del", n]);
        }
    }
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    run(Command::new("ip").args(args))
}

fn iptables(netns: &str, args: &[&str]) -> anyhow::Result<()> {
    run(Command::new("ip")
        .args(["netns", "exec", netns, "iptables", "-w"])
        .args(args))
}

/// Deletes the namespaces of labs whose process is gone (killed before its
/// `Drop` ran).
fn remove_stale() {
    let Ok(rd) = std::fs::read_dir("/var/run/netns") else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(NETNS_PREFIX)
            .and_then(|r| r.split('-').next())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            let _ = ip(&["netns", "del", &name]);
        }
    }
}
