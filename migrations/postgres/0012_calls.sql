-- Element Call calls on our focus are followed like meetings (attendance, a notice and a
-- summary in the room, removals when a member leaves): `sfu_room` is the call's LiveKit
-- room, named from its Matrix room and slot, and `call_room_id` that Matrix room (while
-- `matrix_room_id`, where notices go, is set only when the bot is in it). Both NULL for
-- meetings, whose LiveKit room is their id.
ALTER TABLE meetings ADD COLUMN sfu_room TEXT;
ALTER TABLE meetings ADD COLUMN call_room_id TEXT;
CREATE INDEX meetings_sfu_room ON meetings (sfu_room);
CREATE INDEX meetings_call_room ON meetings (call_room_id);
