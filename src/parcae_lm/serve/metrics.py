"""Counters and gauges of a running server, rendered in Prometheus' text format at `/metrics`."""

from __future__ import annotations

import threading
from collections.abc import Callable

COUNTERS = {
    "parcae_requests_total": "requests accepted",
    "parcae_requests_rejected_total": "requests refused (bad request, queue full, shutting down)",
    "parcae_requests_cancelled_total": "requests whose client went away before they finished",
    "parcae_prompt_tokens_total": "prompt tokens prefilled",
    "parcae_generated_tokens_total": "tokens generated",
    "parcae_recurrence_iterations_total": "recurrence iterations spent on generated tokens",
    "parcae_decode_steps_total": "batched decode steps run",
}


class Metrics:
    def __init__(self, gauges: dict[str, tuple[str, Callable[[], float]]]) -> None:
        """`gauges`: name -> (help, function reading the current value)."""
        self._values = dict.fromkeys(COUNTERS, 0.0)
        self._gauges = gauges
        self._lock = threading.Lock()

    def add(self, name: str, value: float = 1.0) -> None:
        with self._lock:
            self._values[name] += value

    def value(self, name: str) -> float:
        with self._lock:
            return self._values[name]

    def render(self) -> str:
        lines = []
        with self._lock:
            values = dict(self._values)
        for name, help_text in COUNTERS.items():
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter", f"{name} {values[name]:g}"]
        for name, (help_text, read) in self._gauges.items():
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {read():g}"]
        return "\n".join(lines) + "\n"
