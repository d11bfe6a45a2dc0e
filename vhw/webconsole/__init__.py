"""The web consoles under ``/console/``: the repair center's, served by the licensing server, and
the broker staff's, served by the broker (FIG. 13-15).

Pages are rendered on the server with Jinja2 (autoescaped), charts are SVG drawn on the server,
and nothing is fetched from elsewhere: the style sheet is served from the package. A session is a
signed cookie (:mod:`.sessions`); every form that changes something carries a CSRF token bound to
the session. The actions are the service calls the CLI makes (``Licensing.repair``,
``Licensing.reissue``, ``Broker.topup``), not a second implementation.

- :mod:`.sessions`: session cookies and CSRF tokens (pure);
- :mod:`.charts`: bar charts as SVG geometry (pure);
- :mod:`.web`: what both consoles share: sign-in, the session guard, templates, headers;
- :mod:`.repair`: the repair center's pages over a :class:`~vhw.server.licensing.Licensing`, its two
  cases (repair, FIG. 13; reissue, FIG. 14) in :mod:`.casework`;
- :mod:`.desk`: the broker staff's pages over a :class:`~vhw.broker.service.Broker`;
- :mod:`.downloads`: files made for one session (a reissued card), fetched once.
"""

__all__ = ["desk", "repair", "web"]
