"""The whole worker with and without stream analytics, over interleaved
rounds and two streams (used by `bench_worker`).

One round runs, per stream, the scoring-only worker and the worker with
analytics (and, with a baseline checkout, that checkout's worker with
analytics) back to back; the order alternates between rounds so drift in the
machine's load does not always favour the same side. Each figure is a ratio
within one round; the summary gives their median and spread over the rounds.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BARE = "scoring only"


@dataclass(frozen=True)
class Stream:
    name: str
    devices: int
    period_s: float
    about: str
    paced: bool = False  # sent at its own rate while the worker runs, not pre-loaded


# The simulator's default rate (1 Hz) is the representative stream and the one
# the < 20 % target is judged on; the sparse one closes ~5x more windows per
# reading and is reported beside it.
STREAMS = {
    "1hz": Stream("1hz", 500, 1.0, "500 devices at 1 Hz, the simulator's default rate"),
    "sparse": Stream("sparse", 50, 5.0, "50 devices, one reading each per 5 s"),
    # The same 1 Hz stream live (500 readings/s): what checkpoints cost per second
    # weighs per reading as in operation; time is then the input rate, CPU is the figure.
    "1hz-live": Stream("1hz-live", 500, 1.0, "the 1 Hz stream sent live, 500 readings/s",
                       paced=True),
}
PACED_EVENTS = 10_000  # 20 s at 500 readings/s
JUDGED_ON = "1hz"


def added(bare: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    """What analytics adds over the scoring-only run of the same round, in %."""
    cpu_bare, cpu = bare["cpu_us_per_event"], run["cpu_us_per_event"]
    return {
        "time_pct": 100 * (bare["worker_events_per_s"] / run["worker_events_per_s"] - 1),
        "time_durable_pct": 100 * (bare["worker_events_per_s"] / run["durable_events_per_s"] - 1),
        "cpu_all_pct": 100 * (sum(cpu.values()) / sum(cpu_bare.values()) - 1),
        "cpu_worker_pct": 100 * (cpu["worker"] / cpu_bare["worker"] - 1),
        # Where the added CPU goes, us per event per process.
        "cpu_added_us": {k: v - cpu_bare.get(k, 0.0) for k, v in cpu.items()},
    }


def spread(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 1), "min": round(min(values), 1),
            "max": round(max(values), 1)}


def summarize(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Median and range over the rounds of each variant's added cost."""
    out: dict[str, Any] = {}
    for label in rounds[0]:
        if label == BARE:
            continue
        each = [added(r[BARE], r[label]) for r in rounds]
        out[label] = {key: spread([e[key] for e in each])
                      for key in ("time_pct", "time_durable_pct", "cpu_all_pct",
                                  "cpu_worker_pct")}
        out[label]["cpu_added_us_median"] = {
            k: round(statistics.median(e["cpu_added_us"][k] for e in each), 1)
            for k in each[0]["cpu_added_us"]}
    out[BARE] = {"events_per_s": spread([r[BARE]["worker_events_per_s"] for r in rounds]),
                 "cpu_us_per_event_median": {
                     k: round(statistics.median(r[BARE]["cpu_us_per_event"][k] for r in rounds), 1)
                     for k in rounds[0][BARE]["cpu_us_per_event"]}}
    return out


def run_rounds(run: Callable[..., dict[str, Any]], variants: list[tuple[str, bool, Path]],
               streams: list[Stream], rounds: int) -> dict[str, Any]:
    """`run(analytics=, repo=, devices=, period_s=)` is one whole-worker run."""
    per_stream: dict[str, list[dict[str, dict[str, Any]]]] = {s.name: [] for s in streams}
    for round_no in range(rounds):
        order = variants if round_no % 2 == 0 else variants[::-1]
        for stream in streams:
            figures = {label: run(analytics=analytics, repo=repo, devices=stream.devices,
                                  period_s=stream.period_s, paced=stream.paced)
                       for label, analytics, repo in order}
            per_stream[stream.name].append(figures)
            line = ", ".join(f"{label} {f['worker_events_per_s']:,}/s" for label, f in
                             figures.items())
            print(f"round {round_no + 1}, {stream.name}: {line}", flush=True)
            for label, f in figures.items():
                if label != BARE:
                    a = added(figures[BARE], f)
                    print(f"  {label}: +{a['time_pct']:.1f}% time, +{a['cpu_all_pct']:.1f}% CPU "
                          f"(worker + services), worker +{a['cpu_worker_pct']:.1f}%; added CPU "
                          f"us/event {_fmt(a['cpu_added_us'])}", flush=True)
    return {s.name: {"devices": s.devices, "device_period_s": s.period_s, "about": s.about,
                     "paced": s.paced,
                     "rounds": per_stream[s.name], "summary": summarize(per_stream[s.name])}
            for s in streams}


def report(results: dict[str, Any]) -> None:
    for name, stream in results.items():
        judged = " (the target is judged on this stream)" if name == JUDGED_ON else ""
        rounds = len(stream["rounds"])
        print(f"\n{name}: {stream['about']}{judged}; median [min..max] over {rounds} rounds")
        bare = stream["summary"][BARE]
        print(f"  {BARE}: {_med(bare['events_per_s'], '')} events/s, CPU us/event "
              f"{_fmt(bare['cpu_us_per_event_median'])}")
        for label, s in stream["summary"].items():
            if label == BARE:
                continue
            if stream["paced"]:  # the worker keeps up: its time is the input rate
                print(f"  {label}: CPU per event, worker + services {_med(s['cpu_all_pct'])}, "
                      f"worker {_med(s['cpu_worker_pct'])}; added CPU us/event "
                      f"{_fmt(s['cpu_added_us_median'])}")
                continue
            print(f"  {label}: per-event time {_med(s['time_pct'])} "
                  f"({_med(s['time_durable_pct'])} until analytics is durable); CPU per event, "
                  f"worker + services {_med(s['cpu_all_pct'])}, worker {_med(s['cpu_worker_pct'])}"
                  f"; added CPU us/event {_fmt(s['cpu_added_us_median'])}")


def _med(s: dict[str, float], unit: str = "%") -> str:
    return f"{s['median']:+}{unit} [{s['min']:+}..{s['max']:+}]" if unit else (
        f"{s['median']:,.0f} [{s['min']:,.0f}..{s['max']:,.0f}]")


def _fmt(d: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.1f}" for k, v in d.items())
