"""Netmap stream openings are authenticated against the credentials the hub read with the
peers (no store round trip per agent when a dead replica's agents all come back), and those
follow every change to a token: a re-issued or deleted one stops opening streams at the
hub's next refresh. Admission comes before the credential check."""

from __future__ import annotations

from tests.api.test_api import make_key, proven_body
from tests.conftest import ApiEnv
from wiremesh.server.admission import Openings

STREAM = "/api/v1/agent/netmap"


async def test_a_reissued_or_deleted_token_stops_opening_streams(api: ApiEnv) -> None:
    k = await make_key(api)
    body = await proven_body(api, k["key"])
    first = (await api.client.post("/api/v1/enroll", json=body)).json()
    await api.hub.refresh()
    assert api.hub.credential(first["token"]) == (first["peer_id"], body["public_key"])

    # Enrolling again (the answer never reached the client) re-issues the token.
    again = (await api.client.post("/api/v1/enroll", json=body)).json()
    assert again["token"] != first["token"]
    await api.hub.refresh()
    assert api.hub.credential(first["token"]) is None
    assert api.hub.credential(again["token"]) == (first["peer_id"], body["public_key"])
    r = await api.client.get(STREAM, headers={"Authorization": f"Bearer {first['token']}"})
    assert r.status_code == 401, r.text

    r = await api.client.delete(f"/api/v1/peers/{first['name']}", headers=api.admin)
    assert r.status_code == 204, r.text
    await api.hub.refresh()
    assert api.hub.credential(again["token"]) is None
    r = await api.client.get(STREAM, headers={"Authorization": f"Bearer {again['token']}"})
    assert r.status_code == 401, r.text


async def test_an_opening_past_the_bound_is_refused_before_its_credential_is_read(
        api: ApiEnv) -> None:
    api.app.state.openings = Openings(limit=0, waiting=0)  # type: ignore[attr-defined]
    r = await api.client.get(STREAM, headers={"Authorization": "Bearer wmp_not-a-token"})
    assert r.status_code == 503, r.text
    assert 1 <= int(r.headers["retry-after"]) <= 5
    assert api.app.state.openings.refused == 1  # type: ignore[attr-defined]
