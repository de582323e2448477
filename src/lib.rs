//! ngsiflow: persists FIWARE NGSIv2 notifications from Kafka into PostgreSQL/PostGIS, one
//! processor per flow (`historic`, `lastdata`, `mutable`, `errors`).
//!
//! # Layout
//! Follow a message: decode → transform → route → window → write (bind) → dead letters → commit.
//! * pure core (no I/O): [`ngsi`] (notification model, values, geometry, date-times), [`flow`]
//!   (flow specs and transform), [`route`] (datamodels → schema.table), [`tenants`]
//!   (per-tenant datamodel and schema), [`metrics`], [`text`], [`intern`] (shared names);
//! * [`pipeline`]: the generic flow loop — `intake` (decode, transform, bad records to the
//!   error log), `window` (the flush window as a value), `dead_letters`, `handle` (status and
//!   metrics), `ports` (the seams: source, offset committer, window sink, dead-letter sink);
//! * adapters: [`kafka`] (consumer edge converting records to the pipeline's own type, offsets,
//!   dead-letter producer; the only rdkafka user), [`postgis`] (connection and TLS, table
//!   metadata, binding, the writer, error log tables, readable statements; the only
//!   tokio-postgres user);
//! * shell: [`app`] (wiring and shutdown), [`admin`] (HTTP server), [`cli`], [`config`],
//!   [`produce`] (CLI producer), [`workload`] (the benchmark's multi-tenant workload).
//!
//! # Delivery guarantee
//! At least once, with idempotent replays. A flow's consumer accumulates a flush window (batch
//! size or linger), writes it in one PostgreSQL transaction — good rows, plus one error log row
//! per bad record — sends dead-letter copies of bad records and waits for the broker's
//! acknowledgement, and only then commits, per partition, the offset after the last message of
//! the window. A crash re-reads at most the uncommitted window: lastdata and mutable upserts are
//! idempotent, an identical historic row is recognised as a replay, and an error-log row is keyed
//! by its record (flow, topic, partition, offset, entity) so a replayed bad record is logged once.
//! Transient database failures pause the flow and retry forever with capped backoff; nothing is
//! skipped. A table another session keeps locked is set aside (its records carried to the next
//! windows, the partition's offset held at the first of them) while the other tables are written.

#![warn(missing_docs)]

pub mod admin;
pub mod app;
pub mod cli;
pub mod config;
pub mod flow;
pub mod intern;
pub mod kafka;
pub mod metrics;
pub mod ngsi;
pub mod pipeline;
pub mod postgis;
pub mod produce;
pub mod route;
pub mod tenants;
pub mod text;
pub mod workload;
