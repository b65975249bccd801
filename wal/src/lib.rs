//! Logical replication client and pgoutput decoder. Filled in by the Postgres Changes work.
