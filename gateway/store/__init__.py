"""The Redis data-access layer: the only package that knows the key layout and record encoding.

Layout ({P} is --redis-prefix, "gw" by default). Hash tags keep each atomic operation inside one
slot, so the same code runs on standalone Redis, Sentinel and Redis Cluster:

  {P}:key:{<key_id>}              hash   the key record, short fields (codec.py): org, name, prefix,
                                         scopes, raw SHA-256 digest, created at/by, expires at,
                                         revoked at/by. Its own audit: who and when are written
                                         atomically with the change.
  {P}:org:{<org_id>}:keys         zset   the org's key ids scored by created_at (ms)
  {P}:org:{<org_id>}:revoked      zset   the org's revoked key ids scored by revoked_at (ms)
  {P}:org:{<org_id>}:creates      string creates by the org's keys in the current minute (expires)
  {P}:usage:{P}:node:<node_id>    hash   one gateway process's absolute usage totals:
                                         <key_id> -> "<last used ms>:<count>", "~" -> write seq
  {P}:usage:{P}:nodes             zset   node ids scored by their last liveness beat (server ms)
  {P}:usage:{P}:base:<bucket>     hash   usage folded from nodes that stopped, 15,376 buckets:
                                         <key_id[6:]> -> "<last used ms>:<count>"
  {P}:usage:{P}:folded            hash   node id -> seq of its last write folded while it was
                                         away (expires 7 days after the last such fold)
  {P}:invalidate                  pubsub channel carrying "<key_id> <nonce>" for each revoke
  {P}:acks                        pubsub channel carrying "<nonce> <node_id>" acknowledgements
  {P}:beat:<node_id>              pubsub channel carrying a gateway's own confirmed heartbeats
  {P}:gateways                    zset   live gateway processes, scored by registration expiry (ms)
  {P}:replicated                  string replicas connected when a process first saw one: this
                                         deployment has had a replica (replication.ReplicaGuard)

The key id is derived one-way from the secret (gateway.keys.key_id_for), so verification is a
single HGETALL of the record followed by a constant-time digest comparison. The audit trail
(GET /v1/orgs/{org_id}/audit-events) is read from the records through the two org indexes.
Last-used data: see ledger.py.
"""

from gateway.store.codec import AUDIT_CURSOR_PATTERN, CURSOR_PATTERN, decode_audit_cursor, decode_cursor
from gateway.store.connection import RedisTarget, connect, parse_redis_url, redact_redis_url
from gateway.store.keystore import AuditPage, KeyStore, NotReplicated, Page, RedisError, WriteTooLate
from gateway.store.ledger import UsageLedger
from gateway.store.quota import MemoryGauge, OrgQuota
from gateway.store.replication import AUTO as AUTO_REPLICAS, parse_min_replicas

__all__ = ["AUDIT_CURSOR_PATTERN", "AUTO_REPLICAS", "AuditPage", "CURSOR_PATTERN", "KeyStore", "MemoryGauge", "NotReplicated", "OrgQuota", "Page", "RedisError", "RedisTarget",
           "UsageLedger", "WriteTooLate", "connect", "decode_audit_cursor", "decode_cursor", "parse_min_replicas", "parse_redis_url",
           "redact_redis_url"]
