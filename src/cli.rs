//! The `ngsiflow` command line (pure): `run` and `produce` with their flags. Kept apart from
//! `config` (the worker's validated configuration) and `produce` so neither depends on the
//! other.

use clap::{Parser, Subcommand};

use crate::config::RunArgs;
use crate::produce::ProduceArgs;

/// `ngsiflow` command line.
#[derive(Debug, Parser)]
#[command(
    name = "ngsiflow",
    version,
    about = "FIWARE NGSIv2 notifications from Kafka into PostgreSQL/PostGIS"
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the worker: one consumer per enabled flow, writing to PostGIS.
    Run(RunArgs),
    /// Send NGSIv2 notifications to the raw topics (from a file or built-in samples).
    Produce(ProduceArgs),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_errors_exit_with_2() {
        for args in [
            vec!["ngsiflow", "run", "--batch-size", "0"],
            vec!["ngsiflow", "run", "--default-datamodel", "dm-nope"],
            vec!["ngsiflow", "run", "--admin-addr", "nowhere"],
            vec!["ngsiflow", "run", "--log-level", "loud"],
            vec!["ngsiflow", "run", "--pg-url", "postgres://db:notaport/x"],
        ] {
            let err = Cli::try_parse_from(&args).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
    }
}
