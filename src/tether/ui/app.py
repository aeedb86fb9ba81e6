"""The labeling page: server-rendered HTML forms (work without JavaScript) plus a JSON API.

Pages: ``GET /login`` and ``POST /login`` (name, and the access token when the server has one),
``GET /`` (the current item, or "all done"), ``POST /vote`` (form, answers 303 to ``/``),
``POST /logout``. API (same session cookie; POSTs carry the CSRF token in ``X-CSRF-Token``):
``GET /api/item`` -> ``{item, progress, csrf}``, ``POST /api/vote`` with ``{item_id, choice,
reason}`` -> ``{recorded, progress}``, ``GET /api/progress``. ``GET /healthz`` answers "ok".

A vote is committed to SQLite before the response is sent. Handlers are plain functions, which
the framework runs in its thread pool, so slow disk syncs never block the event loop.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
from fastapi import FastAPI, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.responses import Response

from tether.ui.security import SecurityPolicy, tokens_match
from tether.ui.store import LabelStore, Session, Shown, VoteRejected

__all__ = ["COOKIE", "create_app", "text_blocks"]

COOKIE = "tether_label_session"
HERE = Path(__file__).parent
KEYS = [
    ("A", "A is better", "1 / a"),
    ("B", "B is better", "2 / b"),
    ("tie", "Tie", "3 / t"),
    ("both_bad", "Both bad", "4 / x"),
    ("skip", "Skip", "s"),
]


def text_blocks(value: Any) -> list[dict[str, str | None]]:
    """A prompt or answer as display blocks: one for a string, one per message for a chat."""
    if isinstance(value, str):
        return [{"role": None, "content": value}]
    return [{"role": str(m.get("role")), "content": str(m.get("content"))} for m in value]


class VoteBody(BaseModel):
    """``POST /api/vote`` body; ``choice`` is one of A, B, tie, both_bad, skip."""

    item_id: int
    choice: str
    reason: str = ""


def _item_json(shown: Shown) -> dict[str, Any]:
    return {
        "item_id": shown.item.id,
        "prompt": text_blocks(shown.item.prompt),
        "a": text_blocks(shown.answer_a),
        "b": text_blocks(shown.answer_b),
    }


class _Pages:
    """Routes bound to one store; kept in a class so tests can build several apps."""

    def __init__(self, store: LabelStore, token: str | None) -> None:
        self.store = store
        self.token = token
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,  # every {{ }} is HTML-escaped: model text is text, never markup
            undefined=jinja2.StrictUndefined,
        )

    def render(self, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        html = self.env.get_template(template).render(mode=self.store.mode, **context)
        return HTMLResponse(html, status_code=status)

    def who(self, request: Request) -> Session | None:
        sid = request.cookies.get(COOKIE)
        return self.store.session(sid) if sid else None

    # --- pages ---------------------------------------------------------------------------------

    def login_page(self, request: Request) -> Response:
        return self.render("login.html", needs_token=self.token is not None, error=None, name="")

    def login(self, request: Request, name: str, token: str) -> Response:
        if self.token is not None and not tokens_match(token, self.token):
            return self.render("login.html", 403, needs_token=True, name=name,
                               error="wrong access token")
        try:
            sid, _ = self.store.login(name)
        except VoteRejected as err:
            return self.render("login.html", err.status, needs_token=self.token is not None,
                               name=name, error=str(err))
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(COOKIE, sid, httponly=True, samesite="strict", path="/",
                            max_age=int(self.store.session_ttl),
                            secure=request.url.scheme == "https")
        return response

    def logout(self, request: Request, csrf: str) -> Response:
        who = self.who(request)
        if who is not None and tokens_match(csrf, who.csrf):
            self.store.logout(request.cookies[COOKIE])
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    def index(self, request: Request) -> Response:
        who = self.who(request)
        if who is None:
            return RedirectResponse("/login", status_code=303)
        shown = self.store.current(who)
        progress = self.store.progress(who)
        if shown is None:
            return self.render("done.html", who=who, progress=progress)
        return self.render(
            "label.html",
            who=who,
            progress=progress,
            item=_item_json(shown),
            keys=KEYS,
        )

    def vote_form(
        self, request: Request, item_id: int, choice: str, reason: str, csrf: str
    ) -> Response:
        who = self.who(request)
        if who is None:
            return RedirectResponse("/login", status_code=303)
        if not tokens_match(csrf, who.csrf):
            return self.render("message.html", 403, title="Refused",
                               message="The form's CSRF token does not match your session.")
        try:
            self.store.vote(who, item_id, choice, reason)
        except VoteRejected as err:
            return self.render("message.html", err.status, title="Vote refused",
                               message=str(err))
        return RedirectResponse("/", status_code=303)

    # --- API -----------------------------------------------------------------------------------

    def api_item(self, request: Request) -> Response:
        who = self.who(request)
        if who is None:
            return JSONResponse({"error": "log in first (POST /login)"}, status_code=401)
        shown = self.store.current(who)
        return JSONResponse({
            "item": None if shown is None else _item_json(shown),
            "progress": vars(self.store.progress(who)),
            "csrf": who.csrf,
        })

    def api_progress(self, request: Request) -> Response:
        who = self.who(request)
        if who is None:
            return JSONResponse({"error": "log in first (POST /login)"}, status_code=401)
        return JSONResponse({"progress": vars(self.store.progress(who))})

    def api_vote(self, request: Request, body: VoteBody) -> Response:
        who = self.who(request)
        if who is None:
            return JSONResponse({"error": "log in first (POST /login)"}, status_code=401)
        if not tokens_match(request.headers.get("x-csrf-token"), who.csrf):
            return JSONResponse({"error": "missing or wrong X-CSRF-Token"}, status_code=403)
        try:
            recorded = self.store.vote(who, body.item_id, body.choice, body.reason)
        except VoteRejected as err:
            return JSONResponse({"error": str(err)}, status_code=err.status)
        return JSONResponse({"recorded": recorded, "progress": vars(self.store.progress(who))})


def create_app(
    store: LabelStore,
    *,
    token: str | None = None,
    allowed_hosts: frozenset[str] | None = frozenset({"127.0.0.1", "localhost", "::1"}),
) -> FastAPI:
    """The ASGI app over ``store``. ``token``: access token asked at login (None: name only).
    ``allowed_hosts``: Host names accepted (None: any; only behind a token)."""
    pages = _Pages(store, token)
    app = FastAPI(title="tether label", docs_url=None, redoc_url=None, openapi_url=None)
    app.middleware("http")(SecurityPolicy(allowed_hosts))
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    @app.get("/healthz")
    def healthz() -> PlainTextResponse:
        return PlainTextResponse("ok")

    @app.get("/login")
    def login_page(request: Request) -> Response:
        return pages.login_page(request)

    @app.post("/login")
    def login(request: Request, name: str = Form(""), token: str = Form("")) -> Response:
        return pages.login(request, name, token)

    @app.post("/logout")
    def logout(request: Request, csrf: str = Form("")) -> Response:
        return pages.logout(request, csrf)

    @app.get("/")
    def index(request: Request) -> Response:
        return pages.index(request)

    @app.post("/vote")
    def vote(
        request: Request,
        item_id: int = Form(...),
        choice: str = Form(...),
        reason: str = Form(""),
        csrf: str = Form(""),
    ) -> Response:
        return pages.vote_form(request, item_id, choice, reason, csrf)

    @app.get("/api/item")
    def api_item(request: Request) -> Response:
        return pages.api_item(request)

    @app.get("/api/progress")
    def api_progress(request: Request) -> Response:
        return pages.api_progress(request)

    @app.post("/api/vote")
    def api_vote(request: Request, body: VoteBody) -> Response:
        return pages.api_vote(request, body)

    return app
