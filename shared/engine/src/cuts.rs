//! The fast path for rows without NaN on ensembles of plain splits (numeric, no zero-as-missing):
//! every node becomes a 16-bit *cut* index.
//!
//! A cut is one distinct threshold of one feature. A row is converted once into one flag per
//! cut — set when the training library's float comparison sends the row right at that threshold
//! (`x >= t` on the f32-rounded input for XGBoost, `x > t` for LightGBM) — so a node needs
//! neither its feature nor its threshold: a step of a walk is two loads (the node's cut, then the
//! row's flag for it) and a shift-add. The nodes of a 600-tree, depth-8 ensemble take 300 KB.
//!
//! Trees are walked [`LANES`] at a time in lockstep, a fixed number of steps:
//! - shallow, dense groups are stored complete (padded to the group's depth, implicit children
//!   `2i + 1` and `2i + 2`); the walk is unrolled per depth, so the compiler bounds every
//!   position and drops the bounds checks. A leaf above the last level becomes a chain of
//!   never-right nodes ending at its leftmost leaf slot;
//! - deep or sparse groups keep explicit child indices (the right child follows the left one)
//!   and a leaf points at itself, so a walk may run past it; it stops once no lane moves.
//!
//! On x86-64 CPUs with AVX-512, groups are walked 16 trees to a vector instead (module
//! `avx512`); the scalar walk stays for other CPUs and for explicit groups of more than 65,536
//! nodes.

use std::cell::RefCell;

#[cfg(target_arch = "x86_64")]
mod avx512;

use crate::image::{self, ImageError, tag};
use crate::tree::{Ensemble, SplitRule};

/// Trees walked together.
pub const LANES: usize = 16;
/// Deepest group stored complete.
const COMPLETE_MAX_DEPTH: usize = 10;
/// Lanes of an explicit group walked together: its deep, lopsided trees waste fewer steps in
/// smaller lockstep sets.
const EXPLICIT_LANES: usize = 8;
/// A group is stored complete when padding at most multiplies its node count by this.
const COMPLETE_MAX_PADDING: usize = 4;
/// Cut index of a node that never sends a row right (its flag is always `false`).
const NEVER_RIGHT: u16 = u16::MAX;
/// Flags set per copy when a row is converted.
const FLAG_BLOCK: usize = 64;
/// Most cuts of a forest: a feature's last copy of flags may run `FLAG_BLOCK - 1` past its cuts
/// and must stay below [`NEVER_RIGHT`].
const MAX_CUTS: usize = NEVER_RIGHT as usize - FLAG_BLOCK;
/// Most nodes of a tree in the explicit layout (child indices take 16 bits).
const MAX_EXPLICIT_TREE: usize = 1 << 16;

/// One flag per possible cut index: whether the row goes right. Indexing by `u16` needs no
/// bounds check, and `bool` tells the compiler a flag is 0 or 1. Entries past the forest's cuts
/// are never read, except [`NEVER_RIGHT`]'s, which stays `false`.
type RowCuts = [bool; 1 << 16];

thread_local! {
    static ROW_CUTS: RefCell<Box<RowCuts>> = RefCell::new(Box::new([false; 1 << 16]));
}

/// How a group's trees are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    /// Padded to `steps` levels, implicit children: lane `l`'s `2^steps` node slots (the last
    /// one unused) start at `nodes_start + (l << steps)`, its `2^steps` leaf values at
    /// `values_start + (l << steps)`.
    Complete,
    /// Explicit children, trees one after another from `nodes_start` (also their values).
    Explicit,
}

/// Up to [`LANES`] consecutive trees walked together. In the complete layout, missing lanes of
/// the last group walk a tree of never-right nodes and are not added.
#[derive(Debug, Clone)]
pub(crate) struct Group {
    /// Real trees in the group.
    pub trees: usize,
    /// Steps of a walk: the depth of the deepest tree.
    pub steps: usize,
    pub layout: Layout,
    /// Start of the group's nodes in its layout's array (explicit layout: also of its values).
    nodes_start: usize,
    /// Complete layout: start of the group's leaf values.
    values_start: usize,
    /// Explicit layout: start of each lane's tree, relative to `nodes_start`.
    tree_starts: [u32; LANES],
}

/// Words of a [`Group`] in an engine image: trees, steps, layout, nodes start, values start and
/// the lanes' tree starts.
const GROUP_WORDS: usize = 5 + LANES;

impl Group {
    fn words(&self) -> [u32; GROUP_WORDS] {
        let mut w = [0u32; GROUP_WORDS];
        w[0] = self.trees as u32;
        w[1] = self.steps as u32;
        w[2] = match self.layout {
            Layout::Complete => 0,
            Layout::Explicit => 1,
        };
        w[3] = self.nodes_start as u32;
        w[4] = self.values_start as u32;
        w[5..].copy_from_slice(&self.tree_starts);
        w
    }

    fn from_words(w: &[u32; GROUP_WORDS]) -> Option<Self> {
        Some(Group {
            trees: w[0] as usize,
            steps: w[1] as usize,
            layout: match w[2] {
                0 => Layout::Complete,
                1 => Layout::Explicit,
                _ => return None,
            },
            nodes_start: w[3] as usize,
            values_start: w[4] as usize,
            tree_starts: w[5..].try_into().ok()?,
        })
    }
}

/// Leaf values at the precision the library sums them in: f32 for XGBoost, f64 for LightGBM.
#[derive(Debug, Clone)]
enum Leaves {
    F32(LeafValues<f32>),
    F64(LeafValues<f64>),
}

/// Leaf values of both layouts.
#[derive(Debug, Clone, Default)]
struct LeafValues<V> {
    /// Complete layout: `2^steps` slots per lane (see [`Layout::Complete`]).
    complete: Vec<V>,
    /// Explicit layout: one per node, 0 for splits.
    explicit: Vec<V>,
}

impl Leaves {
    fn complete_len(&self) -> usize {
        match self {
            Leaves::F32(l) => l.complete.len(),
            Leaves::F64(l) => l.complete.len(),
        }
    }

    /// Appends `n` copies of `v` to the complete layout's values.
    fn push_complete(&mut self, v: f64, n: usize) {
        match self {
            Leaves::F32(l) => l.complete.extend(std::iter::repeat_n(v as f32, n)),
            Leaves::F64(l) => l.complete.extend(std::iter::repeat_n(v, n)),
        }
    }

    /// Sets a run of the complete layout's values.
    fn fill_complete(&mut self, start: usize, n: usize, v: f64) {
        match self {
            Leaves::F32(l) => l.complete[start..start + n].fill(v as f32),
            Leaves::F64(l) => l.complete[start..start + n].fill(v),
        }
    }

    fn push_explicit(&mut self, v: f64) {
        match self {
            Leaves::F32(l) => l.explicit.push(v as f32),
            Leaves::F64(l) => l.explicit.push(v),
        }
    }
}

/// An ensemble compiled to cut indices (see the module documentation).
#[derive(Debug, Clone)]
pub struct CutForest {
    rule: SplitRule,
    /// Distinct thresholds, ascending, feature after feature; a cut's index is its position.
    cuts: Vec<f64>,
    /// Feature `f` owns `cuts[cut_starts[f]..cut_starts[f] + cut_counts[f]]`.
    cut_starts: Vec<usize>,
    cut_counts: Vec<usize>,
    pub(crate) groups: Vec<Group>,
    /// Complete layout: one cut index per node (padded as described on [`Layout::Complete`]).
    complete_nodes: Vec<u16>,
    /// Explicit layout: cut index (low half) and left child relative to the tree's start (high
    /// half); a leaf is `NEVER_RIGHT` pointing at itself.
    explicit_nodes: Vec<u32>,
    leaves: Leaves,
    /// The complete groups laid out for the AVX-512 walk, on CPUs that have it.
    #[cfg(target_arch = "x86_64")]
    avx512: Option<avx512::Blocked>,
}

impl CutForest {
    /// Compiles a validated ensemble; `None` when it has categorical or zero-as-missing splits,
    /// more than 65,471 distinct thresholds or input features, or a deep tree of more than 65,536
    /// nodes.
    pub(crate) fn build(e: &Ensemble) -> Option<Self> {
        // The feature count is only declared by the model file, yet a forest keeps arrays (and a
        // row conversion walks) per feature: bounding it bounds them, whatever a file claims.
        if !e.plain_splits || e.trees.n_features == 0 || e.trees.n_features > MAX_CUTS {
            return None;
        }
        let trees: Vec<Vec<usize>> = e
            .trees
            .roots
            .iter()
            .map(|&r| reachable(e, r as usize))
            .collect();
        let mut per_feature = vec![Vec::new(); e.trees.n_features];
        for &i in trees.iter().flatten() {
            let node = &e.trees.nodes[i];
            if !node.is_leaf() {
                per_feature[node.feature as usize].push(node.value);
            }
        }
        let mut cuts = Vec::new();
        let mut cut_starts = Vec::with_capacity(e.trees.n_features);
        let mut cut_counts = Vec::with_capacity(e.trees.n_features);
        for mut values in per_feature {
            // Thresholds are validated non-NaN, so the order is total; -0.0 == 0.0 dedups.
            values.sort_by(f64::total_cmp);
            values.dedup_by(|a, b| a == b);
            cut_starts.push(cuts.len());
            cut_counts.push(values.len());
            cuts.extend(values);
        }
        if cuts.len() > MAX_CUTS {
            return None;
        }
        let mut forest = CutForest {
            rule: e.trees.rule,
            cuts,
            cut_starts,
            cut_counts,
            groups: Vec::new(),
            complete_nodes: Vec::new(),
            explicit_nodes: Vec::new(),
            leaves: match e.trees.rule {
                SplitRule::XgboostLess => Leaves::F32(LeafValues::default()),
                SplitRule::LightgbmLessEqual => Leaves::F64(LeafValues::default()),
            },
            #[cfg(target_arch = "x86_64")]
            avx512: None,
        };
        for (g, chunk) in trees.chunks(LANES).enumerate() {
            let depths = &e.tree_depths[g * LANES..g * LANES + chunk.len()];
            let steps = depths.iter().copied().max().unwrap_or(0);
            let nodes: usize = chunk.iter().map(Vec::len).sum();
            let complete = steps <= COMPLETE_MAX_DEPTH
                && (2usize << steps) * chunk.len() <= COMPLETE_MAX_PADDING * nodes;
            let mut group = Group {
                trees: chunk.len(),
                steps,
                layout: if complete {
                    Layout::Complete
                } else {
                    Layout::Explicit
                },
                nodes_start: 0,
                values_start: 0,
                tree_starts: [0; LANES],
            };
            if complete {
                group.nodes_start = forest.complete_nodes.len();
                group.values_start = forest.leaves.complete_len();
                for lane in 0..LANES {
                    let root = chunk.get(lane).map(|tree| tree[0]);
                    forest.push_complete(e, root, steps);
                }
            } else {
                group.nodes_start = forest.explicit_nodes.len();
                for (lane, tree) in chunk.iter().enumerate() {
                    if tree.len() > MAX_EXPLICIT_TREE {
                        return None;
                    }
                    group.tree_starts[lane] = (forest.explicit_nodes.len() - group.nodes_start)
                        .try_into()
                        .ok()?;
                    forest.push_explicit(e, tree[0]);
                }
            }
            forest.groups.push(group);
        }
        #[cfg(target_arch = "x86_64")]
        {
            forest.avx512 = avx512::Blocked::build(&forest);
        }
        Some(forest)
    }

    /// The layout constants an image of this forest depends on.
    pub(crate) fn layout_signature() -> String {
        format!(
            "cut lanes {LANES}, complete depth <= {COMPLETE_MAX_DEPTH}, explicit lanes \
             {EXPLICIT_LANES}, padding {COMPLETE_MAX_PADDING}, flag block {FLAG_BLOCK}"
        )
    }

    /// Appends the forest's arrays to an engine image.
    pub(crate) fn write_image(&self, w: &mut image::Writer) {
        w.section(tag::CUTS, &self.cuts);
        let counts: Vec<u32> = self.cut_counts.iter().map(|&c| c as u32).collect();
        w.section(tag::CUT_COUNTS, &counts);
        let groups: Vec<[u32; GROUP_WORDS]> = self.groups.iter().map(Group::words).collect();
        w.section(tag::GROUPS, &groups);
        w.section(tag::COMPLETE_NODES, &self.complete_nodes);
        w.section(tag::EXPLICIT_NODES, &self.explicit_nodes);
        match &self.leaves {
            Leaves::F32(v) => {
                w.section(tag::COMPLETE_LEAVES, &v.complete);
                w.section(tag::EXPLICIT_LEAVES, &v.explicit);
            }
            Leaves::F64(v) => {
                w.section(tag::COMPLETE_LEAVES, &v.complete);
                w.section(tag::EXPLICIT_LEAVES, &v.explicit);
            }
        }
    }

    /// Reads the forest of a validated ensemble `e` from an engine image, checking that it has
    /// the shape [`CutForest::build`] gives `e`'s trees and that every index stays inside the
    /// array it addresses (the cuts' values themselves are covered by the image's hash).
    pub(crate) fn read_image(r: &mut image::Reader, e: &Ensemble) -> Result<Self, ImageError> {
        let bad = |m: String| Err(ImageError::Corrupt(format!("cut layout: {m}")));
        let cuts: Vec<f64> = r.section(tag::CUTS, "cuts")?;
        let counts: Vec<u32> = r.section(tag::CUT_COUNTS, "cut counts")?;
        let words: Vec<[u32; GROUP_WORDS]> = r.section(tag::GROUPS, "groups")?;
        let complete_nodes: Vec<u16> = r.section(tag::COMPLETE_NODES, "complete nodes")?;
        let explicit_nodes: Vec<u32> = r.section(tag::EXPLICIT_NODES, "explicit nodes")?;
        let leaves = match e.trees.rule {
            SplitRule::XgboostLess => Leaves::F32(LeafValues {
                complete: r.section(tag::COMPLETE_LEAVES, "leaf values")?,
                explicit: r.section(tag::EXPLICIT_LEAVES, "leaf values")?,
            }),
            SplitRule::LightgbmLessEqual => Leaves::F64(LeafValues {
                complete: r.section(tag::COMPLETE_LEAVES, "leaf values")?,
                explicit: r.section(tag::EXPLICIT_LEAVES, "leaf values")?,
            }),
        };
        if !e.plain_splits || counts.len() != e.trees.n_features || cuts.len() > MAX_CUTS {
            return bad("does not fit the trees".into());
        }
        let mut cut_starts = Vec::with_capacity(counts.len());
        let mut cut_counts = Vec::with_capacity(counts.len());
        for &count in &counts {
            let start = cut_starts.last().map_or(0, |&s| s) + cut_counts.last().map_or(0, |&c| c);
            cut_starts.push(start);
            cut_counts.push(count as usize);
        }
        let total = cut_starts.last().map_or(0, |&s| s) + cut_counts.last().map_or(0, |&c| c);
        if total != cuts.len() {
            return bad(format!("{total} cuts counted, {} stored", cuts.len()));
        }
        for (&s, &c) in cut_starts.iter().zip(&cut_counts) {
            if cuts[s..s + c].iter().any(|x| x.is_nan())
                || cuts[s..s + c].windows(2).any(|w| w[0] >= w[1])
            {
                return bad("a feature's cuts are not strictly ascending".into());
            }
        }
        let (n_complete, n_explicit) = match &leaves {
            Leaves::F32(v) => (v.complete.len(), v.explicit.len()),
            Leaves::F64(v) => (v.complete.len(), v.explicit.len()),
        };
        if n_complete != complete_nodes.len() || n_explicit != explicit_nodes.len() {
            return bad("leaf values and nodes differ in number".into());
        }
        let n_cuts = cuts.len();
        let cut_ok = |cut: u16| usize::from(cut) < n_cuts || cut == NEVER_RIGHT;
        if !complete_nodes.iter().all(|&c| cut_ok(c)) {
            return bad("a complete node names a missing cut".into());
        }
        let n_trees = e.trees.roots.len();
        if words.len() != n_trees.div_ceil(LANES) {
            return bad(format!("{} groups for {n_trees} trees", words.len()));
        }
        let tree_size = |t: usize| {
            let end = e
                .trees
                .roots
                .get(t + 1)
                .map_or(e.eval.len(), |&r| r as usize);
            end - e.trees.roots[t] as usize
        };
        let (mut complete_at, mut explicit_at) = (0usize, 0usize);
        let mut groups = Vec::with_capacity(words.len());
        for (g, w) in words.iter().enumerate() {
            let group = Group::from_words(w).ok_or(ImageError::Corrupt(format!(
                "cut layout: group {g} is malformed"
            )))?;
            let first = g * LANES;
            let steps = e.tree_depths[first..first + group.trees.min(n_trees - first)]
                .iter()
                .copied()
                .max()
                .unwrap_or(0);
            if group.trees != LANES.min(n_trees - first) || group.steps != steps {
                return bad(format!("group {g} does not match its trees"));
            }
            match group.layout {
                Layout::Complete => {
                    if steps > COMPLETE_MAX_DEPTH
                        || group.nodes_start != complete_at
                        || group.values_start != complete_at
                    {
                        return bad(format!("complete group {g} is misplaced"));
                    }
                    complete_at += LANES << steps;
                }
                Layout::Explicit => {
                    if group.nodes_start != explicit_at {
                        return bad(format!("explicit group {g} is misplaced"));
                    }
                    let mut at = 0usize;
                    for lane in 0..group.trees {
                        let size = tree_size(first + lane);
                        if group.tree_starts[lane] as usize != at || size > MAX_EXPLICIT_TREE {
                            return bad(format!("explicit group {g}: lane {lane} is misplaced"));
                        }
                        let start = explicit_at + at;
                        let Some(nodes) = explicit_nodes.get(start..start + size) else {
                            return bad(format!("explicit group {g} runs past its nodes"));
                        };
                        for &node in nodes {
                            let (target, cut) = ((node >> 16) as usize, node as u16);
                            let last = if cut == NEVER_RIGHT {
                                target
                            } else {
                                target + 1
                            };
                            if !cut_ok(cut) || last >= size {
                                return bad(format!("explicit group {g}: a node leaves its tree"));
                            }
                        }
                        at += size;
                    }
                    explicit_at += at;
                }
            }
            groups.push(group);
        }
        if complete_at != complete_nodes.len() || explicit_at != explicit_nodes.len() {
            return bad("nodes left over after the last group".into());
        }
        #[allow(unused_mut)]
        let mut forest = CutForest {
            rule: e.trees.rule,
            cuts,
            cut_starts,
            cut_counts,
            groups,
            complete_nodes,
            explicit_nodes,
            leaves,
            #[cfg(target_arch = "x86_64")]
            avx512: None,
        };
        #[cfg(target_arch = "x86_64")]
        {
            forest.avx512 = avx512::Blocked::build(&forest);
        }
        Ok(forest)
    }

    /// The cuts of feature `f`.
    fn feature_cuts(&self, f: usize) -> &[f64] {
        &self.cuts[self.cut_starts[f]..self.cut_starts[f] + self.cut_counts[f]]
    }

    fn cut_index(&self, feature: u32, threshold: f64) -> u16 {
        let f = feature as usize;
        let cuts = self.feature_cuts(f);
        // The threshold is one of the feature's cuts (they were collected from these nodes),
        // and there are at most `MAX_CUTS`, so the index fits below `NEVER_RIGHT`.
        (self.cut_starts[f] + cuts.partition_point(|&c| c < threshold)) as u16
    }

    /// Appends one lane of a complete group (`None`: an empty lane): `2^depth` node slots (the
    /// last one unused) and `2^depth` leaf values.
    fn push_complete(&mut self, e: &Ensemble, root: Option<usize>, depth: usize) {
        let nodes_base = self.complete_nodes.len();
        let values_base = self.leaves.complete_len();
        self.complete_nodes
            .resize(nodes_base + (1 << depth), NEVER_RIGHT);
        self.leaves.push_complete(0.0, 1 << depth);
        let Some(root) = root else { return };
        let mut stack = vec![(root, 0usize, 0usize)];
        while let Some((i, position, level)) = stack.pop() {
            let node = &e.trees.nodes[i];
            if node.is_leaf() {
                // Every leaf slot below `position` (only the leftmost is reachable).
                let span = 1 << (depth - level);
                let start = values_base + (position + 1 - (1 << level)) * span;
                self.leaves.fill_complete(start, span, node.value);
            } else {
                self.complete_nodes[nodes_base + position] =
                    self.cut_index(node.feature, node.value);
                stack.push((node.left as usize, 2 * position + 1, level + 1));
                stack.push((node.right as usize, 2 * position + 2, level + 1));
            }
        }
    }

    /// Appends a tree breadth-first with explicit children.
    fn push_explicit(&mut self, e: &Ensemble, root: usize) {
        let base = self.explicit_nodes.len();
        let mut queue = std::collections::VecDeque::from([root]);
        let mut next_slot = 1u32;
        while let Some(i) = queue.pop_front() {
            let node = &e.trees.nodes[i];
            let slot = (self.explicit_nodes.len() - base) as u32;
            if node.is_leaf() {
                self.explicit_nodes
                    .push((slot << 16) | u32::from(NEVER_RIGHT));
                self.leaves.push_explicit(node.value);
            } else {
                let cut = self.cut_index(node.feature, node.value);
                self.explicit_nodes.push((next_slot << 16) | u32::from(cut));
                self.leaves.push_explicit(0.0);
                next_slot += 2;
                queue.push_back(node.left as usize);
                queue.push_back(node.right as usize);
            }
        }
    }

    /// Features per row: one entry of `cut_starts` each.
    pub fn n_features(&self) -> usize {
        self.cut_starts.len()
    }

    /// The sum of every tree's leaf value for a NaN-free row of `n_features` values (the caller
    /// checks both), added in tree order to `init` at the library's precision (f32 for XGBoost,
    /// f64 for LightGBM).
    pub(crate) fn sum(&self, row: &[f64], init: f64) -> f64 {
        #[cfg(target_arch = "x86_64")]
        if let Some(blocked) = &self.avx512 {
            return self.sum_with_avx512(blocked, row, init);
        }
        ROW_CUTS.with(|cell| {
            let mut row_cuts = cell.borrow_mut();
            self.fill_row_cuts(row, &mut row_cuts);
            match &self.leaves {
                Leaves::F32(values) => f64::from(self.sum_with(&row_cuts, values, init as f32)),
                Leaves::F64(values) => self.sum_with(&row_cuts, values, init),
            }
        })
    }

    /// [`CutForest::sum`] on the AVX-512 layout (kept out of line: inlined, it slowed the
    /// scalar walk's code beside it).
    #[cfg(target_arch = "x86_64")]
    #[inline(never)]
    fn sum_with_avx512(&self, blocked: &avx512::Blocked, row: &[f64], init: f64) -> f64 {
        let mut ranks = [0u32; avx512::MAX_FEATURES];
        blocked.ranks(row, &mut ranks);
        ROW_CUTS.with(|cell| {
            let mut row_cuts = cell.borrow_mut();
            if blocked.has_explicit {
                for (f, &r) in ranks[..row.len()].iter().enumerate() {
                    self.fill_flags(&mut row_cuts, f, r as usize);
                }
            }
            match &self.leaves {
                Leaves::F32(values) => {
                    f64::from(self.sum_avx512(blocked, &ranks, &row_cuts, values, init as f32))
                }
                Leaves::F64(values) => self.sum_avx512(blocked, &ranks, &row_cuts, values, init),
            }
        })
    }

    /// [`CutForest::sum_with`] with the complete groups walked by AVX-512.
    #[cfg(target_arch = "x86_64")]
    fn sum_avx512<V: avx512::LeafValue>(
        &self,
        blocked: &avx512::Blocked,
        ranks: &[u32; avx512::MAX_FEATURES],
        row_cuts: &RowCuts,
        values: &LeafValues<V>,
        init: V,
    ) -> V {
        let mut sum = init;
        for segment in &blocked.segments {
            sum = match segment {
                avx512::Segment::Runs(runs) => blocked.sum_runs(runs, ranks, sum),
                avx512::Segment::Deep(runs) => blocked.sum_deep(runs, ranks, sum),
                avx512::Segment::Explicit(g) => {
                    self.sum_explicit(&self.groups[*g], row_cuts, values, sum)
                }
            };
        }
        sum
    }

    /// The rank of `x` among feature `f`'s cuts: how many send it right.
    #[inline(always)]
    fn rank(&self, f: usize, x: f64) -> usize {
        let cuts = self.feature_cuts(f);
        match self.rule {
            SplitRule::XgboostLess => {
                let x = (x as f32) as f64;
                cuts.partition_point(|&c| c <= x)
            }
            SplitRule::LightgbmLessEqual => cuts.partition_point(|&c| c < x),
        }
    }

    /// Sets feature `f`'s flags for a row of rank `rank`. Whole copies of fixed size: a copy
    /// that runs past a feature's cuts writes over the next feature's flags, so features are
    /// filled in order (past the last feature, it writes flags no node reads: `MAX_CUTS` keeps
    /// them below `NEVER_RIGHT`).
    #[inline(always)]
    fn fill_flags(&self, row_cuts: &mut RowCuts, f: usize, rank: usize) {
        const PATTERN: [bool; 2 * FLAG_BLOCK] = {
            let mut p = [false; 2 * FLAG_BLOCK];
            let mut i = 0;
            while i < FLAG_BLOCK {
                p[i] = true;
                i += 1;
            }
            p
        };
        let blocks = self.cut_counts[f].div_ceil(FLAG_BLOCK);
        let flags = row_cuts[self.cut_starts[f]..].chunks_exact_mut(FLAG_BLOCK);
        for (b, block) in flags.take(blocks).enumerate() {
            let set = rank.saturating_sub(b * FLAG_BLOCK).min(FLAG_BLOCK);
            block.copy_from_slice(&PATTERN[FLAG_BLOCK - set..2 * FLAG_BLOCK - set]);
        }
    }

    /// Sets each cut's flag: `true` below the row's rank among the feature's (sorted) cuts.
    fn fill_row_cuts(&self, row: &[f64], row_cuts: &mut RowCuts) {
        debug_assert_eq!(row.len(), self.n_features(), "one value per feature");
        // All searches first, so they overlap; then the fills.
        const CHUNK: usize = 32;
        for (c, chunk) in row.chunks(CHUNK).enumerate() {
            let mut ranks = [0usize; CHUNK];
            for (i, (&x, r)) in chunk.iter().zip(&mut ranks).enumerate() {
                *r = self.rank(c * CHUNK + i, x);
            }
            for (i, &r) in ranks[..chunk.len()].iter().enumerate() {
                self.fill_flags(row_cuts, c * CHUNK + i, r);
            }
        }
    }

    #[inline(always)]
    fn sum_with<V: Copy + std::ops::Add<Output = V>>(
        &self,
        row_cuts: &RowCuts,
        values: &LeafValues<V>,
        init: V,
    ) -> V {
        let mut sum = init;
        for group in &self.groups {
            match group.layout {
                Layout::Complete => {
                    let nodes = &self.complete_nodes[group.nodes_start..];
                    let values = &values.complete[group.values_start..];
                    let slots = match group.steps {
                        0 => std::array::from_fn(|lane| lane),
                        1 => walk_complete::<1>(nodes, row_cuts),
                        2 => walk_complete::<2>(nodes, row_cuts),
                        3 => walk_complete::<3>(nodes, row_cuts),
                        4 => walk_complete::<4>(nodes, row_cuts),
                        5 => walk_complete::<5>(nodes, row_cuts),
                        6 => walk_complete::<6>(nodes, row_cuts),
                        7 => walk_complete::<7>(nodes, row_cuts),
                        8 => walk_complete::<8>(nodes, row_cuts),
                        9 => walk_complete::<9>(nodes, row_cuts),
                        _ => walk_complete::<10>(nodes, row_cuts),
                    };
                    for &slot in &slots[..group.trees] {
                        sum = sum + values[slot];
                    }
                }
                Layout::Explicit => sum = self.sum_explicit(group, row_cuts, values, sum),
            }
        }
        sum
    }

    /// Adds an explicit group's leaves to `sum`, in tree order.
    #[inline(always)]
    fn sum_explicit<V: Copy + std::ops::Add<Output = V>>(
        &self,
        group: &Group,
        row_cuts: &RowCuts,
        values: &LeafValues<V>,
        mut sum: V,
    ) -> V {
        let nodes = &self.explicit_nodes[group.nodes_start..];
        let values = &values.explicit[group.nodes_start..];
        for lanes in group.tree_starts[..group.trees].chunks(EXPLICIT_LANES) {
            for leaf in walk_explicit(nodes, lanes, group.steps, row_cuts) {
                sum = sum + values[leaf];
            }
        }
        sum
    }
}

/// Walks the lanes of a complete group of depth `D` (1 to 10); returns the slot of each lane's
/// leaf value.
#[inline(always)]
fn walk_complete<const D: usize>(nodes: &[u16], row_cuts: &RowCuts) -> [usize; LANES] {
    let stride = 1 << D;
    let nodes = &nodes[..LANES * stride];
    let mut at = [0usize; LANES];
    // One level of every lane. Unrolled below: the compiler then knows each position lies in
    // its level (`2^k − 1 ..= 2^(k+1) − 2` after `k` steps) and drops the bounds checks.
    #[inline(always)]
    fn step(at: &mut [usize; LANES], nodes: &[u16], stride: usize, row_cuts: &RowCuts) {
        for (lane, i) in at.iter_mut().enumerate() {
            let cut = nodes[lane * stride + *i];
            *i = 2 * *i + 1 + usize::from(row_cuts[usize::from(cut)]);
        }
    }
    macro_rules! steps {
        ($($level:literal)*) => { $( if D > $level { step(&mut at, nodes, stride, row_cuts); } )* };
    }
    steps!(0 1 2 3 4 5 6 7 8 9);
    std::array::from_fn(|lane| lane * stride + at[lane] + 1 - stride)
}

/// Walks up to [`EXPLICIT_LANES`] trees of an explicit group (their starts) for at most `steps`
/// steps; returns each leaf, relative to the group's start.
#[inline(always)]
fn walk_explicit(
    nodes: &[u32],
    tree_starts: &[u32],
    steps: usize,
    row_cuts: &RowCuts,
) -> impl Iterator<Item = usize> {
    let mut starts = [0usize; EXPLICIT_LANES];
    for (s, &t) in starts.iter_mut().zip(tree_starts) {
        *s = t as usize;
    }
    // Missing lanes walk the first tree again; they are not returned.
    for lane in tree_starts.len()..EXPLICIT_LANES {
        starts[lane] = starts[0];
    }
    let mut at = starts;
    for _ in 0..steps {
        let mut moved = 0;
        for (i, &start) in at.iter_mut().zip(&starts) {
            let node = nodes[*i];
            let next =
                start + (node >> 16) as usize + usize::from(row_cuts[(node & 0xFFFF) as usize]);
            moved |= next ^ *i;
            *i = next;
        }
        if moved == 0 {
            break;
        }
    }
    at.into_iter().take(tree_starts.len())
}

/// The reachable nodes of a validated tree, root first.
fn reachable(e: &Ensemble, root: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut stack = vec![root];
    while let Some(i) = stack.pop() {
        out.push(i);
        let node = &e.trees.nodes[i];
        if !node.is_leaf() {
            stack.push(node.right as usize);
            stack.push(node.left as usize);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::{LEAF, Missing, Node, OutputTransform, Trees};
    use proptest::prelude::*;

    /// SplitMix64: random ensembles from a proptest seed.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn pick(&mut self, values: &[f64]) -> f64 {
            values[self.below(values.len())]
        }
    }

    /// Thresholds and inputs share values, so ties (`x == t`, `-0.0` vs `0.0`, values that
    /// round to an f32 threshold) are common.
    fn grid(rule: SplitRule) -> Vec<f64> {
        let mut g = vec![-2.5, -1.0, -0.0, 0.0, 0.5, 1.0, 3.0, 1e6];
        match rule {
            SplitRule::XgboostLess => g.extend([0.1f32 as f64, 0.3f32 as f64]),
            SplitRule::LightgbmLessEqual => g.extend([0.1, 0.3, f64::INFINITY]),
        }
        g
    }

    struct Shape {
        rule: SplitRule,
        n_features: usize,
        max_depth: usize,
        dense: bool,
    }

    /// A leaf node of value `value`.
    pub(super) fn leaf(value: f64) -> Node {
        Node {
            value,
            feature: 0,
            left: LEAF,
            right: LEAF,
            default_left: true,
            missing: Missing::Nan,
            category_set: None,
            cover: 1.0,
        }
    }

    fn grow(nodes: &mut Vec<Node>, rng: &mut Rng, depth: usize, shape: &Shape) -> u32 {
        let i = nodes.len();
        nodes.push(leaf((rng.below(4001) as f64 - 2000.0) / 1000.0 + 1e-4));
        let leaf = depth >= shape.max_depth || (!shape.dense && depth > 0 && rng.below(4) == 0);
        if !leaf {
            let left = grow(nodes, rng, depth + 1, shape);
            let right = grow(nodes, rng, depth + 1, shape);
            let missing = match shape.rule {
                SplitRule::XgboostLess => Missing::Nan,
                SplitRule::LightgbmLessEqual if rng.below(2) == 0 => Missing::NoneAsZero,
                SplitRule::LightgbmLessEqual => Missing::Nan,
            };
            nodes[i] = Node {
                value: rng.pick(&grid(shape.rule)),
                feature: rng.below(shape.n_features) as u32,
                left,
                right,
                default_left: rng.below(2) == 0,
                missing,
                category_set: None,
                cover: 1.0 + rng.below(10) as f64,
            };
        }
        i as u32
    }

    fn ensemble(rng: &mut Rng, shape: &Shape, trees: usize) -> Ensemble {
        let mut nodes = Vec::new();
        let roots = (0..trees)
            .map(|_| grow(&mut nodes, rng, 0, shape))
            .collect();
        Trees {
            n_features: shape.n_features,
            nodes,
            roots,
            category_sets: Vec::new(),
            base_margin: 0.25,
            rule: shape.rule,
            transform: OutputTransform::Identity,
            average_output: false,
        }
        .compile()
        .unwrap()
    }

    /// The libraries' own walk: `x < t` on f32-rounded inputs with an f32 sum (XGBoost),
    /// `x <= t` with an f64 sum (LightGBM).
    pub(super) fn reference(e: &Ensemble, row: &[f64]) -> f64 {
        let leaf = |root: u32, x: &dyn Fn(usize) -> f64, left: &dyn Fn(f64, f64) -> bool| {
            let mut n = &e.trees.nodes[root as usize];
            while !n.is_leaf() {
                n = &e.trees.nodes[if left(x(n.feature as usize), n.value) {
                    n.left
                } else {
                    n.right
                } as usize];
            }
            n.value
        };
        match e.trees.rule {
            SplitRule::XgboostLess => {
                let mut sum = e.trees.base_margin as f32;
                for &root in &e.trees.roots {
                    sum += leaf(root, &|f| (row[f] as f32) as f64, &|x, t| x < t) as f32;
                }
                sum as f64
            }
            SplitRule::LightgbmLessEqual => {
                let sum: f64 = e
                    .trees
                    .roots
                    .iter()
                    .map(|&root| leaf(root, &|f| row[f], &|x, t| x <= t))
                    .fold(0.0, |a, v| a + v);
                sum + e.trees.base_margin
            }
        }
    }

    /// The fast path against the libraries' walk and the full rules, bit for bit, row by row and
    /// in a batch.
    pub(super) fn check(e: &Ensemble, rows: &[Vec<f64>]) {
        assert!(e.cut_forest.is_some(), "plain splits compile to cuts");
        let mut full_rules = e.clone();
        full_rules.cut_forest = None;
        let flat: Vec<f64> = rows.concat();
        let want: Vec<f64> = rows.iter().map(|r| reference(e, r)).collect();
        assert_eq!(full_rules.margins(&flat), want, "full rules");
        // The AVX-512 walk where the CPU has it, and the scalar walk.
        let mut variants = vec![e.clone()];
        #[cfg(target_arch = "x86_64")]
        {
            let forest = e.cut_forest.as_ref().unwrap();
            // Explicit groups take the vector walk when 16 trees fit its 16-bit child indices.
            let has_complete = forest.groups.iter().any(|g| g.layout == Layout::Complete);
            let deep_fits = forest.explicit_nodes.len() <= 1 << 16;
            if (has_complete || deep_fits) && avx512_cpu() && avx512::node_bits(forest).is_some() {
                assert!(forest.avx512.is_some(), "AVX-512 layout built");
            }
            let mut scalar = e.clone();
            scalar.cut_forest.as_mut().unwrap().avx512 = None;
            variants.push(scalar);
        }
        for e in &variants {
            for (row, want) in rows.iter().zip(&want) {
                assert_eq!(e.margin(row).to_bits(), want.to_bits(), "row {row:?}");
            }
            assert_eq!(e.margins(&flat), want, "batch");
        }
    }

    #[cfg(target_arch = "x86_64")]
    pub(super) fn avx512_cpu() -> bool {
        std::env::var_os("MLOPS_ENGINE_AVX512").is_none_or(|v| v != "off")
            && std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("popcnt")
    }

    fn rows(rng: &mut Rng, rule: SplitRule, n_features: usize, n: usize) -> Vec<Vec<f64>> {
        let g = grid(rule);
        (0..n)
            .map(|_| {
                (0..n_features)
                    .map(|_| match rng.below(4) {
                        0 => (rng.below(1 << 20) as f64 / (1 << 18) as f64) - 2.0,
                        // Just above an f32 value: XGBoost rounds it back down.
                        1 => rng.pick(&g) + 1e-12,
                        _ => rng.pick(&g),
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn dense_shallow_groups_are_complete_and_deep_sparse_ones_explicit() {
        let mut rng = Rng(1);
        for (dense, max_depth, want) in [(true, 6, Layout::Complete), (false, 14, Layout::Explicit)]
        {
            let shape = Shape {
                rule: SplitRule::XgboostLess,
                n_features: 5,
                max_depth,
                dense,
            };
            let e = ensemble(&mut rng, &shape, 40);
            let forest = e.cut_forest.as_ref().unwrap();
            assert!(forest.groups.iter().all(|g| g.layout == want));
            assert_eq!(forest.groups.len(), 3);
            assert_eq!(forest.groups[2].trees, 8);
            check(&e, &rows(&mut rng, shape.rule, 5, 64));
        }
    }

    /// Deep, sparse groups take the AVX-512 vector walk (interleaved runs, a short last run,
    /// a partial last group) unless 16 trees overflow its 16-bit child indices; either way the
    /// sums are the libraries', bit for bit.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn explicit_groups_take_the_vector_walk_when_they_fit() {
        if !avx512_cpu() {
            eprintln!("skipped: this CPU lacks AVX-512");
            return;
        }
        let mut rng = Rng(4);
        for (rule, dense, max_depth, trees, vector) in [
            (SplitRule::LightgbmLessEqual, false, 15, 87, true),
            (SplitRule::XgboostLess, false, 14, 70, true),
            (SplitRule::LightgbmLessEqual, true, 13, 17, false),
        ] {
            let shape = Shape {
                rule,
                n_features: 6,
                max_depth,
                dense,
            };
            let e = ensemble(&mut rng, &shape, trees);
            let forest = e.cut_forest.as_ref().unwrap();
            assert!(forest.groups.iter().all(|g| g.layout == Layout::Explicit));
            let blocked = forest.avx512.as_ref();
            let deep = blocked.is_some_and(|b| {
                b.segments
                    .iter()
                    .any(|s| matches!(s, avx512::Segment::Deep(_)))
            });
            assert_eq!(deep, vector, "{rule:?}, depth {max_depth}");
            assert!(!blocked.is_some_and(|b| b.has_explicit));
            check(&e, &rows(&mut rng, rule, 6, 200));
        }
    }

    #[test]
    fn rows_with_nan_take_the_full_rules() {
        let mut rng = Rng(2);
        let shape = Shape {
            rule: SplitRule::XgboostLess,
            n_features: 3,
            max_depth: 5,
            dense: true,
        };
        let e = ensemble(&mut rng, &shape, 20);
        let mut full_rules = e.clone();
        full_rules.cut_forest = None;
        for row in rows(&mut rng, shape.rule, 3, 50) {
            for f in 0..3 {
                let mut with_nan = row.clone();
                with_nan[f] = f64::NAN;
                assert_eq!(e.margin(&with_nan), full_rules.margin(&with_nan));
            }
        }
    }

    #[test]
    fn categorical_ensembles_have_no_cut_forest() {
        let mut rng = Rng(3);
        let shape = Shape {
            rule: SplitRule::LightgbmLessEqual,
            n_features: 2,
            max_depth: 2,
            dense: true,
        };
        let mut e = ensemble(&mut rng, &shape, 1);
        e.trees.nodes[0].category_set = Some(0);
        e.trees.category_sets = vec![vec![0b101]];
        let e = e.compile().unwrap();
        assert!(e.cut_forest.is_none());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Cuts make the libraries' decisions and sums, bit for bit, on random ensembles of
        /// both libraries, both layouts and partial groups.
        #[test]
        fn cuts_decide_like_the_float_comparisons(
            seed in any::<u64>(),
            lightgbm in any::<bool>(),
            n_features in 1usize..9,
            max_depth in 0usize..14,
            dense in any::<bool>(),
            trees in 1usize..50,
        ) {
            let rule = if lightgbm { SplitRule::LightgbmLessEqual } else { SplitRule::XgboostLess };
            let shape = Shape { rule, n_features, max_depth, dense };
            let mut rng = Rng(seed);
            let e = ensemble(&mut rng, &shape, trees);
            check(&e, &rows(&mut rng, rule, n_features, 32));
        }

        /// An engine image loads back to the same decisions, sums and explanations, bit for bit,
        /// on every layout (complete and explicit groups, AVX-512 and scalar walks, NaN rows).
        #[test]
        fn images_load_back_bit_for_bit(
            seed in any::<u64>(),
            lightgbm in any::<bool>(),
            n_features in 1usize..9,
            max_depth in 0usize..14,
            dense in any::<bool>(),
            trees in 1usize..50,
        ) {
            let rule = if lightgbm { SplitRule::LightgbmLessEqual } else { SplitRule::XgboostLess };
            let shape = Shape { rule, n_features, max_depth, dense };
            let mut rng = Rng(seed);
            let e = ensemble(&mut rng, &shape, trees);
            let loaded = image_round_trip(&e);
            let mut rows = rows(&mut rng, rule, n_features, 32);
            rows[0][0] = f64::NAN;
            check(&loaded, &rows[1..]);
            for row in &rows {
                prop_assert_eq!(loaded.margin(row).to_bits(), e.margin(row).to_bits());
                let (a, b) = (loaded.contributions(row), e.contributions(row));
                prop_assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "{:?} vs {:?}", a, b);
            }
            prop_assert_eq!(&loaded.tree_depths, &e.tree_depths);
        }

        /// Altered or truncated images are refused or load into something that evaluates; none
        /// panics (the mutation lands anywhere: header, section headers, nodes, cuts, groups).
        #[test]
        fn altered_images_never_panic(
            seed in any::<u64>(),
            lightgbm in any::<bool>(),
            max_depth in 0usize..12,
            dense in any::<bool>(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
            cut in 0usize..64,
        ) {
            let rule = if lightgbm { SplitRule::LightgbmLessEqual } else { SplitRule::XgboostLess };
            let shape = Shape { rule, n_features: 3, max_depth, dense };
            let mut rng = Rng(seed);
            let e = ensemble(&mut rng, &shape, 20);
            let mut bytes = image::compile(&e, b"model");
            for (at, byte) in edits {
                let i = at.index(bytes.len());
                bytes[i] ^= byte.max(1);
            }
            bytes.truncate(bytes.len().saturating_sub(cut * 8));
            let source = image::source_sha256(&bytes).unwrap_or_default();
            if let Ok(m) = image::load(&bytes, &source, image::Integrity::Verified) {
                for row in rows(&mut rng, rule, 3, 8) {
                    let _ = m.margin(&row);
                    let _ = m.contributions(&row);
                }
            }
        }
    }

    fn image_round_trip(e: &Ensemble) -> Ensemble {
        let bytes = image::compile(e, b"model");
        let source = mlops_domain::hashing::sha256_hex(b"model");
        image::load(&bytes, &source, image::Integrity::CheckBody).unwrap()
    }

    #[test]
    fn an_image_names_what_is_wrong_with_it() {
        let mut rng = Rng(7);
        let shape = Shape {
            rule: SplitRule::XgboostLess,
            n_features: 4,
            max_depth: 6,
            dense: true,
        };
        let e = ensemble(&mut rng, &shape, 20);
        let bytes = image::compile(&e, b"model");
        let source = mlops_domain::hashing::sha256_hex(b"model");
        let err = |b: &[u8], src: &str, i| image::load(b, src, i).unwrap_err().to_string();
        assert!(
            err(&bytes, &"0".repeat(64), image::Integrity::Verified)
                .contains("compiled from model sha256")
        );
        let mut flipped = bytes.clone();
        let last = flipped.len() - 20;
        flipped[last] ^= 1;
        assert!(
            err(&flipped, &source, image::Integrity::CheckBody)
                .contains("does not match its SHA-256")
        );
        assert!(
            err(
                &bytes[..bytes.len() / 2],
                &source,
                image::Integrity::Verified
            )
            .contains("truncated")
        );
        let mut old = bytes.clone();
        old[8] = 0;
        let e = image::load(&old, &source, image::Integrity::Verified).unwrap_err();
        assert!(e.is_stale() && e.to_string().contains("format 0"), "{e}");
        assert!(
            err(b"tree\nversion=v4", &source, image::Integrity::Verified)
                .contains("no MLOPSENG magic")
        );
    }
}
