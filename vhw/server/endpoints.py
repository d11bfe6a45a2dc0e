"""The licensing server's endpoint table and its OpenAPI document.

Each :class:`Endpoint` says: path, the role allowed to call it, the request and response messages,
and the :class:`~vhw.server.licensing.Licensing` call behind it. The app (:mod:`vhw.server.app`)
serves them all with one handler; the OpenAPI document (``vhw/openapi.json``) is made from them.

Roles: ``console`` endpoints need no credential (a console proves itself with its card's keys) and
exist only in direct mode; every other endpoint needs the bearer token of exactly its role.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from .. import __version__
from .. import protocol as p
from ..httpapi import CONSOLE_ENDPOINTS
from .licensing import Licensing

__all__ = ["openapi_document", "write_openapi"]


CONSOLE = "console"
Call = Callable[[Licensing, str, Any], Any]  # (service, actor, request message) -> answer


@dataclass(frozen=True)
class Endpoint:
    path: str
    role: str  # "console", "public", or a credential role
    request: type | None
    response: type
    call: Call | None
    summary: str
    method: str = "POST"
    # what turns the call's value into the answer, outside the call's transaction and its batch
    # (an acquisition's sealing: no database, so the batch's one thread does not wait for it)
    finish: Callable[[Licensing, Any], Any] | None = None


def _device(table: str, attr: str) -> Call:
    return lambda lic, actor, msg: lic.register_device(actor, table, getattr(msg, attr), msg.public_key)


_CONSOLE_CALLS: dict[str, Call] = {
    "/v1/console/register": lambda lic, a, m: lic.register(a, m),
    "/v1/console/acquire": lambda lic, a, m: lic.grant(a, m),
    "/v1/console/confirm": lambda lic, a, m: lic.confirm(a, m),
}
_FINISH: dict[str, Callable[[Licensing, Any], Any]] = {"/v1/console/acquire": Licensing.keys}

ENDPOINTS: list[Endpoint] = [
    Endpoint("/v1/health", "public", None, p.Health, None, "Is the server up, and in which mode", "GET"),
    Endpoint(
        "/v1/trust",
        "public",
        None,
        p.Trust,
        None,
        "The platform CAs consoles trust (during a CA rollover: both, and the cross-certificate)",
        "GET",
    ),
    *(
        Endpoint(c.path, CONSOLE, c.request, c.response, _CONSOLE_CALLS[c.path], c.summary, finish=_FINISH.get(c.path))
        for c in CONSOLE_ENDPOINTS
        if c.path in _CONSOLE_CALLS  # (a purchase goes through a broker only)
    ),
    Endpoint(
        "/v1/broker/register",
        "broker",
        p.RegisterRequest,
        p.RegisterResponse,
        lambda lic, a, m: lic.register(a, m),
        "User registration relayed by the broker",
    ),
    Endpoint(
        "/v1/broker/acquire",
        "broker",
        p.AcquireRequest,
        p.BrokerAcquireResponse,
        lambda lic, a, m: lic.grant(a, m),
        "Key acquisition relayed by the broker (FIG. 15)",
        finish=Licensing.keys,
    ),
    Endpoint(
        "/v1/broker/refetch",
        "broker",
        p.AcquireRequest,
        p.BrokerAcquireResponse,
        lambda lic, a, m: lic.grant(a, m, refetch_only=True),
        "The keys of a MID this user flagged, unconfirmed; flags nothing",
        finish=Licensing.keys,
    ),
    Endpoint(
        "/v1/broker/purchase",
        "broker",
        p.PurchaseRequest,
        p.BrokerAcquireResponse,
        lambda lic, a, m: lic.grant(a, m, m),
        "A license bought for a disc without a MID (FIG. 15)",
        finish=Licensing.keys,
    ),
    Endpoint(
        "/v1/broker/confirm",
        "broker",
        p.ConfirmRequest,
        p.Done,
        lambda lic, a, m: lic.confirm(a, m),
        "Install confirmation relayed by the broker",
    ),
    Endpoint(
        "/v1/manufacturer/consoles",
        "manufacturer",
        p.RegisterConsole,
        p.Done,
        _device("consoles", "client_id"),
        "Register a console's Client ID and public key",
    ),
    Endpoint(
        "/v1/manufacturer/hdds",
        "manufacturer",
        p.RegisterHdd,
        p.Done,
        _device("hdds", "hdd_id"),
        "Register an HDD's HDD-ID and public key",
    ),
    Endpoint(
        "/v1/manufacturer/cards",
        "manufacturer",
        p.RegisterCard,
        p.Done,
        lambda lic, a, m: lic.register_card(a, m),
        "Register a memory card's MC-ID and MC-Key",
    ),
    Endpoint(
        "/v1/publisher/titles",
        "publisher",
        p.RegisterTitle,
        p.Done,
        lambda lic, a, m: lic.register_title(a, m),
        "Register a title's Content-Key and digest",
    ),
    Endpoint(
        "/v1/publisher/media",
        "publisher",
        p.RegisterMedia,
        p.Done,
        lambda lic, a, m: lic.register_media(a, m),
        "Register the MIDs of pressed discs",
    ),
    Endpoint(
        "/v1/operator/audit",
        "operator",
        p.AuditQuery,
        p.AuditPage,
        lambda lic, a, m: lic.audit(m),
        "Read the audit log",
    ),
    Endpoint(
        "/v1/operator/repair",
        "operator",
        p.RepairRequest,
        p.RepairResponse,
        lambda lic, a, m: lic.repair(a, m),
        "Re-register a repaired or exchanged device (FIG. 13)",
    ),
    Endpoint(
        "/v1/operator/reissue",
        "operator",
        p.ReissueRequest,
        p.ReissueResponse,
        lambda lic, a, m: lic.reissue(a, m),
        "Reissue a damaged or lost memory card (FIG. 14)",
    ),
]


#: The consoles' and the broker's calls: many at once under load, each a short transaction.
BATCHED = {ep.path for ep in ENDPOINTS if ep.role in (CONSOLE, "broker")}


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3 description of every endpoint, generated from the message declarations."""
    schemas: dict[str, dict[str, Any]] = {}

    def ref(cls: type) -> dict[str, Any]:
        if cls.__name__ not in schemas:
            schemas[cls.__name__] = p.schema(cls)
            for x in p._fields(cls):
                codec = x.metadata["codec"]
                inner = getattr(codec, "item", codec)
                if isinstance(inner, p.MessageCodec):
                    ref(inner.cls)
        return {"$ref": f"#/components/schemas/{cls.__name__}"}

    error = {"description": "error", "content": {"application/json": {"schema": ref(p.ErrorBody)}}}
    paths: dict[str, Any] = {}
    for ep in ENDPOINTS:
        op: dict[str, Any] = {
            "summary": ep.summary,
            "operationId": ep.path.strip("/").replace("/", "_"),
            "responses": {
                "200": {"description": "success", "content": {"application/json": {"schema": ref(ep.response)}}}
            },
        }
        if ep.request is not None:
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref(ep.request)}}}
            # 403: a refusal (one of the patent's messages) or a role's limit; 404/409: an ID the
            # server does not know, or knows otherwise; 429: too many failed User IDs for a card
            op["responses"].update({code: error for code in ("400", "403", "404", "409", "413", "415", "422", "429")})
        if ep.role not in ("public", CONSOLE):
            op["security"] = [{"bearer": []}]
            op["responses"]["401"] = error
        op["tags"] = [ep.role]
        paths[ep.path] = {ep.method.lower(): op}
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "vhw licensing server",
            "version": __version__,
            "description": "Registration, key acquisition and role endpoints of the vhw licensing server.",
        },
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }


def openapi_text() -> str:
    return resources.files("vhw").joinpath("openapi.json").read_text()


# -- running ------------------------------------------------------------------------------------


def write_openapi(path: Path) -> None:
    path.write_text(json.dumps(openapi_document(), indent=1, sort_keys=True) + "\n")
