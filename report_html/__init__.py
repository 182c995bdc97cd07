"""The report as an HTML page: one renderer for the service's pages and ``prune-model --html``.

Torch-free (jinja2 + pydantic), so both the API and the engine CLI import it. Every page it
makes is self-contained: CSS inline, charts as inline SVG, no script and no network fetch.
"""

from report_html.page import environment, render_report, report_context
from report_html.view import ReportView, read_report, read_report_json

__all__ = ["ReportView", "environment", "read_report", "read_report_json", "render_report",
           "report_context"]
