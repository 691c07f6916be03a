"""The status page (`/` for browsers): plain HTML rendered here, on the server, from the
typed status document, with an inline SVG chart; a few lines of script re-fetch the
page's <main> every few seconds and swap it in, so it stays current without a reload."""

from __future__ import annotations

from appliance.web import clouds, glance, holdings, maintenance, use
from appliance.web.status import sections, tables
from appliance.web.status.chart import chart
from appliance.web.status.document import StatusDoc
from appliance.web.status.tables import TABLES, ago, esc, size, table

CSS = (
    "*{box-sizing:border-box}"
    "body{margin:0;font:15px/1.4 system-ui,sans-serif;color:#1d2330;background:#f4f6f9}"
    "header{background:#1d2330;color:#fff;padding:.7rem 1rem;display:flex;flex-wrap:wrap;"
    "gap:.3rem 1rem;align-items:baseline;overflow-wrap:anywhere}"
    "header h1{font-size:1.15rem;margin:0}header span{opacity:.75;font-size:.85rem}"
    # cards in a grid: as many 24rem columns as fit, a phone gets one; a card never
    # grows past its column (min-width:0), its text wraps rather than pushes
    "main{padding:.8rem;display:grid;gap:.8rem;align-items:start;grid-auto-flow:row dense;"
    "grid-template-columns:repeat(auto-fill,minmax(min(100%,24rem),1fr))}"
    "section{min-width:0;background:#fff;border-radius:8px;padding:.7rem .9rem;"
    "box-shadow:0 1px 2px #0002;overflow-wrap:anywhere}"
    "main>section:first-child{grid-column:1/-1}"
    "@media(min-width:56rem){section.wide{grid-column:span 2}}"  # 2 columns fit from here
    "h2{font-size:.95rem;margin:.1rem 0 .5rem;color:#445}"
    ".tiles{display:grid;gap:.8rem;"
    "grid-template-columns:repeat(auto-fill,minmax(min(100%,10rem),1fr))}"
    ".tile b{display:block;font-size:1.5rem}.tile small{color:#667}"
    "table{border-collapse:collapse;width:100%;font-size:.85rem;table-layout:fixed}"
    "td,th{padding:.2rem .4rem;text-align:left;vertical-align:top;border-bottom:1px solid #eee}"
    "th{white-space:nowrap;color:#445}"
    "td .why{display:block;white-space:normal}"  # an error in a name column wraps
    ".ok{color:#17803d}.bad{color:#b42318}.muted{color:#889}"
    "svg{width:100%;height:auto}" + glance.CSS + tables.css() + use.CSS + maintenance.CSS
)

SCRIPT = """
setInterval(async () => {
  try {
    const r = await fetch(location.pathname, {headers: {'X-Status-Fragment': '1'}});
    if (r.ok) document.querySelector('main').innerHTML = await r.text();
  } catch (e) { /* the next refresh will try again */ }
}, 5000);
"""


def render_main(s: StatusDoc) -> str:
    """The page's <main>: every section (also what the page's script re-fetches)."""
    return (
        f'<section><h2>At a glance</h2><div class="tiles">{sections.tiles(s)}</div></section>'
        f'<section class="wide"><h2>Over time</h2>{chart(s["history"])}</section>'
        f"<section><h2>Requests</h2>{sections.requests(s['requests'])}</section>"
        '<section class="wide"><h2>Upstream health</h2>'
        f"{sections.upstreams(s['upstreams'])}</section>"
        f"<section><h2>Busiest packages</h2>{sections.busiest(s['busiest'])}</section>"
        f"<section><h2>Downloading now</h2>{sections.downloads(s['downloads'])}</section>"
        '<section class="wide" id="images-and-clouds"><h2>Images and clouds</h2>'
        f"{clouds.render(s.get('clouds'), TABLES['clouds'])}</section>"
        '<section class="wide"><h2>Last sync and seed</h2>'
        f"{sections.jobs(s['sync'], s['seed'])}</section>"
        '<section class="wide" id="cached"><h2>What is cached</h2>'
        f"{holdings.render(s.get('cached'), table, size, ago)}</section>"
        f"<section><h2>Integrity</h2>{sections.integrity(s['integrity'])}</section>"
        f'<section class="wide"><h2>Use it</h2>{use.render(s.get("use"))}</section>'
        '<section class="wide"><h2>Recent events</h2>'
        f"{sections.events(s.get('events') or [])}</section>"
        '<section class="wide"><h2>Clients, last 24 h</h2>'
        f"{sections.clients(s.get('clients') or [])}</section>"
    )


def render_page(s: StatusDoc) -> str:
    """The whole page: the header, <main>, the maintenance card and the scripts."""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>archive-local</title><style>{CSS}</style></head><body>"
        f"<header><h1>archive-local</h1><span>version {esc(s['version'])}</span>"
        f"<span>up {int(s['uptime_seconds'] // 60)} min</span>"
        '<span><a style="color:#9ec5fe" href="/api/status">JSON</a> · '
        '<a style="color:#9ec5fe" href="/metrics">metrics</a></span></header>'
        f"<main>{render_main(s)}</main>{maintenance.card((s.get('use') or {}).get('port', 0))}"
        f"<script>{SCRIPT}{use.SCRIPT}{maintenance.SCRIPT}</script></body></html>"
    )
