//! `ngsiflow` binary: parses the command line and hands over to the library.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use ngsiflow::app::{self, ReloadLog};
use ngsiflow::cli::{Cli, Command};
use ngsiflow::config::Config;
use tokio_util::sync::CancellationToken;

// The hot path allocates many small, short-lived values (JSON trees, bound texts) across
// threads; mimalloc handles that pattern markedly better than glibc malloc (measured with
// scripts/bench.sh, see README "Benchmark").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use tracing_subscriber::{layer::SubscriberExt, reload, util::SubscriberInitExt, EnvFilter};

fn main() -> ExitCode {
    let cli = Cli::parse(); // exits with code 2 on invalid flags
    disable_transparent_huge_pages();
    purge_freed_memory_sooner();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Command::Run(args) = &cli.command {
        runtime.worker_threads(usize::from(args.worker_threads));
    }
    let runtime = runtime.enable_all().build().expect("tokio runtime");
    match cli.command {
        Command::Run(args) => {
            let level = args.log_level.clone();
            let (filter, handle) =
                reload::Layer::new(EnvFilter::new(app::filter_directive(&level)));
            tracing_subscriber::registry()
                .with(filter)
                .with(
                    tracing_subscriber::fmt::layer()
                        .with_target(false)
                        // Colours only on a terminal: log files and collectors get plain text.
                        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout())),
                )
                .init();
            let config = match Config::from_args(args) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("ngsiflow: {e}");
                    return ExitCode::from(2);
                }
            };
            let log = Arc::new(ReloadLog::new(handle, &level));
            match runtime.block_on(app::run(config, log, CancellationToken::new())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    let e = anyhow::Error::from(e);
                    eprintln!("ngsiflow: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Produce(args) => {
            tracing_subscriber::fmt()
                .with_env_filter(EnvFilter::new("warn"))
                .init();
            match runtime.block_on(ngsiflow::produce::run(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("ngsiflow produce: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Has mimalloc return freed memory to the system 20 ms after it is freed instead of after 1 s
/// (its v3 default): a flow frees a whole window at each commit, and a second of them stayed
/// in the RSS (paired benchmark drains: 70-74 MiB of peak RSS with a 25 ms delay against
/// 87-92 MiB). Purging at once kept 1-3 MiB less, but pages freed were faulted in again for
/// the next window (page faults were 7 % of the worker's samples in a drain). On 2026-12-03,
/// drains alternating 0 and 20 ms (10 pairs, one backlog): worker CPU lower with 20 ms in 8
/// pairs, 15.1-17.1 against 14.0-16.6 µs per notification; page faults 158 000-160 000 against
/// 121 000-123 000 per drain (2 pairs counted); peak RSS 57-60 against 59-61 MiB. 100 ms (3
/// drains): 14.7-15.1 µs at 61-62 MiB, too close to the 64 MiB the benchmark's drain is held
/// to. `MIMALLOC_PURGE_DELAY` (milliseconds), when set, still decides.
fn purge_freed_memory_sooner() {
    /// `mi_option_purge_delay` in mimalloc v3's `mi_option_e` (include/mimalloc.h), which the
    /// Rust bindings do not name (they name its neighbours 14 and 16).
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one integer option of the allocator; mimalloc reads it when it next
        // schedules a purge and allows setting options at any time.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 20) };
    }
}

/// Makes the process ineligible for transparent huge pages (Linux `prctl(PR_SET_THP_DISABLE)`,
/// inherited by nothing else: it applies to this process's later page faults). mimalloc asks
/// for huge pages on its arenas, and a 2 MiB page counts whole in the RSS however little of it
/// is used: in paired benchmark drains the worker peaked at 95-98 MiB without them against
/// 117-136 MiB with them, at the same rate and CPU. Elsewhere this does nothing.
fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: PR_SET_THP_DISABLE takes integer arguments only and touches no memory of
        // ours; a failure (an old kernel) leaves the default, which is only a larger RSS.
        let _ = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    }
}
