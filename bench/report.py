"""The printed table: one line per measure, DXF next to its baseline, the ratio and the issue's goal."""

from __future__ import annotations

from typing import Any

#: Keys of the JSON that the table (and the slow test) expects in every complete run.
ROWS = (
    "noop.postgresql",
    "noop.mariadb",
    "noop.sqlite",
    "noop.postgresql.celery_insert_median",
    "noop.postgresql.procrastinate_median",
    "big_task",
    "small_tasks",
    "csv_import",
    "latency",
    "pool_time",
    "pool_time_one_at_a_time",
    "pool_time_long",
    "throughput_ratio_vs_celery",
)


def _f(value: Any, fmt: str = "{:.0f}") -> str:
    return "-" if value is None else fmt.format(value)


def table(r: dict[str, Any]) -> str:
    lines = [
        f"DXF bench ({r['mode']}, {r['date']}, {r['machine']['cpus']} CPUs) {r['machine'].get('note') or ''}".rstrip(),
        "",
        "| measure | DXF | baseline | ratio | goal |",
        "|---|---|---|---|---|",
    ]
    noop = r.get("noop", {})
    for kind, goal in (("postgresql", "≥ 1.3x"), ("mariadb", "≥ 1.3x"), ("sqlite", "≥ 1.0x")):
        if kind in noop:
            n = noop[kind]
            lines.append(
                f"| no-op subtasks vs raw Celery no-op tasks, {kind} | {n['dxf_median']:.0f}/s | "
                f"{n['raw_celery_median']:.0f}/s | {n['ratio_median']:.2f}x | {goal} |"
            )
    pg = noop.get("postgresql", {})
    if "celery_insert_median" in pg:
        lines.append(
            f"| vs a Celery group doing INSERT+COMMIT per task | {pg['dxf_median']:.0f}/s | "
            f"{pg['celery_insert_median']:.0f}/s | {pg['ratio_vs_insert']:.2f}x | ≥ 1.5x |"
        )
    if "procrastinate_median" in pg:
        lines.append(
            f"| vs procrastinate no-op jobs, same PostgreSQL | {pg['dxf_median']:.0f}/s | "
            f"{pg['procrastinate_median']:.0f}/s | {pg['ratio_vs_procrastinate']:.2f}x | ≥ 1.2x |"
        )
    elif pg:
        lines.append("| vs procrastinate no-op jobs | skipped: procrastinate not installed | | | ≥ 1.2x |")
    for big in r.get("big_task", []):
        state = "" if big["finished"] else f" (stopped at {big['seconds']:.0f} s, {big['done']} done)"
        lines.append(
            f"| one task of {big['subtasks']} no-op subtasks{state} | {big['per_s']:.0f}/s, pass p50 "
            f"{_f(big['pass_p50_ms'])} ms, leader RSS {_f(big['leader_rss_mb'])} MB | | | flat, p50 ≤ 50 ms |"
        )
    if "small_tasks" in r:
        s = r["small_tasks"]
        state = "" if s["finished"] else f" (stopped at {s['seconds']:.0f} s, {s['done']} done)"
        lines.append(
            f"| {s['tasks']} tiny 2-step tasks, 3 nodes{state} | {s['tasks_per_s']:.1f} tasks/s; "
            f"submit {s['submit_per_s']:.0f}/s | | | ≥ 30/s; submit ≥ 500/s |"
        )
    if "csv_import" in r:
        c = r["csv_import"]
        lines.append(
            f"| csv_import vs a Celery chord, {c['rows']} rows | {c['dxf_median_s']:.1f} s | "
            f"{c['chord_median_s']:.1f} s | {c['speedup_vs_chord']:.2f}x | ≥ 1.3x |"
        )
    if "latency" in r:
        lat = r["latency"]
        lines.append(
            f"| submit → first subtask running ({lat['samples']} samples) | p50 {lat['p50_ms']:.0f} ms, "
            f"p95 {lat['p95_ms']:.0f} ms | | | p95 ≤ 150 ms |"
        )
    if "pool_time" in r:
        p = r["pool_time"]
        one = r.get("pool_time_one_at_a_time")
        base = f"{one['share'] * 100:.0f} % one at a time" if one else ""
        lines.append(
            f"| pool time in subtasks, {p['tasks']} tasks x concurrency 2, 2 nodes x 4 slots, parallel subtasks | "
            f"{p['share'] * 100:.0f} % | {base} | | ≥ 90 % |"
        )
    if "pool_time_long" in r:
        p = r["pool_time_long"]
        lines.append(f"| the same, subtasks of {p['sleep_s'] * 1000:.0f} ms | {p['share'] * 100:.0f} % | | | |")
    return "\n".join(lines)


def missing_rows(r: dict[str, Any]) -> list[str]:
    """The keys of :data:`ROWS` absent from a results dict (the slow test wants none)."""
    missing = []
    for key in ROWS:
        node: Any = r
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                missing.append(key)
                break
            node = node[part]
    return missing
