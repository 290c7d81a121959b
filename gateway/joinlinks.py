"""Join links: short-lived, revocable links that name one opaque participant of a visit, and the browser
sessions (`vg_participant` cookies) they are exchanged for.

A link is `{public_url}/j/{code}`: the code is 22 random base62 characters (131 bits), short enough that a
join SMS with the organisation's name fits one segment. The database keeps only the code's SHA-256
(`join_links.code_hash`) and finds the link by it; the row says whose link it is, until when (the visit's
window end plus a grace period, capped), and whether it was revoked.

Links issued before short codes are JWTs signed with EdDSA (Ed25519) under a key derived from the gateway's
secret key with HKDF (`typ: vg-join+jwt`, `aud` our /join endpoint, `iss` our public URL, `sub` the
participant, `exp`, and `jti` naming their row). They were sent to patients already, so they keep working until
they expire; no new ones are issued.

A link binds to the browser session that first exchanges it. Exchanging it in another browser moves the
session there: the old browser's session ends (marked moved, so its page can say why) and the new one takes
the same participant's place. Moves are rate-limited so two devices cannot pass the session back and forth
for ever.

Neither a code, a token nor a session handle is ever stored or logged: the database keeps digests.
"""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import re
import secrets
import string
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode
from uuid import UUID

import asyncpg
import jwt
from aiohttp import web
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

import sql

from .appkeys import SETTINGS
from .errors import FhirError, JoinLinkInvalid
from .participants import Participant
from .fhir import FhirClient, parse_reference
from .security import jws_header, new_token, token_hash
from .settings import Settings

Q = sql.queries("join")

PARTICIPANT_COOKIE = "vg_participant"
ALGORITHM = "EdDSA"  # the only one accepted, and only with an Ed25519 key
TOKEN_TYPE = "vg-join+jwt"
GRACE = dt.timedelta(hours=1)
"""How long after the visit's window a link and its session still work (visits run late)."""
MAX_LIFETIME = dt.timedelta(days=7)
"""No link lives longer than this, whatever the appointment says."""
DEFAULT_WINDOW = dt.timedelta(hours=24)
"""The visit's window end when the caller cannot read the Appointment: this long after issuing."""
MAX_TOKEN_LENGTH = 2048
MAX_HANDLE_LENGTH = 128
CODE_ALPHABET = string.digits + string.ascii_uppercase + string.ascii_lowercase
CODE_LENGTH = 22
"""22 base62 characters: 22 * log2(62) = 131 bits, drawn from the operating system's CSPRNG."""
_CODE = re.compile(r"[0-9A-Za-z]{22}")
MOVE_WINDOW = 60
"""Seconds over which moves of one link's session to another device are counted."""
MAX_MOVES = 3
"""Moves allowed per window: enough to change phones (and back), not enough for two devices to ping-pong."""
MOVED_NOTICE = 120
"""Seconds after a move during which a new socket of the participant tells the old device's sockets."""


@dataclass(frozen=True)
class JoinKeys:
    """The join-link signing key (Ed25519, derived from the secret key) and the claims it vouches for."""

    private_key: Ed25519PrivateKey
    issuer: str
    audience: str

    @classmethod
    def from_settings(cls, settings: Settings) -> "JoinKeys":
        """Derive the key from settings.secret_key: the same in every gateway process."""
        seed = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                    info=b"visitgate join-link ed25519 v1").derive(settings.secret_key)
        return cls(private_key=Ed25519PrivateKey.from_private_bytes(seed), issuer=settings.public_url,
                   audience=f"{settings.public_url}/join")

    @property
    def public_key(self) -> Ed25519PublicKey:
        """The verifying key."""
        return self.private_key.public_key()

    @property
    def kid(self) -> str:
        """RFC 7638 thumbprint of the public key, so a later key rotation can tell keys apart."""
        raw = self.public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        thumb = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": _b64url(raw)}, separators=(",", ":"),
                           sort_keys=True)
        return _b64url(hashlib.sha256(thumb.encode()).digest())

    def link_url(self, code: str, query: Mapping[str, str] | None = None) -> str:
        """The URL a patient opens, `{public_url}/j/{code}`, with optional query parameters (e.g. `lang`)."""
        url = f"{self.issuer}/j/{code}"
        return f"{url}?{urlencode(dict(query))}" if query else url


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# Declared here, beside the one thing it holds; launch's setup_join fills it at start-up.
JOIN_KEYS = web.AppKey("join_keys", JoinKeys)


def keys_of(app_or_keys: web.Application | JoinKeys) -> JoinKeys:
    """The join keys of an application (derived on the spot when setup_join has not stored them)."""
    if isinstance(app_or_keys, JoinKeys):
        return app_or_keys
    if JOIN_KEYS in app_or_keys:
        stored: JoinKeys = app_or_keys[JOIN_KEYS]
        return stored
    return JoinKeys.from_settings(app_or_keys[SETTINGS])


@dataclass(frozen=True)
class JoinLink:
    """A verified link: which participant of which visit it names, and until when."""

    jti: UUID
    participant_id: UUID
    visit_id: UUID
    expires_at: dt.datetime
    bound_session_hash: bytes | None
    appointment_at: dt.datetime | None = None


@dataclass(frozen=True)
class ParticipantSession:
    """A browser's session in a visit: the handle for its cookie (never stored) and when it ends."""

    handle: str
    participant_id: UUID
    visit_id: UUID
    expires_at: dt.datetime
    moved: bool = False  # this exchange moved the session here from another browser


def new_code() -> str:
    """A fresh short-link code: CODE_LENGTH characters of CODE_ALPHABET, each drawn uniformly."""
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))


def is_code(token: str) -> bool:
    """Whether a link's token has the form of a short code (else it may be a signed link from before)."""
    return _CODE.fullmatch(token) is not None


def link_expiry(not_after: dt.datetime, now: dt.datetime | None = None) -> dt.datetime:
    """When a link for a visit whose window ends at not_after expires: plus grace, capped, whole seconds."""
    now = now or dt.datetime.now(dt.timezone.utc)
    if not_after.tzinfo is None:
        raise ValueError("not_after must carry a time zone")
    expires = min(not_after + GRACE, now + MAX_LIFETIME)
    return expires.replace(microsecond=0)


def default_not_after(now: dt.datetime | None = None) -> dt.datetime:
    """The visit's window end to use when the Appointment cannot be read."""
    return (now or dt.datetime.now(dt.timezone.utc)) + DEFAULT_WINDOW


async def visit_window_end(fhir: FhirClient, encounter_id: str) -> dt.datetime | None:
    """The `end` of the encounter's Appointment, read live from FHIR; None when it cannot be known."""
    return (await visit_window(fhir, encounter_id))[1]


def _instant(value: object) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


async def visit_window(fhir: FhirClient,
                       encounter_id: str) -> tuple[dt.datetime | None, dt.datetime | None]:
    """The `start` and `end` of the encounter's Appointment, read live from FHIR; None where not known."""
    try:
        encounter = await fhir.read("Encounter", encounter_id)
        refs = encounter.get("appointment")
        appointment_id = next((parse_reference(r.get("reference"), "Appointment")
                               for r in (refs if isinstance(refs, list) else []) if isinstance(r, dict)), None)
        if appointment_id is None:
            return None, None
        appointment = await fhir.read("Appointment", appointment_id)
    except FhirError:
        return None, None
    if not isinstance(appointment, dict):
        return None, None
    return _instant(appointment.get("start")), _instant(appointment.get("end"))


def appointment_end(appointment: dict[str, Any] | None) -> dt.datetime | None:
    """An Appointment's `end` as an aware datetime; None when it has none we can read."""
    return _instant((appointment or {}).get("end"))


async def note_window_end(conn: asyncpg.Connection, visit_id: UUID, window_end: dt.datetime) -> None:
    """Remember the end of a visit's appointment window (the latest one seen); the visit ends after it."""
    await conn.execute(Q["note_window_end"], visit_id, window_end)


async def issue_link(conn: asyncpg.Connection, app_or_keys: web.Application | JoinKeys, participant_id: UUID,
                     visit_id: UUID, not_after: dt.datetime, appointment_at: dt.datetime | None = None) -> str:
    """A new join link's code for a participant of a visit whose window ends at not_after (see link_url)."""
    now = dt.datetime.now(dt.timezone.utc)
    expires = link_expiry(not_after, now)
    if expires <= now:
        raise ValueError("the visit's window has already passed")
    code = new_code()
    if await conn.fetchval(Q["insert_link"], uuid.uuid4(), participant_id, visit_id, expires,
                           token_hash(code), appointment_at) is None:
        raise ValueError("no such participant in this visit")
    # The visit ends at the latest window a link was issued for, plus grace (presence.visit_end).
    await note_window_end(conn, visit_id, not_after)
    return code


def _claims(keys: JoinKeys, token: str) -> tuple[UUID, UUID]:
    """Check the token's form, signature and claims; returns (jti, participant id). Touches no database."""
    if not token or len(token) > MAX_TOKEN_LENGTH:
        raise JoinLinkInvalid(reason="link_invalid")
    try:
        header = jws_header(token)
    except ValueError as exc:
        raise JoinLinkInvalid(reason="link_invalid") from exc
    # Checked before the signature: only our one algorithm and our one token type are ever considered.
    if header.get("alg") != ALGORITHM or header.get("typ") != TOKEN_TYPE or "crit" in header:
        raise JoinLinkInvalid(reason="link_invalid")
    try:
        claims: dict[str, Any] = jwt.decode(
            token, keys.public_key, algorithms=[ALGORITHM], audience=keys.audience, issuer=keys.issuer,
            options={"require": ["iss", "aud", "sub", "jti", "iat", "exp"], "strict_aud": True})
    except jwt.ExpiredSignatureError as exc:
        raise JoinLinkInvalid(reason="link_expired") from exc
    except jwt.PyJWTError as exc:
        raise JoinLinkInvalid(reason="link_invalid") from exc
    try:
        return UUID(str(claims["jti"])), UUID(str(claims["sub"]))
    except ValueError as exc:
        raise JoinLinkInvalid(reason="link_invalid") from exc


def _link(jti: UUID | None, participant_id: UUID | None, row: asyncpg.Record | None) -> JoinLink:
    """Turn a join_links row into a JoinLink, or refuse with the reason that applies.

    For a signed link, jti and participant_id are its claims and must match the row; for a short code the
    row alone says (None, None)."""
    if row is None or (participant_id is not None and row["participant_id"] != participant_id):
        raise JoinLinkInvalid(reason="link_invalid")  # signed with our key but not ours to honour
    if row["revoked_at"] is not None:
        raise JoinLinkInvalid(reason="link_revoked")
    if row["visit_ended"]:
        raise JoinLinkInvalid(reason="visit_ended")
    if row["expired"]:
        raise JoinLinkInvalid(reason="link_expired")
    return JoinLink(jti=jti or row["jti"], participant_id=row["participant_id"], visit_id=row["visit_id"],
                    expires_at=row["expires_at"], bound_session_hash=row["bound_session_hash"],
                    appointment_at=row["appointment_at"])


async def _find(conn: asyncpg.Connection, keys: JoinKeys, token: str, lock: bool) -> tuple[JoinLink, int]:
    """The live link a token (short code or signed link) names, and its recent moves; locked if asked."""
    if is_code(token):
        jti, participant_id = None, None
        if lock:
            row = await conn.fetchrow(Q["lock_link_by_code"], token_hash(token), MOVE_WINDOW)
        else:
            row = await conn.fetchrow(Q["get_link_by_code"], token_hash(token))
    else:
        found_jti, found_participant = _claims(keys, token)
        jti, participant_id = found_jti, found_participant
        if lock:
            row = await conn.fetchrow(Q["lock_link"], jti, MOVE_WINDOW)
        else:
            row = await conn.fetchrow(Q["get_link"], jti)
    link = _link(jti, participant_id, row)
    assert row is not None
    return link, (row["recent_moves"] if lock else 0)


async def verify_link(conn: asyncpg.Connection, app_or_keys: web.Application | JoinKeys, token: str) -> JoinLink:
    """Check a link without using it: that it is ours, and neither revoked nor expired."""
    link, _moves = await _find(conn, keys_of(app_or_keys), token, lock=False)
    return link


def _handle_ok(handle: str | None) -> bool:
    return bool(handle) and len(handle or "") <= MAX_HANDLE_LENGTH


async def exchange_link(conn: asyncpg.Connection, app_or_keys: web.Application | JoinKeys, token: str,
                        presented_handle: str | None) -> ParticipantSession:
    """Exchange a link for a browser session, binding the link to the session that uses it.

    presented_handle is the browser's current `vg_participant` cookie, if any. The session the link is
    bound to may exchange it again (and keeps its handle); any other browser takes the session over: the
    bound session ends (marked moved) and this browser gets a new one for the same participant. More than
    MAX_MOVES moves within MOVE_WINDOW are refused (link_in_use).
    """
    if not token or len(token) > MAX_TOKEN_LENGTH:
        raise JoinLinkInvalid(reason="link_invalid")
    presented = presented_handle if _handle_ok(presented_handle) else None
    moved = False
    async with conn.transaction():
        link, recent_moves = await _find(conn, keys_of(app_or_keys), token, lock=True)
        if link.bound_session_hash is not None:
            if presented is not None and token_hash(presented) == link.bound_session_hash:
                handle = presented
            else:
                if recent_moves >= MAX_MOVES:
                    raise JoinLinkInvalid(reason="link_in_use")
                handle = new_token()
                await conn.execute(Q["move_link"], link.jti, token_hash(handle), MOVE_WINDOW)
                await conn.execute(Q["end_moved_sessions"], link.jti, token_hash(handle), link.bound_session_hash)
                moved = True
        else:
            handle = new_token()
            if presented is not None:
                # A browser already in this participant's session keeps its handle rather than getting two.
                current = await conn.fetchrow(Q["session_participant"], token_hash(presented))
                if current is not None and current["participant_id"] == link.participant_id:
                    handle = presented
            await conn.execute(Q["bind_link"], link.jti, token_hash(handle))
        await conn.execute(Q["insert_session"], token_hash(handle), link.participant_id, link.visit_id, link.jti,
                           link.expires_at, link.appointment_at)
    return ParticipantSession(handle=handle, participant_id=link.participant_id, visit_id=link.visit_id,
                              expires_at=link.expires_at, moved=moved)


async def revoke_link(conn: asyncpg.Connection, app_or_keys: web.Application | JoinKeys, token: str) -> bool:
    """Revoke the link a code or token names (its sessions end with it); False when it was not live."""
    try:
        link = await verify_link(conn, app_or_keys, token)
    except JoinLinkInvalid:
        return False
    return await revoke_jti(conn, link.jti)


async def revoke_jti(conn: asyncpg.Connection, jti: UUID) -> bool:
    """Revoke a link by its id; False when it was already revoked or unknown."""
    return await conn.fetchval(Q["revoke_link"], jti) is not None


async def forget_unsent_guest(conn: asyncpg.Connection, participant_id: UUID) -> bool:
    """Delete a new guest and its link after the send failed; False (nothing done) for anyone else."""
    return await conn.fetchval(Q["forget_unsent_guest"], participant_id) is not None


async def revoke_links(conn: asyncpg.Connection, participant_id: UUID) -> None:
    """Revoke every live link of a participant, and so the sessions that came from them."""
    await conn.execute(Q["revoke_links_of_participant"], participant_id)


async def reissue_link(conn: asyncpg.Connection, app_or_keys: web.Application | JoinKeys, participant_id: UUID,
                       visit_id: UUID, not_after: dt.datetime, appointment_at: dt.datetime | None = None) -> str:
    """Revoke the participant's live links and issue a fresh one (a code), in one transaction."""
    async with conn.transaction():
        await revoke_links(conn, participant_id)
        return await issue_link(conn, app_or_keys, participant_id, visit_id, not_after, appointment_at)


async def create_session(conn: asyncpg.Connection, participant_id: UUID, visit_id: UUID,
                         expires_at: dt.datetime, appointment_at: dt.datetime | None = None) -> ParticipantSession:
    """A browser session for a participant without a link (after a patient portal launch)."""
    handle = new_token()
    expires_at = expires_at.replace(microsecond=0)
    await conn.execute(Q["insert_session"], token_hash(handle), participant_id, visit_id, None, expires_at,
                       appointment_at)
    return ParticipantSession(handle=handle, participant_id=participant_id, visit_id=visit_id,
                              expires_at=expires_at)


async def session_for_handle(conn: asyncpg.Connection,
                             session_handle: str | None) -> tuple[Participant, dt.datetime] | None:
    """The participant of a live session and when the session ends, or None."""
    if not _handle_ok(session_handle):
        return None
    assert session_handle is not None
    row = await conn.fetchrow(Q["participant_for_session"], token_hash(session_handle))
    if row is None:
        return None
    return Participant(id=row["id"], visit_id=row["visit_id"], role=row["role"], guest_kind=row["guest_kind"],
                       fhir_user=row["fhir_user"]), row["expires_at"]


async def session_appointment(conn: asyncpg.Connection, session_handle: str | None) -> dt.datetime | None:
    """When the appointment of a browser's session begins, if the EHR said."""
    if not _handle_ok(session_handle):
        return None
    assert session_handle is not None
    found: dt.datetime | None = await conn.fetchval(Q["session_appointment"], token_hash(session_handle))
    return found


async def session_moved(conn: asyncpg.Connection, session_handle: str | None) -> bool:
    """Whether a browser's session ended because its link was opened on another device."""
    if not _handle_ok(session_handle):
        return False
    assert session_handle is not None
    return bool(await conn.fetchval(Q["session_moved"], token_hash(session_handle)))


async def recently_moved(conn: asyncpg.Connection, participant_id: UUID) -> bool:
    """Whether a session of this participant moved to another device within MOVED_NOTICE seconds."""
    return bool(await conn.fetchval(Q["recently_moved"], participant_id, MOVED_NOTICE))


@dataclass(frozen=True)
class LobbyResume:
    """Where a participant's wait stands, from its own events: when it began and the last device test."""

    waiting_since: dt.datetime | None
    device_test_passed: bool


async def lobby_resume(conn: asyncpg.Connection, participant_id: UUID) -> LobbyResume:
    """The participant's current wait (first lobby entry since its last admission, denial or removal)."""
    row = await conn.fetchrow(Q["lobby_resume"], participant_id)
    if row is None:
        return LobbyResume(None, False)
    return LobbyResume(row["waiting_since"], row["device_test"] == "device_test_passed")


async def participant_for_session(conn: asyncpg.Connection, session_handle: str) -> Participant | None:
    """The participant behind a `vg_participant` handle; None when unknown, expired, revoked or the visit ended."""
    found = await session_for_handle(conn, session_handle)
    return found[0] if found else None


def set_session_cookie(response: web.StreamResponse, settings: Settings, session: ParticipantSession) -> None:
    """Put the session's handle in the `vg_participant` cookie, living as long as the session."""
    max_age = max(0, int((session.expires_at - dt.datetime.now(dt.timezone.utc)).total_seconds()))
    response.set_cookie(PARTICIPANT_COOKIE, session.handle, max_age=max_age, path="/", httponly=True,
                        samesite="Lax", secure=settings.public_url.startswith("https://"))


async def purge_expired(conn: asyncpg.Connection) -> None:
    """Forget sessions and links past their time."""
    await conn.execute(Q["purge_expired_sessions"])
    await conn.execute(Q["purge_expired_links"])
