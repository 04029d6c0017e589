//! Which shard holds which room. The SFU runs one engine per core ([`super::driver`]):
//! each shard is a thread owning an [`super::Engine`] and its own UDP port, and a room
//! lives on exactly one shard for as long as it has participants, so forwarding never
//! crosses threads. This module is the bookkeeping the handle and the shards share
//! (behind one mutex, taken on joins, leaves and room commands, never per packet): the
//! room → shard map, each shard's participants, the joins on their way to a shard, and
//! the rooms the service ended. Pure, so it is tested without threads.
//!
//! A room is placed at its first join on the shard with the fewest participants
//! (counting joins still on their way), and forgotten when its shard reports it empty
//! with no join on its way to it: a join routed before that report keeps the room where
//! it is, one routed after finds no room and is placed afresh. So a room never spans two
//! shards.

use std::collections::HashMap;

use super::ParticipantKey;
use super::closed::ClosedRooms;
use super::participant::JoinError;

/// The most shards `sfu.shards` may ask for.
pub const MAX_SHARDS: usize = 64;

/// A participant's key outside the driver: its engine's key and its shard in one number,
/// so that signalling (which only holds the key) reaches the right shard.
pub fn global_key(shards: usize, shard: usize, local: ParticipantKey) -> ParticipantKey {
    local * shards + shard
}

/// The shard and the engine's key of a [`global_key`].
pub fn split_key(shards: usize, key: ParticipantKey) -> (usize, ParticipantKey) {
    (key % shards, key / shards)
}

#[derive(Debug)]
struct Place {
    shard: usize,
    /// Joins routed to the room's shard and not yet answered by it.
    joins_in_flight: usize,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Placement {
    rooms: HashMap<String, Place>,
    /// Participants per shard, as each shard last reported.
    participants: Vec<usize>,
    /// Joins routed per shard and not yet answered.
    in_flight: Vec<usize>,
    closed: ClosedRooms,
    /// The server-wide participant limit (`sfu.max_participants`).
    max_participants: usize,
}

impl Placement {
    pub fn new(shards: usize, max_participants: usize) -> Self {
        assert!(
            (1..=MAX_SHARDS).contains(&shards),
            "the configuration admits 1..={MAX_SHARDS} shards"
        );
        Self {
            rooms: HashMap::new(),
            participants: vec![0; shards],
            in_flight: vec![0; shards],
            closed: ClosedRooms::default(),
            max_participants,
        }
    }

    pub fn shards(&self) -> usize {
        self.participants.len()
    }

    /// The shard a join into `room` goes to, counted as on its way until
    /// [`Placement::join_done`]. Refuses ended rooms, and, with several shards, joins
    /// beyond the server-wide limit (a single engine checks that limit itself, exactly:
    /// it also knows a rejoin replaces a session).
    pub fn route_join(&mut self, room: &str) -> Result<usize, JoinError> {
        if self.closed.contains(room) {
            return Err(JoinError::RoomClosed);
        }
        if self.shards() > 1 && self.total() >= self.max_participants {
            return Err(JoinError::ServerFull);
        }
        let shard = match self.rooms.get(room) {
            Some(place) => place.shard,
            None => self.least_loaded(),
        };
        let place = self.rooms.entry(room.to_owned()).or_insert(Place {
            shard,
            joins_in_flight: 0,
        });
        place.joins_in_flight += 1;
        self.in_flight[shard] += 1;
        Ok(shard)
    }

    /// Where a join into `room` would go now, with the same refusals as
    /// [`Placement::route_join`], counting nothing.
    pub fn route_admit(&self, room: &str) -> Result<usize, JoinError> {
        if self.closed.contains(room) {
            return Err(JoinError::RoomClosed);
        }
        if self.shards() > 1 && self.total() >= self.max_participants {
            return Err(JoinError::ServerFull);
        }
        Ok(self.shard_of(room).unwrap_or_else(|| self.least_loaded()))
    }

    /// `shard` answered a join into `room`; `room_open` whether the room has anyone in
    /// it now (a refused first join leaves no room).
    pub fn join_done(&mut self, room: &str, shard: usize, room_open: bool) {
        self.in_flight[shard] = self.in_flight[shard].saturating_sub(1);
        if let Some(place) = self.rooms.get_mut(room)
            && place.shard == shard
        {
            place.joins_in_flight = place.joins_in_flight.saturating_sub(1);
            if place.joins_in_flight == 0 && !room_open {
                self.rooms.remove(room);
            }
        }
    }

    /// `shard` emptied `room`: forgotten unless a join is on its way to it.
    pub fn room_empty(&mut self, room: &str, shard: usize) {
        if self
            .rooms
            .get(room)
            .is_some_and(|place| place.shard == shard && place.joins_in_flight == 0)
        {
            self.rooms.remove(room);
        }
    }

    /// Where `room` is, if it is open (or a join is on its way to it).
    pub fn shard_of(&self, room: &str) -> Option<usize> {
        self.rooms.get(room).map(|place| place.shard)
    }

    /// The service ended `room`: no join is routed to it any more. Returns the shard
    /// to tell, if the room is open.
    pub fn close(&mut self, room: &str) -> Option<usize> {
        self.closed.insert(room);
        self.shard_of(room)
    }

    /// Where a question about a room nobody is in goes (any shard answers it alike).
    pub fn least_loaded(&self) -> usize {
        (0..self.shards())
            .min_by_key(|&shard| (self.participants[shard] + self.in_flight[shard], shard))
            .expect("there is at least one shard")
    }

    /// `shard` now holds `participants`; returns the server's total.
    pub fn report(&mut self, shard: usize, participants: usize) -> usize {
        self.participants[shard] = participants;
        self.participants.iter().sum()
    }

    /// Participants everywhere, and joins on their way.
    /// Participants connected (as the shards last reported) and rooms open: the load a
    /// cluster node reports.
    pub fn load(&self) -> (usize, usize) {
        (self.participants.iter().sum(), self.rooms.len())
    }

    fn total(&self) -> usize {
        self.participants.iter().sum::<usize>() + self.in_flight.iter().sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_their_shard() {
        for shards in [1, 2, 3, 64] {
            for shard in 0..shards {
                for local in [0, 1, 7, 12_345] {
                    let key = global_key(shards, shard, local);
                    assert_eq!(split_key(shards, key), (shard, local));
                }
            }
        }
        // One shard: keys are the engine's own.
        assert_eq!(global_key(1, 0, 42), 42);
    }

    #[test]
    fn new_rooms_go_to_the_least_loaded_shard_and_stay_there() {
        let mut placement = Placement::new(2, 100);
        let a = placement.route_join("a").expect("placed");
        assert_eq!(a, 0);
        // The join on its way counts: the next room goes to the other shard.
        let b = placement.route_join("b").expect("placed");
        assert_eq!(b, 1);
        placement.join_done("a", a, true);
        placement.join_done("b", b, true);
        placement.report(0, 1);
        placement.report(1, 1);
        // More people into "a" stay on its shard whatever the loads.
        placement.report(0, 40);
        assert_eq!(placement.route_join("a"), Ok(0));
        placement.join_done("a", 0, true);
        assert_eq!(placement.route_join("c"), Ok(1));
    }

    #[test]
    fn an_emptied_room_is_forgotten_unless_a_join_is_on_its_way() {
        let mut placement = Placement::new(2, 100);
        let shard = placement.route_join("a").expect("placed");
        placement.join_done("a", shard, true);
        // A join routed before the shard reports the room empty keeps it there.
        assert_eq!(placement.route_join("a"), Ok(shard));
        placement.room_empty("a", shard);
        assert_eq!(placement.shard_of("a"), Some(shard));
        placement.join_done("a", shard, true);
        placement.room_empty("a", shard);
        assert_eq!(placement.shard_of("a"), None);
        // A refused first join leaves nothing behind.
        let shard = placement.route_join("b").expect("placed");
        placement.join_done("b", shard, false);
        assert_eq!(placement.shard_of("b"), None);
    }

    #[test]
    fn a_late_report_from_another_shard_does_not_forget_a_room() {
        let mut placement = Placement::new(2, 100);
        let shard = placement.route_join("a").expect("placed");
        placement.join_done("a", shard, true);
        placement.room_empty("a", 1 - shard);
        assert_eq!(placement.shard_of("a"), Some(shard));
    }

    #[test]
    fn ended_rooms_are_refused_and_the_limit_is_server_wide() {
        let mut placement = Placement::new(2, 3);
        let shard = placement.route_join("a").expect("placed");
        assert_eq!(placement.close("a"), Some(shard));
        assert_eq!(placement.route_join("a"), Err(JoinError::RoomClosed));
        assert_eq!(placement.close("never-opened"), None);
        assert_eq!(
            placement.route_join("never-opened"),
            Err(JoinError::RoomClosed)
        );
        placement.join_done("a", shard, true);
        placement.report(0, 2);
        placement.report(1, 0);
        assert!(placement.route_join("b").is_ok(), "2 of 3");
        assert_eq!(
            placement.route_join("c"),
            Err(JoinError::ServerFull),
            "2 in rooms and 1 on its way"
        );
    }
}
