//! Laying out and drawing a run's DAG as SVG: a small Sugiyama-style
//! layered layout (petgraph for the graph and its topological order).
//!
//! Layers are columns, left to right: a node sits one column right of the
//! furthest of its predecessors (longest-path layering), so every edge
//! points right. Within a column nodes are ordered by a few sweeps of the
//! barycenter heuristic (each node near the mean position of its
//! neighbours in the previous column, then the next), which removes most
//! crossings of a pipeline's fan-outs. No JavaScript lays anything out: the
//! page receives finished SVG.

use petgraph::graph::{DiGraph, NodeIndex};

/// Width of a node's box, px.
pub const NODE_W: f64 = 168.0;
/// Height of a node's box, px.
pub const NODE_H: f64 = 46.0;
/// Horizontal gap between columns, px.
const GAP_X: f64 = 56.0;
/// Vertical gap between boxes in a column, px.
const GAP_Y: f64 = 18.0;
/// Margin around the drawing, px.
const MARGIN: f64 = 12.0;
/// Barycenter sweeps (down and up count as one each).
const SWEEPS: usize = 6;
/// Longest label drawn, characters (the full path is in the tooltip).
const LABEL_CHARS_MAX: usize = 22;

/// One box of the drawing.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Step path: its identity, written to `data-path`.
    pub path: String,
    /// What the box says (the last part of the path).
    pub label: String,
    /// `pending`, `running`, `succeeded`, ... (a CSS class).
    pub status: String,
    /// `task`, `group`, `foreach`, `loop`, `iteration`.
    pub kind: String,
    /// 0..=100.
    pub percent: u32,
    /// The executor's status text.
    pub status_text: String,
    /// Attempts made.
    pub attempts: u32,
    /// Where clicking it goes.
    pub href: String,
}

/// What an edge means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeKind {
    /// `to` waits for `from` (drawn solid).
    Dependency,
    /// `to` is part of the group, foreach or loop `from` (drawn dashed).
    Contains,
    /// Not drawn: only keeps `to` right of `from` (what waits for a group
    /// comes after the group's members).
    Order,
}

/// An edge between node indexes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edge {
    /// Index into the nodes.
    pub from: usize,
    /// Index into the nodes.
    pub to: usize,
    /// What it means.
    pub kind: EdgeKind,
}

/// Where everything goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    /// Each node's (column, row within the column).
    pub nodes: Vec<(usize, usize)>,
    /// For each edge, the (column, row) slots it passes through between
    /// its ends: one per column it crosses (empty for an edge to the next
    /// column, and for `Order` edges, which are not drawn). The slots are
    /// ordered with the nodes, so a long edge runs in a channel of its own
    /// instead of behind the boxes of the columns it crosses.
    pub routes: Vec<Vec<(usize, usize)>>,
}

/// Lays out `n` nodes and `edges` (see the module's doc).
pub fn layout(n: usize, edges: &[Edge]) -> Placed {
    let mut g: DiGraph<(), ()> = DiGraph::with_capacity(n, edges.len());
    let ids: Vec<NodeIndex> = (0..n).map(|_| g.add_node(())).collect();
    let valid = |e: &Edge| e.from < n && e.to < n && e.from != e.to;
    for e in edges.iter().filter(|e| valid(e)) {
        g.update_edge(ids[e.from], ids[e.to], ());
    }
    // Longest-path layering; a cycle (a state kaon never builds) falls
    // back to one column per node in the given order, still drawable.
    let mut layer = vec![0usize; n];
    match petgraph::algo::toposort(&g, None) {
        Ok(order) => {
            for v in order {
                let l = g
                    .neighbors_directed(v, petgraph::Direction::Incoming)
                    .map(|u| layer[u.index()] + 1)
                    .max()
                    .unwrap_or(0);
                layer[v.index()] = l;
            }
        }
        Err(_) => layer = (0..n).collect(),
    }
    // The graph that is ordered: real nodes, plus a chain of slots for
    // every drawn edge that crosses columns (vertex ids n.. are slots).
    let mut slot_layer: Vec<usize> = layer.clone();
    let mut adj: Vec<(usize, usize)> = Vec::new();
    let mut chains: Vec<Vec<usize>> = vec![Vec::new(); edges.len()];
    for (k, e) in edges.iter().enumerate() {
        if !valid(e) || e.kind == EdgeKind::Order {
            continue;
        }
        let (lf, lt) = (layer[e.from], layer[e.to]);
        let mut prev = e.from;
        if lt > lf + 1 {
            for l in lf + 1..lt {
                let v = slot_layer.len();
                slot_layer.push(l);
                adj.push((prev, v));
                chains[k].push(v);
                prev = v;
            }
        }
        adj.push((prev, e.to));
    }
    let total = slot_layer.len();
    let mut preds: Vec<Vec<usize>> = vec![Vec::new(); total];
    let mut succs: Vec<Vec<usize>> = vec![Vec::new(); total];
    for &(a, b) in &adj {
        succs[a].push(b);
        preds[b].push(a);
    }
    let columns = slot_layer.iter().copied().max().map_or(0, |m| m + 1);
    let mut col: Vec<Vec<usize>> = vec![Vec::new(); columns];
    for (v, &l) in slot_layer.iter().enumerate() {
        col[l].push(v);
    }
    let mut row = vec![0usize; total];
    let renumber = |col: &Vec<Vec<usize>>, row: &mut Vec<usize>| {
        for c in col {
            for (r, &v) in c.iter().enumerate() {
                row[v] = r;
            }
        }
    };
    renumber(&col, &mut row);
    for sweep in 0..SWEEPS {
        let down = sweep % 2 == 0;
        let order: Vec<usize> = if down {
            (1..columns).collect()
        } else {
            (0..columns.saturating_sub(1)).rev().collect()
        };
        for c in order {
            let key = |v: usize| {
                let ns = if down { &preds[v] } else { &succs[v] };
                if ns.is_empty() {
                    row[v] as f64
                } else {
                    ns.iter().map(|&u| row[u]).sum::<usize>() as f64 / ns.len() as f64
                }
            };
            let mut keyed: Vec<(f64, usize, usize)> =
                col[c].iter().map(|&v| (key(v), row[v], v)).collect();
            keyed.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            col[c] = keyed.into_iter().map(|(_, _, v)| v).collect();
            renumber(&col, &mut row);
        }
    }
    Placed {
        nodes: (0..n).map(|v| (layer[v], row[v])).collect(),
        routes: chains
            .iter()
            .map(|c| c.iter().map(|&v| (slot_layer[v], row[v])).collect())
            .collect(),
    }
}

fn short(label: &str) -> String {
    if label.chars().count() <= LABEL_CHARS_MAX {
        label.to_string()
    } else {
        let head: String = label.chars().take(LABEL_CHARS_MAX - 1).collect();
        format!("{head}…")
    }
}

/// The SVG of `nodes` and the drawn `edges`, laid out by [`layout`].
pub fn svg(nodes: &[Node], edges: &[Edge]) -> maud::Markup {
    use maud::html;
    let placed = layout(nodes.len(), edges);
    let slots = placed
        .nodes
        .iter()
        .chain(placed.routes.iter().flatten())
        .copied();
    let columns = slots.clone().map(|p| p.0 + 1).max().unwrap_or(0);
    let rows_max = slots.clone().map(|p| p.1 + 1).max().unwrap_or(0);
    let mut rows_in = vec![0usize; columns];
    for p in slots {
        rows_in[p.0] = rows_in[p.0].max(p.1 + 1);
    }
    let height_of = |rows: usize| rows as f64 * (NODE_H + GAP_Y) - GAP_Y;
    let total_h = height_of(rows_max).max(NODE_H);
    // Each column centred vertically.
    let at = |(c, r): (usize, usize)| {
        let top = (total_h - height_of(rows_in[c])) / 2.0;
        (
            MARGIN + c as f64 * (NODE_W + GAP_X),
            MARGIN + top + r as f64 * (NODE_H + GAP_Y),
        )
    };
    let xy = |v: usize| at(placed.nodes[v]);
    // An edge: from the right side of its source through the middle of
    // each slot it crosses to the left side of its target, one cubic
    // curve per column gap.
    let route = |k: usize, e: &Edge| {
        let (x1, y1) = xy(e.from);
        let mut pts = vec![(x1 + NODE_W, y1 + NODE_H / 2.0)];
        for &s in &placed.routes[k] {
            let (x, y) = at(s);
            pts.push((x, y + NODE_H / 2.0));
            pts.push((x + NODE_W, y + NODE_H / 2.0));
        }
        let (x2, y2) = xy(e.to);
        pts.push((x2, y2 + NODE_H / 2.0));
        let mut d = format!("M {:.1} {:.1}", pts[0].0, pts[0].1);
        for pair in pts.windows(2) {
            let ((sx, sy), (tx, ty)) = (pair[0], pair[1]);
            if tx - sx > NODE_W - 1.0 {
                // Through a slot (a box's width): straight.
                d.push_str(&format!(" L {tx:.1} {ty:.1}"));
                continue;
            }
            // Across a gap between columns: an S curve.
            let mid = (sx + tx) / 2.0;
            d.push_str(&format!(
                " C {mid:.1} {sy:.1}, {mid:.1} {ty:.1}, {tx:.1} {ty:.1}"
            ));
        }
        d
    };
    let width = 2.0 * MARGIN + columns as f64 * (NODE_W + GAP_X) - GAP_X;
    let height = 2.0 * MARGIN + total_h;
    let width = width.max(NODE_W + 2.0 * MARGIN);
    html! {
        svg class="dag" xmlns="http://www.w3.org/2000/svg" width=(width) height=(height)
            viewBox=(format!("0 0 {width} {height}")) role="img" aria-label="the run's steps" {
            defs {
                marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7"
                    markerHeight="7" orient="auto-start-reverse" {
                    path d="M 0 0 L 10 5 L 0 10 z" class="arrowhead" {}
                }
            }
            @for (k, e) in edges.iter().enumerate().filter(|(_, e)| e.kind != EdgeKind::Order && e.from < nodes.len() && e.to < nodes.len() && e.from != e.to) {
                path class=(if e.kind == EdgeKind::Contains { "edge contains" } else { "edge dep" })
                    data-from=(nodes[e.from].path) data-to=(nodes[e.to].path)
                    d=(route(k, e)) marker-end="url(#arrow)" {}
            }
            @for (v, n) in nodes.iter().enumerate() {
                @let (x, y) = xy(v);
                g class=(format!("node status-{} kind-{}", n.status, n.kind)) data-path=(n.path)
                    data-status=(n.status) transform=(format!("translate({x:.1},{y:.1})")) {
                    title { (n.path) ": " (n.status) @if !n.status_text.is_empty() { " — " (n.status_text) } }
                    a href=(n.href) {
                        rect class="box" width=(NODE_W) height=(NODE_H) rx="6" {}
                        text class="label" x="10" y="19" { (short(&n.label)) }
                        text class="sub" x="10" y="35" {
                            (n.status)
                            @if n.status == "running" && n.percent > 0 { " " (n.percent) "%" }
                            @if n.attempts > 1 { " · attempt " (n.attempts) }
                        }
                        @if n.status == "running" {
                            rect class="progress-bg" x="0" y=(NODE_H - 4.0) width=(NODE_W) height="4" {}
                            rect class="progress" x="0" y=(NODE_H - 4.0)
                                width=(format!("{:.1}", NODE_W * f64::from(n.percent.min(100)) / 100.0)) height="4" {}
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dep(from: usize, to: usize) -> Edge {
        Edge {
            from,
            to,
            kind: EdgeKind::Dependency,
        }
    }

    #[test]
    fn every_edge_points_right_and_no_two_boxes_overlap() {
        // select -> prepare -> {global, regions[0..3]} -> validate -> publish
        let edges = vec![
            dep(0, 1),
            dep(1, 2),
            dep(1, 3),
            Edge {
                from: 3,
                to: 4,
                kind: EdgeKind::Contains,
            },
            Edge {
                from: 3,
                to: 5,
                kind: EdgeKind::Contains,
            },
            Edge {
                from: 3,
                to: 6,
                kind: EdgeKind::Contains,
            },
            dep(2, 7),
            dep(3, 7),
            Edge {
                from: 4,
                to: 7,
                kind: EdgeKind::Order,
            },
            dep(7, 8),
        ];
        let placed = layout(9, &edges);
        let p = &placed.nodes;
        for e in &edges {
            assert!(
                p[e.from].0 < p[e.to].0,
                "{e:?}: {:?} -> {:?}",
                p[e.from],
                p[e.to]
            );
        }
        // No two boxes, and no box and edge slot, share a place.
        let mut seen = std::collections::BTreeSet::new();
        for q in p.iter().chain(placed.routes.iter().flatten()) {
            assert!(seen.insert(*q), "two things at {q:?}: {placed:?}");
        }
        // validate waits for the regions' members, not just the foreach.
        assert!(p[7].0 > p[4].0, "{p:?}");
        // global (column 2) -> validate (column 4) crosses column 3 in a
        // slot of its own.
        let k = edges.iter().position(|e| *e == dep(2, 7)).unwrap();
        assert_eq!(placed.routes[k].len(), p[7].0 - p[2].0 - 1, "{placed:?}");
        assert!(placed.routes[k].iter().all(|s| s.0 == 3), "{placed:?}");
    }

    #[test]
    fn barycenters_uncross_a_simple_swap() {
        // a->d, b->c: drawn in the given order c would sit above d and
        // cross; the sweeps put c next to b.
        let edges = vec![dep(0, 3), dep(1, 2)];
        let p = layout(4, &edges).nodes;
        assert_eq!(p[0].1 < p[1].1, p[3].1 < p[2].1, "{p:?}");
    }

    #[test]
    fn a_cycle_is_still_drawn() {
        let p = layout(2, &[dep(0, 1), dep(1, 0)]).nodes;
        assert_eq!(p.len(), 2);
        assert_ne!(p[0], p[1]);
    }

    #[test]
    fn the_svg_names_nodes_and_edges_and_escapes_text() {
        let node = |path: &str, status: &str| Node {
            path: path.into(),
            label: path.into(),
            status: status.into(),
            kind: "task".into(),
            percent: 40,
            status_text: "<b>".into(),
            attempts: 1,
            href: format!("/ui/runs/1/steps/{path}"),
        };
        let s = svg(
            &[node("a", "succeeded"), node("b", "running")],
            &[dep(0, 1)],
        )
        .into_string();
        assert!(s.contains(r#"data-path="a""#), "{s}");
        assert!(
            s.contains(r#"class="edge dep" data-from="a" data-to="b""#),
            "{s}"
        );
        assert!(s.contains("status-running"), "{s}");
        assert!(s.contains("running 40%"), "{s}");
        assert!(s.contains("&lt;b&gt;") && !s.contains("<b>"), "{s}");
    }
}
