"""Jinja environment, number formats, and the context the report templates draw from.

Why jinja2 and not string building: autoescaping is on for every template, so each value
that reaches the page (tensor names come from uploaded models) is escaped by default, in
HTML text, attributes and inline SVG alike; a forgotten ``html.escape`` call cannot happen.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from jinja2 import BaseLoader, ChoiceLoader, Environment, PackageLoader, StrictUndefined

from report_html import charts
from report_html.view import ReportView, read_report

PHASE_ORDER = ("load", "data", "evaluate", "prune", "finetune", "save")


def pct(value: float | None, digits: int = 1) -> str:
    return "—" if value is None or math.isnan(value) else f"{value * 100:.{digits}f}%"


def points(delta: float | None) -> str:
    """An accuracy difference in percentage points, signed."""
    return "—" if delta is None else f"{delta * 100:+.2f} pp"


def count(value: int | float | None) -> str:
    return "—" if value is None else f"{value:,}"


def size(n: int | None) -> str:
    if n is None:
        return "—"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n = n / 1024  # type: ignore[assignment]
    raise AssertionError("unreachable")


def seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f} s"


def shape(dims: list[int] | None) -> str:
    return "—" if dims is None else "×".join(str(d) for d in dims)


def amount(value: float | None, unit: str = "") -> str:
    """A constraint's value, short: 1.83 ms, 416k, 1.2M."""
    if value is None:
        return "—"
    if unit == "latency_ms":
        return f"{value:.3g} ms"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def environment(*loaders: BaseLoader) -> Environment:
    """Autoescaping environment over ``loaders`` (searched first) and the report templates."""
    env = Environment(
        loader=ChoiceLoader([*loaders, PackageLoader("report_html", "templates")]),
        autoescape=True,  # every template, whatever its name
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(pct=pct, points=points, count=count, size=size, seconds=seconds,
                       shape=shape, amount=amount)
    return env


_ENV = environment()


def _split(label: str, split: str | None) -> str:
    return f"{label} ({split})" if split else label


def _sensitivity(view: ReportView) -> dict[str, Any] | None:
    s = view.sensitivity
    if s is None:
        return None
    accs = [a for t in s.tensors for a in t.accuracy]
    if s.dense_accuracy is not None:
        accs.append(s.dense_accuracy)
    axes = charts.accuracy_axes(s.amounts, accs)
    series = charts.line_series(axes, s.amounts, [(t.name, t.accuracy) for t in s.tensors])
    dense_y = None if s.dense_accuracy is None else axes.y(s.dense_accuracy)
    return {"data": s, "axes": axes, "series": series, "dense_y": dense_y,
            "x_ticks": [(axes.x(a), pct(a, 0)) for a in s.amounts]}


def _search(view: ReportView) -> dict[str, Any] | None:
    s = view.search
    if s is None:
        return None
    amounts = [t.amount for t in s.trials]
    accs = [t.val_accuracy for t in s.trials]
    budget = None
    if s.dense_accuracy is not None:
        accs.append(s.dense_accuracy)
        if s.max_accuracy_drop is not None:
            budget = s.dense_accuracy - s.max_accuracy_drop
    axes = charts.accuracy_axes(amounts, accs)
    trials = sorted(s.trials, key=lambda t: t.amount)
    return {
        "data": s, "axes": axes, "trials": trials,
        "points": [(axes.x(t.amount), axes.y(t.val_accuracy), t) for t in trials],
        "dense_y": None if s.dense_accuracy is None else axes.y(s.dense_accuracy),
        "budget": budget, "budget_y": None if budget is None else axes.y(budget),
        "chosen_x": None if s.chosen_amount is None else axes.x(s.chosen_amount),
        "x_ticks": [(axes.x(a), pct(a, 0)) for a in sorted(set(amounts))],
    }


def _target(view: ReportView) -> dict[str, Any] | None:
    """The frontier: each trial's constraint value against its validation accuracy, the bound
    (vertical), the accuracy floor (horizontal) and the chosen point."""
    t = view.target
    if t is None:
        return None
    xs = [trial.constraint_value for trial in t.trials] + [t.bound]
    if t.dense_value is not None:
        xs.append(t.dense_value)
    accs = [trial.val_accuracy for trial in t.trials]
    floor = None
    if t.dense_accuracy is not None:
        accs.append(t.dense_accuracy)
        if t.max_accuracy_drop is not None:
            floor = t.dense_accuracy - t.max_accuracy_drop
            accs.append(floor)
    axes = charts.accuracy_axes([0.0, *xs], accs)
    order = sorted(range(len(t.trials)), key=lambda i: t.trials[i].constraint_value)
    ticks = sorted({0.0, t.bound, *([t.dense_value] if t.dense_value is not None else [])})
    return {
        "data": t, "axes": axes,
        "points": [(axes.x(t.trials[i].constraint_value), axes.y(t.trials[i].val_accuracy),
                    t.trials[i], i == t.chosen, i + 1) for i in order],
        "bound_x": axes.x(t.bound),
        "floor": floor, "floor_y": None if floor is None else axes.y(floor),
        "dense_y": None if t.dense_accuracy is None else axes.y(t.dense_accuracy),
        "x_ticks": [(axes.x(v), amount(v, t.constraint)) for v in ticks],
    }


def _timings(timings: dict[str, float]) -> list[tuple[str, float, str]]:
    """Phases in pipeline order (unknown ones after), the total left to the table."""
    known = [p for p in PHASE_ORDER if p in timings]
    rest = sorted(p for p in timings if p not in PHASE_ORDER and p != "total")
    return [(p, timings[p], seconds(timings[p])) for p in known + rest]


def report_context(view: ReportView) -> dict[str, Any]:
    """What ``_report.html.j2`` needs: the view and the geometry of its charts."""
    context: dict[str, Any] = {"report": view, "sparsity_chart": None, "accuracy_chart": None,
                               "timings_chart": None}
    if view.tensors:
        context["sparsity_chart"] = charts.bar_chart(
            [(t.name, t.sparsity, pct(t.sparsity)) for t in view.tensors], domain_max=1.0)
    if view.accuracy:
        a = view.accuracy
        context["accuracy_chart"] = charts.bar_chart([
            (_split("before pruning", a.before.split), a.before.accuracy,
             pct(a.before.accuracy, 2)),
            (_split("after pruning", a.after_pruning.split), a.after_pruning.accuracy,
             pct(a.after_pruning.accuracy, 2)),
            (_split("after fine-tuning", a.after_finetune.split), a.after_finetune.accuracy,
             pct(a.after_finetune.accuracy, 2)),
        ], domain_max=1.0)
    if view.timings_s:
        context["timings_chart"] = charts.bar_chart(_timings(view.timings_s))
    context["sensitivity"] = _sensitivity(view)
    context["search"] = _search(view)
    context["target"] = _target(view)
    return context


def render_report(report: Mapping[str, Any] | ReportView, *, title: str = "Pruning report",
                  subtitle: str | None = None) -> str:
    """The report (its JSON as a dict, or a view) as one self-contained HTML document."""
    view = report if isinstance(report, ReportView) else read_report(dict(report))
    template = _ENV.get_template("report_document.html.j2")
    return template.render(title=title, subtitle=subtitle, **report_context(view))
