//! A packet's buffer between its length and its delivery, holding what it
//! took from the inbound queue's byte budget.
//!
//! Why a guard: the body is read and opened after the budget is taken, and
//! either can fail (a peer that resets mid-packet, a read timeout, a bad
//! tag). Each such failure would otherwise keep up to one largest-class
//! packet of budget forever, until a flaky or hostile neighbour had used up
//! the queue and every later packet, on every link, was refused as full.

use crate::packets::Budget;

/// A buffer for an admitted packet. Dropped before [`Admitted::deliver`],
/// it gives its budget back.
pub(super) struct Admitted<'a> {
    data: Vec<u8>,
    /// The budget the bytes were taken from (none when a sink takes
    /// packets at once, without queueing them).
    budget: Option<&'a Budget>,
}

impl<'a> Admitted<'a> {
    /// `len` bytes, taken from `budget` if one is given; `None` if the
    /// budget has no room.
    pub(super) fn take(len: usize, budget: Option<&'a Budget>) -> Option<Admitted<'a>> {
        if let Some(b) = budget
            && !b.try_take(len)
        {
            return None;
        }
        Some(Admitted {
            data: vec![0u8; len],
            budget,
        })
    }

    /// The buffer to read the body into.
    pub(super) fn buf(&mut self) -> &mut [u8] {
        &mut self.data
    }

    /// The packet, and whether its bytes are still counted in the budget
    /// (the queue gives them back when the packet is taken off it).
    pub(super) fn deliver(mut self) -> (Vec<u8>, bool) {
        let counted = self.budget.take().is_some();
        (std::mem::take(&mut self.data), counted)
    }
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        if let Some(b) = self.budget {
            b.give_back(self.data.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packet_that_never_arrives_gives_its_budget_back() {
        let budget = Budget::new(100);
        let a = Admitted::take(60, Some(&budget)).expect("room");
        assert!(Admitted::take(60, Some(&budget)).is_none(), "budget full");
        drop(a); // the body failed
        assert_eq!(budget.used(), 0);
        let (data, counted) = Admitted::take(60, Some(&budget)).expect("room").deliver();
        assert_eq!((data.len(), counted), (60, true));
        assert_eq!(budget.used(), 60, "a delivered packet stays counted");
        let (_, counted) = Admitted::take(1000, None).expect("no budget").deliver();
        assert!(!counted);
    }
}
