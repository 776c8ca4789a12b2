#!/usr/bin/env bash
# Builds hv's fuzz targets and runs each one for SECONDS from its seeds, then prints, per
# target, executions, coverage (libFuzzer's cov/ft), corpus size, how many corpus and seed
# files get past the target's first checks ("deep": parsed, opened, loaded...) and crashes.
#
#   fuzz/run.sh SECONDS [TARGET...]   corpus kept in fuzz/corpus/TARGET (grows run after run),
#                                     log in fuzz/logs/TARGET.log
#   fuzz/run.sh --ci [TARGET...]      what CI runs: every target 20 s from its seeds only (a
#                                     fresh corpus), after replaying fuzz/regressions/TARGET/*
#
# Installs cargo-fuzz if missing. Builds on a stable toolchain (`-s none`: no sanitizer) with
# debug assertions and overflow checks on (`-a`). Exits non-zero if any target crashed,
# timed out or ran out of memory; the input that did it is in fuzz/artifacts/TARGET/.
# Runs under `nice -n ${FUZZ_NICE:-19}` so it yields to builds on a shared machine.
set -euo pipefail
cd "$(dirname "$0")"
FUZZ_DIR=$PWD

ci=false
if [[ ${1:-} == --ci ]]; then
    ci=true
    seconds=20
    shift
elif [[ ${1:-} =~ ^[0-9]+$ ]]; then
    seconds=$1
    shift
else
    echo "usage: $0 SECONDS [TARGET...] | $0 --ci [TARGET...]" >&2
    exit 2
fi

all_targets=$(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^hv-fuzz$')
targets=("$@")
if ((${#targets[@]} == 0)); then
    mapfile -t targets <<<"$all_targets"
fi
for t in "${targets[@]}"; do
    grep -qx "$t" <<<"$all_targets" || { echo "unknown target $t (have: $all_targets)" >&2; exit 2; }
done

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
target_dir=$FUZZ_DIR/target
nice_cmd=(nice -n "${FUZZ_NICE:-19}")
# `cargo fuzz build` takes one target or none (all).
only=()
if ((${#targets[@]} == 1)); then only=("${targets[0]}"); fi
"${nice_cmd[@]}" cargo fuzz build -s none -a --target-dir "$target_dir" "${only[@]}"
bin_dir=$target_dir/x86_64-unknown-linux-gnu/release

mkdir -p logs
failed=()
rows=()
for t in "${targets[@]}"; do
    bin=$bin_dir/$t
    mkdir -p "artifacts/$t"
    if $ci; then
        corpus=$(mktemp -d)
        trap 'rm -rf "$corpus"' EXIT
        # Reproducers of fixed findings must stay fixed.
        if compgen -G "regressions/$t/*" >/dev/null; then
            if ! "${nice_cmd[@]}" "$bin" -runs=0 "regressions/$t"/* >"logs/$t.regressions.log" 2>&1; then
                echo "$t: a regression input crashes again (logs/$t.regressions.log)" >&2
                failed+=("$t (regression)")
            fi
        fi
    else
        corpus=corpus/$t
        mkdir -p "$corpus"
    fi
    log=logs/$t.log
    echo "== $t: ${seconds}s from $(find "seeds/$t" -type f | wc -l) seeds" >&2
    status=0
    "${nice_cmd[@]}" "$bin" "$corpus" "seeds/$t" -max_total_time="$seconds" -timeout=10 \
        -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="artifacts/$t/" \
        >"$log" 2>&1 || status=$?
    last=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1 || true)
    cov=$(grep -oE 'cov: [0-9]+' <<<"$last" | cut -d' ' -f2 || true)
    ft=$(grep -oE 'ft: [0-9]+' <<<"$last" | cut -d' ' -f2 || true)
    corp=$(grep -oE 'corp: [0-9]+/[0-9A-Za-z]+' <<<"$last" | cut -d' ' -f2 || true)
    eps=$(grep -oE 'exec/s: [0-9]+' <<<"$last" | cut -d' ' -f2 || true)
    # How much of the corpus gets past the target's first checks (each input run once).
    depth=$(find "$corpus" "seeds/$t" -type f -print0 | HV_FUZZ_DEPTH=1 xargs -0 "$bin" -runs=0 2>&1 |
        grep -c '^hv-fuzz-depth:' || true)
    files=$(find "$corpus" "seeds/$t" -type f | wc -l)
    result=ok
    if ((status != 0)); then
        result="CRASH (exit $status, see $log and artifacts/$t/)"
        failed+=("$t")
    fi
    rows+=("$(printf '%-15s %12s %8s %6s %7s %12s %11s  %s' "$t" "${execs:-?}" "${eps:-?}" \
        "${cov:-?}" "${ft:-?}" "${corp:-?}" "$depth/$files" "$result")")
    if $ci; then
        rm -rf "$corpus"
        trap - EXIT
    fi
done

printf '%-15s %12s %8s %6s %7s %12s %11s  %s\n' target executions exec/s cov ft corpus deep result
printf '%s\n' "${rows[@]}"
if ((${#failed[@]})); then
    echo "failed: ${failed[*]}" >&2
    exit 1
fi
