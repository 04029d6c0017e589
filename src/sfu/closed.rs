//! The rooms the service ended, so that a join racing the end is refused. A fast path
//! only: the database decides for good whether a meeting has ended (the signalling layer
//! asks it before every join).

use std::collections::{HashSet, VecDeque};

/// Ended rooms remembered. The database decides for good whether a meeting has ended
/// (the signalling layer asks it before every join); this set only closes the race
/// between a close and a join already past that check, which lasts milliseconds. So
/// forgetting the oldest entries, one at a time, costs nothing.
const CLOSED_ROOMS_KEPT: usize = 10_000;

/// Rooms the service ended, newest last; the oldest are forgotten first beyond
/// [`CLOSED_ROOMS_KEPT`] (see there why that is safe).
#[derive(Debug, Default)]
pub struct ClosedRooms {
    names: HashSet<String>,
    order: VecDeque<String>,
}

impl ClosedRooms {
    pub fn insert(&mut self, name: &str) {
        if !self.names.insert(name.to_owned()) {
            return;
        }
        self.order.push_back(name.to_owned());
        if self.order.len() > CLOSED_ROOMS_KEPT
            && let Some(oldest) = self.order.pop_front()
        {
            self.names.remove(&oldest);
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.names.contains(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_rooms_forget_the_oldest_first_one_at_a_time() {
        let mut closed = ClosedRooms::default();
        for i in 0..=CLOSED_ROOMS_KEPT {
            closed.insert(&format!("room-{i}"));
        }
        assert!(!closed.contains("room-0"), "the oldest is forgotten");
        assert!(closed.contains("room-1"));
        assert!(closed.contains(&format!("room-{CLOSED_ROOMS_KEPT}")));
        assert_eq!(closed.names.len(), CLOSED_ROOMS_KEPT);
        // Closing an already closed room does not push another out.
        closed.insert("room-1");
        assert!(closed.contains("room-2"));
    }
}
