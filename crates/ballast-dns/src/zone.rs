//! The zone: the names it is authoritative for and their addresses.
//!
//! Every query gets the answer list rotated by one more place than the previous one, so that
//! clients taking the first address spread over the fleet. With `max_answers`, each client
//! subnet (/24 for IPv4, /56 for IPv6) gets the same K addresses every time — the K that score
//! highest under rendezvous hashing of the subnet with each address — so a client keeps its LBs
//! while the fleet changes around them, and losing one LB only moves the clients that had it.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ballast_config::{Config, LbServer};
use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::fast::Index;

/// What a query asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryType {
    /// IPv4 addresses.
    A,
    /// IPv6 addresses.
    Aaaa,
    /// Anything else (the zone's own records are the server's business).
    Other,
}

/// The answer to one query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The name is outside the zone: this is no open resolver.
    Refused,
    /// The name is inside the zone but does not exist.
    NxDomain,
    /// The name exists but has no record of that type.
    NoData,
    /// The addresses, in the order to send them.
    Answers(Vec<IpAddr>),
}

/// A zone built from one configuration and one view of the fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zone {
    origin: String,
    ttl: u32,
    serial: u64,
    names: BTreeMap<String, Vec<IpAddr>>,
    /// The names again, in the form the fast path looks them up by.
    fast: Index,
}

/// A name in canonical form: lower case, no trailing dot.
fn canonical(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl Zone {
    /// An empty zone for `origin` whose records live `ttl` seconds.
    pub fn new(origin: &str, ttl: u32) -> Self {
        Self {
            origin: canonical(origin),
            ttl,
            serial: 0,
            names: BTreeMap::new(),
            fast: Index::default(),
        }
    }

    /// The zone for `origin`: each pool whose DNS name lies inside it answers with the addresses
    /// of the LB servers that serve the pool and are up (serving, and not found dead).
    pub fn build(origin: &str, ttl: u32, config: &Config, fleet: &[LbServer]) -> Self {
        let mut zone = Self::new(origin, ttl);
        zone.serial = config.revision;
        for pool in &config.pools {
            let Some(dns_name) = &pool.spec.dns_name else {
                continue;
            };
            let name = canonical(dns_name);
            if !zone.contains(&name) {
                continue;
            }
            let mut addresses: Vec<IpAddr> = fleet
                .iter()
                .filter(|lb| lb.is_live())
                .filter(|lb| lb.pools.contains(&pool.spec.name))
                .flat_map(|lb| lb.addresses.iter())
                .filter_map(|address| address.parse::<std::net::SocketAddr>().ok())
                .map(|address| address.ip())
                .collect();
            addresses.sort();
            addresses.dedup();
            zone.names.insert(name, addresses);
        }
        zone.fast = Index::build(zone.names(), &format!("ns.{}", zone.origin));
        zone
    }

    /// The names' addresses in the fast path's form.
    pub(crate) fn fast_index(&self) -> &Index {
        &self.fast
    }

    /// The zone's origin.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The configuration revision it was built from (the SOA serial).
    pub fn serial(&self) -> u64 {
        self.serial
    }

    /// How long answers may be cached, in seconds.
    pub fn ttl(&self) -> u32 {
        self.ttl
    }

    /// Every name with its addresses (for a zone file).
    pub fn names(&self) -> impl Iterator<Item = (&str, &[IpAddr])> {
        self.names
            .iter()
            .map(|(name, addresses)| (name.as_str(), addresses.as_slice()))
    }

    /// The zone as a standard master file (RFC 1035), for serving it with CoreDNS's `file`
    /// plugin or BIND: SOA and NS at the apex (the name server `ns.ORIGIN` at `ns_address`),
    /// then each name's addresses.
    pub fn to_zone_file(&self, ns_address: IpAddr) -> String {
        let origin = &self.origin;
        let mut file = format!(
            "; the LB fleet's zone, written by `ballast dns export` at revision {serial}\n\
             $ORIGIN {origin}.\n$TTL {ttl}\n\
             @\tIN\tSOA\tns.{origin}. hostmaster.{origin}. ({serial} 60 30 3600 {ttl})\n\
             @\tIN\tNS\tns.{origin}.\n\
             ns\tIN\t{ns_type}\t{ns_address}\n",
            serial = self.serial,
            ttl = self.ttl,
            ns_type = if ns_address.is_ipv4() { "A" } else { "AAAA" },
        );
        for (name, addresses) in &self.names {
            let relative = name
                .strip_suffix(origin.as_str())
                .map_or(name.as_str(), |head| head.trim_end_matches('.'));
            for address in addresses {
                let kind = if address.is_ipv4() { "A" } else { "AAAA" };
                file.push_str(&format!("{relative}\tIN\t{kind}\t{address}\n"));
            }
        }
        file
    }

    /// Whether `name` (canonical) is the origin or below it.
    fn contains(&self, name: &str) -> bool {
        name == self.origin
            || name
                .strip_suffix(&self.origin)
                .is_some_and(|head| head.ends_with('.'))
    }

    /// Answers `name` for `qtype` from `client`: at most `max_answers` addresses (the client
    /// subnet's rendezvous subset), rotated by `rotation`.
    pub fn lookup(
        &self,
        name: &str,
        qtype: QueryType,
        client: IpAddr,
        max_answers: Option<usize>,
        rotation: u64,
    ) -> Lookup {
        let name = canonical(name);
        if !self.contains(&name) {
            return Lookup::Refused;
        }
        if name == self.origin {
            return Lookup::NoData;
        }
        let Some(addresses) = self.names.get(&name) else {
            // A name with names below it exists even without records of its own (an empty
            // non-terminal, `demo.ballast.local` above `lb.demo.ballast.local`): NODATA, not
            // NXDOMAIN, or a resolver minimising its queries stops there (RFC 8020).
            let below = format!(".{name}");
            if self.names.keys().any(|known| known.ends_with(&below)) {
                return Lookup::NoData;
            }
            return Lookup::NxDomain;
        };
        let mut matching: Vec<IpAddr> = addresses
            .iter()
            .copied()
            .filter(|address| match qtype {
                QueryType::A => address.is_ipv4(),
                QueryType::Aaaa => address.is_ipv6(),
                QueryType::Other => false,
            })
            .collect();
        if let Some(k) = max_answers
            && k < matching.len()
        {
            let subnet = subnet_of(client);
            matching.sort_by_key(|address| std::cmp::Reverse(score(subnet, *address)));
            matching.truncate(k);
            matching.sort();
        }
        if matching.is_empty() {
            return Lookup::NoData;
        }
        let turn = (rotation % matching.len() as u64) as usize;
        matching.rotate_left(turn);
        Lookup::Answers(matching)
    }
}

/// The client's subnet as bytes: /24 for IPv4, /56 for IPv6.
fn subnet_of(client: IpAddr) -> [u8; 16] {
    let mut subnet = [0u8; 16];
    match client {
        IpAddr::V4(v4) => subnet[..3].copy_from_slice(&v4.octets()[..3]),
        IpAddr::V6(v6) => subnet[..7].copy_from_slice(&v6.octets()[..7]),
    }
    subnet
}

/// The rendezvous score of `address` for `subnet`.
fn score(subnet: [u8; 16], address: IpAddr) -> u64 {
    let seed = xxh3_64_with_seed(&subnet, 0x6261_6c6c_6173_7421);
    let bytes = match address {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    xxh3_64_with_seed(&bytes, seed)
}

#[cfg(test)]
mod tests {
    use ballast_config::{AlgorithmSpec, Pool, PoolSpec};

    use super::*;
    use ballast_config::{LbState, Liveness};

    fn pool(name: &str, dns: &str) -> Pool {
        Pool {
            spec: PoolSpec {
                name: name.into(),
                algorithm: AlgorithmSpec::named("round_robin"),
                hash_key: "client_ip".into(),
                dns_name: Some(dns.into()),
                policy: Default::default(),
            },
            backends: Vec::new(),
        }
    }

    fn lb(
        name: &str,
        address: &str,
        pools: &[&str],
        state: LbState,
        liveness: Liveness,
    ) -> LbServer {
        LbServer {
            name: name.into(),
            addresses: vec![address.into()],
            pools: pools.iter().map(|p| (*p).to_owned()).collect(),
            admin: None,
            applied_revision: 1,
            state,
            last_heartbeat_ms: 0,
            figures: None,
            liveness,
            liveness_reason: None,
        }
    }

    fn client() -> IpAddr {
        "127.0.0.1".parse().expect("ip")
    }

    fn zone() -> Zone {
        let config = Config {
            revision: 1,
            route_tables: Vec::new(),
            pools: vec![
                pool("web", "lb.web.ballast.local."),
                pool("api", "API.Ballast.Local"),
                pool("elsewhere", "lb.example.com"),
            ],
        };
        let fleet = [
            lb(
                "lb-1",
                "127.0.0.11:8080",
                &["web"],
                LbState::Serving,
                Liveness::Up,
            ),
            lb(
                "lb-2",
                "127.0.0.12:8080",
                &["web", "api"],
                LbState::Serving,
                Liveness::Unknown,
            ),
            lb(
                "lb-3",
                "127.0.0.13:8080",
                &["web"],
                LbState::Draining,
                Liveness::Up,
            ),
            lb(
                "lb-4",
                "127.0.0.14:8080",
                &["web"],
                LbState::Serving,
                Liveness::Down,
            ),
            lb(
                "lb-5",
                "[::1]:8080",
                &["web"],
                LbState::Serving,
                Liveness::Up,
            ),
            lb(
                "lb-6",
                "127.0.0.16:8080",
                &["web"],
                LbState::Stopped,
                Liveness::Up,
            ),
        ];
        Zone::build("ballast.local.", 5, &config, &fleet)
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|ip| ip.parse().expect("ip")).collect()
    }

    #[test]
    fn names_answer_with_the_lbs_that_serve_them_and_are_up() {
        let zone = zone();
        assert_eq!(
            zone.lookup("lb.web.ballast.local", QueryType::A, client(), None, 0),
            Lookup::Answers(ips(&["127.0.0.11", "127.0.0.12"]))
        );
        assert_eq!(
            zone.lookup("LB.WEB.ballast.local.", QueryType::Aaaa, client(), None, 0),
            Lookup::Answers(ips(&["::1"]))
        );
        assert_eq!(
            zone.lookup("api.ballast.local", QueryType::A, client(), None, 0),
            Lookup::Answers(ips(&["127.0.0.12"]))
        );
        assert_eq!(
            zone.lookup("api.ballast.local", QueryType::Aaaa, client(), None, 0),
            Lookup::NoData
        );
        assert_eq!(
            zone.lookup("nothing.ballast.local", QueryType::A, client(), None, 0),
            Lookup::NxDomain
        );
        assert_eq!(
            zone.lookup("lb.example.com", QueryType::A, client(), None, 0),
            Lookup::Refused,
            "a pool named outside the zone is not served"
        );
        assert_eq!(
            zone.lookup("xballast.local", QueryType::A, client(), None, 0),
            Lookup::Refused
        );
        assert_eq!(
            zone.lookup("ballast.local", QueryType::A, client(), None, 0),
            Lookup::NoData
        );
    }

    #[test]
    fn names_above_pool_names_exist() {
        let zone = zone();
        assert_eq!(
            zone.lookup("web.ballast.local", QueryType::A, client(), None, 0),
            Lookup::NoData,
            "above lb.web.ballast.local: an empty non-terminal"
        );
        for absent in ["eb.ballast.local", "xweb.ballast.local"] {
            assert_eq!(
                zone.lookup(absent, QueryType::A, client(), None, 0),
                Lookup::NxDomain,
                "{absent} merely ends the same way"
            );
        }
    }

    #[test]
    fn the_zone_file_lists_every_name_under_its_origin() {
        let file = zone().to_zone_file("127.0.0.1".parse().expect("ip"));
        let expected = "; the LB fleet's zone, written by `ballast dns export` at revision 1\n\
                        $ORIGIN ballast.local.\n$TTL 5\n\
                        @\tIN\tSOA\tns.ballast.local. hostmaster.ballast.local. (1 60 30 3600 5)\n\
                        @\tIN\tNS\tns.ballast.local.\n\
                        ns\tIN\tA\t127.0.0.1\n\
                        api\tIN\tA\t127.0.0.12\n\
                        lb.web\tIN\tA\t127.0.0.11\n\
                        lb.web\tIN\tA\t127.0.0.12\n\
                        lb.web\tIN\tAAAA\t::1\n";
        assert_eq!(file, expected);
    }

    #[test]
    fn every_query_rotates_the_first_address() {
        let zone = zone();
        let first = |rotation| match zone.lookup(
            "lb.web.ballast.local",
            QueryType::A,
            client(),
            None,
            rotation,
        ) {
            Lookup::Answers(list) => list[0],
            other => panic!("{other:?}"),
        };
        assert_ne!(first(0), first(1));
        assert_eq!(first(0), first(2));
    }

    #[test]
    fn subsets_are_stable_per_client_subnet_and_move_little_when_an_lb_goes() {
        let config = Config {
            revision: 1,
            pools: vec![pool("web", "lb.web.ballast.local")],
            route_tables: Vec::new(),
        };
        let fleet: Vec<LbServer> = (1..=100)
            .map(|i| {
                lb(
                    &format!("lb-{i}"),
                    &format!("127.0.1.{i}:8080"),
                    &["web"],
                    LbState::Serving,
                    Liveness::Up,
                )
            })
            .collect();
        let zone = Zone::build("ballast.local", 5, &config, &fleet);
        let subset = |zone: &Zone, client: &str, rotation| match zone.lookup(
            "lb.web.ballast.local",
            QueryType::A,
            client.parse().expect("ip"),
            Some(4),
            rotation,
        ) {
            Lookup::Answers(mut list) => {
                list.sort();
                list
            }
            other => panic!("{other:?}"),
        };
        let mine = subset(&zone, "10.1.2.3", 0);
        assert_eq!(mine.len(), 4);
        assert_eq!(
            subset(&zone, "10.1.2.200", 7),
            mine,
            "same /24, same subset"
        );
        assert_ne!(
            subset(&zone, "10.9.9.9", 0),
            mine,
            "another subnet, another subset"
        );

        // One LB of the subset goes: the client keeps the other three.
        let gone = mine[0];
        let smaller: Vec<LbServer> = fleet
            .into_iter()
            .filter(|lb| !lb.addresses[0].starts_with(&format!("{gone}:")))
            .collect();
        let zone = Zone::build("ballast.local", 5, &config, &smaller);
        let after = subset(&zone, "10.1.2.3", 0);
        assert_eq!(after.iter().filter(|ip| mine.contains(ip)).count(), 3);
    }
}
