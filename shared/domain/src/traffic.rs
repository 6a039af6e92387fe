//! A/B traffic splits between aliases of a model, with sticky routing by a caller-supplied key.
//!
//! The split is stored in the registry (`models/NAME/traffic.json`), so it changes without a
//! redeploy; serving re-reads it together with the aliases.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::hashing::sha256_hex;
use crate::registry::{RegistryError, check_name};

/// Most variants a split may have.
pub const MAX_VARIANTS: usize = 8;

/// One arm of a split: an alias and its share of the traffic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Variant {
    /// Alias that serves this arm (e.g. `champion`).
    pub alias: String,
    /// Relative weight (e.g. 90 and 10).
    pub weight: u32,
}

/// The traffic split of a model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrafficSplit {
    /// Arms, in the order given.
    pub variants: Vec<Variant>,
    /// Increases by one with every change.
    #[serde(default)]
    pub revision: u64,
    /// Who set it.
    #[serde(default)]
    pub updated_by: String,
    /// When.
    #[serde(default)]
    pub updated_at: Option<DateTime<Utc>>,
}

impl TrafficSplit {
    /// All traffic to one alias.
    pub fn single(alias: &str) -> Self {
        Self {
            variants: vec![Variant {
                alias: alias.into(),
                weight: 100,
            }],
            revision: 0,
            updated_by: String::new(),
            updated_at: None,
        }
    }

    /// Parses `champion=90,challenger=10`.
    pub fn parse(spec: &str) -> Result<Self, RegistryError> {
        let mut variants = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (alias, weight) = part.split_once('=').ok_or_else(|| {
                RegistryError::InvalidTraffic(format!(
                    "'{part}' is not ALIAS=WEIGHT (e.g. champion=90,challenger=10)"
                ))
            })?;
            let weight = weight.trim().parse::<u32>().map_err(|_| {
                RegistryError::InvalidTraffic(format!(
                    "weight '{}' of alias '{}' is not a whole number",
                    weight.trim(),
                    alias.trim()
                ))
            })?;
            variants.push(Variant {
                alias: alias.trim().into(),
                weight,
            });
        }
        let split = Self {
            variants,
            ..Self::single("champion")
        };
        split.check()?;
        split.check_percentages()?;
        Ok(split)
    }

    /// Checks that the weights are percentages: each 1 to 100, adding up to exactly 100 (a new
    /// split must say what share each arm gets; splits stored before this rule are still read).
    pub fn check_percentages(&self) -> Result<(), RegistryError> {
        let total = self.total_weight();
        if total != 100 || self.variants.iter().any(|v| v.weight > 100) {
            let listed: Vec<String> = self
                .variants
                .iter()
                .map(|v| format!("{}={}", v.alias, v.weight))
                .collect();
            return Err(RegistryError::InvalidTraffic(format!(
                "weights are percentages and must add up to 100; {} add up to {total}",
                listed.join(", ")
            )));
        }
        Ok(())
    }

    /// Each arm's share of the traffic in percent (also for stored weights that are not
    /// percentages).
    pub fn percentages(&self) -> Vec<(String, f64)> {
        let total = self.total_weight().max(1) as f64;
        self.variants
            .iter()
            .map(|v| (v.alias.clone(), f64::from(v.weight) * 100.0 / total))
            .collect()
    }

    /// The split as the traffic route takes it: `{"weights": {"champion": 90, ...}}`.
    pub fn weights_json(&self) -> serde_json::Value {
        let weights: serde_json::Map<String, serde_json::Value> = self
            .variants
            .iter()
            .map(|v| (v.alias.clone(), serde_json::json!(v.weight)))
            .collect();
        serde_json::json!({ "weights": weights })
    }

    /// Checks the arms: 1 to [`MAX_VARIANTS`] distinct valid aliases, weights 1..=10,000 (drain
    /// an arm by removing it).
    pub fn check(&self) -> Result<(), RegistryError> {
        let bad = |m: String| Err(RegistryError::InvalidTraffic(m));
        if self.variants.is_empty() || self.variants.len() > MAX_VARIANTS {
            return bad(format!(
                "a split has 1 to {MAX_VARIANTS} variants, not {}",
                self.variants.len()
            ));
        }
        for (i, v) in self.variants.iter().enumerate() {
            check_name("alias", &v.alias)?;
            if self.variants[..i].iter().any(|w| w.alias == v.alias) {
                return bad(format!("alias '{}' appears twice", v.alias));
            }
            if !(1..=10_000).contains(&v.weight) {
                return bad(format!(
                    "weight {} of alias '{}' is not between 1 and 10000",
                    v.weight, v.alias
                ));
            }
        }
        if self.total_weight() == 0 {
            return bad("the weights add up to 0".into());
        }
        Ok(())
    }

    fn total_weight(&self) -> u64 {
        self.variants.iter().map(|v| u64::from(v.weight)).sum()
    }

    /// The arm for a routing key: the same key always gets the same arm while the split is
    /// unchanged. Keys hash uniformly, so arms get traffic in proportion to their weights.
    pub fn route(&self, model: &str, key: &str) -> &Variant {
        let digest = sha256_hex(format!("{model}\u{0}{key}").as_bytes());
        let point =
            u64::from_str_radix(&digest[..16], 16).unwrap_or(0) % self.total_weight().max(1);
        let mut acc = 0u64;
        for v in &self.variants {
            acc += u64::from(v.weight);
            if point < acc {
                return v;
            }
        }
        &self.variants[self.variants.len() - 1]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_check() {
        let s = TrafficSplit::parse("champion=90, challenger=10").unwrap();
        assert_eq!(s.variants.len(), 2);
        assert_eq!(s.variants[1].weight, 10);
        for bad in [
            "",
            "champion",
            "champion=x",
            "champion=0",
            "champion=1,champion=2",
            "Bad Alias=3",
            "a=1,b=2,c=3,d=4,e=5,f=6,g=7,h=8,i=9",
            "champion=20000",
            "champion=80,challenger=30",
            "champion=90",
        ] {
            let e = TrafficSplit::parse(bad).unwrap_err().to_string();
            assert!(!e.is_empty(), "{bad}");
        }
    }

    #[test]
    fn weights_are_percentages() {
        let e = TrafficSplit::parse("champion=80,challenger=30")
            .unwrap_err()
            .to_string();
        assert!(e.contains("add up to 110"), "{e}");
        let s = TrafficSplit::parse("champion=75,challenger=25").unwrap();
        let json = s.weights_json();
        assert_eq!(json["weights"]["champion"], 75);
        assert_eq!(json["weights"]["challenger"], 25);
        assert_eq!(json.as_object().unwrap().len(), 1);
        let legacy = TrafficSplit {
            variants: vec![
                Variant {
                    alias: "a".into(),
                    weight: 3,
                },
                Variant {
                    alias: "b".into(),
                    weight: 1,
                },
            ],
            ..TrafficSplit::single("a")
        };
        assert!(legacy.check().is_ok());
        assert_eq!(legacy.percentages()[0].1, 75.0);
    }

    #[test]
    fn routing_is_sticky_and_proportional() {
        let s = TrafficSplit::parse("champion=90,challenger=10").unwrap();
        let mut challenger = 0;
        for i in 0..20_000 {
            let key = format!("user-{i}");
            let v = s.route("m", &key);
            assert_eq!(v, s.route("m", &key));
            if v.alias == "challenger" {
                challenger += 1;
            }
        }
        // 10 % of 20,000 = 2,000; binomial sd ≈ 42.
        assert!((1800..2200).contains(&challenger), "{challenger}");
        let only = TrafficSplit::single("champion");
        assert_eq!(only.route("m", "anything").alias, "champion");
    }
}
