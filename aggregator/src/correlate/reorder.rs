//! The reorder buffer: events waiting for the watermark, handed out smallest first.
//!
//! Almost every event arrives in order (an agent forwards its queue oldest first), so the
//! buffer keeps the in-order arrivals as a sorted run in a `VecDeque`: O(1) to append, O(1) to
//! take the front, and the memory it touches is contiguous. Only an arrival smaller than the
//! run's last element (a late agent, a clock step) goes into a binary heap. The smallest
//! element is the smaller of the two fronts, so the order handed out is exactly the order a
//! single heap would give; a stream in reverse order degrades to plain heap behaviour, never
//! to worse.
//!
//! A single binary heap of 50,000 waiting events (5 s of lateness at 10k events/s) costs a
//! sift-down through ~16 cache-missing levels per pop; this was the largest single cost of the
//! engine's hot path.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

/// A priority queue for mostly-sorted input. See the module docs.
#[derive(Debug)]
pub(super) struct Reorder<T: Ord> {
    /// In-order arrivals: sorted, smallest at the front.
    run: VecDeque<T>,
    /// Arrivals smaller than the run's last element when they came.
    rest: BinaryHeap<Reverse<T>>,
}

impl<T: Ord> Default for Reorder<T> {
    fn default() -> Self {
        Reorder {
            run: VecDeque::new(),
            rest: BinaryHeap::new(),
        }
    }
}

impl<T: Ord> Reorder<T> {
    pub(super) fn push(&mut self, x: T) {
        if self.run.back().is_none_or(|last| *last <= x) {
            self.run.push_back(x);
        } else {
            self.rest.push(Reverse(x));
        }
    }

    /// Whether the run's front is the smallest element (false when both are empty).
    fn run_first(&self) -> bool {
        match (self.run.front(), self.rest.peek()) {
            (Some(a), Some(Reverse(b))) => a <= b,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }

    pub(super) fn peek(&self) -> Option<&T> {
        if self.run_first() {
            self.run.front()
        } else {
            self.rest.peek().map(|r| &r.0)
        }
    }

    pub(super) fn pop(&mut self) -> Option<T> {
        if self.run_first() {
            self.run.pop_front()
        } else {
            self.rest.pop().map(|r| r.0)
        }
    }

    pub(super) fn len(&self) -> usize {
        self.run.len() + self.rest.len()
    }

    /// Slots allocated, for memory accounting.
    pub(super) fn capacity(&self) -> usize {
        self.run.capacity() + self.rest.capacity()
    }

    /// Every element, in no particular order.
    pub(super) fn iter(&self) -> impl Iterator<Item = &T> {
        self.run.iter().chain(self.rest.iter().map(|r| &r.0))
    }

    /// Empties the buffer, returning every element in no particular order.
    pub(super) fn take(&mut self) -> Vec<T> {
        let mut v: Vec<T> = std::mem::take(&mut self.run).into();
        v.extend(std::mem::take(&mut self.rest).into_iter().map(|r| r.0));
        v
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Interleaved pushes and pops hand out what one binary heap would, in mostly-sorted,
        /// shuffled and reversed input alike.
        #[test]
        fn pops_in_the_order_of_a_binary_heap(
            ops in proptest::collection::vec((0u32..1000, 0u8..4), 0..300),
            shape in 0u8..3,
        ) {
            let mut r = Reorder::default();
            let mut h = BinaryHeap::new();
            for (i, &(v, op)) in ops.iter().enumerate() {
                // Mostly increasing, random, or decreasing keys; ties broken by position.
                let key = match shape {
                    0 => u32::try_from(i).unwrap_or(0) * 10 + v % 30,
                    1 => v,
                    _ => 10_000 - u32::try_from(i).unwrap_or(0),
                };
                if op == 0 {
                    prop_assert_eq!(r.pop(), h.pop().map(|Reverse(x)| x));
                } else {
                    r.push((key, i));
                    h.push(Reverse((key, i)));
                }
                prop_assert_eq!(r.len(), h.len());
                prop_assert_eq!(r.peek(), h.peek().map(|Reverse(x)| x));
            }
            let mut all: Vec<_> = r.iter().copied().collect();
            all.sort_unstable();
            let mut want: Vec<_> = h.iter().map(|Reverse(x)| *x).collect();
            want.sort_unstable();
            prop_assert_eq!(&all, &want);
            while let Some(Reverse(x)) = h.pop() {
                prop_assert_eq!(r.pop(), Some(x));
            }
            prop_assert_eq!(r.pop(), None);
            prop_assert!(r.take().is_empty());
        }
    }
}
