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

/// A validated, flattened ensemble.
#[derive(Debug, Clone)]
pub struct Ensemble {
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
    /// Cover-weighted mean leaf value below each node (TreeSHAP's expected values); filled by
    /// [`Ensemble::compile`].
    pub node_means: Vec<f64>,
    /// Depth of each tree; filled by [`Ensemble::compile`].
    pub tree_depths: Vec<usize>,
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
        let n = self.nodes.len();
        if self.roots.is_empty() {
            return bad("the model has no trees".into());
        }
        let mut seen = vec![false; n];
        for (t, &root) in self.roots.iter().enumerate() {
            let end = self.roots.get(t + 1).map_or(n, |&r| r as usize);
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
                let node = &self.nodes[i];
                if !node.value.is_finite() {
                    return bad(format!(
                        "tree {t}: node {} has a non-finite threshold or leaf value",
                        i - start
                    ));
                }
                if !node.cover.is_finite() || node.cover < 0.0 {
                    return bad(format!("tree {t}: node {} has an invalid cover", i - start));
                }
                if !node.is_leaf() {
                    if node.feature as usize >= self.n_features {
                        return bad(format!(
                            "tree {t}: node {} splits on feature {} but the model has {} features",
                            i - start,
                            node.feature,
                            self.n_features
                        ));
                    }
                    if let Some(c) = node.category_set
                        && c as usize >= self.category_sets.len()
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
        if !self.base_margin.is_finite() {
            return bad("non-finite base score".into());
        }
        Ok(())
    }

    /// Validates the ensemble and precomputes what explanations need.
    pub fn compile(mut self) -> Result<Self, EngineError> {
        self.validate()?;
        let mut means = vec![0.0; self.nodes.len()];
        let mut depths = Vec::with_capacity(self.roots.len());
        for &root in &self.roots {
            // Post-order walk (validated acyclic, depth-bounded) computing means and depth.
            let mut depth_of = std::collections::HashMap::new();
            let mut stack = vec![(root as usize, false)];
            while let Some((i, children_done)) = stack.pop() {
                let node = self.nodes[i];
                if node.is_leaf() {
                    means[i] = node.value;
                    depth_of.insert(i, 0usize);
                } else if !children_done {
                    stack.push((i, true));
                    stack.push((node.left as usize, false));
                    stack.push((node.right as usize, false));
                } else {
                    let (l, r) = (node.left as usize, node.right as usize);
                    let (cl, cr) = (self.nodes[l].cover, self.nodes[r].cover);
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
        Ok(self)
    }

    /// Number of trees.
    pub fn n_trees(&self) -> usize {
        self.roots.len()
    }

    /// Which child a value goes to at a split node.
    #[inline(always)]
    fn next(&self, node: &Node, x: f64) -> u32 {
        match self.rule {
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
                    return if lightgbm_category_left(&self.category_sets[set as usize], x) {
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

    /// The leaf a row reaches in the tree rooted at `root`.
    #[inline(always)]
    fn leaf(&self, root: u32, row: &[f64]) -> &Node {
        let mut node = &self.nodes[root as usize];
        while !node.is_leaf() {
            let x = row[node.feature as usize];
            node = &self.nodes[self.next(node, x) as usize];
        }
        node
    }

    /// Rounds inputs as the training library reads them.
    fn prepare<'a>(&self, row: &'a [f64], buf: &'a mut Vec<f64>) -> &'a [f64] {
        match self.rule {
            SplitRule::XgboostLess => {
                buf.clear();
                buf.extend(row.iter().map(|&x| xgb_input(x)));
                buf
            }
            SplitRule::LightgbmLessEqual => row,
        }
    }

    /// The raw margin of one row (validated width).
    pub fn margin(&self, row: &[f64]) -> f64 {
        let mut buf = Vec::new();
        let row = self.prepare(row, &mut buf);
        match self.rule {
            SplitRule::XgboostLess => {
                let mut sum = self.base_margin as f32;
                for &root in &self.roots {
                    sum += self.leaf(root, row).value as f32;
                }
                sum as f64
            }
            SplitRule::LightgbmLessEqual => {
                let mut sum = 0.0f64;
                for &root in &self.roots {
                    sum += self.leaf(root, row).value;
                }
                self.finish_lightgbm_sum(sum)
            }
        }
    }

    fn finish_lightgbm_sum(&self, sum: f64) -> f64 {
        let sum = if self.average_output {
            sum / self.n_trees() as f64
        } else {
            sum
        };
        sum + self.base_margin
    }

    /// Applies the output transform to a margin.
    pub fn transform(&self, margin: f64) -> f64 {
        match (self.transform, self.rule) {
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

    /// Margins of many rows (row-major `values`, `n_features` per row), evaluated in blocks of
    /// rows per tree so a tree's nodes stay in cache while a block walks it.
    pub fn margins(&self, values: &[f64]) -> Vec<f64> {
        let width = self.n_features;
        let rows = if width == 0 { 0 } else { values.len() / width };
        let prepared: Vec<f64>;
        let values = match self.rule {
            SplitRule::XgboostLess => {
                prepared = values.iter().map(|&x| xgb_input(x)).collect();
                &prepared[..]
            }
            SplitRule::LightgbmLessEqual => values,
        };
        let mut out = vec![0.0f64; rows];
        let mut acc32 = vec![self.base_margin as f32; BLOCK_ROWS];
        for block_start in (0..rows).step_by(BLOCK_ROWS) {
            let block_end = (block_start + BLOCK_ROWS).min(rows);
            let block = &values[block_start * width..block_end * width];
            let n = block_end - block_start;
            match self.rule {
                SplitRule::XgboostLess => {
                    acc32[..n].fill(self.base_margin as f32);
                    for &root in &self.roots {
                        for (r, acc) in acc32[..n].iter_mut().enumerate() {
                            *acc +=
                                self.leaf(root, &block[r * width..(r + 1) * width]).value as f32;
                        }
                    }
                    for (o, a) in out[block_start..block_end].iter_mut().zip(&acc32[..n]) {
                        *o = *a as f64;
                    }
                }
                SplitRule::LightgbmLessEqual => {
                    let acc = &mut out[block_start..block_end];
                    for &root in &self.roots {
                        for (r, a) in acc.iter_mut().enumerate() {
                            *a += self.leaf(root, &block[r * width..(r + 1) * width]).value;
                        }
                    }
                    for a in acc.iter_mut() {
                        *a = self.finish_lightgbm_sum(*a);
                    }
                }
            }
        }
        out
    }

    /// TreeSHAP feature contributions of one row in margin space: `n_features` values followed
    /// by the bias (expected margin); they sum to the row's margin.
    pub fn contributions(&self, row: &[f64]) -> Vec<f64> {
        let mut buf = Vec::new();
        let row = self.prepare(row, &mut buf);
        let mut phi = vec![0.0f64; self.n_features + 1];
        let scale = if self.average_output {
            1.0 / self.n_trees() as f64
        } else {
            1.0
        };
        let mut tree_phi = vec![0.0f64; self.n_features + 1];
        for tree in 0..self.roots.len() {
            tree_phi.fill(0.0);
            self.tree_contributions(tree, row, &mut tree_phi);
            for (p, t) in phi.iter_mut().zip(&tree_phi) {
                *p += t * scale;
            }
        }
        phi[self.n_features] += self.base_margin;
        phi
    }

    fn tree_contributions(&self, tree: usize, row: &[f64], phi: &mut [f64]) {
        let root = self.roots[tree] as usize;
        phi[self.n_features] += self.node_means[root];
        if self.nodes[root].is_leaf() {
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
        let node = &self.nodes[node_index];
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
            (self.nodes[hot].cover / w, self.nodes[cold].cover / w)
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
