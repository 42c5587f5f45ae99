#!/usr/bin/env python3
"""Benchmark JSON lines to a markdown table: median (min-max) per metric, ratio to the baseline.

    summarize.py [--ours LABEL] LABEL=FILE.jsonl [LABEL=FILE.jsonl ...]

The first column is the baseline. Each file holds one JSON line per run (orcs bench, or a peer
harness with the same keys, or a memory line with `bytes_per_job`).

--ours LABEL adds a last column: that column's median over the best other column's (the highest
rate, or the lowest time or size), naming it, and, when the lines carry a `round` key
(scripts/bench.sh adds it), the worst round's ratio: in each round LABEL's median over the best
of the others in that round.
"""
import json
import statistics
import sys

METRICS = [
    ("enqueue_single_jps", "(a) enqueue one by one, 64 in flight (jobs/s)"),
    ("enqueue_single_unique_jps", "(a') enqueue one by one with a unique key each (jobs/s)"),
    ("enqueue_single_unique_vs_plain", "(a') keyed / plain, alternating rounds, median (>= 0.85)"),
    ("enqueue_bulk_jps", "(b) enqueue, batches of 1000 (jobs/s)"),
    ("drain_jps", "(c) drain N queued, concurrency 64 (jobs/s)"),
    ("drain_limited_jps", "(c') drain N, global concurrency limit 64 (jobs/s)"),
    ("drain_limited_vs_plain", "(c') limited / unlimited, alternating rounds, median (>= 0.90)"),
    ("drain_batch_jps", "(c'') drain N as the children of one batch (jobs/s)"),
    ("drain_batch_vs_drain", "(c'') batch drain / plain drain (>= 0.70)"),
    ("drain_backlog_jps", "(e) drain 50,000 with 1,000,000 queued (jobs/s)"),
    ("latency_p50_ms", "(d) latency p50 at 1000 jobs/s (ms)"),
    ("latency_p99_ms", "(d) latency p99 at 1000 jobs/s (ms)"),
    ("schedule_p50_ms", "schedule slot to job start p50, 10 every second (ms)"),
    ("schedule_p99_ms", "schedule slot to job start p99, 10 every second (<= 50 ms)"),
    ("bytes_per_job", "Redis memory per queued job (bytes)"),
    ("metrics_p50_ms", "/metrics p50 with the backlog queued (ms)"),
    ("metrics_p99_ms", "/metrics p99 with the backlog queued (< 10 ms)"),
    ("overview_p50_ms", "overview page p50 with the backlog queued (ms)"),
    ("overview_p99_ms", "overview page p99 with the backlog queued (< 10 ms)"),
    ("backlog_rss_bytes_per_job", "memory driver: resident memory per queued job (bytes)"),
    ("drain_plain_jps", "(c) drain without heartbeats or metrics (jobs/s)"),
    ("drain_ops5_jps", "(c) drain, heartbeats 5 s + metrics observer + scrape 1 s (jobs/s)"),
    ("drain_ops1_jps", "(c) drain, heartbeats 1 s + metrics observer + scrape 1 s (jobs/s)"),
    ("drain_ops5_vs_plain", "(c) ops (5 s) / plain, median of rounds (>= 0.97)"),
    ("drain_ops1_vs_plain", "(c) ops (1 s) / plain, median of rounds"),
    ("drain_features_plain_jps", "(c) drain, section 8 features off (jobs/s)"),
    ("drain_features_jps", "(c) drain, unique keys + non-binding limit + heartbeats + metrics (jobs/s)"),
    ("drain_features_vs_plain", "(c) features / plain, median of rounds (>= 0.90)"),
    ("drain_features_vs_plain_min", "(c) features / plain, worst round"),
    ("drain_features_unique_vs_plain", "(c) unique keys alone / plain (drain-features-each)"),
    ("drain_features_limit_vs_plain", "(c) non-binding limit alone / plain (drain-features-each)"),
    ("drain_features_ops_vs_plain", "(c) heartbeats + metrics alone / plain (drain-features-each)"),
]


def lower_is_better(key):
    return key.endswith("_ms") or key == "bytes_per_job"


def versus_best(key, ours, others):
    """The `--ours` cell: ours over the best of the others, overall and in the worst round."""
    def median_of(runs, rnd=None):
        vals = [r[key] for r in runs
                if isinstance(r.get(key), (int, float)) and (rnd is None or r.get("round") == rnd)]
        return statistics.median(vals) if vals else None

    def best(runs_by_label, rnd=None):
        meds = [(median_of(runs, rnd), label) for label, runs in runs_by_label]
        meds = [(m, label) for m, label in meds if m is not None and m > 0]
        if not meds:
            return None
        return min(meds) if lower_is_better(key) else max(meds)

    mine, top = median_of(ours), best(others)
    if mine is None:
        return "-"
    if top is None:
        return "no peer figure"
    cell = f"x{mine / top[0]:.2f} ({top[1]})"
    rounds = sorted({r["round"] for r in ours if "round" in r})
    per_round = []
    for rnd in rounds:
        m, t = median_of(ours, rnd), best(others, rnd)
        if m is not None and t is not None:
            per_round.append(m / t[0])
    if len(per_round) > 1:
        worst = max(per_round) if lower_is_better(key) else min(per_round)
        cell += f", worst round x{worst:.2f}"
    return cell


def fmt(x):
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.2f}"


def load(path):
    try:
        with open(path) as f:
            return [json.loads(l) for l in f if l.strip().startswith("{")]
    except FileNotFoundError:
        return []


def main(argv):
    args = argv[1:]
    ours = None
    if len(args) >= 2 and args[0] == "--ours":
        ours, args = args[1], args[2:]
    cols = [(a.rpartition("=")[0], load(a.rpartition("=")[2])) for a in args]
    if ours is not None and ours not in [label for label, _ in cols]:
        print(f"--ours {ours!r} names no column", file=sys.stderr)
        return 2
    if not cols:
        print(__doc__, file=sys.stderr)
        return 2
    # Memory lines (`bytes_per_job` only) are extra measurements of a run, not runs of their own.
    def runs_of(runs):
        return sum(1 for r in runs if "bytes_per_job" not in r)

    extra = [f"{ours} / best peer (time: below 1 is faster)"] if ours is not None else []
    print("| metric | " + " | ".join(
        [f"{label} (runs: {runs_of(runs)})" for label, runs in cols] + extra) + " |")
    print("|---" * (len(cols) + 1 + len(extra)) + "|")
    for key, name in METRICS:
        values = [[r[key] for r in runs if isinstance(r.get(key), (int, float))] for _, runs in cols]
        if not any(values):
            continue
        base = statistics.median(values[0]) if values[0] else None
        cells = []
        for (label, runs), vals in zip(cols, values):
            errors = sum(1 for r in runs if any(k.endswith("_error") and key.startswith(k[:-6]) for k in r))
            if not vals:
                cells.append(f"FAILED ({errors} runs)" if errors else "-")
                continue
            med = statistics.median(vals)
            cell = f"**{fmt(med)}** ({fmt(min(vals))}-{fmt(max(vals))})"
            if base and vals is not values[0]:
                cell += f" x{med / base:.2f}"
            cells.append(cell)
        if ours is not None:
            mine = [runs for label, runs in cols if label == ours][0]
            others = [(label, runs) for label, runs in cols if label != ours]
            cells.append(versus_best(key, mine, others))
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
