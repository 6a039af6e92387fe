//! Flattened tree ensembles: one contiguous node array for all trees, a single-row path, a
//! cache-friendly batch path (blocks of rows per tree) and TreeSHAP.
//!
//! Two decision rules cover the supported libraries:
//! - [`SplitRule::XgboostLess`]: inputs are rounded to f32 and go left when `x < threshold`;
//!   NaN follows the node's default direction; sums accumulate in f32 (as libxgboost does);
//! - [`SplitRule::LightgbmLessEqual`]: f64 inputs go left when `x <= threshold`, with LightGBM's
//!   missing-value types (None: NaN becomes 0; Zero: |x| ≤ 1e-35 or NaN follows the default;
//!   NaN: NaN follows the default) and categorical bitset splits; sums accumulate in f64.

use crate::EngineError;
use crate::cuts::CutForest;

/// LightGBM's zero threshold for `missing_type=Zero`.
const ZERO_THRESHOLD: f64 = 1e-35;
/// Rows evaluated together per tree in the batch path.
const BLOCK_ROWS: usize = 64;
/// Deepest tree accepted (bounds TreeSHAP's path memory and rejects degenerate files).
pub const MAX_DEPTH: usize = 256;

/// How missing values are routed at a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// XGBoost: NaN follows the default direction.
    Nan,
    /// LightGBM `missing_type=None`: NaN is treated as 0.
    NoneAsZero,
    /// LightGBM `missing_type=Zero`: zero (and NaN) follows the default direction.
    Zero,
}

/// The comparison and arithmetic of the library that trained the ensemble.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitRule {
    /// XGBoost: f32 inputs, `x < t`, f32 accumulation.
    XgboostLess,
    /// LightGBM: f64 inputs, `x <= t`, f64 accumulation.
    LightgbmLessEqual,
}

/// One node. Leaves have `left == LEAF` and carry their value in `value`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Node {
    /// Threshold (split) or leaf value (leaf).
    pub value: f64,
    /// Feature index (split).
    pub feature: u32,
    /// Absolute index of the left child, or [`LEAF`].
    pub left: u32,
    /// Absolute index of the right child.
    pub right: u32,
    /// Default direction for missing values is left.
    pub default_left: bool,
    /// Missing-value routing.
    pub missing: Missing,
    /// Index into the ensemble's categorical bitsets, for a categorical split.
    pub category_set: Option<u32>,
    /// Training cover of the node (hessian sum or row count), for TreeSHAP.
    pub cover: f64,
}

/// Marks a leaf in [`Node::left`].
pub const LEAF: u32 = u32::MAX;

impl Node {
    /// A leaf of value `value` and training cover `cover`.
    pub fn leaf(value: f64, cover: f64) -> Self {
        Node {
            value,
            feature: 0,
            left: LEAF,
            right: LEAF,
            default_left: false,
            missing: Missing::NoneAsZero,
            category_set: None,
            cover,
        }
    }

    /// Whether the node is a leaf.
    pub fn is_leaf(&self) -> bool {
        self.left == LEAF
    }
}

/// How the summed margin becomes a prediction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OutputTransform {
    /// The margin itself.
    Identity,
    /// `1 / (1 + exp(-scale · margin))`.
    Sigmoid {
        /// LightGBM's `sigmoid` parameter (1 for XGBoost).
        scale: f64,
    },
    /// `exp(margin)` (Poisson).
    Exp,
}

/// Trees as a loader parsed them: [`Trees::compile`] validates them and builds the evaluation
/// layouts, so a loader never writes compiled state.
#[derive(Debug, Clone)]
pub struct Trees {
    /// Number of input features.
    pub n_features: usize,
    /// All nodes; tree `t` starts at `roots[t]`.
    pub nodes: Vec<Node>,
    /// Root node of each tree.
    pub roots: Vec<u32>,
    /// Categorical bitsets (32-bit words), addressed by `Node::category_set`.
    pub category_sets: Vec<Vec<u32>>,
    /// Margin before any tree.
    pub base_margin: f64,
    /// Decision rule and arithmetic.
    pub rule: SplitRule,
    /// Output transform.
    pub transform: OutputTransform,
    /// Divide the tree sum by the number of trees (LightGBM random forest).
    pub average_output: bool,
}

impl Trees {
    /// Validates the trees and builds every evaluation layout.
    pub fn compile(self) -> Result<Ensemble, EngineError> {
        Ensemble {
            trees: self,
            node_means: Vec::new(),
            tree_depths: Vec::new(),
            eval: Vec::new(),
            eval_roots: Vec::new(),
            plain_splits: false,
            cut_forest: None,
        }
        .compile()
    }
}

/// A validated, flattened ensemble.
#[derive(Debug, Clone)]
pub struct Ensemble {
    /// The trees as loaded.
    pub trees: Trees,
    /// Cover-weighted mean leaf value below each node (TreeSHAP's expected values); filled by
    /// [`Ensemble::compile`].
    pub node_means: Vec<f64>,
    /// Depth of each tree; filled by [`Ensemble::compile`].
    pub tree_depths: Vec<usize>,
    /// The evaluation layout (see [`EvalNode`]); filled by [`Ensemble::compile`].
    pub eval: Vec<EvalNode>,
    /// Root of each tree in `eval`.
    pub eval_roots: Vec<u32>,
    /// No split needs more than a comparison when the row has no NaN (no categorical and no
    /// zero-as-missing splits); filled by [`Ensemble::compile`].
    pub plain_splits: bool,
    /// The cut-index layout for NaN-free rows, when the splits are plain and fit it; filled by
    /// [`Ensemble::compile`].
    pub cut_forest: Option<Box<CutForest>>,
}

/// A split rule, as a type: the walks are monomorphized per rule.
trait Rule {
    fn go_right(ensemble: &Ensemble, node: &EvalNode, x: f64) -> bool;
}

/// XGBoost: NaN follows the default; otherwise right when `x >= threshold`.
struct XgboostRule;

impl Rule for XgboostRule {
    #[inline(always)]
    fn go_right(_: &Ensemble, node: &EvalNode, x: f64) -> bool {
        if x.is_nan() {
            node.packed & DEFAULT_LEFT == 0
        } else {
            x >= node.value
        }
    }
}

/// LightGBM: categorical bitsets and missing-value types; otherwise right when `x > threshold`.
struct LightgbmRule;

impl Rule for LightgbmRule {
    #[inline(always)]
    fn go_right(ensemble: &Ensemble, node: &EvalNode, x: f64) -> bool {
        if node.packed & CATEGORICAL != 0 {
            return !lightgbm_category_left(&ensemble.trees.category_sets[node.value as usize], x);
        }
        let missing = (node.packed >> MISSING_SHIFT) & 3;
        let v = if x.is_nan() && missing != MISSING_NAN {
            0.0
        } else {
            x
        };
        let to_default = (missing == MISSING_ZERO
            && (-ZERO_THRESHOLD..=ZERO_THRESHOLD).contains(&v))
            || (missing == MISSING_NAN && v.is_nan());
        if to_default {
            node.packed & DEFAULT_LEFT == 0
        } else {
            // `v` is not NaN here: NaN either went to the default or became 0.
            v > node.value
        }
    }
}

/// XGBoost on a row without NaN: right when `x >= threshold` (leaves split on the NaN padding
/// feature and stay put, since `NaN >= v` is false).
struct XgboostPlainRule;

impl Rule for XgboostPlainRule {
    #[inline(always)]
    fn go_right(_: &Ensemble, node: &EvalNode, x: f64) -> bool {
        x >= node.value
    }
}

/// LightGBM without categorical or zero-as-missing splits, on a row without NaN: right when
/// `x > threshold` (leaves stay put, as above).
struct LightgbmPlainRule;

impl Rule for LightgbmPlainRule {
    #[inline(always)]
    fn go_right(_: &Ensemble, node: &EvalNode, x: f64) -> bool {
        x > node.value
    }
}

/// Bits of [`EvalNode::packed`].
pub(crate) const FEATURE_MASK: u32 = (1 << 28) - 1;
pub(crate) const DEFAULT_LEFT: u32 = 1 << 28;
pub(crate) const MISSING_SHIFT: u32 = 29;
pub(crate) const CATEGORICAL: u32 = 1 << 31;
pub(crate) const MISSING_NONE: u32 = 0;
pub(crate) const MISSING_ZERO: u32 = 1;
pub(crate) const MISSING_NAN: u32 = 2;
/// Trees walked in lockstep by the single-row path, so their cache misses overlap.
const LANES: usize = 8;
/// Walks of trees deeper than this stop early once no lane moves (shallow trees run the fixed
/// number of steps: the check costs more than it saves).
const EARLY_EXIT_DEPTH: usize = 12;

/// A 16-byte node of the evaluation layout. Each tree is laid out breadth-first with the two
/// children of a node next to each other (right = left + 1). A leaf splits on the padding
/// feature (always NaN) with its default direction pointing at itself, so a walk can run a fixed
/// number of steps without testing for leaves.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct EvalNode {
    /// Threshold, leaf value, or category-set index (categorical split).
    pub value: f64,
    /// Feature index (low 28 bits), default-left, missing type and categorical flags.
    pub packed: u32,
    /// Index of the left child (the right child follows it); a leaf's own index.
    pub left: u32,
}

/// Rounds like libxgboost reading a float feature.
#[inline]
fn xgb_input(x: f64) -> f64 {
    (x as f32) as f64
}

impl Ensemble {
    /// Checks structure: child indices in range and inside their own tree, every node reached
    /// exactly once from its root (no cycles, no sharing), depth at most [`MAX_DEPTH`], finite
    /// thresholds and leaf values, feature indices below `n_features`.
    pub fn validate(&self) -> Result<(), EngineError> {
        let bad = |m: String| Err(EngineError::InvalidModel(m));
        let n = self.trees.nodes.len();
        if self.trees.roots.is_empty() {
            return bad("the model has no trees".into());
        }
        let mut seen = vec![false; n];
        for (t, &root) in self.trees.roots.iter().enumerate() {
            let end = self.trees.roots.get(t + 1).map_or(n, |&r| r as usize);
            let start = root as usize;
            if start >= end || end > n {
                return bad(format!("tree {t}: node range {start}..{end} is invalid"));
            }
            // Iterative walk with explicit depth: bounded by the node count, so a cycle cannot hang.
            let mut stack = vec![(start, 0usize)];
            while let Some((i, depth)) = stack.pop() {
                if i < start || i >= end {
                    return bad(format!(
                        "tree {t}: child index {i} is outside the tree ({start}..{end})"
                    ));
                }
                if seen[i] {
                    return bad(format!(
                        "tree {t}: node {} is reached twice (cycle or shared node)",
                        i - start
                    ));
                }
                seen[i] = true;
                if depth > MAX_DEPTH {
                    return bad(format!("tree {t}: deeper than {MAX_DEPTH} levels"));
                }
                let node = &self.trees.nodes[i];
                // Thresholds may be infinite (LightGBM writes `inf` to split missing values from
                // the rest); leaf values must be finite.
                if node.is_leaf() && !node.value.is_finite() {
                    return bad(format!(
                        "tree {t}: leaf {} has a non-finite value",
                        i - start
                    ));
                }
                if node.value.is_nan() {
                    return bad(format!("tree {t}: node {} has a NaN threshold", i - start));
                }
                if !node.cover.is_finite() || node.cover < 0.0 {
                    return bad(format!("tree {t}: node {} has an invalid cover", i - start));
                }
                if !node.is_leaf() {
                    if node.feature as usize >= self.trees.n_features {
                        return bad(format!(
                            "tree {t}: node {} splits on feature {} but the model has {} features",
                            i - start,
                            node.feature,
                            self.trees.n_features
                        ));
                    }
                    if let Some(c) = node.category_set
                        && c as usize >= self.trees.category_sets.len()
                    {
                        return bad(format!(
                            "tree {t}: node {} names a missing category set",
                            i - start
                        ));
                    }
                    stack.push((node.left as usize, depth + 1));
                    stack.push((node.right as usize, depth + 1));
                }
            }
            // Unreachable nodes (XGBoost's deleted nodes) are allowed: they are never evaluated.
        }
        if !self.trees.base_margin.is_finite() {
            return bad("non-finite base score".into());
        }
        Ok(())
    }

    /// Validates the ensemble and rebuilds its compiled state (explanation means, depths,
    /// evaluation layouts), e.g. after its trees were edited.
    pub fn compile(mut self) -> Result<Self, EngineError> {
        self.validate()?;
        let mut means = vec![0.0; self.trees.nodes.len()];
        let mut depths = Vec::with_capacity(self.trees.roots.len());
        for &root in &self.trees.roots {
            // Post-order walk (validated acyclic, depth-bounded) computing means and depth.
            let mut depth_of = std::collections::HashMap::new();
            let mut stack = vec![(root as usize, false)];
            while let Some((i, children_done)) = stack.pop() {
                let node = self.trees.nodes[i];
                if node.is_leaf() {
                    means[i] = node.value;
                    depth_of.insert(i, 0usize);
                } else if !children_done {
                    stack.push((i, true));
                    stack.push((node.left as usize, false));
                    stack.push((node.right as usize, false));
                } else {
                    let (l, r) = (node.left as usize, node.right as usize);
                    let (cl, cr) = (self.trees.nodes[l].cover, self.trees.nodes[r].cover);
                    means[i] = if cl + cr > 0.0 {
                        (means[l] * cl + means[r] * cr) / (cl + cr)
                    } else {
                        (means[l] + means[r]) / 2.0
                    };
                    depth_of.insert(i, 1 + depth_of[&l].max(depth_of[&r]));
                }
            }
            depths.push(depth_of[&(root as usize)]);
        }
        self.node_means = means;
        self.tree_depths = depths;
        self.build_eval_layout()?;
        self.cut_forest = CutForest::build(&self).map(Box::new);
        Ok(self)
    }

    fn build_eval_layout(&mut self) -> Result<(), EngineError> {
        if self.trees.n_features >= FEATURE_MASK as usize {
            return Err(EngineError::InvalidModel(format!(
                "{} features is too many",
                self.trees.n_features
            )));
        }
        let pad = self.trees.n_features as u32;
        let mut eval = Vec::with_capacity(self.trees.nodes.len());
        let mut roots = Vec::with_capacity(self.trees.roots.len());
        for &root in &self.trees.roots {
            let base = eval.len() as u32;
            roots.push(base);
            // Breadth-first: the slot of each node is known before it is visited.
            let mut queue = std::collections::VecDeque::from([root as usize]);
            let mut next_slot = base + 1;
            while let Some(i) = queue.pop_front() {
                let node = self.trees.nodes[i];
                let slot = eval.len() as u32;
                if node.is_leaf() {
                    eval.push(EvalNode {
                        value: node.value,
                        packed: pad | DEFAULT_LEFT | (MISSING_NAN << MISSING_SHIFT),
                        left: slot,
                    });
                } else {
                    let missing = match node.missing {
                        Missing::Nan => MISSING_NAN,
                        Missing::NoneAsZero => MISSING_NONE,
                        Missing::Zero => MISSING_ZERO,
                    };
                    let (value, categorical) = match node.category_set {
                        Some(set) => (f64::from(set), CATEGORICAL),
                        None => (node.value, 0),
                    };
                    eval.push(EvalNode {
                        value,
                        packed: node.feature
                            | if node.default_left { DEFAULT_LEFT } else { 0 }
                            | (missing << MISSING_SHIFT)
                            | categorical,
                        left: next_slot,
                    });
                    next_slot += 2;
                    queue.push_back(node.left as usize);
                    queue.push_back(node.right as usize);
                }
            }
        }
        self.plain_splits = eval.iter().all(|n| {
            n.packed & CATEGORICAL == 0 && (n.packed >> MISSING_SHIFT) & 3 != MISSING_ZERO
        });
        self.eval = eval;
        self.eval_roots = roots;
        Ok(())
    }

    /// One step of a walk in the evaluation layout: the next node index, given the value of the
    /// node's feature. Generic over the split rule so the hot loops carry no rule dispatch.
    #[inline(always)]
    fn step<R: Rule>(&self, node: &EvalNode, x: f64) -> u32 {
        node.left + R::go_right(self, node, x) as u32
    }

    /// Copies a row into `buf` as the walk reads it: rounded like libxgboost reads floats, plus
    /// the NaN padding feature that leaves split on.
    #[inline]
    fn load_row(&self, row: &[f64], buf: &mut Vec<f64>) {
        buf.clear();
        match self.trees.rule {
            SplitRule::XgboostLess => buf.extend(row.iter().map(|&x| xgb_input(x))),
            SplitRule::LightgbmLessEqual => buf.extend_from_slice(row),
        }
        buf.push(f64::NAN);
    }

    /// Number of trees.
    pub fn n_trees(&self) -> usize {
        self.trees.roots.len()
    }

    /// Which child a value goes to at a split node.
    #[inline(always)]
    fn next(&self, node: &Node, x: f64) -> u32 {
        match self.trees.rule {
            SplitRule::XgboostLess => {
                if x.is_nan() {
                    if node.default_left {
                        node.left
                    } else {
                        node.right
                    }
                } else if x < node.value {
                    node.left
                } else {
                    node.right
                }
            }
            SplitRule::LightgbmLessEqual => {
                if let Some(set) = node.category_set {
                    return if lightgbm_category_left(&self.trees.category_sets[set as usize], x) {
                        node.left
                    } else {
                        node.right
                    };
                }
                let mut v = x;
                if v.is_nan() && node.missing != Missing::Nan {
                    v = 0.0;
                }
                let to_default = match node.missing {
                    Missing::Zero => (-ZERO_THRESHOLD..=ZERO_THRESHOLD).contains(&v),
                    Missing::Nan => v.is_nan(),
                    Missing::NoneAsZero => false,
                };
                if to_default {
                    if node.default_left {
                        node.left
                    } else {
                        node.right
                    }
                } else if v <= node.value {
                    node.left
                } else {
                    node.right
                }
            }
        }
    }

    /// Rounds inputs as the training library reads them.
    fn prepare<'a>(&self, row: &'a [f64], buf: &'a mut Vec<f64>) -> &'a [f64] {
        match self.trees.rule {
            SplitRule::XgboostLess => {
                buf.clear();
                buf.extend(row.iter().map(|&x| xgb_input(x)));
                buf
            }
            SplitRule::LightgbmLessEqual => row,
        }
    }

    /// The raw margin of one row (validated width). Leaf values are added in tree order, as the
    /// native libraries do. Rows without NaN take the cut-index layout when the ensemble has one
    /// (same decisions, see [`crate::cuts`]), else a bare comparison per node when its splits
    /// are plain; others walk the full split rules.
    pub fn margin(&self, row: &[f64]) -> f64 {
        let has_nan = row.iter().any(|x| x.is_nan());
        if !has_nan
            && let Some(forest) = &self.cut_forest
            && row.len() == forest.n_features()
        {
            return match self.trees.rule {
                SplitRule::XgboostLess => forest.sum(row, self.trees.base_margin),
                SplitRule::LightgbmLessEqual => self.finish_lightgbm_sum(forest.sum(row, 0.0)),
            };
        }
        let plain = self.plain_splits && !has_nan;
        match (self.trees.rule, plain) {
            (SplitRule::XgboostLess, true) => self.margin_with::<XgboostPlainRule>(row),
            (SplitRule::XgboostLess, false) => self.margin_with::<XgboostRule>(row),
            (SplitRule::LightgbmLessEqual, true) => self.margin_with::<LightgbmPlainRule>(row),
            (SplitRule::LightgbmLessEqual, false) => self.margin_with::<LightgbmRule>(row),
        }
    }

    fn margin_with<R: Rule>(&self, row: &[f64]) -> f64 {
        let mut buf = Vec::with_capacity(self.trees.n_features + 1);
        self.load_row(row, &mut buf);
        let row = &buf[..];
        let mut sum32 = self.trees.base_margin as f32;
        let mut sum64 = 0.0f64;
        let mut idx = [0u32; LANES];
        for (group, roots) in self.eval_roots.chunks(LANES).enumerate() {
            let n = roots.len();
            idx[..n].copy_from_slice(roots);
            let depths = &self.tree_depths[group * LANES..group * LANES + n];
            let depth = depths.iter().copied().max().unwrap_or(0);
            let mut steps = 0;
            while steps < depth {
                let mut moved = false;
                for lane in idx[..n].iter_mut() {
                    let node = &self.eval[*lane as usize];
                    let next = self.step::<R>(node, row[(node.packed & FEATURE_MASK) as usize]);
                    moved |= next != *lane;
                    *lane = next;
                }
                steps += 1;
                // Deep, lopsided (LightGBM) trees: stop once every lane sits on its leaf.
                if depth > EARLY_EXIT_DEPTH && !moved {
                    break;
                }
            }
            for &leaf in &idx[..n] {
                let v = self.eval[leaf as usize].value;
                match self.trees.rule {
                    SplitRule::XgboostLess => sum32 += v as f32,
                    SplitRule::LightgbmLessEqual => sum64 += v,
                }
            }
        }
        match self.trees.rule {
            SplitRule::XgboostLess => sum32 as f64,
            SplitRule::LightgbmLessEqual => self.finish_lightgbm_sum(sum64),
        }
    }

    fn finish_lightgbm_sum(&self, sum: f64) -> f64 {
        let sum = if self.trees.average_output {
            sum / self.n_trees() as f64
        } else {
            sum
        };
        sum + self.trees.base_margin
    }

    /// Applies the output transform to a margin.
    pub fn transform(&self, margin: f64) -> f64 {
        match (self.trees.transform, self.trees.rule) {
            (OutputTransform::Identity, _) => margin,
            (OutputTransform::Sigmoid { .. }, SplitRule::XgboostLess) => {
                let m = margin as f32;
                (1.0f32 / (1.0f32 + (-m).exp())) as f64
            }
            (OutputTransform::Sigmoid { scale }, SplitRule::LightgbmLessEqual) => {
                1.0 / (1.0 + (-scale * margin).exp())
            }
            (OutputTransform::Exp, SplitRule::XgboostLess) => ((margin as f32).exp()) as f64,
            (OutputTransform::Exp, SplitRule::LightgbmLessEqual) => margin.exp(),
        }
    }

    /// Margins of many rows (row-major `values`, `n_features` per row). With a cut-index layout,
    /// row after row as [`Ensemble::margin`] (its nodes are small enough to stay in cache);
    /// otherwise in blocks of rows that walk each tree in lockstep, so the tree's top levels stay
    /// in cache and the rows' cache misses overlap (a bare comparison per node when the splits
    /// are plain and no value is NaN).
    pub fn margins(&self, values: &[f64]) -> Vec<f64> {
        if self.cut_forest.is_some() {
            return values
                .chunks_exact(self.trees.n_features)
                .map(|row| self.margin(row))
                .collect();
        }
        let plain = self.plain_splits && !values.iter().any(|x| x.is_nan());
        match (self.trees.rule, plain) {
            (SplitRule::XgboostLess, true) => self.margins_with::<XgboostPlainRule>(values),
            (SplitRule::XgboostLess, false) => self.margins_with::<XgboostRule>(values),
            (SplitRule::LightgbmLessEqual, true) => self.margins_with::<LightgbmPlainRule>(values),
            (SplitRule::LightgbmLessEqual, false) => self.margins_with::<LightgbmRule>(values),
        }
    }

    fn margins_with<R: Rule>(&self, values: &[f64]) -> Vec<f64> {
        let width = self.trees.n_features;
        let rows = values.len().checked_div(width).unwrap_or(0);
        let padded = width + 1;
        let mut out = vec![0.0f64; rows];
        let mut block = Vec::with_capacity(BLOCK_ROWS * padded);
        let mut row_buf = Vec::with_capacity(padded);
        let mut idx = [0u32; BLOCK_ROWS];
        let mut acc32 = [0f32; BLOCK_ROWS];
        let mut acc64 = [0f64; BLOCK_ROWS];
        for block_start in (0..rows).step_by(BLOCK_ROWS) {
            let n = BLOCK_ROWS.min(rows - block_start);
            block.clear();
            for r in 0..n {
                let i = block_start + r;
                self.load_row(&values[i * width..(i + 1) * width], &mut row_buf);
                block.extend_from_slice(&row_buf);
            }
            acc32[..n].fill(self.trees.base_margin as f32);
            acc64[..n].fill(0.0);
            for (t, &root) in self.eval_roots.iter().enumerate() {
                idx[..n].fill(root);
                let depth = self.tree_depths[t];
                for _ in 0..depth {
                    let mut moved = false;
                    for (r, lane) in idx[..n].iter_mut().enumerate() {
                        let node = &self.eval[*lane as usize];
                        let next = self.step::<R>(
                            node,
                            block[r * padded + (node.packed & FEATURE_MASK) as usize],
                        );
                        moved |= next != *lane;
                        *lane = next;
                    }
                    if depth > EARLY_EXIT_DEPTH && !moved {
                        break;
                    }
                }
                match self.trees.rule {
                    SplitRule::XgboostLess => {
                        for (a, &leaf) in acc32[..n].iter_mut().zip(&idx[..n]) {
                            *a += self.eval[leaf as usize].value as f32;
                        }
                    }
                    SplitRule::LightgbmLessEqual => {
                        for (a, &leaf) in acc64[..n].iter_mut().zip(&idx[..n]) {
                            *a += self.eval[leaf as usize].value;
                        }
                    }
                }
            }
            for r in 0..n {
                out[block_start + r] = match self.trees.rule {
                    SplitRule::XgboostLess => acc32[r] as f64,
                    SplitRule::LightgbmLessEqual => self.finish_lightgbm_sum(acc64[r]),
                };
            }
        }
        out
    }

    /// TreeSHAP feature contributions of one row in margin space: `n_features` values followed
    /// by the bias (expected margin); they sum to the row's margin.
    pub fn contributions(&self, row: &[f64]) -> Vec<f64> {
        let mut buf = Vec::new();
        let row = self.prepare(row, &mut buf);
        let mut phi = vec![0.0f64; self.trees.n_features + 1];
        let scale = if self.trees.average_output {
            1.0 / self.n_trees() as f64
        } else {
            1.0
        };
        let mut tree_phi = vec![0.0f64; self.trees.n_features + 1];
        for tree in 0..self.trees.roots.len() {
            tree_phi.fill(0.0);
            self.tree_contributions(tree, row, &mut tree_phi);
            for (p, t) in phi.iter_mut().zip(&tree_phi) {
                *p += t * scale;
            }
        }
        phi[self.trees.n_features] += self.trees.base_margin;
        phi
    }

    fn tree_contributions(&self, tree: usize, row: &[f64], phi: &mut [f64]) {
        let root = self.trees.roots[tree] as usize;
        phi[self.trees.n_features] += self.node_means[root];
        if self.trees.nodes[root].is_leaf() {
            return;
        }
        let max_depth = self.tree_depths[tree] + 2;
        let mut path = vec![PathElement::default(); max_depth * (max_depth + 1) / 2];
        self.tree_shap(row, phi, root, 0, &mut path, 0, 1.0, 1.0, -1);
    }

    /// Path-dependent TreeSHAP (Lundberg et al., Algorithm 2), as in XGBoost's and LightGBM's
    /// `TreeShap`: `path[offset..]` holds the parent's unique path; this call works on the next
    /// segment.
    #[allow(clippy::too_many_arguments)]
    fn tree_shap(
        &self,
        row: &[f64],
        phi: &mut [f64],
        node_index: usize,
        mut unique_depth: usize,
        path: &mut [PathElement],
        offset: usize,
        parent_zero_fraction: f64,
        parent_one_fraction: f64,
        parent_feature: i64,
    ) {
        let (parent, rest) = path.split_at_mut(offset + unique_depth + 1);
        let parent = &parent[offset..];
        let unique = &mut rest[..];
        unique[..=unique_depth].copy_from_slice(parent);
        extend_path(
            unique,
            unique_depth,
            parent_zero_fraction,
            parent_one_fraction,
            parent_feature,
        );
        let node = &self.trees.nodes[node_index];
        if node.is_leaf() {
            for i in 1..=unique_depth {
                let w = unwound_path_sum(unique, unique_depth, i);
                let el = unique[i];
                phi[el.feature as usize] += w * (el.one_fraction - el.zero_fraction) * node.value;
            }
            return;
        }
        let x = row[node.feature as usize];
        let hot = self.next(node, x) as usize;
        let cold = if hot == node.left as usize {
            node.right as usize
        } else {
            node.left as usize
        };
        let w = node.cover;
        let (hot_zero, cold_zero) = if w > 0.0 {
            (
                self.trees.nodes[hot].cover / w,
                self.trees.nodes[cold].cover / w,
            )
        } else {
            (0.5, 0.5)
        };
        let mut incoming_zero = 1.0;
        let mut incoming_one = 1.0;
        let split = node.feature as i64;
        if let Some(path_index) = (0..=unique_depth).find(|&k| unique[k].feature == split) {
            incoming_zero = unique[path_index].zero_fraction;
            incoming_one = unique[path_index].one_fraction;
            unwind_path(unique, unique_depth, path_index);
            unique_depth -= 1;
        }
        // This node's segment starts right after its parent's; the children's after this one.
        let child_offset = offset + parent.len();
        self.tree_shap(
            row,
            phi,
            hot,
            unique_depth + 1,
            path,
            child_offset,
            hot_zero * incoming_zero,
            incoming_one,
            split,
        );
        self.tree_shap(
            row,
            phi,
            cold,
            unique_depth + 1,
            path,
            child_offset,
            cold_zero * incoming_zero,
            0.0,
            split,
        );
    }
}

/// LightGBM's categorical decision: NaN and negatives go right; otherwise left when the integer
/// value's bit is set.
fn lightgbm_category_left(bits: &[u32], x: f64) -> bool {
    if x.is_nan() || x < 0.0 {
        return false;
    }
    let v = x as i64;
    let word = (v / 32) as usize;
    word < bits.len() && (bits[word] >> (v % 32)) & 1 == 1
}

#[derive(Debug, Clone, Copy, Default)]
struct PathElement {
    feature: i64,
    zero_fraction: f64,
    one_fraction: f64,
    pweight: f64,
}

fn extend_path(
    path: &mut [PathElement],
    depth: usize,
    zero_fraction: f64,
    one_fraction: f64,
    feature: i64,
) {
    path[depth] = PathElement {
        feature,
        zero_fraction,
        one_fraction,
        pweight: if depth == 0 { 1.0 } else { 0.0 },
    };
    for i in (0..depth).rev() {
        path[i + 1].pweight += one_fraction * path[i].pweight * (i + 1) as f64 / (depth + 1) as f64;
        path[i].pweight = zero_fraction * path[i].pweight * (depth - i) as f64 / (depth + 1) as f64;
    }
}

fn unwind_path(path: &mut [PathElement], depth: usize, path_index: usize) {
    let one = path[path_index].one_fraction;
    let zero = path[path_index].zero_fraction;
    let mut next_one_portion = path[depth].pweight;
    for i in (0..depth).rev() {
        if one != 0.0 {
            let tmp = path[i].pweight;
            path[i].pweight = next_one_portion * (depth + 1) as f64 / ((i + 1) as f64 * one);
            next_one_portion =
                tmp - path[i].pweight * zero * (depth - i) as f64 / (depth + 1) as f64;
        } else {
            path[i].pweight = path[i].pweight * (depth + 1) as f64 / (zero * (depth - i) as f64);
        }
    }
    for i in path_index..depth {
        path[i].feature = path[i + 1].feature;
        path[i].zero_fraction = path[i + 1].zero_fraction;
        path[i].one_fraction = path[i + 1].one_fraction;
    }
}

fn unwound_path_sum(path: &[PathElement], depth: usize, path_index: usize) -> f64 {
    let one = path[path_index].one_fraction;
    let zero = path[path_index].zero_fraction;
    let mut next_one_portion = path[depth].pweight;
    let mut total = 0.0;
    for i in (0..depth).rev() {
        if one != 0.0 {
            let tmp = next_one_portion * (depth + 1) as f64 / ((i + 1) as f64 * one);
            total += tmp;
            next_one_portion =
                path[i].pweight - tmp * zero * ((depth - i) as f64 / (depth + 1) as f64);
        } else {
            total += (path[i].pweight / zero) / ((depth - i) as f64 / (depth + 1) as f64);
        }
    }
    total
}
