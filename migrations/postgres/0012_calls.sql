-- Element Call calls on our focus are followed like meetings (attendance, a notice and a
-- summary in the room, removals when a member leaves): `sfu_room` is the call's LiveKit
-- room, named from its Matrix room and slot; NULL for meetings, whose LiveKit room is
-- their id.
ALTER TABLE meetings ADD COLUMN sfu_room TEXT;
CREATE INDEX meetings_sfu_room ON meetings (sfu_room);
