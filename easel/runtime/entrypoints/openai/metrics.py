"""The /metrics page in Prometheus' text format, written by hand: counters, gauges and latency histograms."""

import collections
from collections.abc import Callable

# Seconds: from a tiny model's milliseconds to a long video's minutes.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    """`{name="value",...}` with `extra` (a formatted pair) appended; empty when there are none."""
    escaped = (v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") for v in values)
    pairs = [f'{name}="{value}"' for name, value in zip(names, escaped, strict=True)]
    if extra:
        pairs.append(extra)
    return "{" + ",".join(pairs) + "}" if pairs else ""


class Counter:
    """A count that only goes up, per combination of label values."""

    def __init__(self, name: str, help: str, label_names: tuple[str, ...] = ()):
        self.name, self.help, self.label_names = name, help, label_names
        self.values: dict[tuple[str, ...], float] = collections.defaultdict(float)

    def inc(self, *label_values: str, amount: float = 1.0) -> None:
        self.values[label_values] += amount

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        return lines + [f"{self.name}{_labels(self.label_names, k)} {v:g}" for k, v in sorted(self.values.items())]


class Reading:
    """A value read from its owner when the page is rendered: a gauge, or a counter kept elsewhere."""

    def __init__(self, name: str, help: str, read: Callable[[], float], kind: str):
        self.name, self.help, self.read, self.kind = name, help, read, kind

    def render(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}", f"{self.name} {self.read():g}"]


class Histogram:
    """Observations counted into cumulative buckets, with their sum and count, per combination of label values."""

    def __init__(self, name: str, help: str, label_names: tuple[str, ...], buckets: tuple[float, ...]):
        self.name, self.help, self.label_names, self.buckets = name, help, label_names, buckets
        self.counts: dict[tuple[str, ...], list[int]] = {}
        self.sums: dict[tuple[str, ...], float] = collections.defaultdict(float)

    def observe(self, value: float, *label_values: str) -> None:
        counts = self.counts.setdefault(label_values, [0] * (len(self.buckets) + 1))
        for i, bound in enumerate((*self.buckets, float("inf"))):
            if value <= bound:
                counts[i] += 1
        self.sums[label_values] += value

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        for key, counts in sorted(self.counts.items()):
            for bound, count in zip((*self.buckets, "+Inf"), counts, strict=True):
                bucket = 'le="' + str(bound) + '"'
                lines.append(f"{self.name}_bucket{_labels(self.label_names, key, bucket)} {count}")
            lines.append(f"{self.name}_sum{_labels(self.label_names, key)} {self.sums[key]:g}")
            lines.append(f"{self.name}_count{_labels(self.label_names, key)} {counts[-1]}")
        return lines


class ServerMetrics:
    """Everything /metrics shows; the engine adds the readings of its state."""

    def __init__(self):
        self.requests = Counter("easel_requests_total", "HTTP requests answered.", ("method", "route", "status"))
        self.request_seconds = Histogram(
            "easel_request_seconds", "Seconds from request to response.", ("route",), LATENCY_BUCKETS
        )
        self.stage_seconds = Histogram(
            "easel_stage_seconds",
            "Seconds per stage of a generation: queue (waiting for the worker), each pipeline stage, total.",
            ("stage",),
            LATENCY_BUCKETS,
        )
        self.readings: list[Reading] = []

    def add_reading(self, name: str, help: str, read: Callable[[], float], kind: str = "gauge") -> None:
        self.readings.append(Reading(name, help, read, kind))

    def observe_generation(self, queue_seconds: float, timings: dict[str, float]) -> None:
        """A finished generation: its wait in the queue and Easel's seconds per stage."""
        self.stage_seconds.observe(queue_seconds, "queue")
        for stage, seconds in timings.items():
            self.stage_seconds.observe(seconds, stage)

    def render(self) -> str:
        families = [self.requests, self.request_seconds, self.stage_seconds, *self.readings]
        return "\n".join(line for family in families for line in family.render()) + "\n"
