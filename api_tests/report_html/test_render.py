"""The report page as HTML: charts carry the report's values, every name stays text,
optional sections appear exactly when present, and the document fetches nothing."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any

from api_tests.report_html.factories import (
    HOSTILE,
    HOSTILE_ATTR,
    full_report,
    make_report,
    target_report,
)
from report_html import read_report, render_report
from report_html.charts import Axes, bar_chart


class Page(HTMLParser):
    """Every element (tag, attributes) and the text inside each element of interest."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.texts: dict[str, list[str]] = {}
        self._open: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))
        if tag not in ("rect", "circle", "line", "polyline", "meta", "br", "img", "input"):
            self._open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if self._open and self._open[-1] == tag:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        if self._open:
            self.texts.setdefault(self._open[-1], []).append(data)

    def find(self, tag: str, **attrs: str) -> list[dict[str, str | None]]:
        wanted = {k.rstrip("_").replace("_", "-"): v for k, v in attrs.items()}
        return [a for t, a in self.elements
                if t == tag and all(a.get(k) == v for k, v in wanted.items())]


def bars(page: Page, chart: str) -> list[tuple[str | None, float]]:
    """(label, value) of each bar of one chart, in order."""
    html_bars: list[tuple[str | None, float]] = []
    inside = False
    for tag, attrs in page.elements:
        if tag == "svg":
            inside = attrs.get("data-chart") == chart
        elif inside and tag == "g" and "bar" in (attrs.get("class") or ""):
            html_bars.append((attrs["data-label"], float(attrs["data-value"] or "nan")))
    return html_bars


def test_one_bar_per_targeted_tensor_with_the_reports_values() -> None:
    report = make_report()
    page = Page(render_report(report))
    assert bars(page, "sparsity") == [(t["name"], t["sparsity"]) for t in report["tensors"]]
    accuracy = report["accuracy"]
    assert [v for _, v in bars(page, "accuracy")] == [
        accuracy["before"]["accuracy"], accuracy["after_pruning"]["accuracy"],
        accuracy["after_finetune"]["accuracy"]]
    timings = dict(bars(page, "timings"))
    assert timings == {k: v for k, v in report["timings_s"].items() if k != "total"}


def test_bar_lengths_are_proportional_to_the_value() -> None:
    chart = bar_chart([("a", 0.25, ""), ("b", 1.0, ""), ("c", 0.0, "")], domain_max=1.0)
    assert [b.width for b in chart.bars] == [chart.bar_max / 4, chart.bar_max, 0.0]
    assert [b.y for b in chart.bars] == [0.0, chart.row, 2 * chart.row]
    longest = bar_chart([("t", 2.0, ""), ("u", 8.0, "")])  # no domain: the largest value
    assert [b.width for b in longest.bars] == [longest.bar_max / 4, longest.bar_max]


def test_y_ticks_are_round_and_inside_the_domain() -> None:
    axes = Axes(x0=0.5, x1=0.98, y0=0.55, y1=1.0)
    assert [t for _, t in axes.y_ticks()] == ["60%", "70%", "80%", "90%", "100%"]
    assert axes.y(1.0) == axes.top and axes.y(0.55) == axes.plot_bottom


def test_hostile_tensor_names_stay_text_in_html_and_svg() -> None:
    html = render_report(full_report(names=[HOSTILE, HOSTILE_ATTR]))
    assert HOSTILE not in html and HOSTILE_ATTR not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    page = Page(html)
    assert page.find("script") == [] and page.find("img") == []
    assert all("onmouseover" not in attrs and "onerror" not in attrs
               for _, attrs in page.elements)
    # The names arrive intact, as text: bar labels and titles in the SVG, table cells.
    assert [label for label, _ in bars(page, "sparsity")][:2] == [HOSTILE, HOSTILE_ATTR]
    for tag in ("text", "title", "td"):
        joined = "\n".join(page.texts[tag])
        assert HOSTILE in joined and HOSTILE_ATTR in joined, tag


def test_hostile_names_in_the_sensitivity_chart_stay_text() -> None:
    report = full_report()
    report["sensitivity"]["tensors"][0]["name"] = HOSTILE_ATTR
    page = Page(render_report(report))
    assert [g["data-tensor"] for g in page.find("g", class_="series")][0] == HOSTILE_ATTR
    assert HOSTILE_ATTR in "\n".join(page.texts["title"]) and page.find("img") == []


def test_optional_sections_appear_only_when_present() -> None:
    base = Page(render_report(make_report()))
    sections = {a["id"] for a in base.find("section")}
    assert sections == {"sparsity", "accuracy", "timings", "run"}
    full = Page(render_report(full_report()))
    assert {a["id"] for a in full.find("section")} == sections | {"cost", "sensitivity",
                                                                  "search"}


def test_sensitivity_has_one_line_per_tensor_through_its_points() -> None:
    report = full_report()
    page = Page(render_report(report))
    series = page.find("g", class_="series")
    assert [s["data-tensor"] for s in series] == [t["name"] for t in
                                                 report["sensitivity"]["tensors"]]
    polylines = page.find("polyline")
    assert len(polylines) == 3
    view = read_report(report)
    assert view.sensitivity is not None
    first = [tuple(map(float, p.split(","))) for p in (polylines[0]["points"] or "").split()]
    assert len(first) == len(report["sensitivity"]["amounts"])
    # Lower accuracy is drawn lower (larger y); x grows with the amount.
    ys = [y for _, y in first]
    accs = report["sensitivity"]["tensors"][0]["accuracy"]
    assert sorted(range(6), key=lambda i: ys[i]) == sorted(range(6), key=lambda i: -accs[i])
    assert [x for x, _ in first] == sorted(x for x, _ in first)


def test_search_marks_trials_budget_and_choice() -> None:
    page = Page(render_report(full_report()))
    points = [c for c in page.find("circle") if c.get("class") in ("in", "out")]
    assert [c["class"] for c in points] == ["in", "in", "out"]
    assert len(page.find("line", class_="budget")) == 1
    assert len(page.find("line", class_="chosen")) == 1
    text = " ".join(page.texts["p"])
    assert "Chosen amount: " in text and "97.60%" in text  # 0.981 - 0.005


def test_cost_table_shows_before_and_after() -> None:
    html = render_report(full_report())
    cost = html.split('id="cost"', 1)[1].split("</section>", 1)[0]
    assert "164,720" in cost and "235,146" in cost  # non-zero parameters after / before
    assert "1.120 / 1.300 ms" in cost and "batch_256 ×1.71" in cost
    assert "(200 timed runs)" in cost


def test_an_unreadable_section_is_shown_raw_and_the_rest_renders() -> None:
    report = full_report()
    report["sensitivity"]["tensors"][0]["accuracy"] = [0.9]  # one value for six amounts
    report["cost"] = {"before": "not a cost"}
    view = read_report(report)
    assert set(view.unreadable) == {"sensitivity", "cost"}
    page = Page(render_report(report))
    assert {a["id"] for a in page.find("section")} >= {"sparsity", "search", "unreadable"}
    assert "not a cost" in " ".join(page.texts["pre"])


def test_old_or_foreign_reports_render() -> None:
    page = Page(render_report({"report_version": 1, "note": "nothing else"}))
    assert {a["id"] for a in page.find("section")} == {"run"}
    assert render_report(read_report(["not", "a", "dict"])).count("unreadable") >= 1


def test_the_document_fetches_nothing_and_runs_nothing() -> None:
    html = render_report(full_report())
    page = Page(html)
    linked: list[Any] = [a.get("src") or a.get("href") for _, a in page.elements
                         if a.get("src") or a.get("href")]
    assert linked == []
    assert "url(" not in html and "@import" not in html
    assert page.find("script") == []
    [csp] = page.find("meta", http_equiv="Content-Security-Policy")
    assert re.match(r"default-src 'none';", csp["content"] or "")


def test_shrink_shows_shapes_before_and_after_and_the_widths() -> None:
    report = make_report()
    report["tensors"][0].update(shape_before=[256, 784], shape_after=[60, 784])
    report["shrink"] = {
        "architecture": "mnist_mlp", "widths": {"fc1": 60, "fc2": 128}, "scoring": "l2",
        "parameters_before": 235146, "parameters_after": 56954, "tensors": [],
        "groups": [{"producers": ["fc1"], "channels_before": 256, "channels_after": 60,
                    "pruned": True, "reason": None, "tensors": ["fc1.weight"]},
                   {"producers": ["fc3"], "channels_before": 10, "channels_after": 10,
                    "pruned": False, "reason": "the output layer", "tensors": []}]}
    html = render_report(report)
    assert "<th>shape after</th>" in html and "60×784" in html and "256×784" in html
    shrink = html.split('id="shrink"', 1)[1].split("</section>", 1)[0]
    assert re.findall(r'<td class="mono">(\w+)</td><td class="num">(\d+)</td></tr>',
                      shrink)[:2] == [("fc1", "60"), ("fc2", "128")]
    assert "235,146 → 56,954 parameters; channels scored by l2" in shrink
    assert re.findall(r'<td class="mono">(\w+)</td><td class="num">(\d+)</td>'
                      r'<td class="num">(\d+)</td><td>(\w+)', shrink) == [
        ("fc1", "256", "60", "yes"), ("fc3", "10", "10", "no")]
    assert "(the output layer)" in shrink


def test_validation_figures_and_their_split_are_shown() -> None:
    report = full_report()
    report["accuracy"]["validation"] = {
        "size": 5000, "before": {"accuracy": 0.975, "loss": 0.08, "split": "validation"},
        "after_finetune": {"accuracy": 0.979, "loss": 0.07, "split": "validation"}}
    html = render_report(report)
    rows = re.findall(r'<tr class="validation"><td>([^<]+)</td><td>([^<]+)</td>'
                      r'<td class="num">([^<]+)</td>', html)
    assert rows == [("before pruning", "validation (5,000 images)", "97.50%"),
                    ("after fine-tuning", "validation (5,000 images)", "97.90%")]


def test_semi_structured_rows_say_their_pattern() -> None:
    report = make_report()
    report["tensors"][0].update(nm=[2, 4], nm_exact=True, semi_structured_eligible=False,
                                semi_structured_note="rows not a multiple of 32")
    html = render_report(report)
    assert "<th>N:M</th>" in html
    assert ("2:4, exact; GPU sparse kernels: not eligible <span class=\"note\">"
            "(rows not a multiple of 32)</span>") in html


def test_per_layer_search_lists_each_trials_amounts() -> None:
    report = full_report()
    report["search"]["per_layer"] = True
    report["search"]["trials"][0]["amounts"] = {"fc1.weight": 0.6, "fc2.weight": 0.3}
    search = render_report(report).split('id="search"', 1)[1].split("</section>", 1)[0]
    assert "<th>amount per tensor</th>" in search
    assert "fc1.weight 60.0%; fc2.weight 30.0%" in search


def test_target_draws_the_frontier_and_rings_the_chosen_point() -> None:
    page = Page(render_report(target_report()))
    points = [c for c in page.find("circle") if (c.get("class") or "").split()[0] in ("in", "out")]
    # by constraint value: the chosen (met), the one meeting only the bound, the one over it
    assert [c["class"] for c in points] == ["in chosen", "out", "out"]
    xs = [float(c["cx"] or "nan") for c in points]
    assert xs == sorted(xs)
    (bound,) = page.find("line", class_="budget bound")
    assert xs[1] < float(bound["x1"] or "nan") < xs[2]  # 233k < the 234.8k bound < 300k
    assert len(page.find("line", class_="budget")) == 1  # the accuracy floor
    assert len(page.find("tr", class_="chosen")) == 1
    text = " ".join(page.texts["p"])
    assert "Chosen: trial 1, 230k" in text
    assert "235k" in page.texts["strong"]  # the bound asked


def test_a_compressed_target_lists_each_trials_sparsity_and_bits() -> None:
    report = target_report()
    report["target"].update(constraint="bytes", candidates="sparsity_bits")
    for trial, (sparsity, bits) in zip(report["target"]["trials"],
                                       [(0.907, 4), (0.9237, 6), (0.9385, 8)], strict=True):
        trial.update(strategy="kmeans", widths={}, sparsity=sparsity, bits=bits)
    section = render_report(report).split('id="target"', 1)[1].split("</section>", 1)[0]
    assert "<th>sparsity, bits</th>" in section and "channels kept" not in section
    assert "90.70%, 4 bits" in section and "93.85%, 8 bits" in section
    assert "(kmeans, 4 bits at 90.7% sparsity)" in section  # the frontier point's title


def test_the_images_behind_each_figure_and_the_warnings_are_shown() -> None:
    html = render_report(target_report())
    section = html.split('id="data"', 1)[1].split("</section>", 1)[0]
    assert "MNIST test, the 5000 odd-indexed images" in section
    assert "Warning: the dense model&#39;s validation accuracy looks memorised" in section
    assert 'id="data"' not in render_report(make_report())
def test_a_quantised_report_shows_both_accuracies() -> None:
    raw = make_report()
    raw["accuracy"]["before_quantization"] = {"accuracy": 0.9811, "loss": 0.07, "split": "test"}
    page = render_report(raw)
    assert ("after quantisation" in page, "98.11%" in page) == (True, True)
def test_the_dataset_is_named_with_its_splits_and_digest() -> None:
    report = full_report()
    report["dataset"] = {"name": "ds-" + "a" * 32, "sha256": "f" * 64, "shape": [3, 32, 32],
                         "classes": 4, "train": 25, "validation": 5, "test": 10,
                         "validation_from": "held_out", "figures_from": "test"}
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", render_report(report)))
    assert ("dataset ds-" + "a" * 32 + " , 3 x 32 x 32, 4 classes; train 25, validation 5 "
            "(held out of train), test 10; figures from the test split sha256 " + "f" * 64
            ) in text
