"""The end-to-end benchmark's report: the one-line progress summary per case,
the summary figures (saturation point, ratios against the seed design), and
bench/results/e2e.json, e2e.md and the PNG plots (copied to docs/bench/)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import orjson

from bench.common import Series, markdown_table, plot_lines
from tests.support import REPO

RESULTS = REPO / "bench" / "results"
# A case holds when its p99 device-to-result latency stays under this, its
# lag stays bounded and it sustains this share of the offered rate.
P99_LIMIT_MS = 500.0
SUSTAINED_SHARE = 0.95
# The end-to-end targets, which the report measures itself against.
TARGET_SUSTAINED_PER_S = 10_000
TARGET_RATIO_VS_SEED = 100

def summary_line(row: dict[str, Any]) -> str:
    if "error" in row:
        return f"  N={row['devices']}: could not run: {row['error'][:300]}"
    mqtt = row["mqtt_latency_ms"]
    return (f"  offered {row['offered_per_s']:,.0f}/s sustained {row['sustained_per_s']:,.0f}/s "
            f"p50 {mqtt['p50']} p95 {mqtt['p95']} p99 {mqtt['p99']} ms"
            + (f" lost {row['lost_results']} dup {row['duplicated_in_kafka']}"
               f" holds={row['holds']}" if "holds" in row else ""))


def finish(figures: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    if "naive" not in figures:  # a partial run: figures only, the report needs both sides
        (RESULTS / "e2e-partial.json").write_bytes(
            orjson.dumps(figures, option=orjson.OPT_INDENT_2))
        print("wrote bench/results/e2e-partial.json (no seed-design run: no report)")
        return
    figures["summary"] = summarise(figures)
    (RESULTS / "e2e.json").write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2))
    pngs = write_report(figures, RESULTS)
    docs = REPO / "docs" / "bench"
    docs.mkdir(parents=True, exist_ok=True)
    for png in pngs:
        shutil.copy(png, docs / png.name)
    print((RESULTS / "e2e.md").read_text())
    print(f"wrote bench/results/e2e.json, e2e.md and {len(pngs)} plots (copied to docs/bench/)")


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 1) if a is not None and b else None


def summarise(figures: dict[str, Any]) -> dict[str, Any]:
    out = {name: summarise_variant(figures, analytics)
           for name, analytics in (("scoring", False), ("analytics", True))
           if any(c["analytics"] == analytics for c in figures["cases"])}
    out["lost_or_duplicated_total"] = sum(
        c.get("lost_readings", 0) + c.get("lost_results", 0) + c.get("duplicated_in_kafka", 0)
        + c.get("duplicated_over_mqtt", 0) for c in figures["cases"])
    return out


def summarise_variant(figures: dict[str, Any], analytics: bool) -> dict[str, Any]:
    cases = [c for c in figures["cases"] if c["analytics"] == analytics and "error" not in c]
    best = max((c for c in cases if c["holds"]), key=lambda c: c["sustained_per_s"],
               default=None)
    naive = figures["naive"]
    same_n = next((c for c in cases if c["devices"] == naive["devices"]), None)
    return {
        "saturation_devices": best["devices"] if best else None,
        "saturation_sustained_per_s": best["sustained_per_s"] if best else None,
        "highest_sustained_per_s": max((c["sustained_per_s"] for c in cases), default=None),
        "naive_sustained_per_s": naive["sustained_per_s"],
        "ratio_sustained_vs_naive": ratio(best["sustained_per_s"] if best else None,
                                          naive["sustained_per_s"]),
        "same_load_ratio_sustained": ratio(same_n["sustained_per_s"] if same_n else None,
                                           naive["sustained_per_s"]),
        "same_load_ratio_p99_naive_over_edgepipe": ratio(
            naive["mqtt_latency_ms"]["p99"], same_n["mqtt_latency_ms"]["p99"] if same_n else None),
    }


def bottlenecks(cases: list[dict[str, Any]], summary: dict[str, Any]) -> list[str]:
    """Per variant, the targets against the figures and, at its highest N, the
    step that took the largest share of the time: where the limit is."""
    out = []
    for analytics in (False, True):
        variant = [c for c in cases if c["analytics"] == analytics]
        if not variant:
            continue
        v = summary["analytics" if analytics else "scoring"]
        top = max(variant, key=lambda c: c["devices"])
        steps = [(share, f"{proc}: {name}") for proc, shares in top["busy_share"].items()
                 for name, share in shares.items()]
        share, step = max(steps, default=(0.0, "none measured"))
        best = v["highest_sustained_per_s"] or 0
        ratio = v["ratio_sustained_vs_naive"]
        out.append(
            f"- {VARIANT_LABEL[analytics]}: highest sustained {best:,.0f} readings/s, "
            f"{'meets' if best >= TARGET_SUSTAINED_PER_S else 'misses'} the "
            f"{TARGET_SUSTAINED_PER_S:,}/s target"
            + (f" by {TARGET_SUSTAINED_PER_S / best:.1f}x" if 0 < best < TARGET_SUSTAINED_PER_S
               else "")
            + f"; {ratio}x the seed design (target {TARGET_RATIO_VS_SEED}x). Busiest step at "
            f"N = {top['devices']:,}: {step}, {share:.2f} s per second.")
    return out


def triple(latency: dict[str, float | None]) -> str:
    return " / ".join("-" if latency[k] is None else f"{latency[k]:,.0f}"
                      for k in ("p50", "p95", "p99"))


VARIANT_LABEL = {False: "scoring", True: "scoring + windows/stats"}


def write_report(figures: dict[str, Any], folder: Path) -> list[Path]:
    """bench/results/e2e.md and three PNGs; returns the PNG paths."""
    cases = sorted((c for c in figures["cases"] if "error" not in c),
                   key=lambda c: (c["analytics"], c["devices"]))
    naive, summary, host = figures["naive"], figures["summary"], figures["machine"]
    rows = [[VARIANT_LABEL[c["analytics"]], f"{c['devices']:,}", f"{c['offered_per_s']:,.0f}",
             f"{c['sustained_per_s']:,.0f}", triple(c["mqtt_latency_ms"]),
             triple(c["mongo_latency_ms"]), c["lag_end"].get("worker"), c["lag_end"].get("sink"),
             c["lost_readings"] + c["lost_results"],
             c["duplicated_in_kafka"] + c["duplicated_over_mqtt"],
             "yes" if c["holds"] else "no"] for c in cases]
    rows.append(["seed design", f"{naive['devices']:,}", f"{naive['offered_per_s']:,.0f}",
                 f"{naive['sustained_per_s']:,.0f}", triple(naive["mqtt_latency_ms"]),
                 triple(naive["mongo_latency_ms"]), "", "", "n/a", "", "no"])
    table = markdown_table(["worker", "N devices", "offered/s", "sustained/s",
                            "device->MQTT result p50/p95/p99 ms",
                            "device->iot.analytics p50/p95/p99 ms", "worker lag at end",
                            "sink lag at end", "lost", "duplicated", "holds"], rows)
    names = sorted({n for c in cases for n in c["resources"]})
    heads = [f"N={c['devices']:,}{' +a' if c['analytics'] else ''}" for c in cases]
    usage = markdown_table(["process", *heads],
                           [[n] + [fmt_usage(c["resources"].get(n)) for c in cases]
                            for n in names])
    steps = sorted({f"{proc}: {name}" for c in cases for proc, shares in c["busy_share"].items()
                    for name in shares})
    busy = markdown_table(["step", *heads], [
        [step] + [f"{c['busy_share'].get(step.split(': ')[0], {}).get(step.split(': ')[1], 0):.2f}"
                  for c in cases] for step in steps])
    failed = [f"- N={c['devices']:,} ({VARIANT_LABEL[c['analytics']]}): {c['error'][:300]}"
              for c in figures["cases"] if "error" in c]
    lines = [f"- {VARIANT_LABEL[name == 'analytics']}: saturation at N = "
             f"{v['saturation_devices']} devices ({v['saturation_sustained_per_s']} readings/s); "
             f"{v['ratio_sustained_vs_naive']}x the seed design's sustained rate; at the same "
             f"load (N = {naive['devices']:,}) {v['same_load_ratio_sustained']}x sustained and "
             f"{v['same_load_ratio_p99_naive_over_edgepipe']}x lower p99"
             for name, v in summary.items() if isinstance(v, dict)]
    text = "\n\n".join([
        f"## End-to-end benchmark ({host['date_utc']})",
        f"Machine: {host['cpus']} cores, {host['memory_gb']} GB, Python {host['python']}, "
        f"every service on it; load average {host['load_avg_1m_at_start']:g} at the start. "
        f"{figures['options']['load_s']:g} s steady window per N at "
        f"{figures['options']['rate']:g} Hz per device.",
        table,
        f"Saturation point: the highest N with p99 < {P99_LIMIT_MS:.0f} ms, lag bounded and "
        f"sustained >= {SUSTAINED_SHARE:.0%} of offered. Seed design sustained "
        f"{naive['sustained_per_s']} readings/s; its subscriber had not forwarded "
        f"{naive['not_forwarded']:,} of {naive['acked']:,} acked readings when it stopped.",
        "\n".join(lines),
        "\n".join(bottlenecks(cases, summary)),
        "CPU (% of one core over the window) and peak RSS (MB) per process "
        "(+a: with windows/stats):",
        usage,
        "Seconds per second of the window spent in each timed step (from the services' "
        "/metrics; the worker's MongoDB and MQTT writes overlap; near 1.00 is the limit):",
        busy, *(["Cases that could not run:", "\n".join(failed)] if failed else []),
        "![throughput](throughput.png) ![p99](p99.png) ![lag](lag.png)"])
    (folder / "e2e.md").write_text(text + "\n")
    throughput: dict[str, Series] = {}
    latency: dict[str, Series] = {}
    for analytics in (False, True):
        variant = [c for c in cases if c["analytics"] == analytics]
        if not variant:
            continue
        xs = [float(c["devices"]) for c in variant]
        label = VARIANT_LABEL[analytics]
        throughput[f"offered ({label})"] = (xs, [c["offered_per_s"] for c in variant])
        throughput[f"sustained ({label})"] = (xs, [c["sustained_per_s"] for c in variant])
        latency[f"to MQTT ({label})"] = (xs, [c["mqtt_latency_ms"]["p99"] or 0 for c in variant])
        latency[f"to iot.analytics ({label})"] = (
            xs, [c["mongo_latency_ms"]["p99"] or 0 for c in variant])
    throughput["sustained (seed design)"] = ([float(naive["devices"])],
                                             [naive["sustained_per_s"]])
    latency["to MQTT (seed design)"] = ([float(naive["devices"])],
                                        [naive["mqtt_latency_ms"]["p99"] or 0])
    return [
        plot_lines(folder / "throughput.png", "Readings/s against devices (1 Hz each)",
                   "devices (N)", "readings/s", throughput, logx=True, logy=True),
        plot_lines(folder / "p99.png", "p99 latency from the device's timestamp", "devices (N)",
                   "ms", latency, logx=True, logy=True, hline=(P99_LIMIT_MS, "500 ms")),
        plot_lines(folder / "lag.png", "Model worker consumer lag (0 s = steady window start)",
                   "seconds", "records behind", {
                       f"N={c['devices']:,} {VARIANT_LABEL[c['analytics']]}": (
                           [t - c["lag_window_s"][0] for t, _ in c["lag_series"]["worker"]],
                           [v for _, v in c["lag_series"]["worker"]]) for c in cases},
                   symlogy=True),
    ]


def fmt_usage(usage: dict[str, float] | None) -> str:
    return "" if usage is None else f"{usage['cpu_percent']:.0f}% / {usage['peak_rss_mb']:.0f}"
