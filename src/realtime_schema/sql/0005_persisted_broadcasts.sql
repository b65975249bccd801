-- realtime-rs only: client broadcasts stored with `persist` (channel.send / httpSend).
--
-- rs_expires_at: when the message stops being replayed and retention deletes it (UTC
-- wall-clock, like inserted_at); NULL = only the retention age applies.
alter table realtime.messages add column if not exists rs_expires_at timestamp without time zone;
-- rs_delivered_live: the server that stored this message (a persisted client broadcast)
-- delivers it live itself, so Broadcast from Database must not deliver it a second time.
alter table realtime.messages add column if not exists rs_delivered_live boolean not null default false;

-- Retention: expired rows, without scanning the table.
create index if not exists messages_rs_expires_at_idx
  on realtime.messages (rs_expires_at) where rs_expires_at is not null;
