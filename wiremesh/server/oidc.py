"""The server as an OpenID Connect relying party: discovery, authorization code with PKCE,
state and nonce, the device authorization grant, refresh, and ID-token validation against the
provider's JWKS. Protocol and token handling come from authlib (OAuth 2 client) and joserfc
(JWT), never from code of ours."""

from __future__ import annotations

import ssl
import time
import warnings
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
from authlib.common.security import generate_token
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from wiremesh.store.users import ROLES, Identity

with warnings.catch_warnings():
    # authlib 1.9 would rather run on the httpx2 fork; this project uses httpx. (Its
    # deprecation module installs an "always" filter when first imported: import it first.)
    import authlib.deprecate

    warnings.simplefilter("ignore", authlib.deprecate.AuthlibDeprecationWarning)
    from authlib.integrations.base_client.errors import OAuthError
    from authlib.integrations.httpx_client import AsyncOAuth2Client

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
# Signature algorithms an ID token may use (the provider's discovery narrows it further).
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384",
              "ES512", "EdDSA")
METADATA_TTL_S = 3600.0


class OidcError(Exception):
    """The provider answered something we cannot accept (or could not be reached)."""


class LoginPending(Exception):
    """Device grant: the user has not finished at the provider yet."""

    def __init__(self, slow_down: bool) -> None:
        super().__init__("authorization pending")
        self.slow_down = slow_down


class LoginRefused(OidcError):
    """The provider said no for good: denied, expired, or the grant was revoked."""


@dataclass(frozen=True)
class OidcConfig:
    issuer: str
    client_id: str
    client_secret: str
    scopes: str = "openid email profile offline_access"
    groups_claim: str = "groups"
    # Provider groups whose members get these roles (everyone else: `user`).
    admin_groups: tuple[str, ...] = ()
    auditor_groups: tuple[str, ...] = ()
    ca_file: str | None = None  # verify the provider with this CA (default: the system's)
    session_ttl: timedelta = timedelta(hours=12)
    peer_login_ttl: timedelta | None = None
    check_interval: timedelta = timedelta(minutes=5)
    public_url: str | None = None  # base of the callback URL (default: the request's)

    def role_for(self, groups: tuple[str, ...]) -> str:
        if set(groups) & set(self.admin_groups):
            return "admin"
        if set(groups) & set(self.auditor_groups):
            return "auditor"
        return ROLES[-1]


@dataclass
class Tokens:
    identity: Identity
    refresh_token: str | None


@dataclass
class OidcClient:
    config: OidcConfig
    _meta: dict[str, Any] = field(default_factory=dict)
    _meta_at: float = 0.0
    _keys: KeySet | None = None

    def _verify(self) -> ssl.SSLContext | bool:
        return ssl.create_default_context(cafile=self.config.ca_file) \
            if self.config.ca_file else True

    def _client(self, redirect_uri: str | None = None, scoped: bool = True,
                ) -> AsyncOAuth2Client:
        # A refresh asks for no scope: the grant's own (RFC 6749 section 6).
        return AsyncOAuth2Client(
            client_id=self.config.client_id, client_secret=self.config.client_secret,
            scope=self.config.scopes if scoped else None, redirect_uri=redirect_uri,
            code_challenge_method="S256", verify=self._verify(), timeout=10.0)

    async def _get_json(self, url: str) -> dict[str, Any]:
        try:
            async with httpx.AsyncClient(verify=self._verify(), timeout=10.0) as c:
                r = await c.get(url)
                r.raise_for_status()
                body = r.json()
        except (httpx.HTTPError, ValueError) as e:
            raise OidcError(f"cannot read {url}: {e or type(e).__name__}") from None
        if not isinstance(body, dict):
            raise OidcError(f"{url} did not answer a JSON object")
        return body

    async def metadata(self) -> dict[str, Any]:
        """The provider's discovery document (cached for an hour)."""
        if self._meta and time.monotonic() - self._meta_at < METADATA_TTL_S:
            return self._meta
        url = self.config.issuer.rstrip("/") + "/.well-known/openid-configuration"
        meta = await self._get_json(url)
        # OpenID Connect Discovery 1.0 section 4.3: the issuer must be the one asked.
        if meta.get("issuer") != self.config.issuer:
            raise OidcError(f"the provider at {url} calls itself {meta.get('issuer')!r}, "
                            f"not {self.config.issuer!r} (--oidc-issuer must match exactly)")
        for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            if not isinstance(meta.get(key), str):
                raise OidcError(f"the provider's discovery document has no {key}")
        self._meta, self._meta_at = meta, time.monotonic()
        return meta

    async def _keyset(self, refresh: bool) -> KeySet:
        if self._keys is None or refresh:
            jwks = await self._get_json((await self.metadata())["jwks_uri"])
            try:
                self._keys = KeySet.import_key_set(jwks)  # type: ignore[arg-type]
            except (JoseError, ValueError, TypeError) as e:
                raise OidcError(f"the provider's JWKS is unusable: {e}") from None
        return self._keys

    async def identity(self, id_token: str, nonce: str | None) -> Identity:
        """Validate an ID token (signature with the provider's JWKS, iss, aud, exp, iat,
        nonce) and read who it names."""
        meta = await self.metadata()
        allowed = [a for a in meta.get("id_token_signing_alg_values_supported", ALGORITHMS)
                   if a in ALGORITHMS] or list(ALGORITHMS)
        token = None
        for refresh in (False, True):  # a key we don't know yet: the provider rotated keys
            try:
                token = jwt.decode(id_token, await self._keyset(refresh), algorithms=allowed)
                break
            except JoseError as e:
                if refresh:
                    raise OidcError(f"the ID token does not verify: {e}") from None
        assert token is not None
        checks: dict[str, Any] = {
            "iss": {"essential": True, "value": self.config.issuer},
            "aud": {"essential": True, "value": self.config.client_id},
            "sub": {"essential": True}, "exp": {"essential": True}, "iat": {"essential": True},
        }
        if nonce is not None:
            checks["nonce"] = {"essential": True, "value": nonce}
        try:
            jwt.JWTClaimsRegistry(leeway=60, **checks).validate(token.claims)
        except JoseError as e:
            raise OidcError(f"the ID token is not valid here: {e}") from None
        claims = token.claims
        groups = claims.get(self.config.groups_claim, [])
        if isinstance(groups, str):
            groups = [groups]
        return Identity(
            sub=str(claims["sub"]), email=str(claims.get("email", "")),
            name=str(claims.get("name") or claims.get("preferred_username") or ""),
            groups=tuple(sorted({str(g) for g in groups if isinstance(g, str | int)})))

    async def _tokens(self, token: dict[str, Any], nonce: str | None) -> Tokens:
        if not isinstance(token.get("id_token"), str):
            raise OidcError("the provider's token answer has no ID token (is 'openid' in "
                            "--oidc-scopes?)")
        return Tokens(await self.identity(token["id_token"], nonce), token.get("refresh_token"))

    # --- authorization code + PKCE (browsers) ----------------------------------------------

    async def authorization_url(self, redirect_uri: str) -> tuple[str, dict[str, str]]:
        """The provider's login URL and what the callback needs: state, nonce, verifier."""
        meta = await self.metadata()
        verifier, nonce = generate_token(48), generate_token(24)
        async with self._client(redirect_uri) as c:
            url, state = c.create_authorization_url(
                meta["authorization_endpoint"], code_verifier=verifier, nonce=nonce)
        return url, {"state": state, "nonce": nonce, "verifier": verifier,
                     "redirect_uri": redirect_uri}

    async def exchange(self, code: str, flow: dict[str, str]) -> Tokens:
        meta = await self.metadata()
        try:
            async with self._client(flow["redirect_uri"]) as c:
                token = await c.fetch_token(meta["token_endpoint"], code=code,
                                            code_verifier=flow["verifier"],
                                            grant_type="authorization_code")
        except OAuthError as e:
            raise LoginRefused(f"the provider refused the login: {e.error}") from None
        except httpx.HTTPError as e:
            raise OidcError(f"cannot reach the provider's token endpoint: {e}") from None
        return await self._tokens(dict(token), flow["nonce"])

    # --- device authorization grant (agents: `wiremesh up --login`) -----------------------

    async def device_start(self) -> dict[str, Any]:
        meta = await self.metadata()
        url = meta.get("device_authorization_endpoint")
        if not isinstance(url, str):
            raise OidcError("the provider offers no device authorization grant "
                            "(no device_authorization_endpoint in its discovery document)")
        try:
            async with self._client() as c:
                r = await c.post(url, data={"client_id": self.config.client_id,
                                            "scope": self.config.scopes},
                                 auth=httpx.BasicAuth(self.config.client_id,
                                                      self.config.client_secret))
        except httpx.HTTPError as e:
            raise OidcError(f"cannot reach the provider's device endpoint: {e}") from None
        body = r.json() if r.headers.get("content-type", "").startswith(
            "application/json") else {}
        if r.status_code != 200 or not isinstance(body.get("device_code"), str):
            why = f"{body.get('error', r.status_code)} {body.get('error_description', '')}"
            raise OidcError(f"the provider refused a device login: {why.strip()}")
        return body

    async def device_poll(self, device_code: str) -> Tokens:
        meta = await self.metadata()
        try:
            async with self._client() as c:
                token = await c.fetch_token(meta["token_endpoint"], grant_type=DEVICE_GRANT,
                                            device_code=device_code)
        except OAuthError as e:
            if e.error in ("authorization_pending", "slow_down"):
                raise LoginPending(e.error == "slow_down") from None
            raise LoginRefused(f"the provider ended the device login: {e.error}") from None
        except httpx.HTTPError as e:
            raise OidcError(f"cannot reach the provider's token endpoint: {e}") from None
        return await self._tokens(dict(token), None)

    # --- re-checking users ---------------------------------------------------------------

    async def refresh(self, sub: str, refresh_token: str,
                      ) -> tuple[tuple[str, ...] | None, str | None]:
        """Ask the provider whether it still vouches for user `sub`: their groups (None when
        the answer has no ID token) and the new refresh token, if it rotated. LoginRefused:
        it does not (user removed, grant revoked)."""
        meta = await self.metadata()
        try:
            async with self._client(scoped=False) as c:
                token = dict(await c.refresh_token(meta["token_endpoint"],
                                                   refresh_token=refresh_token))
        except OAuthError as e:
            if e.error == "invalid_grant":
                raise LoginRefused(f"the provider refused the user's refresh token: "
                                   f"{e.description or e.error}") from None
            raise OidcError(f"the provider's token endpoint: {e.error}") from None
        except httpx.HTTPError as e:
            raise OidcError(f"cannot reach the provider's token endpoint: {e}") from None
        groups = None
        if isinstance(token.get("id_token"), str):
            who = await self.identity(token["id_token"], None)
            if who.sub != sub:
                raise OidcError(f"the provider refreshed {sub!r} as {who.sub!r}")
            groups = who.groups
        return groups, token.get("refresh_token")
