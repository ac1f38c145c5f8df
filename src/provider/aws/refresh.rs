//! `trainctl gpus --refresh`: the catalog's rows for some regions read again from AWS's
//! own APIs, written to `<data>/catalog/aws.csv` (the shipped catalog stays the source of
//! every other region). Per region:
//! - the accelerated types (`DescribeInstanceTypes`: GPU, Neuron/Inferentia, FPGA) with
//!   their accelerators, memory and vCPUs;
//! - the zones offering each (`DescribeInstanceTypeOfferings`), by AZ ID
//!   (`DescribeAvailabilityZones`), since zone names differ between accounts;
//! - the newest Linux spot price per zone (`DescribeSpotPriceHistory` from now);
//! - the on-demand Linux price (the Price List API's `GetProducts`, shared tenancy, no
//!   pre-installed software, capacity status `Used`): one call per type, only served from
//!   us-east-1 (or `endpoints.pricing`). A type it does not price is kept without one
//!   (launches on demand are then refused, as for Capacity-Blocks-only types).

use super::catalog::{Catalog, EMBEDDED};
use super::ec2;
use crate::config::AwsProviderConfig;
use crate::model::Money;
use anyhow::{Context, Result};
use aws_config::SdkConfig;
use aws_sdk_ec2::types::{Filter, InstanceType, LocationType};
use aws_sdk_pricing::types::{Filter as PFilter, FilterType};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// What one region's refresh found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RegionRefresh {
    pub region: String,
    /// Accelerated types offered in at least one zone.
    pub types: usize,
    /// Of those, the ones with an on-demand price.
    pub on_demand: usize,
    /// (type, zone) pairs with a spot price.
    pub spot_prices: usize,
    /// AWS API calls made.
    pub calls: usize,
}

/// One catalog row.
struct Row {
    ty: String,
    accelerator: String,
    kind: &'static str,
    count: f64,
    gpu_mem_gib: Option<f64>,
    vcpus: i32,
    mem_gib: f64,
    on_demand: Option<Money>,
    spot: Option<Money>,
    region: String,
    az_id: String,
}

pub const HEADER: &str = "instance_type,accelerator_name,accelerator_kind,accelerator_count,gpu_memory_gib,vcpus,memory_gib,price,spot_price,region,availability_zone";

/// Where a refreshed catalog lives.
pub fn user_catalog(data_dir: &Path) -> PathBuf {
    data_dir.join("catalog").join("aws.csv")
}

/// When each region was refreshed (`<data>/catalog/aws.refreshed`: `region rfc3339`).
pub fn refreshed_at(data_dir: &Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(data_dir.join("catalog").join("aws.refreshed"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(r, t)| (r.to_string(), t.to_string()))
        .collect()
}

/// A price as AWS writes it (the Price List gives ten decimals, `1.0060000000`), to the
/// micro-dollar: digits past the sixth are rounded half up.
fn money(s: &str) -> Option<Money> {
    let s = s.trim();
    match s.split_once('.') {
        Some((int, frac)) if frac.len() > 6 => {
            let base = Money::from_dollars_str(&format!("{int}.{}", &frac[..6]))?;
            let up = frac.as_bytes()[6] >= b'5' && frac[6..].bytes().all(|b| b.is_ascii_digit());
            Some(if up { Money(base.micros() + 1) } else { base })
        }
        _ => Money::from_dollars_str(s),
    }
}

fn fmt_money(m: Option<Money>) -> String {
    m.map_or_else(String::new, |m| {
        let s = format!("{:.6}", m.micros() as f64 / 1e6);
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    })
}

/// Refresh `regions` and write the user catalog; returns what each region found.
pub async fn refresh(
    sdk: &SdkConfig,
    cfg: &AwsProviderConfig,
    regions: &[String],
    data_dir: &Path,
) -> Result<Vec<RegionRefresh>> {
    let mut pricing =
        aws_sdk_pricing::config::Builder::from(sdk).region(aws_config::Region::new("us-east-1"));
    if let Some(u) = cfg.endpoints.get("pricing") {
        pricing = pricing.endpoint_url(u);
    }
    let pricing = aws_sdk_pricing::Client::from_conf(pricing.build());
    let mut fresh: Vec<Row> = Vec::new();
    let mut report = Vec::new();
    for region in regions {
        let (rows, r) = refresh_region(sdk, cfg, &pricing, region)
            .await
            .with_context(|| format!("refreshing the catalog for {region}"))?;
        fresh.extend(rows);
        report.push(r);
    }
    // Every other region as the current catalog has it (a refreshed one, else the shipped).
    let path = user_catalog(data_dir);
    let current = std::fs::read_to_string(&path).unwrap_or_else(|_| EMBEDDED.to_string());
    let redone: BTreeSet<&str> = regions.iter().map(String::as_str).collect();
    let mut out = String::from(HEADER);
    out.push('\n');
    let cols: Vec<&str> = current.lines().next().unwrap_or("").split(',').collect();
    let region_col = cols.iter().position(|c| *c == "region");
    for line in current.lines().skip(1) {
        let keep = region_col
            .and_then(|i| line.split(',').nth(i))
            .is_some_and(|r| !redone.contains(r));
        if keep && cols.len() == HEADER.split(',').count() {
            out.push_str(line);
            out.push('\n');
        }
    }
    for r in &fresh {
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{}\n",
            r.ty,
            r.accelerator.replace(',', " "),
            r.kind,
            r.count,
            r.gpu_mem_gib
                .map_or_else(String::new, |g| format!("{g:.2}")),
            r.vcpus,
            r.mem_gib,
            fmt_money(r.on_demand),
            fmt_money(r.spot),
            r.region,
            r.az_id
        ));
    }
    // Never write what would not load.
    Catalog::parse(&out).context("the refreshed catalog does not parse")?;
    crate::model::write_whole(&path, out.as_bytes())?;
    let dir = path.parent().context("catalog path")?;
    let mut stamps = refreshed_at(data_dir);
    let now = aws_smithy_types::DateTime::from_millis(crate::model::now_ms())
        .fmt(aws_smithy_types::date_time::Format::DateTime)
        .unwrap_or_default();
    for r in regions {
        stamps.insert(r.clone(), now.clone());
    }
    std::fs::write(
        dir.join("aws.refreshed"),
        stamps
            .iter()
            .map(|(r, t)| format!("{r} {t}\n"))
            .collect::<String>(),
    )?;
    Ok(report)
}

async fn refresh_region(
    sdk: &SdkConfig,
    cfg: &AwsProviderConfig,
    pricing: &aws_sdk_pricing::Client,
    region: &str,
) -> Result<(Vec<Row>, RegionRefresh)> {
    let ec2 = ec2::client(sdk, cfg, region);
    let mut calls = 0usize;
    // Accelerated types.
    struct Spec {
        accelerator: String,
        kind: &'static str,
        count: f64,
        gpu_mem_gib: Option<f64>,
        vcpus: i32,
        mem_gib: f64,
    }
    let mut specs: BTreeMap<String, Spec> = BTreeMap::new();
    let mut token: Option<String> = None;
    loop {
        calls += 1;
        let out = ec2
            .describe_instance_types()
            .set_next_token(token.clone())
            .max_results(100)
            .send()
            .await
            .map_err(|e| ec2::sdk_error("listing instance types", e))?;
        for t in out.instance_types() {
            let Some(name) = t.instance_type().map(|n| n.as_str().to_string()) else {
                continue;
            };
            let gib = |mib: Option<i64>| mib.map(|m| m as f64 / 1024.0);
            // The accelerator: name, kind, count, memory per device.
            let (accelerator, kind, count, gpu_mem_gib) =
                if let Some(g) = t.gpu_info().and_then(|g| g.gpus().first()) {
                    let count: i32 = t
                        .gpu_info()
                        .map_or(0, |i| i.gpus().iter().map(|g| g.count().unwrap_or(0)).sum());
                    (
                        g.name().unwrap_or("GPU"),
                        "gpu",
                        count,
                        gib(g.memory_info().and_then(|m| m.size_in_mib()).map(i64::from)),
                    )
                } else if let Some(n) = t.neuron_info().and_then(|n| n.neuron_devices().first()) {
                    (
                        n.name().unwrap_or("Neuron"),
                        "ml-accelerator",
                        n.count().unwrap_or(0),
                        gib(n.memory_info().and_then(|m| m.size_in_mib()).map(i64::from)),
                    )
                } else if let Some(f) = t.fpga_info().and_then(|f| f.fpgas().first()) {
                    (
                        f.name().unwrap_or("FPGA"),
                        "fpga",
                        f.count().unwrap_or(0),
                        None,
                    )
                } else {
                    continue;
                };
            let spec = Spec {
                accelerator: accelerator.to_string(),
                kind,
                count: count as f64,
                gpu_mem_gib,
                vcpus: t.v_cpu_info().and_then(|v| v.default_v_cpus()).unwrap_or(0),
                mem_gib: gib(t.memory_info().and_then(|m| m.size_in_mib())).unwrap_or(0.0),
            };
            specs.insert(name, spec);
        }
        token = out.next_token().map(str::to_string);
        if token.is_none() {
            break;
        }
    }
    // Zone names -> AZ IDs.
    calls += 1;
    let zones = ec2
        .describe_availability_zones()
        .send()
        .await
        .map_err(|e| ec2::sdk_error("listing availability zones", e))?;
    let az_id: BTreeMap<String, String> = zones
        .availability_zones()
        .iter()
        .filter_map(|z| Some((z.zone_name()?.to_string(), z.zone_id()?.to_string())))
        .collect();
    // Which zones offer which type.
    let mut offered: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let names: Vec<String> = specs.keys().cloned().collect();
    for chunk in names.chunks(100) {
        let mut token: Option<String> = None;
        loop {
            calls += 1;
            let out = ec2
                .describe_instance_type_offerings()
                .location_type(LocationType::AvailabilityZone)
                .filters(
                    Filter::builder()
                        .name("instance-type")
                        .set_values(Some(chunk.to_vec()))
                        .build(),
                )
                .set_next_token(token.clone())
                .send()
                .await
                .map_err(|e| ec2::sdk_error("asking which zones offer the types", e))?;
            for o in out.instance_type_offerings() {
                if let (Some(t), Some(z)) = (o.instance_type(), o.location()) {
                    offered
                        .entry(t.as_str().to_string())
                        .or_default()
                        .insert(z.to_string());
                }
            }
            token = out.next_token().map(str::to_string);
            if token.is_none() {
                break;
            }
        }
    }
    // The newest spot price of each (type, zone).
    let mut spot: BTreeMap<(String, String), (i64, Money)> = BTreeMap::new();
    let offered_names: Vec<String> = offered.keys().cloned().collect();
    for chunk in offered_names.chunks(50) {
        let mut token: Option<String> = None;
        loop {
            calls += 1;
            let out = ec2
                .describe_spot_price_history()
                .set_instance_types(Some(
                    chunk
                        .iter()
                        .map(|t| InstanceType::from(t.as_str()))
                        .collect(),
                ))
                .product_descriptions("Linux/UNIX")
                .start_time(aws_smithy_types::DateTime::from_millis(
                    crate::model::now_ms(),
                ))
                .set_next_token(token.clone())
                .send()
                .await
                .map_err(|e| ec2::sdk_error("reading spot prices", e))?;
            for p in out.spot_price_history() {
                let (Some(t), Some(z), Some(price)) = (
                    p.instance_type(),
                    p.availability_zone(),
                    p.spot_price().and_then(money),
                ) else {
                    continue;
                };
                let at = p.timestamp().and_then(|t| t.to_millis().ok()).unwrap_or(0);
                let key = (t.as_str().to_string(), z.to_string());
                if spot.get(&key).is_none_or(|(seen, _)| at >= *seen) {
                    spot.insert(key, (at, price));
                }
            }
            token = out
                .next_token()
                .filter(|t| !t.is_empty())
                .map(str::to_string);
            if token.is_none() {
                break;
            }
        }
    }
    // On-demand prices.
    let mut on_demand: BTreeMap<String, Money> = BTreeMap::new();
    for ty in &offered_names {
        calls += 1;
        if let Some(p) = on_demand_price(pricing, region, ty).await? {
            on_demand.insert(ty.clone(), p);
        }
    }
    let mut rows = Vec::new();
    for (ty, zones) in &offered {
        let s = &specs[ty];
        for z in zones {
            let Some(id) = az_id.get(z) else { continue };
            rows.push(Row {
                ty: ty.clone(),
                accelerator: s.accelerator.clone(),
                kind: s.kind,
                count: s.count,
                gpu_mem_gib: s.gpu_mem_gib,
                vcpus: s.vcpus,
                mem_gib: s.mem_gib,
                on_demand: on_demand.get(ty).copied(),
                spot: spot.get(&(ty.clone(), z.clone())).map(|(_, p)| *p),
                region: region.to_string(),
                az_id: id.clone(),
            });
        }
    }
    let report = RegionRefresh {
        region: region.to_string(),
        types: offered.len(),
        on_demand: on_demand.len(),
        spot_prices: spot.len(),
        calls,
    };
    Ok((rows, report))
}

/// The on-demand Linux price of `ty` in `region` from the Price List API.
async fn on_demand_price(
    pricing: &aws_sdk_pricing::Client,
    region: &str,
    ty: &str,
) -> Result<Option<Money>> {
    let f = |field: &str, value: &str| {
        PFilter::builder()
            .r#type(FilterType::TermMatch)
            .field(field)
            .value(value)
            .build()
            .expect("a complete filter")
    };
    let out = pricing
        .get_products()
        .service_code("AmazonEC2")
        .filters(f("regionCode", region))
        .filters(f("instanceType", ty))
        .filters(f("operatingSystem", "Linux"))
        .filters(f("tenancy", "Shared"))
        .filters(f("preInstalledSw", "NA"))
        .filters(f("capacitystatus", "Used"))
        .max_results(10)
        .send()
        .await
        .map_err(|e| ec2::sdk_error(&format!("reading the on-demand price of {ty}"), e))?;
    Ok(out.price_list().iter().find_map(|doc| hourly_usd(doc)))
}

/// The hourly USD price in one Price List product document (`terms.OnDemand.*.
/// priceDimensions.*.pricePerUnit.USD`, unit `Hrs`); None for a zero or missing price.
pub fn hourly_usd(doc: &str) -> Option<Money> {
    let v: serde_json::Value = serde_json::from_str(doc).ok()?;
    let terms = v.get("terms")?.get("OnDemand")?.as_object()?;
    terms.values().find_map(|t| {
        t.get("priceDimensions")?
            .as_object()?
            .values()
            .filter(|d| d.get("unit").and_then(|u| u.as_str()) == Some("Hrs"))
            .find_map(|d| {
                let p = money(d.get("pricePerUnit")?.get("USD")?.as_str()?)?;
                (p > Money::ZERO).then_some(p)
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hourly_price_is_read_from_a_price_list_document() {
        let doc = r#"{"product":{"attributes":{"instanceType":"g5.xlarge"}},
          "terms":{"OnDemand":{"ABC.JRTCKXETXF":{"priceDimensions":{
            "ABC.JRTCKXETXF.6YS6EN2CT7":{"unit":"Hrs","pricePerUnit":{"USD":"1.0060000000"}}}}}}}"#;
        assert_eq!(hourly_usd(doc), Money::from_dollars_str("1.006"));
        assert_eq!(hourly_usd(r#"{"terms":{}}"#), None);
        let zero = doc.replace("1.0060000000", "0.0000000000");
        assert_eq!(hourly_usd(&zero), None);
        assert_eq!(fmt_money(Money::from_dollars_str("1.006")), "1.006");
        assert_eq!(fmt_money(Money::from_dollars_str("2")), "2");
        assert_eq!(money("0.0104000000"), Money::from_dollars_str("0.0104"));
        assert_eq!(money("0.00000051"), Money::from_dollars_str("0.000001"));
        assert_eq!(money("0.00000049"), Some(Money::ZERO));
        assert_eq!(money("1.2.3"), None);
    }
}
