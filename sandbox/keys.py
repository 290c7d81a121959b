"""Keys: the sandbox's own signing key, and the cache of clients' public keys.

The sandbox signs id_tokens with an RSA key made when the app is built and publishes it at
/oauth/jwks. Clients using private_key_jwt publish their keys at a URL; the sandbox fetches that JWK
set over HTTP like an EHR does, keeps it for five minutes, and refetches once when an assertion names
a key id it has not seen (the client may have rotated keys).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from .grants import new_secret

JWKS_CACHE_SECONDS = 300.0
CLIENT_ASSERTION_ALGS = ("RS384", "ES384")


@dataclass
class SigningKey:
    """An RSA private key with its key id."""

    private_key: rsa.RSAPrivateKey
    kid: str

    @classmethod
    def generate(cls) -> SigningKey:
        """Make a fresh 2048-bit RSA key."""
        return cls(rsa.generate_private_key(public_exponent=65537, key_size=2048), new_secret()[:16])

    def public_jwk(self) -> dict[str, Any]:
        """The public half as a JWK with kid, use and alg."""
        jwk: dict[str, Any] = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.private_key.public_key()))
        jwk.update({"kid": self.kid, "use": "sig", "alg": "RS256"})
        return jwk

    def sign(self, claims: dict[str, Any], *, kid: str | None = None) -> str:
        """A compact RS256 JWT of the claims."""
        return jwt.encode(claims, self.private_key, algorithm="RS256", headers={"kid": kid or self.kid})


@dataclass
class KeyRing:
    """The published signing key, and an unpublished one made on first use for the bad_signature fault."""

    signing: SigningKey
    _rogue: SigningKey | None = None

    def rogue(self) -> SigningKey:
        """A key nobody can verify with; it reuses the real kid so only the signature is wrong."""
        if self._rogue is None:
            self._rogue = SigningKey(SigningKey.generate().private_key, self.signing.kid)
        return self._rogue


class KeyFetchError(Exception):
    """The client's JWK set could not be fetched or read."""


@dataclass
class _CachedSet:
    keys: dict[str, dict[str, Any]]
    fetched_at: float
    # Parsed keys by (kid, alg): building a PyJWK costs more than verifying an RS384 signature with it.
    parsed: dict[tuple[str, str], jwt.PyJWK] = field(default_factory=dict)


@dataclass
class ClientKeyCache:
    """Clients' public JWKs by JWKS URL, fetched with the app's shared session."""

    session: aiohttp.ClientSession | None = None
    _sets: dict[str, _CachedSet] = field(default_factory=dict)

    async def key(self, jwks_url: str, kid: str) -> dict[str, Any] | None:
        """The JWK with this kid, refetching at most once if it is unknown or the cache is stale."""
        cached = self._sets.get(jwks_url)
        fresh = cached is not None and cached.fetched_at + JWKS_CACHE_SECONDS > time.time()
        if cached is not None and fresh and kid in cached.keys:
            return cached.keys[kid]
        cached = await self._fetch(jwks_url)
        return cached.keys.get(kid)

    def parsed(self, jwks_url: str, kid: str, alg: str) -> jwt.PyJWK:
        """The key that key() last returned for kid, parsed for alg (raises jwt.PyJWTError if it cannot be)."""
        cached = self._sets[jwks_url]
        found = cached.parsed.get((kid, alg))
        if found is None:
            found = cached.parsed[(kid, alg)] = jwt.PyJWK(cached.keys[kid], algorithm=alg)
        return found

    async def _fetch(self, jwks_url: str) -> _CachedSet:
        if self.session is None:
            raise KeyFetchError("the sandbox's HTTP session is not running")
        try:
            async with self.session.get(jwks_url, headers={"Accept": "application/json"}) as resp:
                if resp.status != 200:
                    raise KeyFetchError(f"JWKS answered {resp.status}")
                body = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise KeyFetchError(f"JWKS could not be fetched: {exc}") from exc
        if not isinstance(body, dict) or not isinstance(body.get("keys"), list):
            raise KeyFetchError("JWKS has no 'keys' array")
        keys = {k["kid"]: k for k in body["keys"] if isinstance(k, dict) and isinstance(k.get("kid"), str)}
        cached = _CachedSet(keys, time.time())
        self._sets[jwks_url] = cached
        return cached
