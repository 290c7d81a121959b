"""The approver's decision: a fresh portal sign-in, then a sign-in to the EHR itself (a SMART standalone launch
with `openid fhirUser` against the revision's FHIR base URL) that proves the URL is real and that the approver
holds an account there, then approve or reject with a reason.

The EHR sign-in's state, PKCE verifier and nonce travel sealed in a `__Host-` cookie of the browser that
started it, so the callback is taken only in that browser, once. Of the EHR session nothing is kept but the
`fhirUser` reference and the time, on the revision: the tokens are dropped as soon as the id_token is checked.
"""
from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp_jinja2
from aiohttp import web
from cryptography.exceptions import InvalidTag

from gateway import configurations as configs
from gateway.appkeys import DB, EHR, SEALER, SETTINGS, SIGNING_KEY
from gateway.configurations import append_audit
from gateway.errors import ConfigError, NotFound, UpstreamError
from gateway.fhir import valid_id
from gateway.security import new_token, pkce_challenge
from gateway.smart import Client, SmartClient

from . import access
from .appkeys import APPROVER_SMART
from .configurations import LABELS, actor, history
from .errors import ConfigurationRefused, EhrSignInRefused
from .access import allowed, no_store
from .store import PortalSession

log = logging.getLogger(__name__)

EHR_COOKIE = "__Host-vg_portal_ehr"
EHR_CALLBACK_PATH = "/portal/ehr-callback"
EHR_SCOPES = "openid fhirUser"
FLOW_CONTEXT = "portal.ehr_sign_in"
EHR_SIGN_IN_TTL = 600  # seconds the approver has to sign in at the EHR
FRESH_SIGN_IN = 300  # the portal sign-in before a decision is at most this old (max_age)
DECISION_WINDOW = 1800  # …and a decision posted may come this long after it (the EHR sign-in happens between)
_MAX_COOKIE = 2048


def _revision_id(value: str) -> int:
    if not (value.isascii() and value.isdigit()) or len(value) > 18:
        raise NotFound("no such revision")
    return int(value)


async def _decidable(request: web.Request, session: PortalSession, revision_id: int) -> configs.Revision:
    """The pending revision of the session's organisation that names this person as its approver."""
    async with request.app[DB].acquire() as conn:
        revision = await configs.get_revision(conn, revision_id)
        config = await configs.get(conn, revision.configuration_id) if revision else None
    if revision is None or config is None or config.organisation_id != session.organisation_id:
        raise NotFound("no such revision")
    if revision.approver != session.subject:
        raise EhrSignInRefused("Only the approver this configuration names may decide on it.",
                               reason="not_the_approver")
    if revision.state != "pending":
        raise ConfigurationRefused(f"This revision was {revision.state} already; nothing is waiting for you.")
    return revision


def _decision_path(slug: str, revision_id: int) -> str:
    return f"/portal/{slug}/revisions/{revision_id}"


@allowed("approver")
async def decision_page(request: web.Request) -> web.StreamResponse:
    """GET /portal/{org}/revisions/{revision}: after a fresh sign-in, what is proposed, the EHR sign-in, and
    the approve and reject forms."""
    session = await access.portal_session(request, "approver")
    revision = await _decidable(request, session, _revision_id(request.match_info["revision"]))
    again = await access.require_fresh_sign_in(request, FRESH_SIGN_IN)
    if again is not None:
        return again
    async with request.app[DB].acquire() as conn:
        config = await configs.get(conn, revision.configuration_id)
        revisions = await configs.revisions_of(conn, revision.configuration_id)
    assert config is not None
    proved = revision.ehr_fhir_user is not None and revision.ehr_sign_in_age is not None \
        and revision.ehr_sign_in_age <= configs.EHR_SIGN_IN_VALID_FOR
    return no_store(aiohttp_jinja2.render_template("portal_decision.html", request, {
        "session": session, "revision": revision, "config": config, "labels": LABELS, "fields": configs.FIELDS,
        "changes": configs.changes(config.values() if config.status == "approved" else {}, revision.values()),
        "proved": proved, "history": history(revisions)}))


def _seal_flow(request: web.Request, flow: dict[str, Any]) -> str:
    sealed = request.app[SEALER].seal(json.dumps(flow), FLOW_CONTEXT)
    return base64.urlsafe_b64encode(sealed).decode().rstrip("=")


def _unseal_flow(request: web.Request) -> dict[str, Any]:
    raw = request.cookies.get(EHR_COOKIE)
    if not raw or len(raw) > _MAX_COOKIE:
        raise EhrSignInRefused("This EHR sign-in was started in another browser, or took too long. Start it "
                               "again from the approval page.", reason="ehr_other_browser")
    try:
        blob = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
        flow = json.loads(request.app[SEALER].unseal(blob, FLOW_CONTEXT))
    except (binascii.Error, InvalidTag, ValueError) as exc:
        raise EhrSignInRefused("This EHR sign-in is unknown. Start it again from the approval page.",
                               reason="ehr_state_invalid") from exc
    if not isinstance(flow, dict):
        raise EhrSignInRefused("This EHR sign-in is unknown.", reason="ehr_state_invalid")
    return flow


@allowed("approver")
async def start_ehr_sign_in(request: web.Request) -> web.StreamResponse:
    """GET /portal/{org}/revisions/{revision}/ehr-sign-in: off to the EHR's sign-in (SMART standalone launch).

    A link, not a form, as the portal's own sign-in: CSP form-action would stop a form's redirect to the EHR.
    It changes nothing but this browser's cookie, and only the approver's own sign-in at the EHR counts.
    """
    session = await access.portal_session(request, "approver")
    revision = await _decidable(request, session, _revision_id(request.match_info["revision"]))
    again = await access.require_fresh_sign_in(request, FRESH_SIGN_IN)
    if again is not None:
        return again
    smart = request.app[APPROVER_SMART]
    conf = await smart.discover(revision.fhir_base_url)
    state, verifier, nonce = new_token(), new_token(), new_token()
    flow = {"state": state, "verifier": verifier, "nonce": nonce, "revision": revision.id,
            "subject": session.subject, "org": session.organisation_id, "exp": time.time() + EHR_SIGN_IN_TTL}
    url = smart.authorize_url(conf, Client(revision.client_id, revision.client_auth, None),
                              iss=revision.fhir_base_url, launch=None, scopes=EHR_SCOPES, state=state,
                              code_challenge=pkce_challenge(verifier), nonce=nonce)
    response = web.Response(status=302, headers={"Location": url, "Cache-Control": "no-store"})
    # Lax: the EHR's redirect back is a top-level GET and carries it.
    response.set_cookie(EHR_COOKIE, _seal_flow(request, flow), path="/", secure=True, httponly=True,
                        samesite="Lax", max_age=EHR_SIGN_IN_TTL)
    return response


def practitioner_reference(fhir_user: object, base: str) -> str:
    """The absolute reference of the EHR user an id_token's fhirUser names, if it is a Practitioner or Person
    of this FHIR base URL; EhrSignInRefused otherwise (another EHR's user, a patient, nothing)."""
    if not isinstance(fhir_user, str) or not fhir_user or len(fhir_user) > 2048:
        raise EhrSignInRefused("The EHR did not say who signed in (no fhirUser in its id_token).",
                               reason="ehr_no_fhir_user")
    relative = fhir_user
    if "://" in fhir_user:
        if not fhir_user.startswith(base + "/"):
            raise EhrSignInRefused("You signed in as a user of another EHR, not of this FHIR base URL. Sign in "
                                   "to the EHR this configuration names.", reason="ehr_other_ehr")
        relative = fhir_user[len(base) + 1:]
    kind, _, logical_id = relative.partition("/")
    if kind not in ("Practitioner", "Person") or not valid_id(logical_id):
        raise EhrSignInRefused("The EHR user you signed in as is not a practitioner. Sign in with your own "
                               "clinical or analyst account.", reason="ehr_not_practitioner")
    return f"{base}/{kind}/{logical_id}"


@allowed("approver")
async def ehr_callback(request: web.Request) -> web.StreamResponse:
    """GET /portal/ehr-callback: the EHR's answer to the approver's sign-in; keeps who and when on the revision."""
    session = await access.portal_session(request, "approver")
    flow = _unseal_flow(request)
    state = request.query.get("state", "")
    if not isinstance(flow.get("state"), str) or not hmac.compare_digest(state.encode(), flow["state"].encode()):
        raise EhrSignInRefused("This EHR sign-in answer does not belong to the sign-in this browser started.",
                               reason="ehr_state_invalid")
    if not isinstance(flow.get("exp"), (int, float)) or flow["exp"] < time.time():
        raise EhrSignInRefused("This EHR sign-in took too long. Start it again from the approval page.",
                               reason="ehr_state_invalid")
    if flow.get("subject") != session.subject or flow.get("org") != session.organisation_id:
        raise EhrSignInRefused("This EHR sign-in was started by someone else.", reason="ehr_other_browser")
    revision = await _decidable(request, session, int(flow["revision"]))
    who = actor(session)
    try:
        fhir_user = await _prove(request, revision, flow)
    except (EhrSignInRefused, UpstreamError) as exc:
        async with request.app[DB].acquire() as conn:
            await append_audit(conn, who, "configuration.ehr_sign_in_refused",
                               f"configuration:{revision.configuration_id}",
                               {"revision_id": revision.id, "reason": exc.reason})
        raise
    async with request.app[DB].acquire() as conn:
        await configs.record_ehr_sign_in(conn, revision.id, fhir_user, who)
    response = web.Response(status=303, headers={
        "Location": _decision_path(session.organisation_slug, revision.id), "Cache-Control": "no-store"})
    response.del_cookie(EHR_COOKIE, path="/", secure=True, httponly=True, samesite="Lax")
    return response


async def _prove(request: web.Request, revision: configs.Revision, flow: dict[str, Any]) -> str:
    """Redeem the code and check the id_token; answers the fhirUser reference. No token is kept."""
    error = request.query.get("error")
    if error is not None:
        raise EhrSignInRefused("The EHR did not sign you in (it answered an error). Try again, with your own "
                               "account at this EHR.", reason="ehr_error")
    code = request.query.get("code", "")
    if not code or len(code) > 2048:
        raise EhrSignInRefused("The EHR's answer carries no code.", reason="ehr_error")
    smart = request.app[APPROVER_SMART]
    conf = await smart.discover(revision.fhir_base_url)
    iss = request.query.get("iss")
    if iss is not None and iss not in (conf.issuer, revision.fhir_base_url):
        raise EhrSignInRefused("The sign-in answer comes from another EHR.", reason="ehr_other_ehr")
    secret = None
    if revision.client_auth == "client_secret_basic" and revision.client_secret is not None:
        secret = request.app[SEALER].unseal(revision.client_secret, configs.SECRET_CONTEXT)
    grant = await smart.exchange_code(conf, Client(revision.client_id, revision.client_auth, secret), code,
                                      str(flow["verifier"]))
    if grant.id_token is None:
        raise EhrSignInRefused("The EHR sent no id_token, so it did not say who signed in. Check that the client "
                               "may ask for openid and fhirUser.", reason="ehr_no_id_token")
    claims = await smart.validate_id_token(conf, grant.id_token, revision.client_id, str(flow["nonce"]))
    return practitioner_reference(claims.get("fhirUser"), revision.fhir_base_url)


async def _decision(request: web.Request) -> tuple[PortalSession, configs.Revision, str]:
    session = await access.portal_session(request, "approver")
    revision = await _decidable(request, session, _revision_id(request.match_info["revision"]))
    if session.auth_age is None or session.auth_age > DECISION_WINDOW:
        raise ConfigurationRefused("Your portal sign-in is too old to decide: open the approval page again to "
                                   "sign in afresh.")
    form = await request.post()
    reason = form.get("reason", "")
    return session, revision, reason.strip() if isinstance(reason, str) else ""


@allowed("approver")
async def approve(request: web.Request) -> web.StreamResponse:
    """POST /portal/{org}/revisions/{revision}/approve: put the revision's values in force (after the EHR
    sign-in proved the URL)."""
    session, revision, reason = await _decision(request)
    try:
        async with request.app[DB].acquire() as conn:
            await configs.approve(conn, revision.id, actor(session), via="ehr_sign_in", reason=reason or None)
    except ConfigError as exc:
        raise ConfigurationRefused(str(exc)) from exc
    return web.Response(status=303, headers={
        "Location": f"/portal/{session.organisation_slug}/configurations/{revision.configuration_id}",
        "Cache-Control": "no-store"})


@allowed("approver")
async def reject(request: web.Request) -> web.StreamResponse:
    """POST /portal/{org}/revisions/{revision}/reject: refuse the revision, saying why."""
    session, revision, reason = await _decision(request)
    try:
        async with request.app[DB].acquire() as conn:
            await configs.reject(conn, revision.id, actor(session), reason)
    except ConfigError as exc:
        raise ConfigurationRefused(str(exc)) from exc
    return web.Response(status=303, headers={
        "Location": f"/portal/{session.organisation_slug}/configurations/{revision.configuration_id}",
        "Cache-Control": "no-store"})


async def _approver_smart(app: web.Application) -> AsyncIterator[None]:
    app[APPROVER_SMART] = SmartClient(app[EHR], app[SIGNING_KEY], app[SETTINGS].public_url + EHR_CALLBACK_PATH)
    yield


def add_routes(app: web.Application) -> None:
    """Mount the approval pages and the approver's SMART client."""
    app.cleanup_ctx.append(_approver_smart)
    app.router.add_get(EHR_CALLBACK_PATH, ehr_callback)
    app.router.add_get("/portal/{org}/revisions/{revision}", decision_page)
    app.router.add_get("/portal/{org}/revisions/{revision}/ehr-sign-in", start_ehr_sign_in)
    app.router.add_post("/portal/{org}/revisions/{revision}/approve", approve)
    app.router.add_post("/portal/{org}/revisions/{revision}/reject", reject)
