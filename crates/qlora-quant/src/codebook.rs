//! The two lookup tables bitsandbytes quantizes with, and the helpers that make our results
//! bit-identical to bitsandbytes 0.50.2 on CPU.
//!
//! * [`NF4_CODE`]: the 16 NormalFloat4 values (`get_4bit_type("nf4")`), sorted. A value scaled
//!   into [-1, 1] goes to the nearest one; a value exactly on a midpoint goes to the lower code
//!   (`torch.bucketize(x, midpoints)` on CPU; CUDA's `dQuantizeNF4` tree compares `x > t` with
//!   literal thresholds equal to these midpoints within one f32 ulp, so the backends agree except
//!   for a value that lands inside that ulp).
//! * [`dynamic_map`]: `create_dynamic_map(signed=True)`, the 256-value 8-bit map used to
//!   double-quantize absmax. Stored as f32 bit patterns generated once from bitsandbytes 0.50.2
//!   (`F.create_dynamic_map(signed=True).numpy().view(np.uint32)`): torch's f32 `linspace` inside
//!   it is not reproducible from its formula alone, and these 256 numbers are a fixed part of the
//!   format (bnb writes them into every checkpoint as `nested_quant_map`).
//! * [`Lut8`]: bnb 0.50.2's CPU 8-bit blockwise quantizer does not search the map: it looks the
//!   scaled value up in a 65536-entry table over [-1, 1] built from the map's midpoints. That table
//!   differs from exact nearest-code rounding for values within ~3e-5 of a midpoint, so we build
//!   and use the same table. (CUDA bnb uses a 7-step pivot search instead; the two backends
//!   disagree by one code on a few values — see `DQ` notes in `nf4.rs`.)

use std::sync::OnceLock;

/// bitsandbytes' NF4 code values (`quant_map` in checkpoints), index = 4-bit code. Written with
/// the digits bnb's source has (each is exactly an f32).
#[allow(clippy::excessive_precision)]
pub const NF4_CODE: [f32; 16] = [
    -1.0,
    -0.696_192_800_998_687_7,
    -0.525_073_051_452_636_7,
    -0.394_917_488_098_144_53,
    -0.284_441_381_692_886_35,
    -0.184_773_430_228_233_34,
    -0.091_050_036_251_544_95,
    0.0,
    0.079_580_299_556_255_34,
    0.160_930_201_411_247_25,
    0.246_112_301_945_686_34,
    0.337_915_241_718_292_24,
    0.440_709_829_330_444_34,
    0.562_617_003_917_694_1,
    0.722_956_836_223_602_3,
    1.0,
];

/// Midpoints between consecutive NF4 codes, computed in f32 as torch does `(c[:-1]+c[1:])/2`.
pub fn nf4_midpoints(code: &[f32; 16]) -> [f32; 15] {
    let mut m = [0f32; 15];
    for i in 0..15 {
        m[i] = (code[i] + code[i + 1]) / 2.0;
    }
    m
}

/// `torch.bucketize(x, midpoints)` (right=False): the number of midpoints strictly below `x`.
/// A tie goes to the lower code; NaN goes to code 0 (callers reject NaN before this).
#[inline]
pub fn nf4_bucket(x: f32, mid: &[f32; 15]) -> u8 {
    // Unrolled binary search over 15 sorted midpoints (4 comparisons).
    let mut lo = 0usize; // answer in [lo, lo + 16)
    let mut step = 8usize;
    while step > 0 {
        if mid[lo + step - 1] < x {
            lo += step;
        }
        step /= 2;
    }
    lo as u8
}

const DYNAMIC_MAP_BITS: [u32; 256] = [
    0xbf7e3333, 0xbf7a999a, 0xbf770000, 0xbf736666, 0xbf6fcccd, 0xbf6c3333, 0xbf68999a, 0xbf650000, 0xbf616666, 0xbf5dcccd, 0xbf5a3333, 0xbf56999a,
    0xbf530000, 0xbf4f6666, 0xbf4bcccd, 0xbf483333, 0xbf44999a, 0xbf410000, 0xbf3d6666, 0xbf39cccd, 0xbf363334, 0xbf32999a, 0xbf2f0000, 0xbf2b6666,
    0xbf27cccd, 0xbf243334, 0xbf20999a, 0xbf1d0000, 0xbf196666, 0xbf15cccd, 0xbf123334, 0xbf0e999a, 0xbf0b0000, 0xbf076666, 0xbf03cccc, 0xbf003333,
    0xbef93332, 0xbef20000, 0xbeeacccc, 0xbee3999a, 0xbedc6666, 0xbed53333, 0xbece0000, 0xbec6cccc, 0xbebf999a, 0xbeb86666, 0xbeb13333, 0xbeaa0000,
    0xbea2cccc, 0xbe9b999a, 0xbe946666, 0xbe8d3334, 0xbe860000, 0xbe7d9999, 0xbe6f3333, 0xbe60cccd, 0xbe526666, 0xbe440000, 0xbe35999a, 0xbe273333,
    0xbe18cccd, 0xbe0a6666, 0xbdf80000, 0xbddb3334, 0xbdc9eb85, 0xbdc428f7, 0xbdbe6667, 0xbdb8a3d7, 0xbdb2e148, 0xbdad1eb8, 0xbda75c2a, 0xbda1999a,
    0xbd9bd70a, 0xbd96147b, 0xbd9051eb, 0xbd8a8f5d, 0xbd84cccd, 0xbd7e147b, 0xbd728f5d, 0xbd670a3d, 0xbd5b851f, 0xbd500000, 0xbd447ae1, 0xbd38f5c3,
    0xbd2d70a3, 0xbd21eb85, 0xbd166667, 0xbd0ae148, 0xbcfeb852, 0xbce7ae15, 0xbcd0a3d7, 0xbcb9999a, 0xbca28f5d, 0xbc8b851f, 0xbc68f5c3, 0xbc3ae148,
    0xbc1f3b64, 0xbc160418, 0xbc0ccccd, 0xbc039581, 0xbbf4bc6a, 0xbbe24dd3, 0xbbcfdf3b, 0xbbbd70a4, 0xbbab020d, 0xbb989374, 0xbb8624dd, 0xbb676c8a,
    0xbb428f5c, 0xbb1db22d, 0xbaf1a9fc, 0xbaa7ef9d, 0xba7765ff, 0xba59e83e, 0xba3c6a80, 0xba1eecc1, 0xba016f01, 0xb9c7e283, 0xb98ce705, 0xb923d70b,
    0xb8ba1f4b, 0xb88aefb3, 0xb8378034, 0xb7b24206, 0xb70205ff, 0xb65a1a94, 0xb513a3b7, 0x00000000, 0x3513a3b7, 0x365a1a94, 0x370205ff, 0x37b24206,
    0x38378034, 0x388aefb3, 0x38ba1f4b, 0x3923d70b, 0x398ce705, 0x39c7e283, 0x3a016f01, 0x3a1eecc1, 0x3a3c6a80, 0x3a59e83e, 0x3a7765ff, 0x3aa7ef9d,
    0x3af1a9fc, 0x3b1db22d, 0x3b428f5c, 0x3b676c8a, 0x3b8624dd, 0x3b989374, 0x3bab020d, 0x3bbd70a4, 0x3bcfdf3b, 0x3be24dd3, 0x3bf4bc6a, 0x3c039581,
    0x3c0ccccd, 0x3c160418, 0x3c1f3b64, 0x3c3ae148, 0x3c68f5c3, 0x3c8b851f, 0x3ca28f5d, 0x3cb9999a, 0x3cd0a3d7, 0x3ce7ae15, 0x3cfeb852, 0x3d0ae148,
    0x3d166667, 0x3d21eb85, 0x3d2d70a3, 0x3d38f5c3, 0x3d447ae1, 0x3d500000, 0x3d5b851f, 0x3d670a3d, 0x3d728f5d, 0x3d7e147b, 0x3d84cccd, 0x3d8a8f5d,
    0x3d9051eb, 0x3d96147b, 0x3d9bd70a, 0x3da1999a, 0x3da75c2a, 0x3dad1eb8, 0x3db2e148, 0x3db8a3d7, 0x3dbe6667, 0x3dc428f7, 0x3dc9eb85, 0x3ddb3334,
    0x3df80000, 0x3e0a6666, 0x3e18cccd, 0x3e273333, 0x3e35999a, 0x3e440000, 0x3e526666, 0x3e60cccd, 0x3e6f3333, 0x3e7d9999, 0x3e860000, 0x3e8d3334,
    0x3e946666, 0x3e9b999a, 0x3ea2cccc, 0x3eaa0000, 0x3eb13333, 0x3eb86666, 0x3ebf999a, 0x3ec6cccc, 0x3ece0000, 0x3ed53333, 0x3edc6666, 0x3ee3999a,
    0x3eeacccc, 0x3ef20000, 0x3ef93332, 0x3f003333, 0x3f03cccc, 0x3f076666, 0x3f0b0000, 0x3f0e999a, 0x3f123334, 0x3f15cccd, 0x3f196666, 0x3f1d0000,
    0x3f20999a, 0x3f243334, 0x3f27cccd, 0x3f2b6666, 0x3f2f0000, 0x3f32999a, 0x3f363334, 0x3f39cccd, 0x3f3d6666, 0x3f410000, 0x3f44999a, 0x3f483333,
    0x3f4bcccd, 0x3f4f6666, 0x3f530000, 0x3f56999a, 0x3f5a3333, 0x3f5dcccd, 0x3f616666, 0x3f650000, 0x3f68999a, 0x3f6c3333, 0x3f6fcccd, 0x3f736666,
    0x3f770000, 0x3f7a999a, 0x3f7e3333, 0x3f800000,
];

/// bitsandbytes' signed dynamic 8-bit map (`create_dynamic_map(signed=True)`), sorted.
pub fn dynamic_map() -> &'static [f32; 256] {
    static MAP: OnceLock<[f32; 256]> = OnceLock::new();
    MAP.get_or_init(|| DYNAMIC_MAP_BITS.map(f32::from_bits))
}

const LUT_SIZE: usize = 65536;

/// bnb 0.50.2's CPU quantization table for an 8-bit map: bin `i` of [-1, 1] holds the code of
/// the first midpoint not below the bin's value.
pub struct Lut8 {
    table: Box<[u8]>,
}

impl Lut8 {
    pub fn new(code: &[f32; 256]) -> Self {
        let mut mid = [0f32; 255];
        for i in 0..255 {
            mid[i] = 0.5f32 * (code[i] + code[i + 1]);
        }
        let mut table = vec![0u8; LUT_SIZE].into_boxed_slice();
        let mut idx = 0usize;
        for (i, slot) in table.iter_mut().enumerate() {
            let val = -1.0f32 + (2.0f32 * i as f32) / (LUT_SIZE - 1) as f32;
            while idx < 255 && mid[idx] < val {
                idx += 1;
            }
            *slot = idx as u8;
        }
        Lut8 { table }
    }

    /// The table for [`dynamic_map`], built once.
    pub fn dynamic() -> &'static Lut8 {
        static LUT: OnceLock<Lut8> = OnceLock::new();
        LUT.get_or_init(|| Lut8::new(dynamic_map()))
    }

    /// Code of a value already scaled by 1/absmax (clamped to [-1, 1] here, as bnb does).
    #[inline]
    pub fn code(&self, scaled: f32) -> u8 {
        let v = scaled.clamp(-1.0, 1.0);
        // Same operation order and f32 rounding as bnb's `norm_to_lut_index`, then truncation.
        let i = ((v + 1.0f32) * 0.5f32 * (LUT_SIZE - 1) as f32 + 0.5f32) as usize;
        self.table[i.min(LUT_SIZE - 1)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nf4_bucket_matches_linear_scan_and_ties_go_down() {
        let mid = nf4_midpoints(&NF4_CODE);
        for i in 0..2001 {
            let x = -1.0 + i as f32 * 0.001;
            let expect = mid.iter().filter(|m| **m < x).count() as u8;
            assert_eq!(nf4_bucket(x, &mid), expect, "x = {x}");
        }
        for (i, m) in mid.iter().enumerate() {
            assert_eq!(nf4_bucket(*m, &mid), i as u8, "a midpoint belongs to the lower code");
            let above = if *m > 0.0 { f32::from_bits(m.to_bits() + 1) } else { f32::from_bits(m.to_bits() - 1) };
            assert_eq!(nf4_bucket(above, &mid), i as u8 + 1, "just above a midpoint is the upper code");
        }
        assert_eq!(nf4_bucket(0.0, &mid), 7);
        assert_eq!(nf4_bucket(-1.0, &mid), 0);
        assert_eq!(nf4_bucket(1.0, &mid), 15);
    }

    #[test]
    #[allow(clippy::excessive_precision)]
    fn nf4_midpoints_equal_cuda_thresholds() {
        // The literal thresholds of bitsandbytes' CUDA dQuantizeNF4, as f32.
        let cuda: [f32; 15] = [
            -0.8480964004993439,
            -0.6106329262256622,
            -0.4599952697753906,
            -0.33967943489551544,
            -0.23460740596055984,
            -0.13791173323988914,
            -0.045525018125772476,
            0.03979014977812767,
            0.1202552504837513,
            0.2035212516784668,
            0.2920137718319893,
            0.3893125355243683,
            0.5016634166240692,
            0.6427869200706482,
            0.8614784181118011,
        ];
        // nvcc rounds those decimal literals straight to f32; torch's f32 midpoints land one ulp
        // away on four of them. Only a scaled value within that ulp quantizes differently.
        let mid = nf4_midpoints(&NF4_CODE);
        let ulps: Vec<i64> = mid.iter().zip(cuda).map(|(a, b)| (a.to_bits() as i64 - b.to_bits() as i64).abs()).collect();
        assert!(ulps.iter().all(|u| *u <= 1), "{ulps:?}");
        assert_eq!(ulps.iter().filter(|u| **u == 1).count(), 4);
    }

    #[test]
    fn dynamic_map_shape() {
        let m = dynamic_map();
        assert!(m.windows(2).all(|w| w[0] < w[1]), "sorted and distinct");
        assert_eq!(m[255], 1.0);
        assert!(m.contains(&0.0));
        assert!((m[0] + 0.992_968_75).abs() < 1e-7);
        // 7 exponent levels: the smallest non-zero magnitude is 1e-6 * (0.1+0.55)/2 ~ 5.5e-7
        let smallest = m.iter().filter(|v| **v > 0.0).fold(f32::MAX, |a, b| a.min(*b));
        assert!((smallest - 5.5e-7).abs() < 1e-9, "{smallest}");
    }

    #[test]
    fn lut_is_nearest_code_away_from_midpoints() {
        let lut = Lut8::dynamic();
        let m = dynamic_map();
        for (i, c) in m.iter().enumerate() {
            assert_eq!(lut.code(*c) as usize, i, "code value {c} maps to itself? (coarse bins near 0 excepted)");
            if c.abs() < 1e-3 {
                break;
            }
        }
        assert_eq!(lut.code(1.0), 255);
        assert_eq!(lut.code(-1.0), 0);
        assert_eq!(lut.code(5.0), 255, "clamped");
    }
}
