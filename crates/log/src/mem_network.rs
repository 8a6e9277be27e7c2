//! An in-process network for Raft RPC: many nodes in one process, with
//! the test in control of every message.
//!
//! A [`MemNetwork`] is a hub that every node of a simulated cluster joins
//! through [`crate::Transport::Mem`]. A node "listens" by registering its
//! RPC handlers under an address; a peer's call looks the address up and
//! runs the very [`RaftRpcServer`] handlers the tonic service runs, with
//! the same encoded payloads, so a simulation exercises the production
//! request/response code, not a mock of it.
//!
//! Faults are per directed link (node id → node id) and apply to each leg
//! of a call separately (request, then reply): a cut link or a
//! [`Fate::Drop`] loses the message — the caller sees `Unavailable` after
//! [`MemNetwork::set_drop_timeout`] (default [`DEFAULT_DROP_TIMEOUT`]), as it
//! would after a TCP connect timeout, and a lost reply means the request
//! *was* handled. [`Fate::Delay`] holds a message back. All waiting is on
//! `tokio::time`, so under a paused clock faults cost no real time. A
//! seeded simulation plugs its own choices in with [`MemNetwork::set_filter`].
//! A call to an address where no node is registered (stopped or never
//! started) fails at once with `Unavailable` (connection refused).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tonic::Status;

use crate::network::RaftRpcServer;

/// How long a lost message keeps its sender waiting before the call fails
/// with `Unavailable` (the same as the gRPC transport's connect timeout).
pub const DEFAULT_DROP_TIMEOUT: Duration = crate::network::CONNECT_TIMEOUT;

/// The Raft RPC a message belongs to (for filters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RpcKind {
    /// Log replication and heartbeats.
    AppendEntries,
    /// Elections.
    Vote,
    /// "How many archived events do you hold" before a snapshot.
    ArchiveLength,
    /// A whole snapshot (all chunks travel as one message here).
    InstallSnapshot,
    /// The leader hands leadership to a voter.
    TransferLeader,
}

/// One leg of a call, as a filter sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message {
    /// Sending node.
    pub from: u64,
    /// Receiving node.
    pub to: u64,
    /// Which RPC.
    pub kind: RpcKind,
    /// True for the reply leg (`from` is then the node that handled the
    /// request).
    pub reply: bool,
}

/// What happens to one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Arrives now.
    Deliver,
    /// Arrives after this long.
    Delay(Duration),
    /// Never arrives.
    Drop,
    /// A request that arrives now and once more after this long (a
    /// retransmission the receiver sees twice); the sender gets the first
    /// reply. For a reply leg this is the same as `Deliver`.
    Duplicate(Duration),
}

/// Decides each message's fate; called in send order with the hub locked
/// (it must not call back into the [`MemNetwork`]).
pub type Filter = Arc<dyn Fn(&Message) -> Fate + Send + Sync>;

/// Counts of messages by fate, over the hub's lifetime.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemNetworkStats {
    /// Messages that arrived (on time or delayed).
    pub delivered: u64,
    /// Of those, messages that were delayed.
    pub delayed: u64,
    /// Messages lost to cut links or to the filter.
    pub dropped: u64,
    /// Requests delivered twice.
    pub duplicated: u64,
    /// Calls to an address with no node behind it.
    pub refused: u64,
}

/// The in-process network hub; cloning shares it.
#[derive(Clone, Default)]
pub struct MemNetwork {
    hub: Arc<Mutex<Hub>>,
}

#[derive(Default)]
struct Hub {
    /// Bound addresses; `None` until the node's handlers are attached.
    nodes: BTreeMap<String, Option<(u64, Arc<RaftRpcServer>)>>,
    /// Cut directed links (from, to).
    cut: BTreeSet<(u64, u64)>,
    /// Nodes cut from every other node, both directions.
    isolated: BTreeSet<u64>,
    filter: Option<Filter>,
    drop_timeout: Option<Duration>,
    stats: MemNetworkStats,
}

impl fmt::Debug for MemNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hub = self.hub();
        f.debug_struct("MemNetwork")
            .field("nodes", &hub.nodes.keys().collect::<Vec<_>>())
            .field("cut", &hub.cut)
            .field("isolated", &hub.isolated)
            .field("filter", &hub.filter.is_some())
            .field("stats", &hub.stats)
            .finish()
    }
}

impl MemNetwork {
    /// An empty network with every link up.
    pub fn new() -> MemNetwork {
        MemNetwork::default()
    }

    fn hub(&self) -> MutexGuard<'_, Hub> {
        self.hub.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Cuts the directed link `from → to` (messages are lost).
    pub fn cut(&self, from: u64, to: u64) {
        self.hub().cut.insert((from, to));
    }

    /// Restores the directed link `from → to` (unless an isolation still
    /// covers it).
    pub fn restore(&self, from: u64, to: u64) {
        self.hub().cut.remove(&(from, to));
    }

    /// Cuts every link between `a` and `b`, both directions: a network
    /// partition between two groups of nodes.
    pub fn partition(&self, a: &[u64], b: &[u64]) {
        let mut hub = self.hub();
        for &x in a {
            for &y in b {
                hub.cut.insert((x, y));
                hub.cut.insert((y, x));
            }
        }
    }

    /// Cuts `node` off from every other node, both directions, including
    /// nodes that join later.
    pub fn isolate(&self, node: u64) {
        self.hub().isolated.insert(node);
    }

    /// Heals every cut link and isolation (the filter stays).
    pub fn heal(&self) {
        let mut hub = self.hub();
        hub.cut.clear();
        hub.isolated.clear();
    }

    /// Installs (or with `None` removes) a filter deciding every message's
    /// fate on links that are not cut: where a seeded simulation injects
    /// drops and delays.
    pub fn set_filter(&self, filter: Option<Filter>) {
        self.hub().filter = filter;
    }

    /// How long a lost message keeps its sender waiting before its call
    /// fails with `Unavailable`.
    pub fn set_drop_timeout(&self, timeout: Duration) {
        self.hub().drop_timeout = Some(timeout);
    }

    /// Message counts so far.
    pub fn stats(&self) -> MemNetworkStats {
        self.hub().stats
    }

    /// Reserves `listen` for a node (port 0: the lowest free port on that
    /// IP). The node attaches its handlers with [`MemNetwork::serve`] once
    /// its Raft is running; calls before that are refused.
    pub(crate) fn bind(&self, listen: SocketAddr) -> io::Result<SocketAddr> {
        let mut hub = self.hub();
        let addr = if listen.port() == 0 {
            (1..=u16::MAX)
                .map(|p| SocketAddr::new(listen.ip(), p))
                .find(|a| !hub.nodes.contains_key(&a.to_string()))
                .ok_or_else(|| io::Error::new(io::ErrorKind::AddrInUse, "no free port"))?
        } else {
            listen
        };
        if hub.nodes.contains_key(&addr.to_string()) {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{addr} is already bound on this MemNetwork"),
            ));
        }
        hub.nodes.insert(addr.to_string(), None);
        Ok(addr)
    }

    /// Attaches node `id`'s handlers to its bound address.
    pub(crate) fn serve(&self, addr: SocketAddr, id: u64, server: RaftRpcServer) {
        self.hub()
            .nodes
            .insert(addr.to_string(), Some((id, Arc::new(server))));
    }

    /// Releases an address (the node stopped): calls to it are refused.
    pub(crate) fn unbind(&self, addr: SocketAddr) {
        self.hub().nodes.remove(&addr.to_string());
    }

    /// A client end from node `from` to whatever listens on `addr`.
    pub(crate) fn link(&self, from: u64, addr: String) -> MemLink {
        MemLink {
            net: self.clone(),
            from,
            addr,
        }
    }

    /// Decides one leg's fate (and counts it).
    fn fate(&self, msg: Message) -> (Fate, Duration) {
        let mut hub = self.hub();
        let cut = msg.from != msg.to
            && (hub.cut.contains(&(msg.from, msg.to))
                || hub.isolated.contains(&msg.from)
                || hub.isolated.contains(&msg.to));
        let fate = match (&hub.filter, cut) {
            (_, true) => Fate::Drop,
            (Some(f), false) => f(&msg),
            (None, false) => Fate::Deliver,
        };
        match fate {
            Fate::Deliver => hub.stats.delivered += 1,
            Fate::Delay(_) => {
                hub.stats.delivered += 1;
                hub.stats.delayed += 1;
            }
            Fate::Drop => hub.stats.dropped += 1,
            Fate::Duplicate(_) => {
                hub.stats.delivered += 1;
                hub.stats.duplicated += 1;
            }
        }
        (fate, hub.drop_timeout.unwrap_or(DEFAULT_DROP_TIMEOUT))
    }

    /// Carries one leg: `Ok(again)` once it arrived (`again`: deliver a
    /// copy that much later), `Unavailable` if it was lost.
    async fn carry(&self, msg: Message) -> Result<Option<Duration>, Status> {
        let (fate, drop_timeout) = self.fate(msg);
        match fate {
            Fate::Deliver => Ok(None),
            Fate::Duplicate(after) => Ok((!msg.reply).then_some(after)),
            Fate::Delay(d) => {
                tokio::time::sleep(d).await;
                Ok(None)
            }
            Fate::Drop => {
                tokio::time::sleep(drop_timeout).await;
                Err(Status::unavailable(format!(
                    "node {} -> node {}: {:?}{} lost (MemNetwork)",
                    msg.from,
                    msg.to,
                    msg.kind,
                    if msg.reply { " reply" } else { "" }
                )))
            }
        }
    }
}

/// A client's end of a link to one address on a [`MemNetwork`].
#[derive(Clone)]
pub(crate) struct MemLink {
    net: MemNetwork,
    from: u64,
    addr: String,
}

impl MemLink {
    /// One call: the request leg, the handler `handle` on the receiving
    /// node (twice if the request is duplicated: the copy runs later, its
    /// reply lost), then the reply leg.
    pub(crate) async fn call<T, F, Fut>(&self, kind: RpcKind, handle: F) -> Result<T, Status>
    where
        F: Fn(Arc<RaftRpcServer>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, Status>> + Send + 'static,
        T: Send + 'static,
    {
        let target = self.net.hub().nodes.get(&self.addr).cloned().flatten();
        let Some((to, server)) = target else {
            self.net.hub().stats.refused += 1;
            return Err(Status::unavailable(format!(
                "{}: connection refused (no node on this MemNetwork address)",
                self.addr
            )));
        };
        let from = self.from;
        let again = self
            .net
            .carry(Message {
                from,
                to,
                kind,
                reply: false,
            })
            .await?;
        let result = handle(server.clone()).await;
        if let Some(after) = again {
            let copy = handle(server);
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                let _ = copy.await;
            });
        }
        self.net
            .carry(Message {
                from: to,
                to: from,
                kind,
                reply: true,
            })
            .await?;
        result
    }
}
