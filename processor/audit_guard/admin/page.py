"""The status page: one self-contained HTML document, no build step.

The first state is rendered here, server-side, so the page is useful without JavaScript (and
in `curl`); a few lines of vanilla JS then refresh the three tables every 5 s from the JSON API.
Python and JS build the same rows; all record text goes through html.escape / textContent, since
paths and user ids come from untrusted log lines.
"""

from __future__ import annotations

from datetime import UTC, datetime
from html import escape
from typing import TYPE_CHECKING

from .evidence import trace_link
from .request_page import request_href

if TYPE_CHECKING:
    from .models import FlagsOut, RulesOut, StatusOut

__all__ = ["render_page"]


def _time(ns: int | None) -> str:
    if ns is None:
        return "–"
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _num(value: float | None, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def _row(cells: list[str], cls: str = "", tail: str = "") -> str:
    """A table row of escaped text cells; `tail`: cells already rendered (links)."""
    attr = f' class="{cls}"' if cls else ""
    return f"<tr{attr}>" + "".join(f"<td>{escape(c)}</td>" for c in cells) + tail + "</tr>"


def _source_rows(status: StatusOut) -> str:
    rows = [
        _row([s.name, s.health, s.health_reason, str(s.records_total), str(s.flagged_total),
              _time(s.last_seen_unix_nano), _num(s.last_lag_s, ".3f"), _num(s.avg_lag_s, ".3f"),
              "–" if s.completeness is None else f"{s.completeness:.2%}"], s.health)
        for s in status.sources
    ]
    return "".join(rows) or '<tr><td colspan="9">no records received yet</td></tr>'


def _trace_cell(trace_id: str, trace_url: str | None) -> str:
    """The trace id, linked to its audit view; "trace UI" links to admin.trace_url. The JS
    `traceCell()` builds the same."""
    cell = f'<td><a href="{escape(request_href(trace_id))}">{escape(trace_id)}</a>'
    link = trace_link(trace_url, trace_id)
    if link:
        cell += f' <a class="ui" href="{escape(link)}">trace UI</a>'
    return cell + "</td>"


def _flag_rows(flags: FlagsOut, trace_url: str | None) -> str:
    rows = [
        _row([_time(f.received_unix_nano), f.source, f.user_id or "–",
              f"{f.method or '–'} {f.path or '–'} {f.status if f.status is not None else '–'}",
              " ".join(f.flags)], tail=_trace_cell(f.trace_id, trace_url))
        for f in flags.flags
    ]
    return "".join(rows) or '<tr><td colspan="6">nothing flagged</td></tr>'


def _deadletter_text(status: StatusOut) -> tuple[str, str]:
    """(text, css class) of the dead-letter line; the JS `deadletter()` builds the same."""
    d = status.deadletter
    if d is None:
        return ("no spool configured (deadletter.dir / reconcile.state_dir unset): spans "
                "downstream refuses for good are answered UNAVAILABLE and stay in the "
                "collector's queue", "")
    share = d.bytes / d.max_bytes if d.max_bytes else 0.0
    text = (f"{d.entries} entries, {d.spans} spans, {d.bytes} bytes ({share:.1%} of "
            f"{d.max_bytes}) in {d.directory}")
    if d.entries:
        text += (f"; oldest spooled {_time(d.oldest_unix_nano)}; run `audit-guard resend` once "
                 f"the cause is fixed")
    if d.corrupt_files:
        text += f"; {d.corrupt_files} corrupt file(s) set aside in corrupt/"
    return text, "bad" if d.entries or d.corrupt_files else "ok"


def _deadletter_rows(status: StatusOut) -> str:
    d = status.deadletter
    rows = [_row([reason, str(spans)]) for reason, spans in
            sorted((d.reasons if d else {}).items(), key=lambda kv: -kv[1])]
    return "".join(rows) or '<tr><td colspan="2">nothing spooled</td></tr>'


def _rule_rows(rules: RulesOut) -> str:
    rows = [_row([r.name, r.severity, str(r.matches), str(r.errors), r.source])
            for r in rules.rules]
    return "".join(rows) or '<tr><td colspan="5">no rules active</td></tr>'


_STYLE = """
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.3em}h2{font-size:1.1em;margin-top:1.5em}
table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #ddd;padding:.3em .5em;
text-align:left;vertical-align:top}th{background:#f4f4f4}td{font-family:ui-monospace,monospace}
tr.green td:first-child{border-left:6px solid #2e9d4a}tr.amber td:first-child{border-left:6px
solid #e0a100}tr.red td:first-child{border-left:6px solid #d22}
.ok{color:#2e9d4a}.bad{color:#d22}small{color:#777}
"""

# Mirrors the Python row builders above; textContent keeps log-line text inert.
_SCRIPT = """
const dash = v => (v === null || v === undefined) ? '\\u2013' : String(v);
const t = ns => ns ? new Date(ns / 1e6).toISOString().replace('T', ' ').slice(0, 19) + 'Z'
                   : '\\u2013';
const num = (v, d) => (v === null || v === undefined) ? '\\u2013' : v.toFixed(d);
function fill(id, rows, empty, cols) {
  const body = document.querySelector('#' + id + ' tbody');
  body.replaceChildren();
  if (!rows.length) rows = [[{text: empty, span: cols}]];
  for (const r of rows) {
    const tr = document.createElement('tr');
    if (r.cls) tr.className = r.cls;
    for (const c of r) {
      const td = document.createElement('td');
      if (c instanceof Node) td.appendChild(c);
      else if (typeof c === 'object') { td.textContent = c.text; td.colSpan = c.span; }
      else td.textContent = c;
      tr.appendChild(td);
    }
    body.appendChild(tr);
  }
}
// The trace id linked to its audit view, and to admin.trace_url (data-trace-url) when set.
function traceCell(id) {
  const cell = document.createDocumentFragment();
  const link = (text, href, cls) => {
    const a = document.createElement('a');
    a.textContent = text; a.href = href; if (cls) a.className = cls;
    return a;
  };
  cell.appendChild(link(id, '/requests/' + encodeURIComponent(id)));
  const tpl = document.getElementById('flags').dataset.traceUrl;
  if (tpl) {
    cell.appendChild(document.createTextNode(' '));
    cell.appendChild(link('trace UI', tpl.split('{trace_id}').join(id), 'ui'));
  }
  return cell;
}
async function refresh() {
  try {
    const [st, fl, ru] = await Promise.all(['/api/status', '/api/flags?limit=20', '/api/rules']
      .map(u => fetch(u).then(r => r.json())));
    fill('sources', st.sources.map(s => Object.assign([s.name, s.health, s.health_reason,
      String(s.records_total), String(s.flagged_total), t(s.last_seen_unix_nano),
      num(s.last_lag_s, 3), num(s.avg_lag_s, 3),
      s.completeness === null ? '\\u2013' : (s.completeness * 100).toFixed(2) + '%'],
      {cls: s.health})), 'no records received yet', 9);
    fill('flags', fl.flags.map(f => [t(f.received_unix_nano), f.source, dash(f.user_id),
      dash(f.method) + ' ' + dash(f.path) + ' ' + dash(f.status), f.flags.join(' '),
      traceCell(f.trace_id)]), 'nothing flagged', 6);
    const d = st.deadletter, dl = document.getElementById('deadletter');
    if (d === null) {
      dl.textContent = 'no spool configured (deadletter.dir / reconcile.state_dir unset): ' +
        'spans downstream refuses for good are answered UNAVAILABLE and stay in the ' +
        "collector's queue";
      dl.className = '';
    } else {
      const share = d.max_bytes ? d.bytes / d.max_bytes : 0;
      let text = d.entries + ' entries, ' + d.spans + ' spans, ' + d.bytes + ' bytes (' +
        (share * 100).toFixed(1) + '% of ' + d.max_bytes + ') in ' + d.directory;
      if (d.entries) text += '; oldest spooled ' + t(d.oldest_unix_nano) +
        '; run `audit-guard resend` once the cause is fixed';
      if (d.corrupt_files) {
        text += '; ' + d.corrupt_files + ' corrupt file(s) set aside in corrupt/';
      }
      dl.textContent = text;
      dl.className = (d.entries || d.corrupt_files) ? 'bad' : 'ok';
    }
    fill('deadletter-reasons', Object.entries(d ? d.reasons : {}).sort((a, b) => b[1] - a[1])
      .map(([r, n]) => [r, String(n)]), 'nothing spooled', 2);
    fill('rules', ru.rules.map(r => [r.name, r.severity, String(r.matches), String(r.errors),
      r.source]), 'no rules active', 5);
    const ready = document.getElementById('ready');
    ready.textContent = st.ready.ready ? 'ready' : 'NOT READY: ' + st.ready.reason;
    ready.className = st.ready.ready ? 'ok' : 'bad';
    document.getElementById('updated').textContent = 'updated ' + t(st.now_unix_nano);
  } catch (e) {
    document.getElementById('updated').textContent = 'refresh failed: ' + e;
  }
}
refresh();
setInterval(refresh, 5000);
"""


def render_page(status: StatusOut, flags: FlagsOut, rules: RulesOut,
                trace_url: str | None = None) -> str:
    ready = status.ready
    tpl_attr = f' data-trace-url="{escape(trace_url)}"' if trace_url else ""
    dl_text, dl_class = _deadletter_text(status)
    dl_attr = f' class="{dl_class}"' if dl_class else ""
    ready_html = ('<span id="ready" class="ok">ready</span>' if ready.ready else
                  f'<span id="ready" class="bad">NOT READY: {escape(ready.reason)}</span>')
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>audit-guard status</title><style>{_STYLE}</style></head>
<body>
<h1>audit-guard {ready_html}</h1>
<small id="updated">rendered {escape(_time(status.now_unix_nano))}; refreshes every 5 s</small>
<h2>Sources</h2>
<small>green: records in the last minute, nothing flagged; amber: flags in the last minute or
ingest lag above {status.lag_threshold_s:g} s; red: silent, no records for over 5 min, or
completeness below 99 % (when known).</small>
<table id="sources"><thead><tr><th>source</th><th>health</th><th>why</th><th>records</th>
<th>flagged</th><th>last seen</th><th>last lag s</th><th>avg lag s</th><th>completeness</th>
</tr></thead><tbody>{_source_rows(status)}</tbody></table>
<h2>Recent flags</h2>
<table id="flags"{tpl_attr}><thead><tr><th>time</th><th>source</th><th>user</th>
<th>method path status</th><th>flags</th><th>trace id (audit view)</th></tr></thead>
<tbody>{_flag_rows(flags, trace_url)}</tbody></table>
<h2>Dead-letter spool</h2>
<small>Spans downstream refused for good (partial success, exporter.permanent_codes), kept on
disk until <code>audit-guard resend</code> delivers them.</small>
<p id="deadletter"{dl_attr}>{escape(dl_text)}</p>
<table id="deadletter-reasons"><thead><tr><th>reason</th><th>spans</th></tr></thead>
<tbody>{_deadletter_rows(status)}</tbody></table>
<h2>Rules</h2>
<table id="rules"><thead><tr><th>rule</th><th>severity</th><th>matches</th><th>errors</th>
<th>source</th></tr></thead><tbody>{_rule_rows(rules)}</tbody></table>
<script>{_SCRIPT}</script>
</body></html>
"""
