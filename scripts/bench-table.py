#!/usr/bin/env python3
"""Prints scripts/bench-all.sh's figures (a TSV of storage, name, value) as one Markdown table:
each figure on the durable broker (what scripts/stack.sh runs), on the in-memory one beside it,
its baseline from the same run, the ratio to that baseline, and issue 11's target."""

import sys

figures = {}
with open(sys.argv[1]) as lines:
    for line in lines:
        storage, name, value = line.rstrip("\n").split("\t")
        try:
            figures[(storage, name)] = float(value)
        except ValueError:
            figures[(storage, name)] = None


def get(storage, name):
    return figures.get((storage, name))


def show(value, unit=""):
    if value is None:
        return "n/a"
    if abs(value) >= 100 or value == int(value):
        text = f"{value:,.0f}"
    else:
        # Sub-10 figures (query latencies in ms) keep two decimals.
        text = f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"
    return text + unit


def verdict(value, target, higher_is_better):
    if value is None or target is None:
        return ""
    met = value >= target if higher_is_better else value <= target
    return "met" if met else "**missed**"


# (label, figure, unit, baseline (storage, name) or None, target, higher is better)
ROWS = [
    ("command API, 16 clients (commands/s)", "commands_16", "", ("postgres", "pgbench_16_notify_false", "pgbench, no NOTIFY"), "ratio>=1.0", True),
    ("command API, 64 clients (commands/s)", "commands_64", "", ("postgres", "pgbench_64_notify_false", "pgbench, no NOTIFY"), "ratio>=1.0", True),
    ("command API p99, 16 clients", "commands_16_p99", " ms", None, 50, False),
    ("command API p99, 64 clients", "commands_64_p99", " ms", None, 50, False),
    ("accepted -> published p50, 500/s", "published_p50", " ms", None, None, False),
    ("accepted -> published p99, 500/s", "published_p99", " ms", None, 20, False),
    ("accepted -> visible p50, 500/s", "visible_p50", " ms", None, 30, False),
    ("accepted -> visible p99, 500/s", "visible_p99", " ms", None, 150, False),
    ("not visible at 500/s (any refusal)", "visible_not_visible", "", None, 0, False),
    ("sustained rate (80% of the max)", "sustained_rate", "/s", None, None, True),
    ("sustained: not visible (any refusal)", "sustained_not_visible", "", None, 0, False),
    ("sustained: not visible within the 2 s wait", "sustained_not_projected", "", None, 0, False),
    ("sustained: reads shed (too-many-waiters)", "sustained_shed_waiters", "", None, None, False),
    ("sustained: failed commands", "sustained_failed", "", None, 0, False),
    ("sustained: accepted -> visible p99", "sustained_visible_p99", " ms", None, None, False),
    ("sustained: projector's largest lag", "sustained_max_lag", " msgs", None, None, False),
    ("catch-up (events/s)", "catch_up", "", "raw_consume", 20000, True),
    ("raw rdkafka consume, same broker (msgs/s)", "raw_consume", "", None, None, True),
    ("queries p99, 2,000 requests/s, all reads", "queries_p99", " ms", ("postgres", "pgbench_pk_p99", "pgbench PK select"), 5, False),
    ("queries p99, GET /deliveries/{id}", "queries_by_id_p99", " ms", None, 5, False),
    ("queries p99, a listing page of 50", "queries_list_p99", " ms", None, 5, False),
    ("queries p50, all reads", "queries_p50", " ms", ("postgres", "pgbench_pk_p50", "pgbench PK select"), None, False),
    ("queries failed", "queries_failed", "", None, 0, False),
    ("peak RSS, command API", "rss_command-api", " MiB", None, 150, False),
    ("peak RSS, relay", "rss_relay", " MiB", None, 150, False),
    ("peak RSS, projector", "rss_projector", " MiB", None, 150, False),
    ("peak RSS, query API", "rss_query-api", " MiB", None, 150, False),
    ("peak RSS, broker (nisshi, not ours)", "rss_nisshi", " MiB", None, None, False),
]

print("| figure | durable (stack.sh) | in-memory broker | baseline, same run | durable / baseline | target | durable |")
print("|---|---|---|---|---|---|---|")
for label, name, unit, baseline, target, higher in ROWS:
    durable, memory = get("durable", name), get("memory", name)
    base_value = None
    base_text = ""
    if isinstance(baseline, tuple):
        storage, name_, what = baseline
        base_value = get(storage, name_)
        base_text = f"{show(base_value, unit)} ({what})"
    elif baseline:
        base_value = get("durable", baseline)
        base_text = f"{show(base_value)} (raw consume)"
    ratio = durable / base_value if durable is not None and base_value else None
    ratio_text = f"{ratio:.2f}x" if ratio is not None else ""
    if target == "ratio>=1.0":
        target_text, met = ">= 1.0x", verdict(ratio, 1.0, True)
    elif target is None:
        target_text, met = "", ""
    else:
        sign = ">=" if higher else "<="
        target_text, met = f"{sign} {show(target, unit)}", verdict(durable, target, higher)
    print(f"| {label} | {show(durable, unit)} | {show(memory, unit)} | {base_text} | {ratio_text} | {target_text} | {met} |")

notify = [get("postgres", f"pgbench_{c}_notify_{n}") for c in (16, 64) for n in ("true", "false")]
if all(v for v in notify):
    print()
    print(
        "pgbench, event + outbox insert per transaction, with a NOTIFY in each / without: "
        f"16 clients {show(notify[0])} / {show(notify[1])} tx/s, "
        f"64 clients {show(notify[2])} / {show(notify[3])} tx/s."
    )
