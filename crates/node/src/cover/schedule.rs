//! What cover traffic sends and how often: a function of the node's own
//! configuration and geometry only (SPEC §7: nothing a peer sends can change
//! a node's cover classes or rates).
//!
//! Every public class the node's links accept (`packet_sizes`) gets cover,
//! each the same share of the operator's byte budget
//! (`cover_bytes_per_sec`): a class is drawn for each cover packet with
//! probability inversely proportional to its packet length, so small classes
//! get many packets and the 1 MiB class a few, and job packets of any class
//! are one among many of their length. The loop and drop means
//! (`cover_loop_ms`, `cover_drop_ms`) are stretched, never shortened, until
//! the expected bytes per second fit the budget.

use std::time::Duration;

use mixnn_sphinx::Geometry;
use rand::Rng;

use crate::config::NodeConfig;

/// The classes cover uses and the gaps between its packets.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    /// `(payload class, packet length)` of every public class, smallest first.
    classes: Vec<(usize, usize)>,
    /// Cumulative draw weights (∝ 1 / packet length), ending at 1.
    cumulative: Vec<f64>,
    /// Mean gap between loops (`None`: loops off).
    pub loop_mean: Option<Duration>,
    /// Mean gap between drops (`None`: drops off).
    pub drop_mean: Option<Duration>,
}

impl Schedule {
    /// The schedule of `cfg` over `g`, or `None` when cover is off (both
    /// rates 0, a budget of 0, or no class of the geometry is a public one).
    pub fn new(g: &Geometry, cfg: &NodeConfig) -> Option<Schedule> {
        let mut classes: Vec<(usize, usize)> = (g.size_classes().iter().copied())
            .filter_map(|c| Some((c, g.packet_len(c).ok()?)))
            .filter(|&(_, len)| u32::try_from(len).is_ok_and(|l| cfg.packet_sizes.contains(&l)))
            .collect();
        classes.sort_unstable();
        classes.dedup();
        let mean = |ms: u64| (ms > 0).then(|| Duration::from_millis(ms).as_secs_f64());
        let (loop_s, drop_s) = (mean(cfg.cover_loop_ms), mean(cfg.cover_drop_ms));
        if classes.is_empty() || cfg.cover_bytes_per_sec == 0 || (loop_s, drop_s) == (None, None) {
            return None;
        }
        let inverse: f64 = classes.iter().map(|&(_, len)| 1.0 / len as f64).sum();
        let mut acc = 0.0;
        let cumulative = (classes.iter())
            .map(|&(_, len)| {
                acc += 1.0 / len as f64 / inverse;
                acc
            })
            .collect();
        // Expected bytes of one packet: classes·(Σ 1/len)⁻¹.
        let mean_len = classes.len() as f64 / inverse;
        let per_sec = loop_s.map_or(0.0, |s| 1.0 / s) + drop_s.map_or(0.0, |s| 1.0 / s);
        let stretch = (per_sec * mean_len / cfg.cover_bytes_per_sec as f64).max(1.0);
        let gap = |s: Option<f64>| s.and_then(|s| Duration::try_from_secs_f64(s * stretch).ok());
        Some(Schedule {
            classes,
            cumulative,
            loop_mean: gap(loop_s),
            drop_mean: gap(drop_s),
        })
    }

    /// The public classes cover uses, smallest first.
    pub fn classes(&self) -> Vec<usize> {
        self.classes.iter().map(|&(c, _)| c).collect()
    }

    /// Draws the class of the next cover packet (each class the same
    /// expected share of bytes).
    pub fn class<R: Rng + ?Sized>(&self, rng: &mut R) -> usize {
        let u: f64 = rng.r#gen();
        let i = self.cumulative.iter().position(|&c| u < c);
        let i = i.unwrap_or(self.classes.len().saturating_sub(1));
        self.classes.get(i).map_or(0, |&(c, _)| c)
    }

    /// Expected cover bytes per second of this schedule.
    pub fn bytes_per_sec(&self) -> f64 {
        let inverse: f64 = self.classes.iter().map(|&(_, len)| 1.0 / len as f64).sum();
        let rate = |m: Option<Duration>| m.map_or(0.0, |m| 1.0 / m.as_secs_f64());
        (rate(self.loop_mean) + rate(self.drop_mean)) * self.classes.len() as f64 / inverse
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_PACKET_SIZES;
    use rand::SeedableRng as _;
    use rand_chacha::ChaCha20Rng;

    fn cfg(budget: u64, ms: u64) -> NodeConfig {
        NodeConfig {
            cover_bytes_per_sec: budget,
            cover_loop_ms: ms,
            cover_drop_ms: ms,
            ..NodeConfig::default()
        }
    }

    #[test]
    fn cover_uses_every_public_class_with_equal_bytes_within_the_budget() {
        let g = Geometry::default();
        let s = Schedule::new(&g, &cfg(64 << 10, 10)).expect("cover on");
        assert_eq!(s.classes(), g.size_classes().to_vec());
        assert!(s.bytes_per_sec() <= (64 << 10) as f64 * 1.0001);
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let mut bytes = vec![0f64; s.classes.len()];
        for _ in 0..200_000 {
            let c = s.class(&mut rng);
            let i = s.classes.iter().position(|&(k, _)| k == c).expect("public");
            bytes[i] += s.classes[i].1 as f64;
        }
        let total: f64 = bytes.iter().sum();
        for b in bytes {
            let share = b / total;
            assert!((share - 0.2).abs() < 0.05, "byte share {share}");
        }
        // A generous budget leaves the configured means alone.
        let s = Schedule::new(&g, &cfg(1 << 30, 1000)).expect("cover on");
        assert_eq!(s.loop_mean, Some(Duration::from_secs(1)));
        assert_eq!(Schedule::new(&g, &cfg(0, 1000)), None, "budget 0: off");
    }

    #[test]
    fn only_classes_the_links_accept() {
        let g = Geometry::default();
        let c = NodeConfig {
            packet_sizes: vec![DEFAULT_PACKET_SIZES[2]],
            ..cfg(1 << 20, 100)
        };
        let s = Schedule::new(&g, &c).expect("cover on");
        assert_eq!(s.classes(), vec![65536]);
    }
}
