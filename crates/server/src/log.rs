//! The event log the runtime appends to.

use std::sync::Mutex;
use std::time::Duration;

use kaon_core::State;
use kaon_core::events::{Body, Event};

/// Where committed events live. `append` returns only after the events are
/// committed and applied to state (so effects derived from them are safe).
pub trait EventLog: Send + Sync + 'static {
    /// Commits `bodies` in order, stamped with `now_ms` (a replicated log
    /// may stamp its own leader time); returns them with their indexes.
    fn append(
        &self,
        bodies: Vec<Body>,
        now_ms: i64,
    ) -> impl std::future::Future<Output = anyhow::Result<Vec<Event>>> + Send;
    /// Runs `f` on the applied state.
    fn with_state<R>(&self, f: impl FnOnce(&State) -> R) -> R
    where
        Self: Sized;
    /// Committed events with index > `after`, at most `max`.
    fn events_after(&self, after: u64, max: usize) -> Vec<Event>;
    /// Notifies the latest committed index.
    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64>;
    /// The replication view, for logs that replicate.
    fn cluster_status(&self) -> Option<kaon_log::ClusterStatus> {
        None
    }
    /// The Raft node, for logs that replicate (membership changes, read
    /// indexes, snapshots).
    fn raft_node(&self) -> Option<&kaon_log::RaftNode> {
        None
    }
}

/// A single-node, in-memory log: the stand-in until the Raft log (redb +
/// openraft) is wired in. Not durable.
pub struct LocalLog {
    inner: Mutex<(State, Vec<Event>)>,
    committed: tokio::sync::watch::Sender<u64>,
}

impl Default for LocalLog {
    fn default() -> Self {
        LocalLog {
            inner: Mutex::new((State::default(), Vec::new())),
            committed: tokio::sync::watch::channel(0).0,
        }
    }
}

impl LocalLog {
    /// Every committed event so far (for audits and tests).
    pub fn events(&self) -> Vec<Event> {
        self.inner.lock().expect("log lock").1.clone()
    }
}

impl EventLog for LocalLog {
    async fn append(&self, bodies: Vec<Body>, now_ms: i64) -> anyhow::Result<Vec<Event>> {
        let mut g = self.inner.lock().expect("log lock");
        let (state, log) = &mut *g;
        let mut out = Vec::with_capacity(bodies.len());
        for body in bodies {
            let event = Event {
                index: log.len() as u64 + 1,
                time_unix_ms: now_ms,
                body: Some(body),
            };
            state.apply(&event)?;
            log.push(event.clone());
            out.push(event);
        }
        let last = log.len() as u64;
        drop(g);
        self.committed.send_replace(last);
        Ok(out)
    }

    fn events_after(&self, after: u64, max: usize) -> Vec<Event> {
        let g = self.inner.lock().expect("log lock");
        let start = (after as usize).min(g.1.len());
        g.1[start..].iter().take(max).cloned().collect()
    }

    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.committed.subscribe()
    }

    fn with_state<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&self.inner.lock().expect("log lock").0)
    }
}

/// The durable, Raft-replicated log (`kaon_log::RaftNode`): every event is
/// committed by a majority and stored (with its archive copy) before
/// `append` returns.
pub struct RaftLog {
    node: kaon_log::RaftNode,
    committed: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
}

impl RaftLog {
    /// Wraps a started node.
    pub fn new(node: kaon_log::RaftNode) -> Self {
        let applied = node.with_state(|s| s.applied_index);
        let committed = std::sync::Arc::new(tokio::sync::watch::channel(applied).0);
        // Followers apply without appending: wake watchers (WatchRun
        // streams) whenever the applied event index moves.
        let tx = std::sync::Arc::downgrade(&committed);
        let sm = node.state_machine().clone();
        let mut metrics = node.metrics_watch();
        tokio::spawn(async move {
            while metrics.changed(Duration::from_millis(500)).await {
                let Some(tx) = tx.upgrade() else { return };
                let now = sm.applied_event_index();
                tx.send_if_modified(|v| {
                    let moved = *v < now;
                    *v = (*v).max(now);
                    moved
                });
            }
        });
        RaftLog { node, committed }
    }

    /// The node (membership, leadership, audits).
    pub fn node(&self) -> &kaon_log::RaftNode {
        &self.node
    }
}

impl EventLog for RaftLog {
    async fn append(&self, bodies: Vec<Body>, _now_ms: i64) -> anyhow::Result<Vec<Event>> {
        if bodies.is_empty() {
            return Ok(Vec::new());
        }
        // One batch: one append and one replication round for a decision.
        let indexes = self
            .node
            .propose_many(bodies)
            .await
            .map_err(|e| anyhow::anyhow!("proposing events: {e}"))?;
        let (Some(&first), Some(&last)) = (indexes.first(), indexes.last()) else {
            return Ok(Vec::new());
        };
        let events = self.node.read_events(first, last)?;
        let wanted: std::collections::BTreeSet<u64> = indexes.into_iter().collect();
        self.committed.send_if_modified(|v| {
            let moved = *v < last;
            *v = (*v).max(last);
            moved
        });
        Ok(events
            .into_iter()
            .filter(|e| wanted.contains(&e.index))
            .collect())
    }

    fn with_state<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        self.node.with_state(f)
    }

    fn events_after(&self, after: u64, max: usize) -> Vec<Event> {
        let to = after.saturating_add(max as u64);
        self.node.read_events(after + 1, to).unwrap_or_else(|e| {
            tracing::error!(error = %e, "reading the event archive failed");
            Vec::new()
        })
    }

    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.committed.subscribe()
    }

    fn cluster_status(&self) -> Option<kaon_log::ClusterStatus> {
        Some(self.node.status())
    }

    fn raft_node(&self) -> Option<&kaon_log::RaftNode> {
        Some(&self.node)
    }
}
