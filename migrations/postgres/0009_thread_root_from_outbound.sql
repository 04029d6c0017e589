-- A meeting's thread root is the event its link notice became: the meeting refers to the
-- outbound row of that notice, and the row keeps the event id the homeserver returned.
-- The outbound queue knows nothing of meetings.
ALTER TABLE outbound ADD COLUMN event_id TEXT;
UPDATE outbound SET event_id = result_json::jsonb ->> 'event_id'
    WHERE result_json IS NOT NULL AND result_json LIKE '{%';

ALTER TABLE meetings ADD COLUMN link_notice_id BIGINT REFERENCES outbound (id);
-- Every link notice was queued with `root_of` naming its meeting.
UPDATE meetings SET link_notice_id = notice.id
    FROM (SELECT id, request_json::jsonb ->> 'root_of' AS meeting_id FROM outbound
          WHERE request_json LIKE '%"root_of"%') AS notice
    WHERE notice.meeting_id = meetings.id;

-- Messages still waiting for their meeting's thread now name the link notice's row.
UPDATE outbound SET request_json = jsonb_set(
        request_json::jsonb - 'root_of',
        '{in_thread_of}',
        COALESCE((SELECT to_jsonb(m.link_notice_id) FROM meetings m
                  WHERE m.id = outbound.request_json::jsonb ->> 'in_thread_of'), 'null'::jsonb))::text
    WHERE state = 'pending' AND jsonb_typeof(request_json::jsonb -> 'in_thread_of') = 'string';
UPDATE outbound SET request_json = (request_json::jsonb - 'root_of')::text
    WHERE state = 'pending' AND (request_json::jsonb -> 'root_of') IS NOT NULL;

ALTER TABLE meetings DROP COLUMN thread_root_event_id;
