"""The OpenAPI paths of the webhook endpoints (admin_api/webhooks.py), merged by admin_api.openapi."""

from __future__ import annotations

from typing import Any

from admin_api.openapi import ORG, _errors, _json, _ref
from gateway.webhooks import ENDPOINT_ID

HOOK = {"name": "webhook_id", "in": "path", "required": True,
        "schema": {"type": "string", "pattern": ENDPOINT_ID.pattern}}
_WRITE = (400, 401, 403, 404, 408, 413, 415, 429, 503)
_READ = (400, 401, 403, 404, 429, 503)


def _body(name: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": _ref(name)}}}


def paths() -> dict[str, Any]:
    base = "/v1/orgs/{org_id}/webhooks"
    return {
        base: {
            "parameters": [ORG],
            "post": {"operationId": "createWebhook", "summary": "Add a webhook endpoint (the signing secret is returned once)",
                     "description": "The URL must be http(s), without userinfo, and its host must resolve to public "
                                    "addresses only (400 webhook_url_refused) unless the operator allows private ones.",
                     "requestBody": _body("CreateWebhookRequest"),
                     "responses": {"201": _json("CreatedWebhookEndpoint", "Created; `secret` is shown only here"),
                                   **_errors(*_WRITE[:6], 409, *_WRITE[6:])}},
            "get": {"operationId": "listWebhooks", "summary": "The org's webhook endpoints",
                    "responses": {"200": _json("WebhookEndpointList", "Endpoints, oldest first"), **_errors(*_READ)}},
        },
        base + "/{webhook_id}": {
            "parameters": [ORG, HOOK],
            "get": {"operationId": "getWebhook", "summary": "One webhook endpoint",
                    "responses": {"200": _json("WebhookEndpoint", "The endpoint"), **_errors(*_READ)}},
            "patch": {"operationId": "editWebhook", "summary": "Change an endpoint's URL, events or description",
                      "requestBody": _body("EditWebhookRequest"),
                      "responses": {"200": _json("WebhookEndpoint", "Changed"), **_errors(*_WRITE)}},
            "delete": {"operationId": "deleteWebhook", "summary": "Delete an endpoint (queued deliveries are dropped)",
                       "responses": {"204": {"description": "Deleted"}, **_errors(*_READ)}},
        },
        base + "/{webhook_id}/rotate-secret": {
            "parameters": [ORG, HOOK],
            "post": {"operationId": "rotateWebhookSecret", "summary": "A new signing secret (returned once)",
                     "responses": {"200": _json("RotatedWebhookEndpoint", "The endpoint with its new secret; the previous one still signs until `previous_secret_expires_at`"),
                                   **_errors(*_READ)}},
        },
        base + "/{webhook_id}/test": {
            "parameters": [ORG, HOOK],
            "post": {"operationId": "testWebhook", "summary": "Queue a webhook.test delivery to this endpoint only",
                     "responses": {"202": _json("WebhookTestQueued", "Queued"), **_errors(*_READ)}},
        },
        base + "/{webhook_id}/deliveries": {
            "parameters": [ORG, HOOK],
            "get": {"operationId": "listWebhookDeliveries", "summary": "The endpoint's recent deliveries, newest first",
                    "responses": {"200": _json("WebhookDeliveryList", "Deliveries"), **_errors(*_READ)}},
        },
    }
