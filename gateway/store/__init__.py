"""The Redis data-access layer: the only package that knows the key layout and record encoding.

The key layout (every Redis key, its type and what it holds) is written once, in
docs/operations.md, "Redis layout"; change it there with the code. Hash tags keep each atomic
operation inside one slot, so the same code runs on standalone Redis, Sentinel and Redis Cluster.

The key id is derived one-way from the secret (gateway.keys.key_id_for), so verification is a
single HGETALL of the record followed by a constant-time digest comparison. The activity log
(GET /v1/orgs/{org_id}/audit-events) is each key's list of events, written by the script that
makes the change, and the org's activity index over them (keystore.KeyStore.activity).
Last-used data: see ledger.py. Page sign-in (started sign-ins, sessions): sessions.py. Nothing outside this package imports redis-py: a Redis fault
reaches callers as ``Unavailable`` (the reads) or one of ``FAULTS`` (faults.py); reach.py says
in one line that Redis does not answer.
"""

from gateway.store.codec import AUDIT_CURSOR_PATTERN, CURSOR_PATTERN, decode_audit_cursor, decode_cursor
from gateway.store.connection import RedisTarget, connect, parse_redis_url, redact_redis_url
from gateway.store.faults import FAULTS, Unavailable
from gateway.store.keystore import AuditPage, Contended, KeyStore, NotReplicated, Page, WriteTooLate
from gateway.store.ledger import UsageLedger
from gateway.store.quota import CreateLimits, MemoryGauge, OrgQuota
from gateway.store.replication import AUTO as AUTO_REPLICAS, parse_min_replicas
from gateway.store.sessions import SessionStore

__all__ = ["AUDIT_CURSOR_PATTERN", "AUTO_REPLICAS", "AuditPage", "CURSOR_PATTERN", "Contended", "CreateLimits", "FAULTS", "KeyStore",
           "MemoryGauge", "NotReplicated", "OrgQuota", "Page", "RedisTarget", "SessionStore", "Unavailable", "UsageLedger", "WriteTooLate",
           "connect", "decode_audit_cursor", "decode_cursor", "parse_min_replicas", "parse_redis_url",
           "redact_redis_url"]
