#!/usr/bin/env bash
# Fuzzes ngsiflow's pure core with cargo-fuzz (libFuzzer): decode, transform, route, bind.
#
#   scripts/fuzz.sh [--merge] [SECONDS] [TARGET...]
#
# Each target first replays its saved crashes (fuzz/regressions/<target>-*), which must all
# pass, then runs for SECONDS (default 60) on a temporary copy of its seed corpus
# fuzz/corpus/<target>, so a CI run leaves the repository clean. --merge (maintainers) then
# merges the inputs that add coverage back into fuzz/corpus/<target> (libFuzzer -merge=1).
# One summary line per target (and one for its replayed regressions); the exit status is
# non-zero when any target crashed (the crashing input is under fuzz/artifacts/<target>/;
# reproduce with `cargo +nightly fuzz run <target> <artifact>` and keep it as
# fuzz/regressions/<target>-<name>) or a regression fails again.
#
# Needs the nightly toolchain (`rustup toolchain install nightly`). Honours CARGO_BUILD_JOBS;
# on a shared machine run it as `CARGO_BUILD_JOBS=1 nice -n 19 scripts/fuzz.sh`.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

ALL_TARGETS=(decode transform route bind)
SECONDS_PER_TARGET=60
MERGE=0
TARGETS=()
for arg in "$@"; do
    case "$arg" in
        --merge) MERGE=1 ;;
        -h | --help)
            sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        '' | *[!0-9]*)
            if [[ " ${ALL_TARGETS[*]} " == *" $arg "* ]]; then
                TARGETS+=("$arg")
            else
                echo "fuzz.sh: unknown argument '$arg' (targets: ${ALL_TARGETS[*]})" >&2
                exit 2
            fi
            ;;
        *) SECONDS_PER_TARGET="$arg" ;;
    esac
done
((${#TARGETS[@]})) || TARGETS=("${ALL_TARGETS[@]}")

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/ngsiflow-fuzz.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

echo "fuzz.sh: building fuzz targets" >&2
cargo +nightly fuzz build >&2

declare -a SUMMARY=()
FAILED=0
for target in "${TARGETS[@]}"; do
    # Saved crashes (fuzz/regressions/<target>-<name>) are replayed first: each must pass.
    failing=()
    replayed=0
    for input in fuzz/regressions/"$target"-*; do
        [[ -f "$input" ]] || continue
        replayed=$((replayed + 1))
        if ! cargo +nightly fuzz run "$target" "$input" -- -runs=1 >"$WORK/replay.log" 2>&1; then
            failing+=("$input")
            grep -m 1 -A 1 -E "panicked at|ERROR: " "$WORK/replay.log" | sed "s|^|fuzz.sh: $input: |" >&2 || true
        fi
    done
    if ((${#failing[@]})); then
        FAILED=1
    fi
    corpus="$WORK/corpus-$target"
    mkdir -p "$corpus"
    cp -R "fuzz/corpus/$target/." "$corpus/"
    log="$WORK/$target.log"
    echo "fuzz.sh: running $target for ${SECONDS_PER_TARGET}s" >&2
    start=$(date +%s)
    status=0
    cargo +nightly fuzz run "$target" "$corpus" -- \
        -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=2048 -max_len=1048576 \
        -print_final_stats=1 >"$log" 2>&1 || status=$?
    elapsed=$(($(date +%s) - start))
    # libFuzzer's own count of the fuzzing time, when it finished normally.
    done_secs=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -n 1)
    execs=$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$log" | tail -n 1)
    if ((status == 0)); then
        crashes=0
    else
        FAILED=1
        artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
        crashes="${artifact:-"exit status $status, no artifact (see log below)"}"
        {
            echo "----- $target crashed -----"
            # The panic (or sanitizer report), libFuzzer's summary and, for typed targets,
            # cargo-fuzz's Debug rendering of the input.
            grep -m 1 -A 2 -E "panicked at|ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)" "$log" || true
            grep -E "^SUMMARY: |Test unit written to" "$log" || true
            sed -n '/^Output of `std::fmt::Debug`:/,/^Reproduce with:/p' "$log" | sed '$d' || true
            echo "-----"
        } >&2
    fi
    SUMMARY+=("$(printf '%-10s seconds=%-5s executions=%-10s crashes: %s' \
        "$target" "${done_secs:-$elapsed}" "${execs:-?}" "$crashes")")
    if ((replayed)); then
        SUMMARY+=("$(printf '%-10s regressions replayed=%s failing: %s' \
            "$target" "$replayed" "${failing[*]:-0}")")
    fi
    if ((MERGE)) && ((status == 0)); then
        echo "fuzz.sh: merging new $target inputs into fuzz/corpus/$target" >&2
        cargo +nightly fuzz run "$target" "fuzz/corpus/$target" "$corpus" -- \
            -merge=1 -rss_limit_mb=2048 -max_len=1048576 >"$WORK/$target.merge.log" 2>&1 || {
            echo "fuzz.sh: merge of $target failed:" >&2
            tail -n 20 "$WORK/$target.merge.log" >&2
            FAILED=1
        }
    fi
done

echo "fuzz.sh summary (${SECONDS_PER_TARGET}s per target):"
printf '  %s\n' "${SUMMARY[@]}"
exit "$FAILED"
