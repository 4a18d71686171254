"""The ``debug=True`` reports: the planned graph before a weave runs, and its remote runs afterwards."""

from __future__ import annotations

from typing import Any

from . import _config
from ._graph import MapFrom, Plan
from ._result import WoveResult


def debug_report(planned: Plan, resolver: _config.Resolver, init_data: dict[str, Any]) -> str:
    lines = ["--- wove debug report ---", f"init values: {', '.join(init_data) or 'none'}", "tasks:"]
    for name, spec in planned.tasks.items():
        env = resolver.environment_name(spec.options.get("environment"))
        kind = "async" if spec.is_async else "sync"
        if spec.mapped:
            source = spec.map_source.name if isinstance(spec.map_source, MapFrom) else "iterable"
            kind += f", mapped over {source}"
        lines.append(f"  {name} ({kind}, environment {env!r})")
        lines.append(f"    depends on: {', '.join(planned.dependencies[name]) or '-'}")
        lines.append(f"    needed by:  {', '.join(planned.dependents[name]) or '-'}")
        if spec.options:
            lines.append(f"    options:    {', '.join(f'{k}={v!r}' for k, v in spec.options.items())}")
    lines.append("plan (dependency levels; each task starts as soon as its own inputs are ready):")
    for level, tier in enumerate(planned.tiers):
        lines.append(f"  level {level}: {', '.join(tier)}")
    return "\n".join(lines)


def jobs_report(result: WoveResult) -> str:
    """The remote runs behind each task (job ids, states, nodes, queue wait and run time)."""
    lines = ["--- wove remote runs ---"]
    for name, records in result._jobs.items():
        lines.append(f"  {name}: {len(records)} run(s)")
        for record in records[:50]:
            where = f"item {record.map_index} " if record.map_index is not None else ""
            wait = f"{record.queue_wait:.2f}s" if record.queue_wait is not None else "-"
            ran = f"{record.run_time:.2f}s" if record.run_time is not None else "-"
            reason = f" reason={record.reason}" if record.reason and record.reason != "None" else ""
            lines.append(f"    {where}job {record.job_id or '-'} attempt {record.attempt} {record.state} "
                         f"node={record.node or '-'} queue_wait={wait} run_time={ran}{reason}")
        if len(records) > 50:
            lines.append(f"    ... {len(records) - 50} more")
    return "\n".join(lines)
