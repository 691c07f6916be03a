"""The status page's Maintenance card: buttons for the admin API (verify, expire, purge,
sync, seed, drain), as apt-cacher-ng's report page has them.

The page asks for the admin token in a password field and the script sends it as the
`Authorization` header of each `fetch`; it is never stored (no cookie, no localStorage),
so a page of another site cannot make the browser send it: no CSRF. The card lives
outside <main>, which the page's refresh replaces every few seconds, so the token and
the last result stay. Without JavaScript the card shows the equivalent curl lines.
"""

from __future__ import annotations

import html

# (data-action, button label, title): the script maps each to a call (see SCRIPT)
BUTTONS = (
    ("verify", "Verify", "re-read every cached file against its digest"),
    ("expire-dry", "Expire: dry run", "list what expiry would remove"),
    ("expire", "Expire now", "remove what the dry run listed"),
    ("purge", "Purge", "remove one cached file"),
    ("sync", "Sync", "mirror every image feed now"),
    ("seed", "Seed", "seed every cloud target now"),
    ("drain-on", "Drain on", "/healthz answers 503: load balancers send no new clients"),
    ("drain-off", "Drain off", "/healthz answers 200 again"),
)

CURL = (
    ("verify", '{"fix": false}'),
    ("expire", '{"dry_run": true}'),
    ("purge", '{"path": "/debian/pool/main/h/hello_1.0_amd64.deb"}'),
    ("sync", "{}"),
    ("seed", "{}"),
    ("drain", '{"drain": true}'),
)


def _button(action: str) -> str:
    _, label, title = next(b for b in BUTTONS if b[0] == action)
    hidden = " hidden" if action == "expire" else ""  # shown after a dry run
    return (
        f'<button type="button" data-action="{action}" title="{html.escape(title)}"'
        f"{hidden}>{html.escape(label)}</button>"
    )


def card(port: int) -> str:
    """The card (a <section> in a wrapper of its own, after <main>)."""
    curl = "\n".join(
        f"curl -X POST -H \"Authorization: Bearer $TOKEN\" -d '{body}' "
        f"http://127.0.0.1:{port}/api/admin/{action}"
        for action, body in CURL
    )
    return (
        '<div id="maint-wrap"><section id="maintenance"><h2>Maintenance</h2>'
        '<div class="nojs"><p>These buttons need JavaScript. Without it, on the appliance '
        "(<code>TOKEN=$(cat /var/lib/archive-local/admin-token)</code>, or the file "
        "<code>admin.token_file</code> names):</p>"
        f"<pre>{html.escape(curl)}</pre></div>"
        # a form only for the browser's sake (a password field wants one); the script keeps
        # it from being submitted, and its fields have no name: nothing would be sent
        '<form class="needjs" id="maint-form" method="post" action="#">'
        '<p><label>Admin token <input type="password" id="maint-token" '
        'autocomplete="off" spellcheck="false" size="24"></label> '
        '<small class="muted">kept in this page only, '
        "sent as a header; the admin API answers <code>admin.allow</code> addresses "
        "(loopback by default: use an SSH tunnel)</small></p>"
        f'<div class="row">{_button("verify")}<label><input type="checkbox" id="maint-fix">'
        " remove bad files</label></div>"
        f'<div class="row">{_button("expire-dry")}{_button("expire")}</div>'
        '<div class="row"><input id="maint-path" aria-label="path to purge" '
        'placeholder="/debian/pool/main/h/hello_1.0_amd64.deb">'
        f"{_button('purge')}</div>"
        f'<div class="row">{"".join(_button(a) for a in ("sync", "seed", "drain-on", "drain-off"))}'
        "</div>"
        '<pre id="maint-result" aria-live="polite"></pre></form></section></div>'
    )


CSS = (
    "#maint-wrap{padding:0 .8rem .8rem}"
    "#maintenance .row{display:flex;flex-wrap:wrap;gap:.4rem;align-items:center;margin:.3rem 0}"
    "#maintenance input:not([type]){flex:1 1 12rem;min-width:0}"
    "#maintenance pre{white-space:pre-wrap;overflow-wrap:anywhere;font-size:.8rem;margin:.3rem 0;"
    "max-height:20rem;overflow-y:auto}"
    "#maint-token{max-width:100%}"
    "html.js .nojs,.needjs{display:none}html.js .needjs{display:block}"
)

# One handler for the card (it is outside <main>: the refresh leaves it alone). The token
# is read from the field at each click and goes only into the request's header.
SCRIPT = """
document.documentElement.classList.add('js');
(() => {
  const $ = id => document.getElementById(id), out = $('maint-result');
  if (!out) return;
  const calls = {
    'verify': () => ['verify', {fix: $('maint-fix').checked}],
    'expire-dry': () => ['expire', {dry_run: true}],
    'expire': () => ['expire', {dry_run: false}],
    'purge': () => ['purge', {path: $('maint-path').value.trim()}],
    'sync': () => ['sync', {}],
    'seed': () => ['seed', {}],
    'drain-on': () => ['drain', {drain: true}],
    'drain-off': () => ['drain', {drain: false}],
  };
  const now = $('maintenance').querySelector('[data-action="expire"]');
  $('maint-form').addEventListener('submit', e => e.preventDefault());
  $('maintenance').addEventListener('click', async e => {
    const b = e.target.closest('button[data-action]');
    if (!b) return;
    const [action, body] = calls[b.dataset.action]();
    out.className = '';
    out.textContent = action + ': running';
    b.disabled = true;
    try {
      const r = await fetch('/api/admin/' + action, {
        method: 'POST', body: JSON.stringify(body), credentials: 'omit', cache: 'no-store',
        headers: {'Authorization': 'Bearer ' + $('maint-token').value.trim(),
                  'Content-Type': 'application/json'},
      });
      let text = await r.text();
      try { text = JSON.stringify(JSON.parse(text), null, 1); } catch (_) { /* as sent */ }
      out.className = r.ok ? 'ok' : 'bad';
      out.textContent = `${action}: ${r.status} ${r.statusText}\\n${text}`;
      if (b.dataset.action === 'expire-dry') now.hidden = !r.ok;
      if (b.dataset.action === 'expire') now.hidden = true;
    } catch (err) {
      out.className = 'bad';
      out.textContent = `${action}: ${err}`;
    }
    b.disabled = false;
  });
})();
"""
