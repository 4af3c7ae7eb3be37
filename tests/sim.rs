//! The fleet simulator (`src/sim`): the same seed gives the same report and picture, byte for
//! byte; small shapes land where their closed-form times say; the site and origin rules hold.

use flotilla::sim::{run, Config};

fn small() -> Config {
    Config { devices: 60, sites: 6, size: 4 << 20, churn: 0.2, reachable: 0.34, ..Config::default() }
}

#[test]
fn the_same_seed_gives_the_same_report_and_picture() {
    let (a, b) = (run(&small()), run(&small()));
    assert_eq!(a.text(), b.text());
    assert_eq!(a.svg(), b.svg());
    let other = run(&Config { seed: 8, ..small() });
    assert_ne!(a.text(), other.text(), "the seed matters (churn times, picks)");
    assert!(a.svg().starts_with("<svg") && a.svg().ends_with("</svg>\n"));
}

#[test]
fn a_site_larger_than_the_connection_slots_hold_is_refused_with_the_reason() {
    assert!(Config::default().check().is_ok(), "20 devices a site");
    let why = Config { devices: 340, sites: 10, ..Config::default() }.check().unwrap_err();
    assert!(why.contains("at most 33 devices per site"), "{why}");
    assert!(Config { devices: 33, sites: 1, ..Config::default() }.check().is_ok());
    assert!(Config { devices: 33, sites: 1, seeds: 1, ..Config::default() }.check().is_err(), "the seed counts");
}

#[test]
fn one_seed_and_one_device_take_the_release_time_at_the_seeds_rate() {
    // 8 MiB at 80 Mbit/s (10 MB/s): 0.839 s, plus at most one step per chunk (a flow that ends
    // inside a step leaves the rest of that step unused: the model's quantisation).
    let c = Config {
        devices: 1,
        sites: 1,
        seeds: 1,
        origin_up: 0.0,
        seed_up: 10e6,
        size: 8 << 20,
        lan_latency: 0.0,
        step: 0.001,
        ..Config::default()
    };
    let r = run(&c);
    let exact = (8 << 20) as f64 / 10e6;
    assert!((r.bound - exact).abs() < 1e-9, "bound {} against {exact}", r.bound);
    let chunks = 32.0;
    assert!(r.all_done >= exact && r.all_done <= exact + chunks * c.step, "all done {} against {exact}", r.all_done);
}

#[test]
fn sites_without_a_reachable_one_take_one_copy_each_from_the_origin_at_the_bound() {
    // 4 sites x 3 devices, origin 40 Mbit/s: the origin must send 4 copies (4 x 4 MiB at
    // 5 MB/s = 3.36 s), more than one site's WAN downlink needs (4 MiB at 2.5 MB/s).
    let c = Config { devices: 12, sites: 4, size: 4 << 20, origin_up: 5e6, origin_delay: 0.0, ..Config::default() };
    let r = run(&c);
    let bound = 4.0 * (4 << 20) as f64 / 5e6;
    assert!((r.bound - bound).abs() < 1e-9);
    assert!((r.origin_egress - 4.0).abs() < 1e-9, "one copy per site: {}", r.origin_egress);
    assert!((r.max_site_wan - 1.0).abs() < 1e-9, "no chunk crosses a site's WAN twice: {}", r.max_site_wan);
    assert!(r.all_done >= bound && r.all_done < bound * 1.2, "{} against the bound {bound}", r.all_done);
}

#[test]
fn sites_behind_a_reachable_site_leave_the_origin_to_it() {
    // 4 sites, the first reachable, a long origin delay: the origin sends about the reachable
    // site's copy, and the three others come through its WAN uplink.
    let c = Config { devices: 8, sites: 4, size: 2 << 20, reachable: 0.25, origin_delay: 30.0, ..Config::default() };
    let r = run(&c);
    assert_eq!(r.sites_behind, 3);
    assert!(r.origin_egress <= 1.05, "origin egress {}", r.origin_egress);
    assert!(r.all_done.is_finite());
}

#[test]
fn with_a_tenth_of_the_sites_reachable_the_origin_sends_about_one_copy() {
    // 30 sites, 3 of them reachable: their super-peers elect one root (the tree), each other
    // site's first device reaches two of them, and sites refused by a full one wait for it.
    let c = Config { devices: 300, sites: 30, size: 4 << 20, reachable: 0.1, ..Config::default() };
    let r = run(&c);
    assert!(r.origin_egress >= 1.0 && r.origin_egress <= 1.5, "origin egress {}", r.origin_egress);
    assert_eq!(r.sites_behind, 29, "every site but the root's fetched from the tree");
    let peer_bound = r.peer_bound.expect("reachable sites");
    assert!(r.all_done >= peer_bound && r.all_done.is_finite(), "{} against {peer_bound}", r.all_done);
}

#[test]
fn a_new_release_reaches_every_device_by_gossip_and_polls() {
    // Sites of 10: the devices poll at their turns (a sixth of a minute apart), so each site
    // learns within one and a half turns of publishing, and tells all its devices at once.
    let c = Config { new_release_after: Some(1.0), poll: 60.0, ..small() };
    let r = run(&c);
    let m = r.manifest_everywhere.expect("measured");
    let turn = c.poll / (c.devices / c.sites) as f64;
    assert!(m > 0.0 && m <= 1.5 * turn + 0.1, "within a site's longest gap between polls ({turn} s turns): {m}");
    assert!(r.last_install.unwrap() >= m);
}
