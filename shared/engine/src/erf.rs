//! The error function of the `libm` crate (FreeBSD's `s_erf.c` and `e_exp.c`) as branch-free
//! formulas, so that loops over many values vectorize, and the MLP's GELU built on it.
//!
//! Each value goes through its range's formula with the same operations in the same order as
//! `libm::erf` (the cheap ranges computed for every value and the one kept, the costly range
//! only for the values in it), so each result has `libm::erf`'s bits (Rust never fuses a
//! multiply and an add): the MLP's GELU gives the same values, many at a time.

// Ported from FreeBSD's msun (`s_erf.c`, `e_exp.c`) by way of the `libm` crate, whose notice
// the port keeps:
//
// ====================================================
// Copyright (C) 1993 by Sun Microsystems, Inc. All rights reserved.
//
// Developed at SunPro, a Sun Microsystems, Inc. business.
// Permission to use, copy, modify, and distribute this
// software is freely granted, provided that this notice
// is preserved.
// ====================================================
//
// FreeBSD's constants, digit for digit as the `libm` crate spells them (each is the double
// nearest to its digits, so the extra digits change no bit).
#![allow(clippy::excessive_precision)]

const ERX: f64 = 8.45062911510467529297e-01;
const EFX8: f64 = 1.02703333676410069053e+00;
const PP: [f64; 5] = [
    1.28379167095512558561e-01,
    -3.25042107247001499370e-01,
    -2.84817495755985104766e-02,
    -5.77027029648944159157e-03,
    -2.37630166566501626084e-05,
];
const QQ: [f64; 5] = [
    3.97917223959155352819e-01,
    6.50222499887672944485e-02,
    5.08130628187576562776e-03,
    1.32494738004321644526e-04,
    -3.96022827877536812320e-06,
];
const PA: [f64; 7] = [
    -2.36211856075265944077e-03,
    4.14856118683748331666e-01,
    -3.72207876035701323847e-01,
    3.18346619901161753674e-01,
    -1.10894694282396677476e-01,
    3.54783043256182359371e-02,
    -2.16637559486879084300e-03,
];
const QA: [f64; 6] = [
    1.06420880400844228286e-01,
    5.40397917702171048937e-01,
    7.18286544141962662868e-02,
    1.26171219808761642112e-01,
    1.36370839120290507362e-02,
    1.19844998467991074170e-02,
];
/// erfc on [1.25, 1/0.35): numerator (8 coefficients) and denominator (8, after its 1).
const RA: [f64; 8] = [
    -9.86494403484714822705e-03,
    -6.93858572707181764372e-01,
    -1.05586262253232909814e+01,
    -6.23753324503260060396e+01,
    -1.62396669462573470355e+02,
    -1.84605092906711035994e+02,
    -8.12874355063065934246e+01,
    -9.81432934416914548592e+00,
];
const SA: [f64; 8] = [
    1.96512716674392571292e+01,
    1.37657754143519042600e+02,
    4.34565877475229228821e+02,
    6.45387271733267880336e+02,
    4.29008140027567833386e+02,
    1.08635005541779435134e+02,
    6.57024977031928170135e+00,
    -6.04244152148580987438e-02,
];
/// erfc on [1/0.35, 6): one coefficient fewer in each, padded with a zero. Horner's
/// `c + s · 0` is `c` exactly (`s` is finite there), so the padded polynomial has the bits of
/// the shorter one.
const RB: [f64; 8] = [
    -9.86494292470009928597e-03,
    -7.99283237680523006574e-01,
    -1.77579549177547519889e+01,
    -1.60636384855821916062e+02,
    -6.37566443368389627722e+02,
    -1.02509513161107724954e+03,
    -4.83519191608651397019e+02,
    0.0,
];
const SB: [f64; 8] = [
    3.03380607434824582924e+01,
    3.25792512996573918826e+02,
    1.53672958608443695994e+03,
    3.19985821950859553908e+03,
    2.55305040643316442583e+03,
    4.74528541206955367215e+02,
    -2.24409524465858183362e+01,
    0.0,
];

/// `c[0] + s · (c[1] + s · (… + s · c[n−1]))`, innermost first, as the C source nests it.
#[inline(always)]
fn horner<const N: usize>(s: f64, c: [f64; N]) -> f64 {
    let mut acc = c[N - 1];
    for &k in c[..N - 1].iter().rev() {
        acc = k + s * acc;
    }
    acc
}

/// `1 + s · (c[0] + s · (…))`: a denominator, as the C source writes it.
#[inline(always)]
fn one_plus<const N: usize>(s: f64, c: [f64; N]) -> f64 {
    1.0 + s * horner(s, c)
}

/// Values worked on together by [`gelu`].
const BLOCK: usize = 64;

/// GELU in place, `0.5 · v · (1 + erf(v / √2))`, with `libm::erf`'s bits. The values are taken
/// 64 at a time: every one's erf without the range 1.25 ≤ |x| < 6 (one division each), then
/// the values in that range, gathered together, through its formula (five divisions and two
/// exponentials each), so the costly range costs only the values in it.
#[inline(always)]
pub fn gelu(values: &mut [f64]) {
    for block in values.chunks_mut(BLOCK) {
        let n = block.len();
        let mut x = [0.0f64; BLOCK];
        for (x, &v) in x.iter_mut().zip(block.iter()) {
            *x = v / std::f64::consts::SQRT_2;
        }
        let mut e = [0.0f64; BLOCK];
        for (e, &x) in e.iter_mut().zip(x.iter()) {
            *e = erf_outside_far(x);
        }
        // Branch-free compaction: each value is written at `m`, which moves on for far ones.
        let mut at = [0u8; BLOCK];
        let mut far = [0.0f64; BLOCK];
        let mut m = 0;
        for (i, &x) in x[..n].iter().enumerate() {
            at[m] = i as u8;
            far[m] = x;
            m += usize::from(in_far_range(x));
        }
        if m > 0 {
            let mut far_erf = [0.0f64; BLOCK];
            let whole = m.next_multiple_of(8).min(BLOCK);
            for (e, &x) in far_erf[..whole].iter_mut().zip(far[..whole].iter()) {
                *e = erf_far(x);
            }
            for (&i, &e_far) in at[..m].iter().zip(far_erf[..m].iter()) {
                e[usize::from(i)] = e_far;
            }
        }
        for (v, &e) in block.iter_mut().zip(e.iter()) {
            *v = 0.5 * *v * (1.0 + e);
        }
    }
}

/// The high word of `|x|`, which selects erf's range.
#[inline(always)]
fn high_word(x: f64) -> u32 {
    (x.to_bits() >> 32) as u32 & 0x7fff_ffff
}

/// 1.25 ≤ |x| < 6.
#[inline(always)]
fn in_far_range(x: f64) -> bool {
    (0x3ff4_0000..0x4018_0000).contains(&high_word(x))
}

/// `libm::erf(x)`, bit for bit, for `x` outside 1.25 ≤ |x| < 6 (any value there).
#[inline(always)]
fn erf_outside_far(x: f64) -> f64 {
    let negative = x.to_bits() >> 63 != 0;
    let ix = high_word(x);
    let ax = x.abs();
    // NaN and ±inf.
    let special = 1.0 - 2.0 * f64::from(u8::from(negative)) + 1.0 / x;
    // |x| < 2^-28.
    let tiny = 0.125 * (8.0 * x + EFX8 * x);
    // |x| < 0.84375: x + x · P(x²)/Q(x²); 0.84375 ≤ |x| < 1.25: erfc(|x|) = 1 − erx − P(s)/Q(s),
    // s = |x| − 1. One division serves both: each value divides its own range's polynomials.
    let small_range = ix < 0x3feb_0000;
    let (z, s) = (x * x, ax - 1.0);
    let num = if small_range {
        horner(z, PP)
    } else {
        horner(s, PA)
    };
    let den = if small_range {
        one_plus(z, QQ)
    } else {
        one_plus(s, QA)
    };
    let q = num / den;
    let small = x + x * q;
    let y = if ix < 0x4018_0000 {
        1.0 - (1.0 - ERX - q)
    } else {
        1.0 - f64::from_bits(0x0010_0000_0000_0000)
    };
    let signed = if negative { -y } else { y };
    if ix >= 0x7ff0_0000 {
        special
    } else if ix < 0x3e30_0000 {
        tiny
    } else if small_range {
        small
    } else {
        signed
    }
}

/// `libm::erf(x)`, bit for bit, for 1.25 ≤ |x| < 6: 1 − erfc(|x|), with erfc(|x|) =
/// exp(−z² − 0.5625) · exp((z − |x|)(z + |x|) + R/S) / |x|, z being |x| with the low word cleared.
#[inline(always)]
fn erf_far(x: f64) -> f64 {
    let negative = x.to_bits() >> 63 != 0;
    let ax = x.abs();
    let s = 1.0 / (ax * ax);
    let below_1_over_035 = high_word(x) < 0x4006_db6d;
    let pick = |a: [f64; 8], b: [f64; 8]| {
        std::array::from_fn::<f64, 8, _>(|i| if below_1_over_035 { a[i] } else { b[i] })
    };
    let r = horner(s, pick(RA, RB));
    let big_s = one_plus(s, pick(SA, SB));
    let z = f64::from_bits(ax.to_bits() & 0xffff_ffff_0000_0000);
    let erfc = exp(-z * z - 0.5625) * exp((z - ax) * (z + ax) + r / big_s) / ax;
    let y = 1.0 - erfc;
    if negative { -y } else { y }
}

const LN2HI: f64 = 6.93147180369123816490e-01;
const LN2LO: f64 = 1.90821492927058770002e-10;
/// 1/ln 2, FreeBSD's `invln2` (0x3ff71547_652b82fe).
const INVLN2: f64 = f64::from_bits(0x3ff7_1547_652b_82fe);
const P: [f64; 5] = [
    1.66666666666666019037e-01,
    -2.77777777770155933842e-03,
    6.61375632143793436117e-05,
    -1.65339022054652515390e-06,
    4.13813679705723846039e-08,
];

/// `libm::exp(x)`, bit for bit, for `|x| < 708` (erf calls it on `(−37, 1)`).
#[inline(always)]
fn exp(x: f64) -> f64 {
    let bits = x.to_bits();
    let negative = bits >> 63 != 0;
    let hx = (bits >> 32) as u32 & 0x7fff_ffff;
    // |x| > ln2 / 2: x = k·ln2 + r, k rounded (|x| ≥ 1.5 ln2) or ±1. `as i32` in the C source
    // truncates toward zero, as `trunc` does, and the k here fit an i32.
    let k_rounded = (INVLN2 * x + if negative { -0.5 } else { 0.5 }).trunc();
    let k_unit = if negative { -1.0 } else { 1.0 };
    let k_reduced = if hx >= 0x3ff0_a2b2 { k_rounded } else { k_unit };
    let reduce = hx > 0x3fd6_2e42;
    let (k, hi, lo) = if reduce {
        (k_reduced, x - k_reduced * LN2HI, k_reduced * LN2LO)
    } else {
        (0.0, x, 0.0)
    };
    let r = if reduce { hi - lo } else { x };
    let rr = r * r;
    let c = r - rr * horner(rr, P);
    let y = 1.0 + (r * c / (2.0 - c) - lo + hi);
    // scalbn(y, k) = y · 2^k for the k here (−60 < k < 2): the power's exponent field is
    // k + 1023, the low bits of 2^52 + k + 1023 shifted into place.
    let power = f64::from_bits((k + 1023.0 + 4_503_599_627_370_496.0).to_bits() << 52);
    let scaled = y * power;
    // |x| ≤ 2^-28.
    if hx > 0x3e30_0000 { scaled } else { 1.0 + x }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn erf(x: f64) -> f64 {
        if in_far_range(x) {
            erf_far(x)
        } else {
            erf_outside_far(x)
        }
    }

    fn same(x: f64) {
        let (got, want) = (erf(x), libm::erf(x));
        assert!(
            got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
            "erf({x:e}) = {got:e}, libm gives {want:e}"
        );
    }

    #[test]
    fn erf_has_the_bits_of_libm_on_every_range_and_boundary() {
        let mut edges = vec![
            0.0,
            f64::MIN_POSITIVE,
            5e-324,
            f64::INFINITY,
            f64::NAN,
            f64::MAX,
            1.0,
            2.0,
            27.9,
            28.0,
            30.0,
        ];
        // The ranges' edges (high words) and the values on either side of them.
        for high in [
            0x3e30_0000u64,
            0x3feb_0000,
            0x3ff4_0000,
            0x4006_db6d,
            0x4018_0000,
            0x3fd6_2e42,
            0x3ff0_a2b2,
        ] {
            let edge = f64::from_bits(high << 32);
            edges.extend([edge, edge.next_down(), edge.next_up()]);
        }
        for x in edges {
            same(x);
            same(-x);
        }
        // Random values on a log scale from 1e-12 to 1e2, both signs (SplitMix64).
        let mut state = 7u64;
        for _ in 0..200_000 {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            let magnitude = 10f64.powf(-12.0 + 14.0 * (z >> 11) as f64 / (1u64 << 53) as f64);
            let x = if z & 1 == 0 { magnitude } else { -magnitude };
            same(x);
        }
        // Every step of 1/4096 across the ranges GELU uses most.
        for i in -40_000..=40_000 {
            same(f64::from(i) / 4096.0);
        }
    }

    #[test]
    fn gelu_has_the_bits_of_the_libm_formula_for_any_length() {
        for n in [0, 1, 7, 8, 9, 63, 64, 65, 200] {
            // Values in and out of the far range, mixed, so blocks have 0 to 64 far values.
            let values: Vec<f64> = (0..n)
                .map(|i| {
                    let t = (i * 37 % 101) as f64 / 101.0;
                    if i % 5 == 0 {
                        12.0 * t - 6.0
                    } else {
                        3.0 * t - 1.5
                    }
                })
                .chain(
                    [f64::NAN, f64::INFINITY, -0.0, 1e-300]
                        .into_iter()
                        .take(n.min(4)),
                )
                .collect();
            let mut got = values.clone();
            gelu(&mut got);
            for (v, g) in values.iter().zip(&got) {
                let want = 0.5 * v * (1.0 + libm::erf(v / std::f64::consts::SQRT_2));
                assert!(
                    g.to_bits() == want.to_bits() || (g.is_nan() && want.is_nan()),
                    "gelu({v:e}) = {g:e}, the libm formula gives {want:e} (length {n})"
                );
            }
        }
    }
}
