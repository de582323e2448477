//! ngsiflow: persists FIWARE NGSIv2 notifications from Kafka into PostgreSQL/PostGIS, one
//! processor per flow (`historic`, `lastdata`, `mutable`, `errors`).
//!
//! # Layout
//! * pure core (no I/O): [`ngsi`] (notification model, values, geometry, date-times),
//!   [`flow`] (flow specs and transform), [`route`] (datamodels → schema.table);
//! * shell: [`kafka`] (consumer per flow, offsets, dead letter; the only rdkafka user),
//!   [`postgis`] (sink; the only tokio-postgres user), [`metrics`], [`admin`] (HTTP server),
//!   [`app`] (wiring and shutdown), [`config`], [`produce`] (CLI producer).
//!
//! # Delivery guarantee
//! At least once, with idempotent replays. A flow's consumer accumulates a flush window (batch
//! size or linger), writes it in one PostgreSQL transaction — good rows, plus one error log row
//! per bad record — sends dead-letter copies of bad records and waits for the broker's
//! acknowledgement, and only then commits, per partition, the offset after the last message of
//! the window. A crash re-reads at most the uncommitted window: lastdata and mutable upserts are
//! idempotent, an identical historic row is recognised as a replay. Transient database failures
//! pause the flow and retry forever with capped backoff; nothing is skipped.

#![warn(missing_docs)]

pub mod admin;
pub mod app;
pub mod config;
pub mod flow;
pub mod kafka;
pub mod metrics;
pub mod ngsi;
pub mod pipeline;
pub mod postgis;
pub mod produce;
pub mod route;
