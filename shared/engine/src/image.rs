//! The engine image: a compiled tree ensemble written as one binary file beside the native model
//! in the bundle, so that serving loads it with bounds-checked copies instead of parsing and
//! compiling the native file (a LightGBM text model, an XGBoost JSON).
//!
//! Layout (little-endian throughout):
//! - header: the magic `MLOPSENG`, the format version, the layout signature (the engine's layout
//!   constants; an image from another layout is [`ImageError::Stale`] and is compiled afresh),
//!   the SHA-256 of the native model file it was compiled from and the SHA-256 of the body;
//! - body: sections, each a tag, an element width and a count followed by the elements: the
//!   scalars, the evaluation nodes and their covers, the tree roots, the categorical bitsets and,
//!   when the ensemble has one, the cut-index layout (cuts, groups, nodes and leaf values).
//!
//! The layout is portable: the AVX-512 blocks are derived from the cut layout when the image is
//! loaded on a CPU that has AVX-512, and the scalar walk serves every other CPU.
//!
//! Loading trusts nothing in the bytes: every count is checked against the bytes left before
//! anything is allocated, the trees rebuilt from the evaluation nodes go through the same
//! validation as a native model (child ranges, no cycles or shared nodes, depth, feature
//! indices, category sets), the explanation means and depths are recomputed, and every index of
//! the cut layout is checked against the arrays it addresses. A bad image is an
//! [`ImageError`], never a panic; callers fall back to the native file.

use mlops_domain::artifact::ModelKind;

use crate::EngineError;
use crate::cuts::CutForest;
use crate::tree::{
    CATEGORICAL, DEFAULT_LEFT, Ensemble, EvalNode, FEATURE_MASK, MAX_DEPTH, MISSING_NAN,
    MISSING_NONE, MISSING_SHIFT, MISSING_ZERO, Missing, Node, OutputTransform, SplitRule, Trees,
};

/// File name of this engine's images inside a bundle: `engine-HASH.img`, with HASH naming the
/// format and layout, so an engine with another layout looks for (and `mlops registry compile`
/// writes) its own image beside the old one, which stays immutable.
pub fn file_name() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        let id = sha256(format!("{FORMAT_VERSION} {}", layout_signature()).as_bytes());
        format!("engine-{}.img", &hex(&id)[..12])
    })
}
/// Version of the container format (header and sections).
pub const FORMAT_VERSION: u32 = 1;
const MAGIC: &[u8; 8] = b"MLOPSENG";
/// Most bytes of the layout signature.
const MAX_SIGNATURE: usize = 256;

/// Whether models of `kind` have engine images: tree ensembles. Linear models and MLPs
/// (safetensors) load from their native file as fast.
pub fn has_image(kind: ModelKind) -> bool {
    matches!(kind, ModelKind::Xgboost | ModelKind::Lightgbm)
}

/// Why an image was not used.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Written by an engine of another format or layout: compile the native file instead.
    #[error("engine image is stale: {0}")]
    Stale(String),
    /// Compiled from another model file than the bundle's.
    #[error(
        "engine image was compiled from model sha256 {found}, but the bundle's model is {expected}"
    )]
    OtherModel {
        /// The bundle's model hash.
        expected: String,
        /// The image's.
        found: String,
    },
    /// Truncated, altered or hostile bytes.
    #[error("engine image is corrupt: {0}")]
    Corrupt(String),
}

impl ImageError {
    /// Whether the image is merely old (expected after an engine upgrade) rather than damaged.
    pub fn is_stale(&self) -> bool {
        matches!(self, ImageError::Stale(_))
    }
}

fn corrupt(message: impl Into<String>) -> ImageError {
    ImageError::Corrupt(message.into())
}

/// The layout this engine writes and reads: every constant the image's arrays depend on.
pub fn layout_signature() -> String {
    format!(
        "trees v1; eval nodes 16 B; {}; little-endian; portable (AVX-512 blocks derived at load)",
        CutForest::layout_signature()
    )
}

/// A fixed-width little-endian element of a section.
pub(crate) trait Plain: Sized {
    const WIDTH: usize;
    fn put(&self, out: &mut Vec<u8>);
    fn get(bytes: &[u8]) -> Self;
}

macro_rules! plain_number {
    ($($t:ty),*) => {$(
        impl Plain for $t {
            const WIDTH: usize = std::mem::size_of::<$t>();
            fn put(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            #[inline(always)]
            fn get(bytes: &[u8]) -> Self {
                <$t>::from_le_bytes(bytes.try_into().expect("width checked by the reader"))
            }
        }
    )*};
}
plain_number!(u16, u32, u64, f32, f64);

impl Plain for EvalNode {
    const WIDTH: usize = 16;
    fn put(&self, out: &mut Vec<u8>) {
        self.value.put(out);
        self.packed.put(out);
        self.left.put(out);
    }
    #[inline(always)]
    fn get(bytes: &[u8]) -> Self {
        EvalNode {
            value: f64::get(&bytes[..8]),
            packed: u32::get(&bytes[8..12]),
            left: u32::get(&bytes[12..16]),
        }
    }
}

impl<const N: usize> Plain for [u32; N] {
    const WIDTH: usize = 4 * N;
    fn put(&self, out: &mut Vec<u8>) {
        self.iter().for_each(|x| x.put(out));
    }
    fn get(bytes: &[u8]) -> Self {
        std::array::from_fn(|i| u32::get(&bytes[4 * i..4 * i + 4]))
    }
}

/// Section tags, in the order they are written.
pub(crate) mod tag {
    pub const SCALARS: u32 = 1;
    pub const EVAL: u32 = 2;
    pub const ROOTS: u32 = 3;
    pub const COVERS: u32 = 4;
    pub const CATEGORY_ENDS: u32 = 5;
    pub const CATEGORY_WORDS: u32 = 6;
    pub const CUTS: u32 = 10;
    pub const CUT_COUNTS: u32 = 11;
    pub const GROUPS: u32 = 12;
    pub const COMPLETE_NODES: u32 = 13;
    pub const EXPLICIT_NODES: u32 = 14;
    pub const COMPLETE_LEAVES: u32 = 15;
    pub const EXPLICIT_LEAVES: u32 = 16;
}

/// Appends sections to a body.
#[derive(Default)]
pub(crate) struct Writer {
    body: Vec<u8>,
}

impl Writer {
    pub(crate) fn section<T: Plain>(&mut self, tag: u32, items: &[T]) {
        tag.put(&mut self.body);
        (T::WIDTH as u32).put(&mut self.body);
        (items.len() as u64).put(&mut self.body);
        self.body.reserve(items.len() * T::WIDTH);
        items.iter().for_each(|x| x.put(&mut self.body));
        while !self.body.len().is_multiple_of(8) {
            self.body.push(0);
        }
    }
}

/// Reads sections in order, checking each tag, width and count against the bytes left.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], ImageError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| corrupt(format!("truncated in {what}")))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    /// The next section, which must be `tag` with elements of `T`.
    pub(crate) fn section<T: Plain>(&mut self, tag: u32, what: &str) -> Result<Vec<T>, ImageError> {
        let found = u32::get(self.take(4, what)?);
        if found != tag {
            return Err(corrupt(format!(
                "expected section {tag} ({what}), found section {found}"
            )));
        }
        let width = u32::get(self.take(4, what)?) as usize;
        if width != T::WIDTH {
            return Err(corrupt(format!(
                "{what}: elements of {width} bytes, expected {}",
                T::WIDTH
            )));
        }
        let count = u64::get(self.take(8, what)?);
        let len = usize::try_from(count)
            .ok()
            .and_then(|c| c.checked_mul(width))
            .ok_or_else(|| corrupt(format!("{what}: {count} elements is too many")))?;
        let raw = self.take(len, what)?;
        let items = raw.chunks_exact(width).map(T::get).collect();
        self.take((8 - len % 8) % 8, what)?;
        Ok(items)
    }

    fn finish(&self) -> Result<(), ImageError> {
        if self.at == self.bytes.len() {
            Ok(())
        } else {
            Err(corrupt(format!(
                "{} bytes after the last section",
                self.bytes.len() - self.at
            )))
        }
    }
}

/// Header fields after the magic.
struct Header<'a> {
    source_sha256: [u8; 32],
    body_sha256: [u8; 32],
    body: &'a [u8],
}

fn read_header(bytes: &[u8]) -> Result<Header<'_>, ImageError> {
    let mut r = Reader { bytes, at: 0 };
    if r.take(8, "the header").ok() != Some(MAGIC.as_slice()) {
        return Err(corrupt("not an engine image (no MLOPSENG magic)"));
    }
    let format = u32::get(r.take(4, "the header")?);
    if format != FORMAT_VERSION {
        return Err(ImageError::Stale(format!(
            "format {format}; this engine reads format {FORMAT_VERSION}"
        )));
    }
    let signature_len = u32::get(r.take(4, "the header")?) as usize;
    if signature_len > MAX_SIGNATURE {
        return Err(corrupt("layout signature too long"));
    }
    let signature = String::from_utf8_lossy(r.take(signature_len, "the header")?).into_owned();
    if signature != layout_signature() {
        return Err(ImageError::Stale(format!(
            "laid out as '{signature}'; this engine lays out '{}'",
            layout_signature()
        )));
    }
    let source_sha256 = r.take(32, "the header")?.try_into().expect("32 bytes");
    let body_sha256 = r.take(32, "the header")?.try_into().expect("32 bytes");
    let body_len = u64::get(r.take(8, "the header")?);
    let body = r.take(
        usize::try_from(body_len).map_err(|_| corrupt("body too long"))?,
        "the body",
    )?;
    r.finish()?;
    Ok(Header {
        source_sha256,
        body_sha256,
        body,
    })
}

/// The hex SHA-256 of the native model file an image says it was compiled from (`None` when the
/// bytes are not an image of this format and layout).
pub fn source_sha256(bytes: &[u8]) -> Option<String> {
    read_header(bytes).ok().map(|h| hex(&h.source_sha256))
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

fn hex(bytes: &[u8; 32]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes the image of a compiled ensemble, compiled from the native model file whose hex
/// SHA-256 is `source_sha256`.
fn write(ensemble: &Ensemble, source_sha256: &str) -> Vec<u8> {
    let mut w = Writer::default();
    write_trees(ensemble, &mut w);
    if let Some(forest) = &ensemble.cut_forest {
        forest.write_image(&mut w);
    }
    let signature = layout_signature();
    let mut out = Vec::with_capacity(w.body.len() + 128 + signature.len());
    out.extend_from_slice(MAGIC);
    FORMAT_VERSION.put(&mut out);
    (signature.len() as u32).put(&mut out);
    out.extend_from_slice(signature.as_bytes());
    out.extend_from_slice(&unhex(source_sha256));
    out.extend_from_slice(&sha256(&w.body));
    (w.body.len() as u64).put(&mut out);
    out.extend_from_slice(&w.body);
    out
}

/// The 32 bytes of a hex SHA-256 (zeros for anything else, which then matches no model).
fn unhex(text: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    if text.len() == 64 {
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap_or(0);
        }
    }
    out
}

/// How far to trust the bytes' integrity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Integrity {
    /// The caller verified the whole file against a hash it trusts (the bundle manifest lists
    /// the image): the body hash is not computed again.
    Verified,
    /// The image is not listed in the manifest (added to an existing version by `mlops registry
    /// compile`): the body must match the hash in its header.
    CheckBody,
}

/// Loads an image compiled from the native model whose hex SHA-256 is `source_sha256`.
pub fn load(
    bytes: &[u8],
    source_sha256: &str,
    integrity: Integrity,
) -> Result<Ensemble, ImageError> {
    let header = read_header(bytes)?;
    if header.source_sha256 != unhex(source_sha256) {
        return Err(ImageError::OtherModel {
            expected: source_sha256.into(),
            found: hex(&header.source_sha256),
        });
    }
    if integrity == Integrity::CheckBody && sha256(header.body) != header.body_sha256 {
        return Err(corrupt("the body does not match its SHA-256"));
    }
    let mut r = Reader {
        bytes: header.body,
        at: 0,
    };
    let (mut ensemble, has_forest) = read_trees(&mut r)?;
    if has_forest {
        let forest = CutForest::read_image(&mut r, &ensemble)?;
        ensemble.cut_forest = Some(Box::new(forest));
    }
    r.finish()?;
    Ok(ensemble)
}

/// Scalars, in order.
const SCALARS: usize = 8;

fn write_trees(e: &Ensemble, w: &mut Writer) {
    let t = &e.trees;
    let (transform, scale) = match t.transform {
        OutputTransform::Identity => (0, 0.0),
        OutputTransform::Sigmoid { scale } => (1, scale),
        OutputTransform::Exp => (2, 0.0),
    };
    let scalars: [u64; SCALARS] = [
        t.n_features as u64,
        match t.rule {
            SplitRule::XgboostLess => 0,
            SplitRule::LightgbmLessEqual => 1,
        },
        transform,
        scale.to_bits(),
        u64::from(t.average_output),
        t.base_margin.to_bits(),
        u64::from(e.cut_forest.is_some()),
        0,
    ];
    w.section(tag::SCALARS, &scalars);
    w.section(tag::EVAL, &e.eval);
    w.section(tag::ROOTS, &e.eval_roots);
    // Covers in evaluation order: the BFS walk that built `eval`, replayed.
    let mut covers = Vec::with_capacity(e.eval.len());
    for &root in &t.roots {
        let mut queue = std::collections::VecDeque::from([root as usize]);
        while let Some(i) = queue.pop_front() {
            let node = &t.nodes[i];
            covers.push(node.cover);
            if !node.is_leaf() {
                queue.push_back(node.left as usize);
                queue.push_back(node.right as usize);
            }
        }
    }
    w.section(tag::COVERS, &covers);
    let mut ends = Vec::with_capacity(t.category_sets.len());
    let mut words = Vec::new();
    for set in &t.category_sets {
        words.extend_from_slice(set);
        ends.push(words.len() as u32);
    }
    w.section(tag::CATEGORY_ENDS, &ends);
    w.section(tag::CATEGORY_WORDS, &words);
}

fn read_trees(r: &mut Reader) -> Result<(Ensemble, bool), ImageError> {
    let scalars: Vec<u64> = r.section(tag::SCALARS, "scalars")?;
    let [
        n_features,
        rule,
        transform,
        scale,
        average,
        base,
        has_forest,
        _,
    ]: [u64; SCALARS] = scalars
        .try_into()
        .map_err(|_| corrupt(format!("expected {SCALARS} scalars")))?;
    let n_features = usize::try_from(n_features)
        .ok()
        .filter(|&n| n > 0 && n < FEATURE_MASK as usize)
        .ok_or_else(|| corrupt(format!("{n_features} features")))?;
    let rule = match rule {
        0 => SplitRule::XgboostLess,
        1 => SplitRule::LightgbmLessEqual,
        other => return Err(corrupt(format!("unknown split rule {other}"))),
    };
    let transform = match transform {
        0 => OutputTransform::Identity,
        1 => OutputTransform::Sigmoid {
            scale: f64::from_bits(scale),
        },
        2 => OutputTransform::Exp,
        other => return Err(corrupt(format!("unknown output transform {other}"))),
    };
    let eval: Vec<EvalNode> = r.section(tag::EVAL, "evaluation nodes")?;
    let roots: Vec<u32> = r.section(tag::ROOTS, "tree roots")?;
    let covers: Vec<f64> = r.section(tag::COVERS, "covers")?;
    let ends: Vec<u32> = r.section(tag::CATEGORY_ENDS, "category sets")?;
    let words: Vec<u32> = r.section(tag::CATEGORY_WORDS, "category words")?;
    if covers.len() != eval.len() {
        return Err(corrupt(format!(
            "{} covers for {} nodes",
            covers.len(),
            eval.len()
        )));
    }
    let mut category_sets = Vec::with_capacity(ends.len());
    let mut start = 0usize;
    for &end in &ends {
        let end = end as usize;
        if end < start || end > words.len() {
            return Err(corrupt("category set bounds out of order"));
        }
        category_sets.push(words[start..end].to_vec());
        start = end;
    }
    let base_margin = f64::from_bits(base);
    if !base_margin.is_finite() {
        return Err(corrupt("non-finite base score"));
    }
    let (nodes, tree_depths) = nodes_of(&eval, &roots, &covers, n_features, category_sets.len())?;
    let node_means = node_means(&nodes);
    let plain_splits = eval
        .iter()
        .all(|n| n.packed & CATEGORICAL == 0 && (n.packed >> MISSING_SHIFT) & 3 != MISSING_ZERO);
    let ensemble = Ensemble {
        trees: Trees {
            n_features,
            nodes,
            roots: roots.clone(),
            category_sets,
            base_margin,
            rule,
            transform,
            average_output: average == 1,
        },
        node_means,
        tree_depths,
        eval,
        eval_roots: roots,
        plain_splits,
        cut_forest: None,
    };
    debug_assert!(
        ensemble.validate().is_ok(),
        "the checks above imply validate's"
    );
    Ok((ensemble, has_forest == 1))
}

/// The trees behind breadth-first evaluation nodes, checked in one pass with what
/// [`Ensemble::validate`] checks of a native model, for this layout: trees lie one after another
/// from their roots; a split's children are `left` and `left + 1`, after it and inside its tree;
/// every node but a root is the child of exactly one split (so each tree is a tree, all of it
/// reachable); a leaf points at itself and splits on the padding feature; depth, feature indices,
/// category sets, thresholds, leaf values and covers as for a native model.
fn nodes_of(
    eval: &[EvalNode],
    roots: &[u32],
    covers: &[f64],
    n_features: usize,
    category_sets: usize,
) -> Result<(Vec<Node>, Vec<usize>), ImageError> {
    let bad = |i: usize, m: &str| Err(corrupt(format!("node {i}: {m}")));
    if roots.is_empty() {
        return Err(corrupt("no trees"));
    }
    if roots[0] != 0 || roots.windows(2).any(|w| w[0] >= w[1]) {
        return Err(corrupt("tree roots out of order"));
    }
    if roots[roots.len() - 1] as usize >= eval.len() {
        return Err(corrupt("a tree root past the nodes"));
    }
    let leaf_packed = n_features as u32 | DEFAULT_LEFT | (MISSING_NAN << MISSING_SHIFT);
    let mut nodes = Vec::with_capacity(eval.len());
    // Level of each node below its root, and whether a split named it as a child.
    let mut levels = vec![0u16; eval.len()];
    let mut has_parent = vec![false; eval.len()];
    let mut depths = Vec::with_capacity(roots.len());
    for (t, &root) in roots.iter().enumerate() {
        let (start, end) = (
            root as usize,
            roots.get(t + 1).map_or(eval.len(), |&r| r as usize),
        );
        let mut depth = 0;
        for i in start..end {
            let (n, cover) = (&eval[i], covers[i]);
            if (i == start) == has_parent[i] {
                return bad(
                    i,
                    "not the child of exactly one split (a tree must be a tree)",
                );
            }
            if !cover.is_finite() || cover < 0.0 {
                return bad(i, "invalid cover");
            }
            if n.left as usize == i {
                if n.packed != leaf_packed || !n.value.is_finite() {
                    return bad(
                        i,
                        "a leaf must split on the padding and have a finite value",
                    );
                }
                depth = depth.max(levels[i]);
                nodes.push(Node::leaf(n.value, cover));
                continue;
            }
            let left = n.left as usize;
            if left <= i || left + 1 >= end {
                return bad(i, "children outside its tree");
            }
            if has_parent[left] || has_parent[left + 1] {
                return bad(left, "reached twice");
            }
            has_parent[left] = true;
            has_parent[left + 1] = true;
            if usize::from(levels[i]) >= MAX_DEPTH {
                return bad(i, "deeper than the engine allows");
            }
            levels[left] = levels[i] + 1;
            levels[left + 1] = levels[i] + 1;
            let feature = n.packed & FEATURE_MASK;
            if feature as usize >= n_features || n.value.is_nan() {
                return bad(i, "feature index or threshold out of range");
            }
            let category_set = if n.packed & CATEGORICAL != 0 {
                let set = n.value;
                if !(0.0..category_sets as f64).contains(&set) || set.fract() != 0.0 {
                    return bad(i, "names a missing category set");
                }
                Some(set as u32)
            } else {
                None
            };
            nodes.push(Node {
                value: n.value,
                feature,
                left: n.left,
                right: n.left + 1,
                default_left: n.packed & DEFAULT_LEFT != 0,
                missing: match (n.packed >> MISSING_SHIFT) & 3 {
                    MISSING_NAN => Missing::Nan,
                    MISSING_NONE => Missing::NoneAsZero,
                    MISSING_ZERO => Missing::Zero,
                    _ => return bad(i, "unknown missing-value type"),
                },
                category_set,
                cover,
            });
        }
        depths.push(usize::from(depth));
    }
    Ok((nodes, depths))
}

/// TreeSHAP's expected values, as [`Ensemble::compile`] computes them (the same formula on the
/// same operands, so the same bits), in one backward pass: children come after their parent.
fn node_means(nodes: &[Node]) -> Vec<f64> {
    let mut means = vec![0.0; nodes.len()];
    for i in (0..nodes.len()).rev() {
        let n = &nodes[i];
        means[i] = if n.is_leaf() {
            n.value
        } else {
            let (l, r) = (n.left as usize, n.right as usize);
            let (cl, cr) = (nodes[l].cover, nodes[r].cover);
            if cl + cr > 0.0 {
                (means[l] * cl + means[r] * cr) / (cl + cr)
            } else {
                (means[l] + means[r]) / 2.0
            }
        };
    }
    means
}

/// An image of `bytes` compiled natively, for callers that hold a native model file.
pub fn compile(ensemble: &Ensemble, model_bytes: &[u8]) -> Vec<u8> {
    write(ensemble, &mlops_domain::hashing::sha256_hex(model_bytes))
}

impl From<ImageError> for EngineError {
    fn from(e: ImageError) -> Self {
        EngineError::InvalidModel(e.to_string())
    }
}
