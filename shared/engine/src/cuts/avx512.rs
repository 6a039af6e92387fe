//! The cut forest walked with AVX-512 (x86-64 CPUs with AVX-512F, AVX-512BW and POPCNT,
//! detected when the model loads; other CPUs, Graviton included, take the scalar walk of
//! [`super`]). Same decisions and the same f32/f64 sums in tree order, bit for bit.
//!
//! - Nodes: 16 bits, the feature (high bits) and the cut's index among that feature's cuts (low
//!   bits). A row is its rank per feature (how many of the feature's cuts send it right), found
//!   with vector compares over the cuts in blocks of 8 and held in one to four vector registers;
//!   a lane goes right when its node's cut index is below the rank a permute picks for its
//!   feature. No per-row flags are written.
//! - Layout: a complete group of depth `D` is cut into a *top* of `D − B` levels and `2^(D−B)`
//!   *bottom* subtrees of `B` levels (`B` = 3 with f32 leaves, 2 with f64), each stored with its
//!   leaf values in one 64-byte line. The top is stored level by level across the group's 16
//!   trees, so levels 0–4 are loaded whole and a step picks each lane's node with a register
//!   permute (deeper top levels are gathered); a walk then reads one line at random — its
//!   bottom subtree with its leaf — where the heap layout reads about five.
//! - Four groups are walked interleaved, and runs of four are software-pipelined: a run's top
//!   walk is issued before the previous run's bottom walk, and a run's leaf values are added two
//!   per step of the runs after it, so the serial chain of adds overlaps their latency.
//! - Explicit (deep or sparse) groups: one 32-bit node a step, gathered for 16 trees — its node
//!   bits and its left child's index within the group (the right child follows it; a leaf names
//!   itself and never goes right) — four groups interleaved, until no lane of the four moves.
//!   Their leaf values are added as the complete groups' are. Groups of more than 65,536 nodes
//!   keep the scalar walk.
//!
//! The loads and gathers read through raw pointers, hence the `unsafe`: every offset stays
//! inside its group whatever the nodes hold (see [`walk`] and [`walk_deep`]). It pays: on the
//! benchmark models, one row takes about three quarters of the scalar walk's time (XGBoost, 597
//! trees of depth 8) and under half of it (LightGBM, 718 trees of depth 9 to 26).

use std::arch::x86_64::*;

use super::{CutForest, LANES, Layout, Leaves, NEVER_RIGHT};
use crate::tree::SplitRule;

/// Most features: four 16-rank tables.
pub(super) const MAX_FEATURES: usize = 64;
/// Groups walked interleaved.
const INTERLEAVE: usize = 4;
/// Byte offset of the leaf values in a bottom line (its nodes take at most 14 bytes, and a
/// gather reads 4).
const LEAVES_AT: usize = 16;
const LINE: usize = 64;

#[repr(C, align(64))]
#[derive(Debug, Clone, Copy)]
struct Line([u8; LINE]);

/// Where a complete group's lines start and how it splits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BlockGroup {
    /// Byte offset of the group's first line.
    start: usize,
    /// Levels walked in the top part.
    top: u32,
    /// Levels walked in the bottom subtree.
    bottom: u32,
}

impl BlockGroup {
    /// Byte offset, from the group's start, of top level `level`: the level's `2^level` nodes
    /// of lane 0, then of lane 1… Levels start on a line (level 0's 32 bytes take a whole one).
    fn level_at(level: u32) -> usize {
        if level == 0 { 0 } else { 32 << level }
    }

    /// Bytes of the top part (and room for a gather's 4-byte read of its last node).
    fn top_bytes(self) -> usize {
        Self::level_at(self.top)
    }

    /// Bytes of one lane's bottom part: a line per subtree.
    fn bottom_stride(self) -> usize {
        LINE << self.top
    }

    /// Byte offset of lane `lane`'s top node at position `p` of level `level`.
    fn top_node(self, lane: usize, level: u32, p: usize) -> usize {
        self.start + Self::level_at(level) + 2 * ((lane << level) + p)
    }

    /// Byte offset of lane `lane`'s bottom subtree `s`.
    fn subtree(self, lane: usize, s: usize) -> usize {
        self.start + self.top_bytes() + lane * self.bottom_stride() + s * LINE
    }

    fn bytes(self) -> usize {
        self.top_bytes() + LANES * self.bottom_stride()
    }
}

/// The complete groups of a [`CutForest`] in the blocked layout.
#[derive(Debug, Clone)]
pub(super) struct Blocked {
    lines: Vec<Line>,
    /// The explicit groups laid out for the vector walk.
    deep: DeepNodes,
    /// The forest's groups in order: runs of complete groups, runs of explicit groups, and
    /// explicit groups left to the scalar walk.
    pub segments: Vec<Segment>,
    /// Rank tables of 16 features the row needs: 1, 2 or 4.
    tables: usize,
    /// Low bits of a node holding the cut's index within its feature.
    cut_bits: u32,
    /// Bytes of a leaf value: 4 (f32) or 8 (f64).
    leaf_bytes: usize,
    /// Whether some explicit group is left to the scalar walk, so a row also needs its flags.
    pub has_explicit: bool,
    rank_search: RankSearch,
}

impl Blocked {
    /// Lays out `forest`'s groups; `None` when the CPU lacks AVX-512F, AVX-512BW or POPCNT,
    /// when `MLOPS_ENGINE_AVX512=off` asks for the portable walk, when every group is left to
    /// the scalar walk, or when the forest does not fit the node bits (see [`node_bits`]).
    pub(super) fn build(forest: &CutForest) -> Option<Self> {
        if std::env::var_os("MLOPS_ENGINE_AVX512").is_some_and(|v| v == "off")
            || !std::arch::is_x86_feature_detected!("avx512f")
            || !std::arch::is_x86_feature_detected!("avx512bw")
            || !std::arch::is_x86_feature_detected!("popcnt")
        {
            return None;
        }
        let (tables, cut_bits) = node_bits(forest)?;
        let never = (1u16 << cut_bits) - 1;
        // Global cut index → node bits.
        let node_of = |cut: u16| -> u16 {
            if cut == NEVER_RIGHT {
                return never;
            }
            let f = forest
                .cut_starts
                .partition_point(|&s| s <= usize::from(cut))
                - 1;
            ((f as u16) << cut_bits) | (cut - forest.cut_starts[f] as u16)
        };
        let leaf_bytes = match &forest.leaves {
            Leaves::F32(_) => 4,
            Leaves::F64(_) => 8,
        };
        let bottom_max = if leaf_bytes == 4 { 3 } else { 2 };
        let mut bytes: Vec<u8> = Vec::new();
        let mut deep = DeepNodes::default();
        let mut segments = Vec::new();
        let mut has_explicit = false;
        let mut g = 0;
        while g < forest.groups.len() {
            let layout = forest.groups[g].layout;
            let end = (g..forest.groups.len())
                .find(|&h| forest.groups[h].layout != layout)
                .unwrap_or(forest.groups.len());
            if layout == Layout::Explicit {
                match deep_runs(forest, g..end, &node_of, &mut deep) {
                    Some(runs) => segments.push(Segment::Deep(runs)),
                    None => {
                        has_explicit = true;
                        segments.extend((g..end).map(Segment::Explicit));
                    }
                }
                g = end;
                continue;
            }
            let mut blocks = Vec::with_capacity(end - g);
            for group in &forest.groups[g..end] {
                let depth = group.steps as u32;
                let bottom = depth.min(bottom_max);
                let block = BlockGroup {
                    start: bytes.len(),
                    top: depth - bottom,
                    bottom,
                };
                bytes.resize(bytes.len() + block.bytes(), 0);
                lay_out_complete(forest, group, block, &node_of, leaf_bytes, &mut bytes);
                blocks.push(block);
            }
            let trees: Vec<usize> = forest.groups[g..end].iter().map(|gr| gr.trees).collect();
            segments.push(Segment::Runs(runs(&blocks, &trees)));
            g = end;
        }
        if segments.iter().all(|s| matches!(s, Segment::Explicit(_))) {
            return None;
        }
        let lines = bytes
            .chunks(LINE)
            .map(|c| {
                let mut line = [0; LINE];
                line[..c.len()].copy_from_slice(c);
                Line(line)
            })
            .collect();
        Some(Blocked {
            rank_search: RankSearch::build(forest),
            lines,
            deep,
            segments,
            tables,
            cut_bits,
            leaf_bytes,
            has_explicit,
        })
    }

    /// Each feature's rank for a NaN-free row of the forest's width.
    pub(super) fn ranks(&self, row: &[f64], out: &mut [u32; MAX_FEATURES]) {
        // SAFETY: `build` returned this layout only after detecting AVX-512F and POPCNT on this
        // CPU.
        unsafe { self.rank_search.ranks(row, out) }
    }

    /// Adds the leaves of `runs` to `sum`, in tree order.
    pub(super) fn sum_runs<V: LeafValue>(
        &self,
        runs: &[Run],
        ranks: &[u32; MAX_FEATURES],
        sum: V,
    ) -> V {
        let base = self.lines.as_ptr().cast::<u8>();
        let wide = self.leaf_bytes == 8;
        // SAFETY: `build` returned this layout only after detecting AVX-512F and AVX-512BW on
        // this CPU; the runs' groups are laid out in `self.lines` with their shapes and leaves
        // `leaf_bytes` wide.
        unsafe {
            match self.tables {
                1 => walk::<V, 1>(base, runs, wide, ranks, self.cut_bits, sum),
                2 => walk::<V, 2>(base, runs, wide, ranks, self.cut_bits, sum),
                _ => walk::<V, 4>(base, runs, wide, ranks, self.cut_bits, sum),
            }
        }
    }

    /// Adds the leaves of the explicit groups of `runs` to `sum`, in tree order.
    pub(super) fn sum_deep<V: LeafValue>(
        &self,
        runs: &[DeepRun],
        ranks: &[u32; MAX_FEATURES],
        sum: V,
    ) -> V {
        // SAFETY: `build` returned this layout only after detecting AVX-512F and AVX-512BW on
        // this CPU, and laid out `runs` in `self.deep`.
        unsafe {
            match self.tables {
                1 => walk_deep::<V, 1>(&self.deep, runs, ranks, self.cut_bits, sum),
                2 => walk_deep::<V, 2>(&self.deep, runs, ranks, self.cut_bits, sum),
                _ => walk_deep::<V, 4>(&self.deep, runs, ranks, self.cut_bits, sum),
            }
        }
    }
}

/// Rank tables (of 16 features) and the bits of a node's cut index, or `None` when the forest has
/// more than [`MAX_FEATURES`] features or a feature with too many cuts for its bits (the
/// all-ones index is kept for nodes that never send a row right).
pub(super) fn node_bits(forest: &CutForest) -> Option<(usize, u32)> {
    let (tables, cut_bits) = match forest.n_features() {
        0..=16 => (1, 12),
        17..=32 => (2, 11),
        33..=MAX_FEATURES => (4, 10),
        _ => return None,
    };
    let never = (1usize << cut_bits) - 1;
    forest
        .cut_counts
        .iter()
        .all(|&c| c < never)
        .then_some((tables, cut_bits))
}

/// A row's rank per feature from its cuts in blocks of 8: the count of whole blocks the row is
/// right of (compared with each block's last cut, 8 at a time), then the count within the next
/// block — two or three vector compares where a binary search takes eight unpredictable
/// branches.
#[derive(Debug, Clone)]
struct RankSearch {
    /// XGBoost's rule (`x ≥ t` on the f32-rounded input) rather than LightGBM's (`x > t`).
    xgboost: bool,
    /// Per feature, the last cut of each whole block of 8, then NaN (never counted) to a whole
    /// number of 8.
    fences: Vec<f64>,
    /// Per feature, its cuts in blocks of 8 with at least one NaN after the last.
    blocks: Vec<f64>,
    /// Per feature: start in `fences`, chunks of 8 fences, start in `blocks`.
    features: Vec<(usize, usize, usize)>,
}

impl RankSearch {
    fn build(forest: &CutForest) -> Self {
        let mut fences = Vec::new();
        let mut blocks = Vec::new();
        let mut features = Vec::with_capacity(forest.n_features());
        for f in 0..forest.n_features() {
            let cuts = forest.feature_cuts(f);
            let whole = cuts.len() / 8;
            let chunks = whole.div_ceil(8);
            features.push((fences.len(), chunks, blocks.len()));
            fences.extend(cuts.chunks_exact(8).map(|b| b[7]));
            fences.resize(fences.len() + chunks * 8 - whole, f64::NAN);
            blocks.extend_from_slice(cuts);
            blocks.resize(blocks.len() + 8 * (whole + 1) - cuts.len(), f64::NAN);
        }
        RankSearch {
            xgboost: forest.rule == SplitRule::XgboostLess,
            fences,
            blocks,
            features,
        }
    }

    /// Each feature's rank for a NaN-free row (the same counts as [`CutForest::rank`]).
    ///
    /// # Safety
    /// The CPU has AVX-512F and POPCNT.
    #[target_feature(enable = "avx512f,popcnt")]
    unsafe fn ranks(&self, row: &[f64], out: &mut [u32; MAX_FEATURES]) {
        // SAFETY: as this function's.
        unsafe {
            if self.xgboost {
                self.ranks_with::<true>(row, out)
            } else {
                self.ranks_with::<false>(row, out)
            }
        }
    }

    /// # Safety
    /// The CPU has AVX-512F and POPCNT.
    #[target_feature(enable = "avx512f,popcnt")]
    unsafe fn ranks_with<const XGBOOST: bool>(&self, row: &[f64], out: &mut [u32; MAX_FEATURES]) {
        // How many of 8 cuts send the row right: XGBoost's `x ≥ t` on the f32-rounded input,
        // LightGBM's `x > t`; NaN padding never counts.
        let count = |cuts: &[f64], x: __m512d| {
            // SAFETY: `cuts` holds 8 f64.
            let c = unsafe { _mm512_loadu_pd(cuts[..8].as_ptr()) };
            let right = if XGBOOST {
                _mm512_cmp_pd_mask::<_CMP_LE_OQ>(c, x)
            } else {
                _mm512_cmp_pd_mask::<_CMP_LT_OQ>(c, x)
            };
            right.count_ones() as usize
        };
        for ((&x, &(fences, chunks, blocks)), rank) in row.iter().zip(&self.features).zip(out) {
            let x = _mm512_set1_pd(if XGBOOST { f64::from(x as f32) } else { x });
            let whole: usize = self.fences[fences..fences + 8 * chunks]
                .chunks_exact(8)
                .map(|c| count(c, x))
                .sum();
            let block = blocks + 8 * whole;
            *rank = (8 * whole + count(&self.blocks[block..block + 8], x)) as u32;
        }
    }
}

/// A forest's groups in order, as the AVX-512 walk takes them.
#[derive(Debug, Clone)]
pub(super) enum Segment {
    /// Consecutive complete groups.
    Runs(Vec<Run>),
    /// Consecutive explicit groups, walked by the vector walk.
    Deep(Vec<DeepRun>),
    /// An explicit group the vector walk cannot take (index into the forest's groups), walked
    /// by the scalar code.
    Explicit(usize),
}

/// Up to [`INTERLEAVE`] consecutive complete groups of one shape, walked interleaved.
#[derive(Debug, Clone, Copy)]
pub(super) struct Run {
    shape: BlockGroup,
    /// Each slot's group start; a short run repeats its first group (one interleaved walk takes
    /// about as long as a single group's, its latency).
    starts: [usize; INTERLEAVE],
    /// Trees added from each slot: 0 for a repeat.
    trees: [usize; INTERLEAVE],
}

/// Splits a stretch of complete groups into runs of up to [`INTERLEAVE`] groups of one shape;
/// `trees[g]` is group `g`'s tree count.
fn runs(blocks: &[BlockGroup], trees: &[usize]) -> Vec<Run> {
    let mut out = Vec::new();
    let mut g = 0;
    while g < blocks.len() {
        let first = blocks[g];
        let mut end = g + 1;
        while end < blocks.len()
            && end - g < INTERLEAVE
            && (blocks[end].top, blocks[end].bottom) == (first.top, first.bottom)
        {
            end += 1;
        }
        out.push(Run {
            shape: first,
            starts: std::array::from_fn(|k| blocks[if g + k < end { g + k } else { g }].start),
            trees: std::array::from_fn(|k| if g + k < end { trees[g + k] } else { 0 }),
        });
        g = end;
    }
    out
}

/// Writes a complete group's top levels, bottom subtrees and leaf values at `block.start`.
fn lay_out_complete(
    forest: &CutForest,
    group: &super::Group,
    block: BlockGroup,
    node_of: &impl Fn(u16) -> u16,
    leaf_bytes: usize,
    bytes: &mut [u8],
) {
    let stride = 1usize << group.steps;
    let bottom = block.bottom;
    for lane in 0..LANES {
        let heap = group.nodes_start + lane * stride;
        let node = |i: usize| node_of(forest.complete_nodes[heap + i]);
        let top_nodes = (1usize << block.top) - 1;
        for level in 0..block.top {
            for p in 0..1usize << level {
                let at = block.top_node(lane, level, p);
                write(bytes, at, &node((1 << level) - 1 + p).to_le_bytes());
            }
        }
        for s in 0..1usize << block.top {
            let line = block.subtree(lane, s);
            // Subtree `s`'s root is heap node `top_nodes + s`; its level-`l` nodes are the
            // `2^l` heap nodes from `(top_nodes + s + 1) · 2^l − 1`.
            for l in 0..bottom as usize {
                for j in 0..1usize << l {
                    let q = (1 << l) - 1 + j;
                    let i = ((top_nodes + s + 1) << l) - 1 + j;
                    write(bytes, line + 2 * q, &node(i).to_le_bytes());
                }
            }
            for j in 0..1usize << bottom {
                let slot = group.values_start + lane * stride + (s << bottom) + j;
                let at = line + LEAVES_AT + leaf_bytes * j;
                match &forest.leaves {
                    Leaves::F32(v) => write(bytes, at, &v.complete[slot].to_le_bytes()),
                    Leaves::F64(v) => write(bytes, at, &v.complete[slot].to_le_bytes()),
                }
            }
        }
    }
}

/// Nodes and leaf values of the explicit groups laid out for the vector walk.
#[derive(Debug, Clone, Default)]
struct DeepNodes {
    /// Per node: its left child's index from its group's start (high half; the right child
    /// follows it; a leaf names itself) and its node bits (low half; a leaf never goes right).
    nodes: Vec<u32>,
    /// Per node: a leaf's value bits (an f32's in the low half), 0 for a split.
    values: Vec<u64>,
}

/// Up to [`INTERLEAVE`] consecutive explicit groups walked interleaved by the vector walk; a
/// short run repeats its first group.
#[derive(Debug, Clone)]
pub(super) struct DeepRun {
    /// Each slot's group start in [`DeepNodes`].
    starts: [usize; INTERLEAVE],
    /// Each lane's root, from its group's start (a missing lane walks lane 0's tree).
    roots: [[u32; LANES]; INTERLEAVE],
    /// Trees added from each slot: 0 for a repeat.
    trees: [usize; INTERLEAVE],
    /// Steps that bring every lane to its leaf: the depth of the deepest tree.
    steps: usize,
}

/// Most nodes of a group of the vector walk: child indices take 16 bits.
const MAX_DEEP_GROUP: usize = 1 << 16;

/// Lays out explicit groups `groups` in `deep` for the vector walk, in runs; `None` when a
/// group has more than [`MAX_DEEP_GROUP`] nodes.
fn deep_runs(
    forest: &CutForest,
    groups: std::ops::Range<usize>,
    node_of: &impl Fn(u16) -> u16,
    deep: &mut DeepNodes,
) -> Option<Vec<DeepRun>> {
    let (nodes_before, values_before) = (deep.nodes.len(), deep.values.len());
    let mut laid_out = Vec::with_capacity(groups.len());
    for g in groups {
        let group = &forest.groups[g];
        let end = forest.groups[g + 1..]
            .iter()
            .find(|h| h.layout == Layout::Explicit)
            .map_or(forest.explicit_nodes.len(), |h| h.nodes_start);
        if end - group.nodes_start > MAX_DEEP_GROUP {
            deep.nodes.truncate(nodes_before);
            deep.values.truncate(values_before);
            return None;
        }
        let start = deep.nodes.len();
        let mut roots = [0u32; LANES];
        roots[..group.trees].copy_from_slice(&group.tree_starts[..group.trees]);
        // A node's child is relative to its tree's start: add the tree's start in the group.
        let mut lane = 0;
        for i in group.nodes_start..end {
            while lane + 1 < group.trees
                && i >= group.nodes_start + group.tree_starts[lane + 1] as usize
            {
                lane += 1;
            }
            let node = forest.explicit_nodes[i];
            let child = group.tree_starts[lane] + (node >> 16);
            deep.nodes
                .push((child << 16) | u32::from(node_of(node as u16)));
            deep.values.push(match &forest.leaves {
                Leaves::F32(v) => u64::from(v.explicit[i].to_bits()),
                Leaves::F64(v) => v.explicit[i].to_bits(),
            });
        }
        laid_out.push((start, roots, group.trees, group.steps));
    }
    Some(
        laid_out
            .chunks(INTERLEAVE)
            .map(|run| DeepRun {
                starts: std::array::from_fn(|k| run.get(k).unwrap_or(&run[0]).0),
                roots: std::array::from_fn(|k| run.get(k).unwrap_or(&run[0]).1),
                trees: std::array::from_fn(|k| run.get(k).map_or(0, |g| g.2)),
                steps: run.iter().map(|g| g.3).max().unwrap_or(0),
            })
            .collect(),
    )
}

fn write(bytes: &mut [u8], at: usize, value: &[u8]) {
    bytes[at..at + value.len()].copy_from_slice(value);
}

/// A leaf value from the bits a walk gathers (an f32's in the low half).
pub(super) trait LeafValue: Copy + std::ops::Add<Output = Self> {
    fn from_bits(bits: u64) -> Self;
}

impl LeafValue for f32 {
    #[inline(always)]
    fn from_bits(bits: u64) -> Self {
        f32::from_bits(bits as u32)
    }
}

impl LeafValue for f64 {
    #[inline(always)]
    fn from_bits(bits: u64) -> Self {
        f64::from_bits(bits)
    }
}

/// A run between its top walk and its bottom walk: each slot's subtree line (byte offset from
/// the slot's group start) and the first bottom node, gathered.
struct Pending {
    line: [__m512i; INTERLEAVE],
    node: [__m512i; INTERLEAVE],
}

/// Walks `runs` and adds their leaves to `sum` in tree order. Software-pipelined: a run's top
/// walk and its first bottom gather (the line that usually comes from L2) are issued before
/// the previous run's bottom walk, so that line's latency overlaps work.
///
/// # Safety
/// The CPU has AVX-512F and AVX-512BW, and each run's `starts` are starts of groups laid out by
/// [`Blocked::build`] with the run's shape inside the allocation at `base`, with leaves 8 bytes
/// wide if `wide`, else 4. The loads and gathers then stay in bounds whatever the nodes hold: a
/// node only decides a 0-or-1 move, so a position within top level `l` stays in `0..2^l` (its
/// 4-byte read ends inside the level, or in the next one or the bottom part that follows), a
/// subtree index in `0..2^top`, a bottom position in `0..2^bottom − 1` (its read ends inside the
/// first 16 bytes of the subtree's line) and a leaf inside the line's first 48 bytes.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn walk<V: LeafValue, const TABLES: usize>(
    base: *const u8,
    runs: &[Run],
    wide: bool,
    ranks: &[u32; MAX_FEATURES],
    cut_bits: u32,
    sum: V,
) -> V {
    const K: usize = INTERLEAVE;
    let decide = Decide::<TABLES>::new(ranks, cut_bits);
    let right = |node: __m512i| decide.right(node);
    let lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    let one = _mm512_set1_epi32(1);
    let two = _mm512_set1_epi32(2);

    // The top walk of `run`, then its first bottom gather.
    let top = |run: &Run, adder: &mut Adder<V>| -> Pending {
        let ptrs: [*const u8; K] = std::array::from_fn(|k| base.wrapping_add(run.starts[k]));
        let shape = run.shape;
        // Each lane's position `p` within the level; a step maps it to `2p + r`. Levels 0–4
        // are loaded whole (16 lanes × up to 16 nodes fit 8 registers) and picked by permutes,
        // so their steps wait for no memory; deeper top levels are gathered.
        let mut p = [_mm512_setzero_si512(); K];
        for level in 0..shape.top {
            let at = BlockGroup::level_at(level);
            let lane_start = _mm512_sllv_epi32(lane, _mm512_set1_epi32(level as i32));
            for k in 0..K {
                let index = _mm512_add_epi32(lane_start, p[k]);
                let nodes = ptrs[k].wrapping_add(at);
                // SAFETY: loads of the level's nodes (`16 · 2^level` u16 from `nodes`) and
                // gathers inside them; see the function's contract.
                let node = unsafe {
                    let table = |t: usize| _mm512_loadu_si512(nodes.add(64 * t).cast());
                    match level {
                        0 => _mm512_cvtepu16_epi32(_mm256_loadu_si256(nodes.cast())),
                        1 => _mm512_permutexvar_epi16(index, table(0)),
                        2 => _mm512_permutex2var_epi16(table(0), index, table(1)),
                        3 | 4 => {
                            let quarter = |q: usize| {
                                _mm512_permutex2var_epi16(table(2 * q), index, table(2 * q + 1))
                            };
                            let upper = _mm512_test_epi32_mask(index, _mm512_set1_epi32(64));
                            let low = _mm512_mask_blend_epi32(upper, quarter(0), quarter(1));
                            if level == 3 {
                                low
                            } else {
                                let high = _mm512_mask_blend_epi32(upper, quarter(2), quarter(3));
                                let half = _mm512_test_epi32_mask(index, _mm512_set1_epi32(128));
                                _mm512_mask_blend_epi32(half, low, high)
                            }
                        }
                        _ => _mm512_i32gather_epi32::<2>(index, nodes.cast()),
                    }
                };
                let doubled = _mm512_add_epi32(p[k], p[k]);
                p[k] = _mm512_mask_add_epi32(doubled, right(node), doubled, one);
                adder.add(ADDS_PER_STEP);
            }
        }
        // Subtree `p` at `bottom_base + 64 p`.
        let bottom_base = _mm512_add_epi32(
            _mm512_set1_epi32(shape.top_bytes() as i32),
            _mm512_mullo_epi32(lane, _mm512_set1_epi32(shape.bottom_stride() as i32)),
        );
        let line: [__m512i; K] =
            std::array::from_fn(|k| _mm512_add_epi32(bottom_base, _mm512_slli_epi32::<6>(p[k])));
        let node = std::array::from_fn(|k| {
            if shape.bottom == 0 {
                return _mm512_setzero_si512();
            }
            // SAFETY: the subtree's root node; see the function's contract.
            unsafe { _mm512_i32gather_epi32::<1>(line[k], ptrs[k].cast()) }
        });
        Pending { line, node }
    };

    // The bottom walk of `run` from its first node, then its leaf values added to `sum`.
    let bottom = |run: &Run, pending: &Pending, adder: &mut Adder<V>| {
        let ptrs: [*const u8; K] = std::array::from_fn(|k| base.wrapping_add(run.starts[k]));
        let shape = run.shape;
        // Byte offsets `line + 2q` of positions `q`; a step maps `q` to `2q + 1 + r`.
        let mut at = pending.line;
        let mut node = pending.node;
        for level in 0..shape.bottom {
            for k in 0..K {
                if level > 0 {
                    // SAFETY: a node of the subtree; see the function's contract.
                    node[k] = unsafe { _mm512_i32gather_epi32::<1>(at[k], ptrs[k].cast()) };
                }
                let next = _mm512_sub_epi32(_mm512_add_epi32(at[k], at[k]), pending.line[k]);
                let next = _mm512_add_epi32(next, two);
                at[k] = _mm512_mask_add_epi32(next, right(node[k]), next, two);
                adder.add(ADDS_PER_STEP);
            }
        }
        // Bottom position `q = (at − line) / 2` in `2^bottom − 1 ..`; its leaf value at
        // `line + LEAVES_AT + leaf_bytes · (q − (2^bottom − 1))`.
        let leaf_shift = if wide { 3 } else { 2 };
        let first_leaf =
            _mm512_set1_epi32(LEAVES_AT as i32 - (((1 << shape.bottom) - 1) << leaf_shift));
        // The previous run's values must all be added before this run's replace them.
        adder.add(LANES * K);
        let mut filled = 0;
        for k in 0..K {
            let q = _mm512_srli_epi32::<1>(_mm512_sub_epi32(at[k], pending.line[k]));
            let leaf = _mm512_add_epi32(
                _mm512_add_epi32(pending.line[k], first_leaf),
                _mm512_sll_epi32(q, _mm_cvtsi32_si128(leaf_shift)),
            );
            let low = _mm512_castsi512_si256(leaf);
            let high = _mm512_extracti64x4_epi64::<1>(leaf);
            // Stored after the values kept so far, over the unused lanes of the group before.
            let out = adder.bits[filled..filled + LANES].as_mut_ptr();
            // SAFETY: the gathers as above; the stores write 16 u64.
            unsafe {
                let (low, high) = if wide {
                    (
                        _mm512_i32gather_epi64::<1>(low, ptrs[k].cast()),
                        _mm512_i32gather_epi64::<1>(high, ptrs[k].cast()),
                    )
                } else {
                    let values = _mm512_i32gather_epi32::<1>(leaf, ptrs[k].cast());
                    (
                        _mm512_cvtepu32_epi64(_mm512_castsi512_si256(values)),
                        _mm512_cvtepu32_epi64(_mm512_extracti64x4_epi64::<1>(values)),
                    )
                };
                _mm512_storeu_si512(out.cast(), low);
                _mm512_storeu_si512(out.add(8).cast(), high);
            }
            filled += run.trees[k];
        }
        adder.next = 0;
        adder.len = filled;
    };

    // Each run's leaf values are added while the next runs walk, a few after each step, so the
    // serial chain of adds (in tree order, as the libraries add) overlaps their latency.
    let mut adder = Adder::new(sum);
    let Some((first, rest)) = runs.split_first() else {
        return sum;
    };
    let mut pending = top(first, &mut adder);
    let mut current = first;
    for next in rest {
        let next_pending = top(next, &mut adder);
        bottom(current, &pending, &mut adder);
        pending = next_pending;
        current = next;
    }
    bottom(current, &pending, &mut adder);
    adder.add(ADDER_BITS);
    adder.sum
}

/// A row's ranks held in registers, and how a node's bits split: which lanes go right.
#[derive(Clone, Copy)]
struct Decide<const TABLES: usize> {
    tables: [__m512i; 4],
    shift: __m128i,
    cut_mask: __m512i,
}

impl<const TABLES: usize> Decide<TABLES> {
    #[target_feature(enable = "avx512f,avx512bw")]
    fn new(ranks: &[u32; MAX_FEATURES], cut_bits: u32) -> Self {
        Decide {
            // SAFETY: `ranks` holds 64 u32, four unaligned 64-byte loads.
            tables: std::array::from_fn(|t| unsafe {
                _mm512_loadu_si512(ranks[16 * t..].as_ptr().cast())
            }),
            shift: _mm_cvtsi32_si128(cut_bits as i32),
            cut_mask: _mm512_set1_epi32((1 << cut_bits) - 1),
        }
    }

    /// Whether each lane goes right: its node's cut index is below the row's rank for the
    /// node's feature. Bits above a node's 16 are ignored (the permutes read the low 4 or 5
    /// bits of the feature, the four-table blend its bit 5).
    #[target_feature(enable = "avx512f,avx512bw")]
    #[inline]
    fn right(&self, node: __m512i) -> __mmask16 {
        let tables = &self.tables;
        let feature = _mm512_srl_epi32(node, self.shift);
        let rank = match TABLES {
            1 => _mm512_permutexvar_epi32(feature, tables[0]),
            2 => _mm512_permutex2var_epi32(tables[0], feature, tables[1]),
            _ => {
                let low = _mm512_permutex2var_epi32(tables[0], feature, tables[1]);
                let high = _mm512_permutex2var_epi32(tables[2], feature, tables[3]);
                let upper = _mm512_test_epi32_mask(feature, _mm512_set1_epi32(32));
                _mm512_mask_blend_epi32(upper, low, high)
            }
        };
        _mm512_cmplt_epu32_mask(_mm512_and_si512(node, self.cut_mask), rank)
    }
}

/// Walks explicit groups, four interleaved, each run until none of its lanes moves, and adds
/// their leaf values to `sum` in tree order (a run's values while the next run walks, as in
/// [`walk`]).
///
/// # Safety
/// The CPU has AVX-512F and AVX-512BW, and `deep` holds the runs' groups as [`deep_runs`] laid
/// them out. The gathers then stay in bounds whatever the row: a lane starts at a root of its
/// group and moves to a left child or the node after it, both inside the group, or stays on its
/// leaf.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn walk_deep<V: LeafValue, const TABLES: usize>(
    deep: &DeepNodes,
    runs: &[DeepRun],
    ranks: &[u32; MAX_FEATURES],
    cut_bits: u32,
    sum: V,
) -> V {
    const K: usize = INTERLEAVE;
    let decide = Decide::<TABLES>::new(ranks, cut_bits);
    let one = _mm512_set1_epi32(1);
    let mut adder = Adder::new(sum);
    for run in runs {
        let nodes: [*const u32; K] =
            std::array::from_fn(|k| deep.nodes.as_ptr().wrapping_add(run.starts[k]));
        // SAFETY: 16 u32 each.
        let mut at: [__m512i; K] =
            std::array::from_fn(|k| unsafe { _mm512_loadu_si512(run.roots[k].as_ptr().cast()) });
        for _ in 0..run.steps {
            let mut moved = 0;
            for k in 0..K {
                // SAFETY: nodes of the group; see the function's contract.
                let node = unsafe { _mm512_i32gather_epi32::<4>(at[k], nodes[k].cast()) };
                let left = _mm512_srli_epi32::<16>(node);
                let next = _mm512_mask_add_epi32(left, decide.right(node), left, one);
                moved |= _mm512_cmpneq_epi32_mask(next, at[k]);
                at[k] = next;
                adder.add(ADDS_PER_STEP);
            }
            if moved == 0 {
                break;
            }
        }
        // The previous run's values must all be added before this run's replace them.
        adder.add(ADDER_BITS);
        let mut filled = 0;
        for ((&start, &trees), &at) in run.starts.iter().zip(&run.trees).zip(&at) {
            let leaves = deep.values.as_ptr().wrapping_add(start);
            // Stored after the values kept so far, over the unused lanes of the group before.
            let out = adder.bits[filled..filled + LANES].as_mut_ptr();
            // SAFETY: the leaves' values, indexed like their nodes; 16 u64 stored.
            unsafe {
                let low = _mm512_castsi512_si256(at);
                let high = _mm512_extracti64x4_epi64::<1>(at);
                let low = _mm512_i32gather_epi64::<8>(low, leaves.cast());
                let high = _mm512_i32gather_epi64::<8>(high, leaves.cast());
                _mm512_storeu_si512(out.cast(), low);
                _mm512_storeu_si512(out.add(8).cast(), high);
            }
            filled += trees;
        }
        adder.next = 0;
        adder.len = filled;
    }
    adder.add(ADDER_BITS);
    adder.sum
}

/// Leaf values added after each step of the walks that follow their run.
const ADDS_PER_STEP: usize = 2;
/// A run's values: each group's 16 are stored after the values kept before it.
const ADDER_BITS: usize = INTERLEAVE * LANES;

/// A run's leaf values (bits) being added to a sum in order.
struct Adder<V> {
    bits: [u64; ADDER_BITS],
    next: usize,
    len: usize,
    sum: V,
}

impl<V: LeafValue> Adder<V> {
    /// Nothing to add yet.
    fn new(sum: V) -> Self {
        Adder {
            bits: [0; ADDER_BITS],
            next: 0,
            len: 0,
            sum,
        }
    }

    /// Adds up to `n` more values.
    #[inline(always)]
    fn add(&mut self, n: usize) {
        let end = (self.next + n).min(self.len);
        for &b in &self.bits[self.next..end] {
            self.sum = self.sum + V::from_bits(b);
        }
        self.next = end;
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{avx512_cpu, check, leaf};
    use super::*;
    use crate::tree::{Ensemble, Node, OutputTransform, Trees};

    /// One stump per threshold: `thresholds[f]` are feature `f`'s, so feature `f` has that
    /// many cuts. Stumps form depth-1 complete groups.
    fn stumps(rule: SplitRule, thresholds: &[Vec<f64>]) -> Ensemble {
        let mut nodes = Vec::new();
        let mut roots = Vec::new();
        for (f, ts) in thresholds.iter().enumerate() {
            for (i, &t) in ts.iter().enumerate() {
                let root = nodes.len() as u32;
                roots.push(root);
                nodes.push(Node {
                    value: t,
                    feature: f as u32,
                    left: root + 1,
                    right: root + 2,
                    ..leaf(0.0)
                });
                nodes.push(leaf(-(i as f64) / 7.0));
                nodes.push(leaf(f as f64 + i as f64 / 3.0));
            }
        }
        Trees {
            n_features: thresholds.len(),
            nodes,
            roots,
            category_sets: Vec::new(),
            base_margin: 0.5,
            rule,
            transform: OutputTransform::Identity,
            average_output: false,
        }
        .compile()
        .expect("valid stumps")
    }

    fn blocked(e: &Ensemble) -> Option<&Blocked> {
        e.cut_forest.as_ref().and_then(|f| f.avx512.as_ref())
    }

    /// Values on, between and around the thresholds: ties, values that round to an f32
    /// threshold, signed zeros and infinities.
    fn probes(thresholds: &[f64]) -> Vec<f64> {
        let mut out = vec![f64::NEG_INFINITY, -1e30, -0.0, 0.0, 1e30, f64::INFINITY];
        for &t in thresholds {
            out.extend([t, t.next_down(), t.next_up(), t + 1e-9, t - 1e-9, t + 0.5]);
        }
        out
    }

    #[test]
    fn vector_ranks_match_the_binary_search() {
        if !avx512_cpu() {
            eprintln!("skipped: this CPU lacks AVX-512");
            return;
        }
        for rule in [SplitRule::XgboostLess, SplitRule::LightgbmLessEqual] {
            for count in [0, 1, 7, 8, 9, 15, 16, 17, 63, 64, 65, 255, 1000] {
                // Thresholds f32-exact (XGBoost stores f32), `count` of them on feature 1.
                let ts: Vec<f64> = (0..count)
                    .map(|i| f64::from(i as f32 * 0.25 - 7.0))
                    .collect();
                let e = stumps(rule, &[vec![1.5], ts.clone()]);
                let forest = e.cut_forest.as_ref().expect("cut forest");
                let blocked = blocked(&e).expect("AVX-512 layout");
                for x in probes(&ts) {
                    let row = [0.0, x];
                    let mut ranks = [0u32; MAX_FEATURES];
                    blocked.ranks(&row, &mut ranks);
                    for (f, &r) in ranks[..2].iter().enumerate() {
                        assert_eq!(
                            r as usize,
                            forest.rank(f, row[f]),
                            "{rule:?} {count} cuts, x {x}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn wide_forests_take_every_rank_table_size() {
        if !avx512_cpu() {
            eprintln!("skipped: this CPU lacks AVX-512");
            return;
        }
        for (n_features, tables) in [
            (16, Some(1)),
            (17, Some(2)),
            (32, Some(2)),
            (33, Some(4)),
            (64, Some(4)),
            (65, None),
        ] {
            for rule in [SplitRule::XgboostLess, SplitRule::LightgbmLessEqual] {
                let thresholds: Vec<Vec<f64>> = (0..n_features)
                    .map(|f| {
                        (0..3)
                            .map(|i| f64::from((f * 3 + i) as f32 * 0.5 - 40.0))
                            .collect()
                    })
                    .collect();
                let e = stumps(rule, &thresholds);
                assert_eq!(
                    blocked(&e).map(|b| b.tables),
                    tables,
                    "{n_features} features"
                );
                let values = probes(&thresholds.concat());
                let rows: Vec<Vec<f64>> = (0..64)
                    .map(|r| {
                        (0..n_features)
                            .map(|f| values[(r * 7 + f * 13) % values.len()])
                            .collect()
                    })
                    .collect();
                check(&e, &rows);
            }
        }
    }

    #[test]
    fn features_with_more_cuts_than_node_bits_keep_the_scalar_walk() {
        // 40 features leave 10 bits for a cut's index: at most 1,022 cuts a feature.
        let mut thresholds: Vec<Vec<f64>> = (0..40).map(|f| vec![f as f64]).collect();
        thresholds[3] = (0..1100).map(|i| f64::from(i as f32)).collect();
        let e = stumps(SplitRule::XgboostLess, &thresholds);
        assert!(blocked(&e).is_none());
        let rows: Vec<Vec<f64>> = (0..32)
            .map(|r| (0..40).map(|f| (r * 37 + f) as f64 % 1200.0).collect())
            .collect();
        check(&e, &rows);
    }
}
