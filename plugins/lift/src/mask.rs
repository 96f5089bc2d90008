//! Which entries of a weight matrix are its principal weights.

use ftlab_sdk::prelude::*;

/// The flat indices (row-major, ascending) of the `count` entries of `weight` `[out, in]` whose
/// rank-`rank` approximation `U_r Σ_r V_rᵀ` is largest in magnitude: LIFT's mask. The SVD is
/// taken in double precision, so that which entries make the cut does not hang on the last
/// bits of a float32 decomposition.
pub fn principal_entries(weight: &Tensor, rank: i64, count: i64) -> Tensor {
    let w = weight.detach().to_kind(Kind::Double);
    let (u, s, v) = w.svd(true, true); // reduced: U [out, q], S [q], V [in, q]
    let r = rank.min(s.size()[0]);
    let approx = (u.narrow(1, 0, r) * s.narrow(0, 0, r).unsqueeze(0)).matmul(&v.narrow(1, 0, r).tr());
    let (_, top) = approx.abs().reshape([-1]).topk(count, 0, true, false);
    top.sort(0, false).0
}

/// Entries a matrix of `numel` keeps at `density`: at least one.
pub fn count(numel: i64, density: f64) -> i64 {
    ((numel as f64 * density).round() as i64).clamp(1, numel)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The mask equals numpy's on a committed matrix (`tests/fixtures/principal.json`, made by
    /// `tests/fixtures/make_principal_fixture.py`: `np.linalg.svd` in float64, then the top
    /// entries of |U_r Σ_r V_rᵀ| by a stable argsort), for several ranks and densities.
    #[test]
    fn mask_equals_numpys() {
        use ftlab_sdk::serde_json;
        let fixture: serde_json::Value =
            serde_json::from_str(include_str!("../tests/fixtures/principal.json")).unwrap();
        let (rows, cols) = (fixture["rows"].as_i64().unwrap(), fixture["cols"].as_i64().unwrap());
        let values: Vec<f32> = serde_json::from_value(fixture["weight"].clone()).unwrap();
        let weight = Tensor::from_slice(&values).reshape([rows, cols]);
        let cases = fixture["cases"].as_array().unwrap();
        assert!(cases.len() >= 4);
        for case in cases {
            let (rank, density) = (case["rank"].as_i64().unwrap(), case["density"].as_f64().unwrap());
            let want: Vec<i64> = serde_json::from_value(case["indices"].clone()).unwrap();
            assert_eq!(count(rows * cols, density), want.len() as i64, "rank {rank}, density {density}");
            let got = Vec::<i64>::try_from(principal_entries(&weight, rank, want.len() as i64)).unwrap();
            assert_eq!(got, want, "rank {rank}, density {density}");
        }
    }

    #[test]
    fn counts_round_and_keep_at_least_one_entry() {
        assert_eq!(count(1000, 0.05), 50);
        assert_eq!(count(10, 0.001), 1);
        assert_eq!(count(10, 1.0), 10);
    }
}
