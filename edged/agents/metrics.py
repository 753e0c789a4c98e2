"""The agents' metric families: counts and timings only, never what was said."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from edged.metrics import LATENCY_BUCKETS


class AgentMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.turns = Counter("edged_agent_turns", "Agent turns by agent and kind",
                             ["agent", "kind"], registry=registry)
        self.tool_calls = Counter("edged_agent_tool_calls", "Tool calls by agent, tool, outcome",
                                  ["agent", "tool", "outcome"], registry=registry)
        self.route_seconds = Histogram("edged_agent_route_seconds", "Intent routing time",
                                       ["agent"], buckets=LATENCY_BUCKETS, registry=registry)
        self.turn_seconds = Histogram("edged_agent_turn_seconds", "Whole turn time",
                                      ["agent"], buckets=LATENCY_BUCKETS, registry=registry)
