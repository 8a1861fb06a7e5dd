"""User peers without a provider in the loop: a login key enrols a peer owned by its user; the
peer leaves the mesh when its login expires and comes back, same peer with a new key pair,
when its user logs in on it again; deleting the user removes their peers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta

from tests.api.test_api import pub
from tests.conftest import ApiEnv
from wiremesh.store.users import Identity

ALICE = Identity(sub="alice", email="alice@lab.example", name="Alice", groups=("eng",))


async def _enrol(api: ApiEnv, key: str, public_key: str) -> dict:
    r = await api.client.post("/api/v1/enroll", json={
        "setup_key": key, "public_key": public_key, "hostname": "laptop"})
    assert r.status_code == 201, r.text
    return dict(r.json())


async def _until(api: ApiEnv, pred: Callable[[], bool], what: str) -> None:
    async def check() -> bool:
        await api.hub.refresh()
        return pred()

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    while not await check():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def test_login_expiry_and_relogin_rotate_the_key_of_the_same_peer(api: ApiEnv) -> None:
    api.store.enrolment.peer_login_ttl = timedelta(seconds=1)
    user = await api.store.users.login(ALICE, "user", None)
    first = await _enrol(api, await api.store.users.login_key(user, "laptop"), pub())
    pid = first["peer_id"]
    await _until(api, lambda: pid in api.hub.current, "alice's peer in the mesh")
    assert pid in api.hub.state.groups["idp.eng"]
    # Its login expires: out of the mesh (the server's expiry check pushes the change).
    await _until(api, lambda: pid not in api.hub.current, "the expired peer to leave")
    # Out of its groups too, as a hub loading the whole store would have it.
    assert pid not in api.hub.state.groups["idp.eng"]
    assert api.hub.state == (await api.store.mesh.load_state())[1]
    # A group read whole (created, here) counts only live members too.
    await api.store.groups.create("t", "later", ["laptop"])
    await api.hub.refresh()
    assert api.hub.state.groups["later"] == frozenset()
    assert api.hub.state == (await api.store.mesh.load_state())[1]
    # Alice logs in on it again: same peer and address, new key pair, back in the mesh.
    new_key = pub()
    again = await _enrol(api, await api.store.users.login_key(user, "laptop"), new_key)
    assert (again["peer_id"], again["overlay_ip"]) == (pid, first["overlay_ip"])
    api.store.enrolment.peer_login_ttl = None
    await _until(api, lambda: pid in api.hub.current, "the peer back after the new login")
    assert api.hub.state.peers[pid].public_key == new_key
    assert await api.store.peers.for_token(first["token"]) is None


async def test_deleting_a_user_removes_their_peers(api: ApiEnv) -> None:
    user = await api.store.users.login(ALICE, "user", None)
    peer = await _enrol(api, await api.store.users.login_key(user, "laptop"), pub())
    r = await api.client.delete(f"/api/v1/users/{user.id}", headers=api.admin)
    assert r.status_code == 200 and r.json()["peers"] == ["laptop"]
    assert (await api.client.get(f"/api/v1/peers/{peer['peer_id']}",
                                 headers=api.admin)).status_code == 404
    assert (await api.client.get("/api/v1/users", headers=api.admin)).json() == []
    audit = (await api.client.get("/api/v1/audit", headers=api.admin)).json()
    assert any(e["action"] == "user.delete" for e in audit)
