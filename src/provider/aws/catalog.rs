//! The AWS GPU catalog shipped in `assets/catalog/aws.csv` (see its README for the source):
//! instance types with their accelerators, on-demand price per region and spot price per
//! availability zone at catalog time. Read offline, so a type is checked and priced as the
//! user types, before any API call.

use crate::model::Money;
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

pub const EMBEDDED: &str = include_str!("../../../assets/catalog/aws.csv");

/// One instance type's hardware.
#[derive(Debug, Clone, PartialEq)]
pub struct TypeSpec {
    pub name: String,
    pub accelerator: String,
    /// `gpu`, `ml-accelerator` (Trainium, Inferentia, Gaudi) or `fpga`.
    pub kind: String,
    /// Accelerators per machine; fractional for the g6f slices.
    pub count: f64,
    /// Memory per accelerator, GiB.
    pub gpu_memory_gib: Option<f64>,
    pub vcpus: u32,
    pub memory_gib: f64,
}

impl TypeSpec {
    /// Whole GPUs (a fractional slice counts as one).
    pub fn gpus(&self) -> u32 {
        self.count.ceil() as u32
    }
}

/// A type's prices in one region.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RegionPrices {
    /// None: not sold on demand there (Capacity Blocks only).
    pub on_demand: Option<Money>,
    /// Spot price per AZ ID at catalog time.
    pub spot_by_az: BTreeMap<String, Money>,
}

impl RegionPrices {
    pub fn cheapest_spot(&self) -> Option<Money> {
        self.spot_by_az.values().min().copied()
    }
}

#[derive(Debug, Default)]
pub struct Catalog {
    pub types: BTreeMap<String, TypeSpec>,
    /// (type, region) -> prices.
    pub prices: BTreeMap<(String, String), RegionPrices>,
}

/// A row of `trainctl gpus`: what one provider offers, priced per machine-hour.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Offer {
    pub provider: String,
    pub instance_type: String,
    pub region: String,
    pub accelerator: String,
    pub gpus: f64,
    pub gpu_memory_gib: Option<f64>,
    pub vcpus: u32,
    pub memory_gib: f64,
    pub on_demand_micros: Option<i64>,
    pub spot_micros: Option<i64>,
}

impl Offer {
    /// The cheaper of spot and on-demand.
    pub fn best(&self) -> i64 {
        match (self.spot_micros, self.on_demand_micros) {
            (Some(s), Some(o)) => s.min(o),
            (Some(p), None) | (None, Some(p)) => p,
            (None, None) => i64::MAX,
        }
    }
}

impl Catalog {
    /// The catalog built into the binary.
    pub fn embedded() -> Arc<Catalog> {
        static C: OnceLock<Arc<Catalog>> = OnceLock::new();
        C.get_or_init(|| {
            Arc::new(Catalog::parse(EMBEDDED).expect("the embedded AWS catalog parses"))
        })
        .clone()
    }

    /// The catalog in use with data directory `data_dir`: the one `trainctl gpus
    /// --refresh` wrote there, else the embedded one. A refreshed file that does not
    /// parse is named with its line.
    pub fn for_data_dir(data_dir: &std::path::Path) -> Result<Arc<Catalog>> {
        let path = super::refresh::user_catalog(data_dir);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Arc::new(
                Catalog::parse(&text).with_context(|| format!("{}", path.display()))?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Catalog::embedded()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn parse(text: &str) -> Result<Catalog> {
        let mut c = Catalog::default();
        let mut lines = text.lines().enumerate();
        let (_, header) = lines.next().context("empty catalog")?;
        let cols: Vec<&str> = header.split(',').collect();
        let at = |name: &str| {
            cols.iter()
                .position(|c| *c == name)
                .with_context(|| format!("catalog has no column `{name}`"))
        };
        let (ty, acc, kind, count, gmem, vcpus, mem, price, spot, region, az) = (
            at("instance_type")?,
            at("accelerator_name")?,
            at("accelerator_kind")?,
            at("accelerator_count")?,
            at("gpu_memory_gib")?,
            at("vcpus")?,
            at("memory_gib")?,
            at("price")?,
            at("spot_price")?,
            at("region")?,
            at("availability_zone")?,
        );
        for (n, line) in lines {
            if line.trim().is_empty() {
                continue;
            }
            let f: Vec<&str> = line.split(',').collect();
            if f.len() != cols.len() {
                bail!(
                    "catalog line {}: {} fields, expected {}",
                    n + 1,
                    f.len(),
                    cols.len()
                );
            }
            let num = |i: usize| -> Result<Option<f64>> {
                if f[i].is_empty() {
                    return Ok(None);
                }
                f[i].parse::<f64>()
                    .map(Some)
                    .with_context(|| format!("catalog line {}: `{}` is not a number", n + 1, f[i]))
            };
            let money = |i: usize| -> Result<Option<Money>> {
                if f[i].is_empty() {
                    return Ok(None);
                }
                Money::from_dollars_str(f[i])
                    .map(Some)
                    .with_context(|| format!("catalog line {}: `{}` is not a price", n + 1, f[i]))
            };
            let name = f[ty].to_string();
            c.types.entry(name.clone()).or_insert(TypeSpec {
                name: name.clone(),
                accelerator: f[acc].to_string(),
                kind: f[kind].to_string(),
                count: num(count)?.unwrap_or(0.0),
                gpu_memory_gib: num(gmem)?,
                vcpus: num(vcpus)?.unwrap_or(0.0) as u32,
                memory_gib: num(mem)?.unwrap_or(0.0),
            });
            let p = c.prices.entry((name, f[region].to_string())).or_default();
            if let Some(od) = money(price)? {
                p.on_demand = Some(od);
            }
            if let Some(s) = money(spot)? {
                p.spot_by_az.insert(f[az].to_string(), s);
            }
        }
        Ok(c)
    }

    pub fn spec(&self, ty: &str) -> Option<&TypeSpec> {
        self.types.get(ty)
    }

    pub fn prices(&self, ty: &str, region: &str) -> Option<&RegionPrices> {
        self.prices.get(&(ty.to_string(), region.to_string()))
    }

    /// Regions the catalog lists `ty` in.
    pub fn regions_of(&self, ty: &str) -> Vec<String> {
        self.prices
            .keys()
            .filter(|(t, _)| t == ty)
            .map(|(_, r)| r.clone())
            .collect()
    }

    /// Up to `n` known types closest to `ty` (same family first, then by edit distance).
    pub fn nearest(&self, ty: &str, n: usize) -> Vec<String> {
        let family = ty.split('.').next().unwrap_or(ty);
        let mut scored: Vec<(usize, &String)> = self
            .types
            .keys()
            .map(|k| {
                let same_family = k.split('.').next() == Some(family);
                (edit_distance(ty, k) + if same_family { 0 } else { 4 }, k)
            })
            .collect();
        scored.sort();
        scored.into_iter().take(n).map(|(_, k)| k.clone()).collect()
    }

    /// Types with at least `min_gpus` GPUs of at least `min_gpu_mem` GiB each, in `region`
    /// (or every region), cheapest first (the better of spot and on-demand).
    pub fn offers(
        &self,
        region: Option<&str>,
        min_gpu_mem: Option<f64>,
        min_gpus: Option<u32>,
    ) -> Vec<Offer> {
        let mut out: Vec<Offer> = self
            .prices
            .iter()
            .filter(|((_, r), _)| region.is_none_or(|want| want == r))
            .filter_map(|((t, r), p)| {
                let s = self.types.get(t)?;
                if s.kind != "gpu" {
                    return None;
                }
                if min_gpu_mem.is_some_and(|m| s.gpu_memory_gib.unwrap_or(0.0) + 1e-9 < m) {
                    return None;
                }
                if min_gpus.is_some_and(|g| s.count < g as f64) {
                    return None;
                }
                Some(Offer {
                    provider: "aws".into(),
                    instance_type: t.clone(),
                    region: r.clone(),
                    accelerator: s.accelerator.clone(),
                    gpus: s.count,
                    gpu_memory_gib: s.gpu_memory_gib,
                    vcpus: s.vcpus,
                    memory_gib: s.memory_gib,
                    on_demand_micros: p.on_demand.map(Money::micros),
                    spot_micros: p.cheapest_spot().map(Money::micros),
                })
            })
            .filter(|o| o.on_demand_micros.is_some() || o.spot_micros.is_some())
            .collect();
        out.sort_by(|a, b| {
            a.best()
                .cmp(&b.best())
                .then_with(|| a.instance_type.cmp(&b.instance_type))
                .then_with(|| a.region.cmp(&b.region))
        });
        out
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_catalog_prices_known_types() {
        let c = Catalog::embedded();
        assert!(c.types.len() > 50, "{} types", c.types.len());
        let g5 = c.spec("g5.xlarge").unwrap();
        assert_eq!(
            (g5.accelerator.as_str(), g5.gpus(), g5.vcpus),
            ("A10G", 1, 4)
        );
        let p = c.prices("g5.xlarge", "us-east-1").unwrap();
        assert_eq!(p.on_demand, Money::from_dollars_str("1.006"));
        let spot = p.cheapest_spot().unwrap();
        assert!(spot < p.on_demand.unwrap() && spot > Money::ZERO);
        // Capacity Blocks only: no on-demand price.
        assert_eq!(
            c.prices("p5e.48xlarge", "us-east-1")
                .and_then(|p| p.on_demand),
            None
        );
    }

    #[test]
    fn a_mistyped_type_gets_its_neighbours() {
        let near = Catalog::embedded().nearest("g5.xlarg", 3);
        assert_eq!(near[0], "g5.xlarge", "{near:?}");
        let near = Catalog::embedded().nearest("p4.24xlarge", 3);
        assert!(near.iter().any(|n| n.starts_with("p4d")), "{near:?}");
    }

    #[test]
    fn offers_filter_by_memory_and_sort_by_price() {
        let c = Catalog::embedded();
        let all = c.offers(Some("us-east-1"), Some(40.0), None);
        assert!(!all.is_empty());
        assert!(
            all.iter()
                .all(|o| o.gpu_memory_gib.unwrap() >= 40.0 && o.region == "us-east-1")
        );
        assert!(all.windows(2).all(|w| w[0].best() <= w[1].best()));
        assert!(!all.iter().any(|o| o.instance_type == "g5.xlarge"));
    }

    #[test]
    fn a_broken_catalog_line_is_named() {
        let e = Catalog::parse("instance_type,accelerator_name,accelerator_kind,accelerator_count,gpu_memory_gib,vcpus,memory_gib,price,spot_price,region,availability_zone\ng5.xlarge,A10G,gpu,1,22,4,16,abc,,us-east-1,use1-az1\n")
            .unwrap_err();
        assert!(format!("{e:#}").contains("line 2"), "{e:#}");
    }
}
