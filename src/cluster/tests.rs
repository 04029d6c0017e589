//! Leadership, heartbeats and fencing against a real PostgreSQL.
