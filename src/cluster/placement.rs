//! Placement: which nodes hold a shard's replicas and which of them should lead. Pure
//! functions of the catalog, so they are tested without a cluster.
//!
//! Rules: replicas go to nodes in the shard's zones (any node if it names none), at least
//! one per named zone while the count allows, each time to the node holding the fewest
//! replicas (ties: lowest id). The preferred leader (first of `initial`) is the chosen node
//! leading the fewest shards, so leaders spread over nodes as groups are created.

use crate::catalog::{Catalog, Shard};
use crate::ids::NodeId;
use std::collections::BTreeMap;

/// Replicas each node holds, and shards each node is the preferred leader of.
fn loads(catalog: &Catalog) -> (BTreeMap<NodeId, usize>, BTreeMap<NodeId, usize>) {
    let mut replicas: BTreeMap<NodeId, usize> = catalog.nodes.keys().map(|n| (*n, 0)).collect();
    let mut leaders = replicas.clone();
    for shard in catalog.shards.values() {
        for r in &shard.replicas {
            *replicas.entry(*r).or_default() += 1;
        }
        if let Some(first) = shard.initial.first() {
            *leaders.entry(*first).or_default() += 1;
        }
    }
    (replicas, leaders)
}

fn in_zones(catalog: &Catalog, node: NodeId, zones: &[String]) -> bool {
    zones.is_empty()
        || catalog
            .node(node)
            .and_then(|n| n.zone.as_ref())
            .is_some_and(|z| zones.iter().any(|want| want.eq_ignore_ascii_case(z)))
}

/// How many replicas a shard should have now: its replication factor (0 = every eligible
/// node), capped by the eligible nodes.
pub fn wanted(catalog: &Catalog, rf: u32, zones: &[String]) -> usize {
    let eligible = catalog
        .nodes
        .keys()
        .filter(|n| in_zones(catalog, **n, zones))
        .count();
    if rf == 0 {
        eligible
    } else {
        (rf as usize).min(eligible)
    }
}

/// Pick up to `count` more nodes for a shard that already has `existing`, honouring
/// `zones`. `extra` counts replicas placed by the same decision but not yet in the catalog.
pub fn choose(
    catalog: &Catalog,
    existing: &[NodeId],
    count: usize,
    zones: &[String],
    extra: &BTreeMap<NodeId, usize>,
) -> Vec<NodeId> {
    let (mut load, _) = loads(catalog);
    for (n, c) in extra {
        *load.entry(*n).or_default() += c;
    }
    let mut chosen: Vec<NodeId> = Vec::new();
    let candidates = |zone: Option<&String>, chosen: &[NodeId]| -> Option<NodeId> {
        catalog
            .nodes
            .values()
            .filter(|n| !existing.contains(&n.id) && !chosen.contains(&n.id))
            .filter(|n| match zone {
                Some(z) => n.zone.as_ref().is_some_and(|nz| nz.eq_ignore_ascii_case(z)),
                None => in_zones(catalog, n.id, zones),
            })
            .min_by_key(|n| (load.get(&n.id).copied().unwrap_or(0), n.id))
            .map(|n| n.id)
    };
    // One per named zone that has none yet, then the least loaded eligible nodes.
    for zone in zones {
        if chosen.len() >= count {
            break;
        }
        let covered = existing
            .iter()
            .chain(&chosen)
            .any(|n| in_zones(catalog, *n, std::slice::from_ref(zone)));
        if !covered {
            if let Some(n) = candidates(Some(zone), &chosen) {
                chosen.push(n);
            }
        }
    }
    while chosen.len() < count {
        match candidates(None, &chosen) {
            Some(n) => chosen.push(n),
            None => break,
        }
    }
    chosen
}

/// Order `replicas` so the node that should lead comes first: the one that is preferred
/// leader of the fewest shards (counting `extra` decided alongside).
pub fn leader_first(
    catalog: &Catalog,
    mut replicas: Vec<NodeId>,
    extra: &BTreeMap<NodeId, usize>,
) -> Vec<NodeId> {
    let (_, mut leaders) = loads(catalog);
    for (n, c) in extra {
        *leaders.entry(*n).or_default() += c;
    }
    if let Some(best) = replicas
        .iter()
        .copied()
        .min_by_key(|n| (leaders.get(n).copied().unwrap_or(0), *n))
    {
        replicas.retain(|n| *n != best);
        replicas.insert(0, best);
    }
    replicas
}

/// Nodes a shard lacks to reach its wanted replica count.
pub fn missing(catalog: &Catalog, shard: &Shard) -> Vec<NodeId> {
    let want = wanted(catalog, shard.replication_factor, &shard.zones);
    if shard.replicas.len() >= want {
        return Vec::new();
    }
    choose(
        catalog,
        &shard.replicas,
        want - shard.replicas.len(),
        &shard.zones,
        &BTreeMap::new(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::NodeRecord;
    use crate::ids::ShardId;

    fn catalog(zones: &[Option<&str>]) -> Catalog {
        let mut c = Catalog::default();
        for (i, z) in zones.iter().enumerate() {
            let id = NodeId(i as u64 + 1);
            c.nodes.insert(
                id,
                NodeRecord {
                    id,
                    cluster_addr: String::new(),
                    pg_addr: String::new(),
                    http_addr: String::new(),
                    zone: z.map(str::to_string),
                },
            );
        }
        c
    }

    fn add_shard(c: &mut Catalog, id: u64, replicas: Vec<NodeId>) {
        c.shards.insert(
            ShardId(id),
            Shard {
                id: ShardId(id),
                colocation: 1,
                initial: replicas.clone(),
                replicas,
                replication_factor: 3,
                zones: vec![],
            },
        );
    }

    #[test]
    fn replicas_go_to_the_least_loaded_nodes() {
        let mut c = catalog(&[None, None, None, None]);
        add_shard(&mut c, 1, vec![NodeId(1), NodeId(2), NodeId(3)]);
        let chosen = choose(&c, &[], 3, &[], &BTreeMap::new());
        assert_eq!(chosen[0], NodeId(4));
        assert_eq!(chosen.len(), 3);
    }

    #[test]
    fn zones_are_honoured_and_each_named_zone_gets_one() {
        let c = catalog(&[Some("beijing"), Some("beijing"), Some("hongkong"), None]);
        let zones = vec!["beijing".to_string(), "hongkong".to_string()];
        let chosen = choose(&c, &[], 3, &zones, &BTreeMap::new());
        assert_eq!(chosen.len(), 3);
        assert!(chosen.contains(&NodeId(3)), "{chosen:?}");
        assert!(!chosen.contains(&NodeId(4)), "{chosen:?}");
        let only_hk = choose(&c, &[], 3, &["hongkong".to_string()], &BTreeMap::new());
        assert_eq!(only_hk, vec![NodeId(3)]);
        assert_eq!(wanted(&c, 3, &["hongkong".to_string()]), 1);
    }

    #[test]
    fn leaders_spread_over_nodes() {
        let mut c = catalog(&[None, None, None]);
        let mut firsts = Vec::new();
        for id in 1..=6 {
            let r = leader_first(&c, vec![NodeId(1), NodeId(2), NodeId(3)], &BTreeMap::new());
            firsts.push(r[0]);
            add_shard(&mut c, id, r);
        }
        for n in 1..=3 {
            assert_eq!(firsts.iter().filter(|f| f.0 == n).count(), 2, "{firsts:?}");
        }
    }

    #[test]
    fn missing_replicas_are_found_when_nodes_join() {
        let mut c = catalog(&[None]);
        add_shard(&mut c, 1, vec![NodeId(1)]);
        assert!(missing(&c, c.shard(ShardId(1)).unwrap()).is_empty());
        let c2 = {
            let mut bigger = catalog(&[None, None, None]);
            bigger.shards = c.shards.clone();
            bigger
        };
        assert_eq!(
            missing(&c2, c2.shard(ShardId(1)).unwrap()),
            vec![NodeId(2), NodeId(3)]
        );
        c = c2;
        let _ = c;
    }
}
