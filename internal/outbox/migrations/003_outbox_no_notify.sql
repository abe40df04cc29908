-- The relay is no longer woken by a notification on commit: a transaction
-- that notifies holds a lock shared by the whole database cluster until
-- its commit record is flushed, so notifying commits flushed one at a time
-- and concurrent writers, in every service, queued behind each other.
-- Writers wake their own process's relay after they commit, and relays
-- poll for the rest.
DROP TRIGGER outbox_notify ON outbox;
DROP FUNCTION outbox_notify();
