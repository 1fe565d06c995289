//! Health of the parts of a host (filesystems, network interfaces) from their
//! own figures and attributes, after the node-exporter mixin's alerts, and the
//! host's roll-up of its parts. The planner gathers the figures
//! (`planner::parts`); these functions only judge them.

use std::collections::BTreeMap;

use super::worse;
use crate::config::{FilesystemRules, InterfaceRules};
use crate::model::{Health, Reason};

/// What a filesystem's rules read: shares over the evaluation window, and the
/// time to full at the trend of the free space.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FilesystemFigures {
    /// Free share of the space (available to unprivileged users / size).
    pub space_free: Option<f64>,
    /// Free share of the inodes.
    pub inodes_free: Option<f64>,
    /// When the free space runs out at its current trend (ms from now), if it
    /// falls and the samples span long enough to tell.
    pub full_in_ms: Option<f64>,
}

/// A filesystem's health: space and inodes almost out, filling up, turned
/// read-only. Reasons sorted by code.
pub fn evaluate_filesystem(
    figures: &FilesystemFigures,
    attributes: &BTreeMap<String, String>,
    rules: &FilesystemRules,
) -> (Health, Vec<Reason>) {
    let mut found: Vec<(Health, Reason)> = Vec::new();
    let mount = attributes
        .get("filesystem.mountpoint")
        .map_or("the filesystem", String::as_str);
    if attributes
        .get("filesystem.turned_read_only")
        .is_some_and(|v| v == "true")
    {
        found.push((
            Health::Unhealthy,
            reason(
                "filesystem_read_only",
                format!("{mount} was writable and is now mounted read-only"),
                "system.filesystem.readonly",
                1.0,
                0.0,
            ),
        ));
    }
    let almost_out = |what: &str, share: Option<f64>, degraded: f64, unhealthy: f64| {
        let share = share?;
        let (health, level) = if share < unhealthy {
            (Health::Unhealthy, unhealthy)
        } else if share < degraded {
            (Health::Degraded, degraded)
        } else {
            return None;
        };
        let (code, metric) = match what {
            "space" => ("filesystem_almost_out_of_space", "system.filesystem.usage"),
            _ => (
                "filesystem_almost_out_of_inodes",
                "system.filesystem.inodes.usage",
            ),
        };
        Some((
            health,
            reason(
                code,
                format!(
                    "{mount} has {:.1}% of its {what} free, below {:.1}%",
                    share * 100.0,
                    level * 100.0
                ),
                metric,
                share,
                level,
            ),
        ))
    };
    found.extend(almost_out(
        "space",
        figures.space_free,
        rules.space_free_degraded,
        rules.space_free_unhealthy,
    ));
    found.extend(almost_out(
        "inodes",
        figures.inodes_free,
        rules.inodes_free_degraded,
        rules.inodes_free_unhealthy,
    ));
    if let (Some(free), Some(full_in)) = (figures.space_free, figures.full_in_ms) {
        let level = if free < rules.filling_free_below_unhealthy
            && full_in <= rules.filling_full_within_ms_unhealthy as f64
        {
            Some((Health::Unhealthy, rules.filling_full_within_ms_unhealthy))
        } else if free < rules.filling_free_below_degraded
            && full_in <= rules.filling_full_within_ms_degraded as f64
        {
            Some((Health::Degraded, rules.filling_full_within_ms_degraded))
        } else {
            None
        };
        if let Some((health, within)) = level {
            found.push((
                health,
                reason(
                    "filesystem_filling_up",
                    format!(
                        "{mount} has {:.1}% free and will be full in {} at the current rate",
                        free * 100.0,
                        human_duration(full_in)
                    ),
                    "system.filesystem.full_in",
                    full_in / 1000.0,
                    within as f64 / 1000.0,
                ),
            ));
        }
    }
    verdict(found)
}

/// What a network interface's rules read: errors and drops per packet over
/// the evaluation window, the worse direction of each.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct InterfaceFigures {
    /// Errors per packet, (receive, transmit).
    pub error_ratio: [Option<f64>; 2],
    /// Drops per packet, (receive, transmit).
    pub drop_ratio: [Option<f64>; 2],
}

/// An interface's health: operationally down while set up is UNHEALTHY;
/// errors or drops over their share of the packets are DEGRADED. An interface
/// set down by its administrator is HEALTHY (nothing is wrong).
pub fn evaluate_interface(
    figures: &InterfaceFigures,
    attributes: &BTreeMap<String, String>,
    rules: &InterfaceRules,
) -> (Health, Vec<Reason>) {
    let name = attributes
        .get("interface.name")
        .map_or("the interface", String::as_str);
    let admin_up = attributes
        .get("interface.admin_state")
        .is_some_and(|s| s == "up");
    if !admin_up {
        return (Health::Healthy, Vec::new());
    }
    let mut found = Vec::new();
    let oper = attributes
        .get("interface.oper_state")
        .map_or("unknown", String::as_str);
    if matches!(oper, "down" | "lowerlayerdown" | "notpresent") {
        found.push((
            Health::Unhealthy,
            reason(
                "interface_down",
                format!("{name} is set up but its link is {oper}"),
                "system.network.link.up",
                0.0,
                1.0,
            ),
        ));
    }
    for (what, ratios, limit) in [
        ("errors", figures.error_ratio, rules.error_ratio),
        ("drops", figures.drop_ratio, rules.drop_ratio),
    ] {
        for (direction, ratio) in ["receive", "transmit"].into_iter().zip(ratios) {
            let Some(ratio) = ratio.filter(|r| *r > limit) else {
                continue;
            };
            let metric = match what {
                "errors" => "system.network.errors.rate",
                _ => "system.network.dropped.rate",
            };
            found.push((
                Health::Degraded,
                reason(
                    &format!("interface_{direction}_{what}"),
                    format!(
                        "{name}: {:.2}% of {direction}d packets were {}, above {:.2}%",
                        ratio * 100.0,
                        if what == "errors" {
                            "errors"
                        } else {
                            "dropped"
                        },
                        limit * 100.0
                    ),
                    metric,
                    ratio,
                    limit,
                ),
            ));
        }
    }
    verdict(found)
}

/// A part's health as the roll-up sees it.
#[derive(Debug, Clone, Copy)]
pub struct PartHealth<'a> {
    /// The part's id.
    pub id: &'a str,
    /// Its health.
    pub health: Health,
    /// Its reasons.
    pub reasons: &'a [Reason],
}

/// The reasons a host takes from its parts: one per reason of each DEGRADED
/// or UNHEALTHY part, with the part's code and the part named in the message,
/// and the health they make: DEGRADED at worst (a host with a broken part
/// still runs; its own rules say whether it is unhealthy). Parts without data
/// (UNKNOWN) are left to their own staleness.
pub fn roll_up<'a>(parts: impl IntoIterator<Item = PartHealth<'a>>) -> (Health, Vec<Reason>) {
    let mut reasons = Vec::new();
    for p in parts {
        if !matches!(p.health, Health::Degraded | Health::Unhealthy) {
            continue;
        }
        for r in p.reasons {
            reasons.push(Reason {
                code: r.code.clone(),
                message: format!("{}: {}", p.id, r.message),
                metric: r.metric.clone(),
                observed: r.observed,
                threshold: r.threshold,
            });
        }
    }
    let health = if reasons.is_empty() {
        Health::Healthy
    } else {
        Health::Degraded
    };
    (health, reasons)
}

/// `ms` as people say it: seconds, minutes, hours or days.
pub fn human_duration(ms: f64) -> String {
    let s = ms / 1000.0;
    if s < 90.0 {
        format!("{s:.0} s")
    } else if s < 90.0 * 60.0 {
        format!("{:.0} min", s / 60.0)
    } else if s < 48.0 * 3600.0 {
        format!("{:.1} h", s / 3600.0)
    } else {
        format!("{:.1} days", s / 86_400.0)
    }
}

fn reason(code: &str, message: String, metric: &str, observed: f64, threshold: f64) -> Reason {
    Reason {
        code: code.to_string(),
        message,
        metric: metric.to_string(),
        observed,
        threshold,
    }
}

/// The worst health of `found` (HEALTHY if empty) and its reasons by code.
fn verdict(found: Vec<(Health, Reason)>) -> (Health, Vec<Reason>) {
    let health = found
        .iter()
        .fold(Health::Healthy, |acc, (h, _)| worse(acc, *h));
    let mut reasons: Vec<Reason> = found.into_iter().map(|(_, r)| r).collect();
    reasons.sort_by(|a, b| a.code.cmp(&b.code));
    (health, reasons)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn codes(r: &[Reason]) -> Vec<&str> {
        r.iter().map(|r| r.code.as_str()).collect()
    }

    const HOUR: f64 = 3_600_000.0;

    #[test]
    fn a_filesystem_almost_out_of_space_or_inodes() {
        let rules = FilesystemRules::default();
        let a = attrs(&[("filesystem.mountpoint", "/data")]);
        let roomy = FilesystemFigures {
            space_free: Some(0.5),
            inodes_free: Some(0.9),
            full_in_ms: None,
        };
        assert_eq!(
            evaluate_filesystem(&roomy, &a, &rules),
            (Health::Healthy, vec![])
        );
        let tight = FilesystemFigures {
            space_free: Some(0.04),
            inodes_free: Some(0.02),
            full_in_ms: None,
        };
        let (h, r) = evaluate_filesystem(&tight, &a, &rules);
        assert_eq!(h, Health::Unhealthy, "inodes below 3 %");
        assert_eq!(
            codes(&r),
            vec![
                "filesystem_almost_out_of_inodes",
                "filesystem_almost_out_of_space"
            ]
        );
        assert!(
            r[1].message.starts_with("/data has 4.0% of its space free"),
            "{}",
            r[1].message
        );
        assert_eq!(r[1].threshold, 0.05);
    }

    #[test]
    fn a_filesystem_filling_up_is_judged_by_its_free_share_and_time_to_full() {
        let rules = FilesystemRules::default();
        let a = attrs(&[("filesystem.mountpoint", "/")]);
        let at = |free: f64, full_in_ms: Option<f64>| {
            evaluate_filesystem(
                &FilesystemFigures {
                    space_free: Some(free),
                    inodes_free: None,
                    full_in_ms,
                },
                &a,
                &rules,
            )
        };
        // Half free: never a concern, however fast it fills.
        assert_eq!(at(0.5, Some(HOUR)).0, Health::Healthy);
        // 30 % free, full in 20 h: the 24 h warning.
        let (h, r) = at(0.3, Some(20.0 * HOUR));
        assert_eq!(
            (h, codes(&r)),
            (Health::Degraded, vec!["filesystem_filling_up"])
        );
        assert!(r[0].message.contains("full in 20.0 h"), "{}", r[0].message);
        assert_eq!(human_duration(30_000.0), "30 s");
        assert_eq!(human_duration(600_000.0), "10 min");
        assert_eq!(human_duration(3.0 * 86_400_000.0), "3.0 days");
        // 30 % free, full in two days: nothing yet.
        assert_eq!(at(0.3, Some(48.0 * HOUR)).0, Health::Healthy);
        // 10 % free, full in 3 h: critical.
        assert_eq!(at(0.1, Some(3.0 * HOUR)).0, Health::Unhealthy);
        // 10 % free, full in 10 h: the warning only.
        assert_eq!(at(0.1, Some(10.0 * HOUR)).0, Health::Degraded);
        // Not filling.
        assert_eq!(at(0.1, None).0, Health::Healthy);
    }

    #[test]
    fn a_filesystem_turned_read_only_is_unhealthy_one_mounted_so_is_not() {
        let rules = FilesystemRules::default();
        let turned = attrs(&[
            ("filesystem.mountpoint", "/var"),
            ("filesystem.mode", "ro"),
            ("filesystem.turned_read_only", "true"),
        ]);
        let (h, r) = evaluate_filesystem(&FilesystemFigures::default(), &turned, &rules);
        assert_eq!(
            (h, codes(&r)),
            (Health::Unhealthy, vec!["filesystem_read_only"])
        );
        let by_design = attrs(&[
            ("filesystem.mode", "ro"),
            ("filesystem.turned_read_only", "false"),
        ]);
        assert_eq!(
            evaluate_filesystem(&FilesystemFigures::default(), &by_design, &rules).0,
            Health::Healthy
        );
    }

    #[test]
    fn an_interface_down_or_losing_packets() {
        let rules = InterfaceRules::default();
        let up = attrs(&[
            ("interface.name", "eth0"),
            ("interface.admin_state", "up"),
            ("interface.oper_state", "up"),
        ]);
        let quiet = InterfaceFigures::default();
        assert_eq!(evaluate_interface(&quiet, &up, &rules).0, Health::Healthy);
        let down = attrs(&[
            ("interface.name", "eth0"),
            ("interface.admin_state", "up"),
            ("interface.oper_state", "lowerlayerdown"),
        ]);
        let (h, r) = evaluate_interface(&quiet, &down, &rules);
        assert_eq!((h, codes(&r)), (Health::Unhealthy, vec!["interface_down"]));
        assert_eq!(
            r[0].message,
            "eth0 is set up but its link is lowerlayerdown"
        );
        let set_down = attrs(&[
            ("interface.admin_state", "down"),
            ("interface.oper_state", "down"),
        ]);
        assert_eq!(
            evaluate_interface(&quiet, &set_down, &rules),
            (Health::Healthy, vec![]),
            "set down on purpose"
        );
        let lossy = InterfaceFigures {
            error_ratio: [Some(0.02), Some(0.001)],
            drop_ratio: [None, Some(0.05)],
        };
        let (h, r) = evaluate_interface(&lossy, &up, &rules);
        assert_eq!(h, Health::Degraded);
        assert_eq!(
            codes(&r),
            vec!["interface_receive_errors", "interface_transmit_drops"]
        );
    }

    #[test]
    fn a_host_is_degraded_by_its_broken_parts_and_names_them() {
        let full = [reason(
            "filesystem_almost_out_of_space",
            "/ has 1.0% of its space free".into(),
            "m",
            0.01,
            0.03,
        )];
        let down = [reason(
            "interface_down",
            "eth1 is set up but its link is down".into(),
            "m",
            0.0,
            1.0,
        )];
        let (h, r) = roll_up([
            PartHealth {
                id: "host/a/filesystem/root",
                health: Health::Unhealthy,
                reasons: &full,
            },
            PartHealth {
                id: "host/a/interface/eth1",
                health: Health::Unhealthy,
                reasons: &down,
            },
            PartHealth {
                id: "host/a/disk/vda",
                health: Health::Healthy,
                reasons: &[],
            },
            PartHealth {
                id: "host/a/interface/eth2",
                health: Health::Unknown,
                reasons: &[],
            },
        ]);
        assert_eq!(
            h,
            Health::Degraded,
            "a part makes its host degraded at worst"
        );
        assert_eq!(
            codes(&r),
            vec!["filesystem_almost_out_of_space", "interface_down"]
        );
        assert_eq!(
            r[1].message,
            "host/a/interface/eth1: eth1 is set up but its link is down"
        );
        assert_eq!(roll_up([]), (Health::Healthy, vec![]));
    }
}
