"""OpenAPI links: which response feeds which operation (a setup key enrols a peer, the peer's
name reads, renames and deletes it...), so clients and the stateful fuzzer can follow them."""

from __future__ import annotations

from typing import Any

Op = tuple[str, str]  # (method, path)

# source operation and status -> link name -> (target operation, path parameters and body
# fields of the target, each taken from this JSON pointer into the source's response body)
LINKS: dict[tuple[Op, int], dict[str, tuple[Op, dict[str, str], dict[str, str]]]] = {
    (("post", "/api/v1/setup-keys"), 201): {
        "EnrolWithKey": (("post", "/api/v1/enroll"), {}, {"setup_key": "/key"}),
        "DeleteKey": (("delete", "/api/v1/setup-keys/{key_id}"), {"key_id": "/id"}, {}),
    },
    (("post", "/api/v1/enroll"), 201): {
        "GetPeer": (("get", "/api/v1/peers/{ref}"), {"ref": "/name"}, {}),
        "RenamePeer": (("patch", "/api/v1/peers/{ref}"), {"ref": "/name"}, {}),
        "DeletePeer": (("delete", "/api/v1/peers/{ref}"), {"ref": "/name"}, {}),
        "AddToGroup": (("post", "/api/v1/groups/{name}/members"), {}, {"peer": "/name"}),
    },
    (("post", "/api/v1/groups"), 201): {
        "AddMember": (("post", "/api/v1/groups/{name}/members"), {"name": "/name"}, {}),
        "RemoveMember": (("delete", "/api/v1/groups/{name}/members/{peer}"),
                         {"name": "/name", "peer": "/members/0"}, {}),
        "DeleteGroup": (("delete", "/api/v1/groups/{name}"), {"name": "/name"}, {}),
    },
    (("put", "/api/v1/routes/{name}"), 200): {
        "DeleteRoute": (("delete", "/api/v1/routes/{name}"), {"name": "/name"}, {}),
    },
}


def _ref(op: Op) -> str:
    method, path = op
    return "#/paths/" + path.replace("~", "~0").replace("/", "~1") + "/" + method


def add_links(doc: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI document with LINKS in its responses (idempotent)."""
    for ((method, path), status), links in LINKS.items():
        response = doc["paths"][path][method]["responses"][str(status)]
        response["links"] = {
            name: {"operationRef": _ref(target),
                   **({"parameters": {k: f"$response.body#{p}" for k, p in params.items()}}
                      if params else {}),
                   **({"requestBody": {k: f"$response.body#{p}" for k, p in body.items()}}
                      if body else {})}
            for name, (target, params, body) in links.items()}
    return doc
