-- A meeting's thread root is the event its link notice became: the meeting refers to the
-- outbound row of that notice, and the row keeps the event id the homeserver returned.
-- The outbound queue knows nothing of meetings.
ALTER TABLE outbound ADD COLUMN event_id TEXT;
UPDATE outbound SET event_id = json_extract(result_json, '$.event_id')
    WHERE result_json IS NOT NULL AND json_valid(result_json);

ALTER TABLE meetings ADD COLUMN link_notice_id INTEGER REFERENCES outbound (id);
-- Every link notice was queued with `root_of` naming its meeting.
UPDATE meetings SET link_notice_id = notice.id
    FROM (SELECT id, json_extract(request_json, '$.root_of') AS meeting_id FROM outbound
          WHERE request_json LIKE '%"root_of"%') AS notice
    WHERE notice.meeting_id = meetings.id;

-- Messages still waiting for their meeting's thread now name the link notice's row.
UPDATE outbound SET request_json = json_set(
        json_remove(request_json, '$.root_of'),
        '$.in_thread_of',
        (SELECT m.link_notice_id FROM meetings m
         WHERE m.id = json_extract(outbound.request_json, '$.in_thread_of')))
    WHERE state = 'pending' AND json_type(request_json, '$.in_thread_of') = 'text';
UPDATE outbound SET request_json = json_remove(request_json, '$.root_of')
    WHERE state = 'pending' AND json_type(request_json, '$.root_of') IS NOT NULL;

ALTER TABLE meetings DROP COLUMN thread_root_event_id;
