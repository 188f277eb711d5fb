"""The audit view page of one request (GET /requests/{trace_id}): server-rendered, no script.

Everything a record holds (paths, user ids, error-log text, SQL) came from log lines an
attacker may have written: every value goes through html.escape, links through quote().
"""

from __future__ import annotations

from datetime import UTC, datetime
from html import escape
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from .evidence import trace_link

if TYPE_CHECKING:
    from .models import EventOut, RequestOut, RequestRecordOut

__all__ = ["render_missing_page", "render_request_page", "request_href"]

_SOURCE_TITLE = {"nginx": "nginx access record", "app": "app audit record",
                 "pgaudit": "pgaudit statement", "nginx_error": "nginx error-log evidence"}
_RECORD_KEYS = ("time_unix_nano", "method", "path", "route", "status", "user_id", "app_id",
                "client_address", "server_address", "user_agent", "duration_ns",
                "body_bytes_sent", "content_length", "upstream_length", "completed",
                "compressed", "ingest_lag_s", "violations", "truncation_reasons", "unparsed",
                "span_id", "parent_span_id", "trace_id_generated", "file", "line")

# Row labels that say more than the field name.
_LABEL = {"time_unix_nano": "time (record)", "duration_ns": "duration ns",
          "ingest_lag_s": "ingest lag s", "completed": "completed ($request_completion)",
          "content_length": "Content-Length sent", "upstream_length": "upstream body bytes",
          "parent_span_id": "parent span id", "span_id": "span id"}

_STYLE = """
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222;max-width:80em}
h1{font-size:1.3em;word-break:break-all}h2{font-size:1.1em;margin-top:1.4em}
h3{font-size:1em;margin:.2em 0 .4em}
table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #ddd;padding:.25em .5em;
text-align:left;vertical-align:top}th{background:#f4f4f4;width:14em}
td{font-family:ui-monospace,monospace;word-break:break-word}
.flag{display:inline-block;background:#fde2e2;color:#a00;border-radius:3px;padding:0 .4em;
margin:0 .3em .2em 0;font-family:ui-monospace,monospace;white-space:nowrap}
#flags th{width:auto}
.record{border:1px solid #ccc;border-left:6px solid #e0a100;padding:.5em .8em;margin:.8em 0}
.record.missing{border:2px dashed #d22;border-left:6px solid #d22;background:#fff6f6}
.links a{margin-right:1em}small{color:#777}dl{margin:0}dl div{margin-bottom:.15em}
dt{display:inline;color:#555}dt:after{content:" = "}dd{display:inline;margin:0}
"""


def request_href(trace_id: str) -> str:
    return "/requests/" + quote(trace_id, safe="")


def _time(ns: int | None) -> str:
    if ns is None:
        return "–"
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def _text(key: str, value: Any) -> str:
    if value is None or value == []:
        return "–"
    if key.endswith("unix_nano"):
        return _time(value)
    if isinstance(value, list):
        return ", ".join(map(str, value))
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _rows(pairs: list[tuple[str, Any]]) -> str:
    return "".join(f"<tr><th>{escape(_LABEL.get(k, k))}</th><td>{escape(_text(k, v))}</td></tr>"
                   for k, v in pairs)


def _chips(found: list[str]) -> str:
    return "".join(f'<span class="flag">{escape(f)}</span>' for f in found) or "none"


def _dl(values: dict[str, Any]) -> str:
    return "<dl>" + "".join(f"<div><dt>{escape(k)}</dt><dd>{escape(_text(k, v))}</dd></div>"
                            for k, v in values.items()) + "</dl>" if values else "–"


def _events(events: list[EventOut]) -> str:
    if not events:
        return ""
    rows = "".join(f"<tr><td>{escape(_time(e.time_unix_nano))}</td><td>{escape(e.name)}</td>"
                   f"<td>{_dl(e.attributes)}</td></tr>" for e in events)
    return ('<h3>Error-log evidence (span events)</h3><table class="events"><thead><tr>'
            f"<th>written</th><th>event</th><th>line</th></tr></thead><tbody>{rows}</tbody>"
            "</table>")


def _record(rec: RequestRecordOut) -> str:
    data = rec.model_dump()
    title = ("missing app audit record" if rec.missing
             else _SOURCE_TITLE.get(rec.source, f"{rec.source} record"))
    # What the record has (0 bytes is evidence; an empty list or a false marker is not),
    # and always who and the status.
    pairs = [(k, data.get(k)) for k in _RECORD_KEYS
             if not (data.get(k) is None or data.get(k) is False or data.get(k) == []
                     or (k == "duration_ns" and not data.get(k)))
             or k in ("status", "user_id")]
    extra = ""
    if rec.attributes:
        extra += f"<h3>Span attributes</h3><table>{_rows(sorted(rec.attributes.items()))}</table>"
    if rec.log_fields:
        extra += f"<h3>Log fields (evidence)</h3><table>{_rows(list(rec.log_fields.items()))}" \
                 "</table>"
    clipped = "<p><small>some text was cut to 4 KiB in this view</small></p>" \
        if rec.clipped else ""
    return (f'<section class="record{" missing" if rec.missing else ""}" '
            f'data-source="{escape(rec.source)}"><h3>{escape(title)} '
            f"<small>received {escape(_time(rec.received_unix_nano))}</small></h3>"
            f"<p>{_chips(rec.flags)}</p><table>{_rows(pairs)}</table>{extra}"
            f"{_events(rec.events)}{clipped}</section>")


def _links(trace_id: str, trace_url: str | None) -> str:
    parts = [f'<a href="{escape(trace_url)}">open in the trace UI</a>'] if trace_url else []
    parts += [f'<a href="/api{escape(request_href(trace_id))}">JSON</a>',
              '<a href="/">status page</a>']
    return '<p class="links">' + "".join(parts) + "</p>"


def _page(title: str, body: str) -> str:
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{escape(title)}</title><style>{_STYLE}</style></head>\n<body>\n{body}\n"
            "</body></html>\n")


def render_request_page(view: RequestOut) -> str:
    who = view.user_id
    if who is None and "nginx" not in view.sources_kept:
        who = "– (the nginx record was not flagged, so it is not kept here: see the trace UI)"
    summary = _rows([("who (user_id)", who), ("app_id", view.app_id),
                     ("what", f"{view.method or '–'} {view.path or '–'}"),
                     ("status", view.status), ("when", _time(view.time_unix_nano)),
                     ("records kept", ", ".join(view.sources_kept)),
                     ("missing", ", ".join(view.missing) or None)])
    flag_rows = "".join(
        f"<tr><td><span class=\"flag\">{escape(f.flag)}</span></td><td>{escape(f.source)}"
        f"</td><td>{escape(f.meaning)}</td><td>{_dl(f.evidence)}</td></tr>"
        for f in view.flags)
    body = (f"<h1>audit view · request {escape(view.trace_id)}</h1>"
            f"{_links(view.trace_id, view.trace_url)}"
            f'<h2>Summary</h2><table id="summary">{summary}</table>'
            f'<h2>Flags and their evidence</h2><table id="flags"><thead><tr><th>flag</th>'
            f"<th>record</th><th>meaning</th><th>evidence</th></tr></thead>"
            f"<tbody>{flag_rows}</tbody></table>"
            f'<h2>Records</h2><div id="records">'
            + "".join(_record(r) for r in view.records)
            + f"</div><p><small>{escape(view.note)}</small></p>")
    return _page(f"audit view {view.trace_id}", body)


def render_missing_page(trace_id: str, message: str, trace_url: str | None) -> str:
    link = trace_link(trace_url, trace_id)
    body = (f"<h1>audit view · request {escape(trace_id)}</h1><p>{escape(message)}</p>"
            + _links(trace_id, link))
    return _page(f"audit view {trace_id}: not found", body)
