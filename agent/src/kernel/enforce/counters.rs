//! The programs' counters: totals and per cgroup, from a running agent's maps or the pins.

use std::path::Path;

use anyhow::{Context as _, Result};
use aya::maps::{Map, MapData, PerCpuArray, PerCpuHashMap};
use skillgate_common::{CgroupCounters, counter, map_names};

use super::pins::PinLayout;

pub type Counts = [u64; counter::COUNT as usize];

pub struct Counters {
    totals: PerCpuArray<MapData, u64>,
    per_cgroup: PerCpuHashMap<MapData, u64, CgroupCounters>,
}

impl Counters {
    /// Opens the maps a running (or stopped) agent pinned under `pin_dir`.
    pub fn open_pinned(pin_dir: &Path) -> Result<Self> {
        let maps = PinLayout::new(pin_dir).maps();
        let open = |name: &str| -> Result<Map> {
            let path = maps.join(name);
            let data = MapData::from_pin(&path).with_context(|| {
                format!(
                    "no counters pinned at {} (has `skillgate run` attached with this config?)",
                    path.display()
                )
            })?;
            Ok(Map::from_map_data(data)?)
        };
        Self::from_maps(open(map_names::COUNTERS)?, open(map_names::SKILL_COUNTERS)?)
    }

    pub fn from_maps(totals: Map, per_cgroup: Map) -> Result<Self> {
        Ok(Self {
            totals: PerCpuArray::try_from(totals)?,
            per_cgroup: PerCpuHashMap::try_from(per_cgroup)?,
        })
    }

    /// Every counter summed over CPUs.
    pub fn totals(&self) -> Counts {
        let mut counts = [0; counter::COUNT as usize];
        for (index, slot) in (0u32..).zip(counts.iter_mut()) {
            *slot = self
                .totals
                .get(&index, 0)
                .map(|per_cpu| per_cpu.iter().sum())
                .unwrap_or(0);
        }
        counts
    }

    /// Counters of each cgroup that has any, summed over CPUs.
    pub fn per_cgroup(&self) -> Vec<(u64, Counts)> {
        let mut out: Vec<(u64, Counts)> = self
            .per_cgroup
            .iter()
            .filter_map(Result::ok)
            .map(|(cgroup_id, per_cpu)| {
                let mut counts = [0; counter::COUNT as usize];
                for cpu in per_cpu.iter() {
                    for (sum, value) in counts.iter_mut().zip(cpu.counts) {
                        *sum += value;
                    }
                }
                (cgroup_id, counts)
            })
            .collect();
        out.sort_unstable_by_key(|(id, _)| *id);
        out
    }
}

/// `name=value` for each non-zero counter.
pub fn describe(counts: &Counts) -> String {
    let parts: Vec<String> = counter::NAMES
        .iter()
        .zip(counts)
        .filter(|(_, value)| **value != 0)
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
    if parts.is_empty() {
        "none".to_owned()
    } else {
        parts.join(" ")
    }
}
