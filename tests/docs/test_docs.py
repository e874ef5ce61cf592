"""The docs match the code: the configuration reference lists every setting the code accepts, and nothing
else; every relative link in README.md, docs/*.md and bench/README.md reaches a file and, with a #fragment,
a heading of that file."""

from __future__ import annotations

import re

import msgspec
import redis.asyncio


from gateway.config import ServeSettings, env_names, flag
from gateway.store import KeyStore, SessionStore, UsageLedger
from gateway.store.webhooks import WebhookStore
from tests.support import ROOT


def test_every_serve_setting_is_documented_with_its_env_name():
    reference = (ROOT / "docs" / "configuration.md").read_text()
    table = reference.split("`gateway serve`:", 1)[1].split("\n\n", 2)[1]
    documented = set(re.findall(r"^\| `(--[a-z0-9-]+)`", table, flags=re.M))
    fields = {flag(f.name) for f in msgspec.structs.fields(ServeSettings)}
    assert documented == fields
    for f in msgspec.structs.fields(ServeSettings):
        row = next(line for line in table.splitlines() if line.startswith(f"| `{flag(f.name)}`"))
        assert f"`{env_names(f.name)[0]}`" in row, row


def test_redis_layout_names_exactly_the_keys_the_store_builds():
    # The layout is written once, in docs/operations.md; the store's docstring points there.
    doc = (ROOT / "docs" / "operations.md").read_text()
    table = doc.split("## Redis layout", 1)[1].split("\n\n| ", 1)[1].split("\n\n", 1)[0]
    documented = set(re.findall(r"^\| `([^`]+)` \|", table, flags=re.M)) - {"Redis key"}
    client = redis.asyncio.Redis()  # never connects: only the names are built
    store, ledger, sessions = KeyStore(client, prefix="gw"), UsageLedger(client, "gw"), SessionStore(client, "gw")
    built = {store._rec("<key_id>"), store._org_keys("<org_id>"), store._org_revoked("<org_id>"),
             store._org_creates("<org_id>"), ledger.node_prefix + "<node_id>", ledger.nodes, ledger.late_prefix + "<node_id>",
             ledger.base_prefix + "<bucket>", ledger.folded, store.channel, store.ack_channel,
             store.beat_channel("<node_id>"), store.registry, store.replicas.marker,
             store._key_log("<key_id>"), store._org_activity("<org_id>"), store.backfilled,
             ledger.hist_prefix + "<node_id>:<hour>", ledger.hist_open, ledger.histday_prefix + "<node_id>:<day>",
             ledger.histday_open, ledger.hour_prefix + "<key_id>:<day>",
             ledger.day_prefix + "<key_id>:<page>", sessions._login("<state_sha256>"),
             sessions._session("<session_sha256>"), sessions._refreshing("<session_sha256>"), sessions.live_index,
             store.limits.budget_key("<key_id>", "<window>", "<window_start_ms>"), store.limits.reclaim_channel,
             store.limits.op_key("<key_id>", "<node_id>:<n>"), store.limits.config_key,
             store.limits.rates_key("<key_id>", "<window>"), store.events.stream,
             store.orgs.settings_key("<org_id>"), store.orgs.settings_log("<org_id>"), store.finder.expiry, store.finder.lastused, store.finder.found,
             store.finder.pending, store.finder.due, store.finder.marks, store.finder.lock, store.finder.backfilled,
             store.finder.rescan}
    hooks = WebhookStore(store)
    built |= {hooks.endpoints_key("<org_id>"), hooks.job_key("<job_id>"), hooks.queue, hooks.dead,
              hooks.busy_key("<endpoint_id>"), hooks.log_key("<endpoint_id>"), hooks.endpoint_queue_key("<endpoint_id>"),
              hooks.ready, hooks.tests_key("<endpoint_id>"), hooks.layout}
    assert documented == built


# --- links -----------------------------------------------------------------------------------------

DOCS = ["README.md", *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md")), "bench/README.md"]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def prose(text: str) -> list[str]:
    """The lines of a Markdown text outside fenced code blocks, inline code spans removed."""
    lines, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            lines.append(re.sub(r"`[^`]*`", "", line))
    return lines


def anchors(text: str) -> set[str]:
    """The anchors GitHub gives a file's headings: lower case, punctuation dropped, spaces as '-', repeats -1, -2."""
    seen: dict[str, int] = {}
    found = set()
    fenced = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        heading = re.match(r"#{1,6} +(.+?) *#* *$", line)
        if fenced or not heading:
            continue
        slug = re.sub(r"[^\w\- ]", "", heading.group(1).lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def broken_links(doc: str, text: str, root=ROOT) -> list[str]:
    """Every relative link of ``text`` (the file ``doc``) whose file or heading does not exist."""
    broken = []
    for line in prose(text):
        for target in LINK.findall(line):
            if re.match(r"[a-z]+:", target):
                continue  # http:, https:, mailto:: not ours to check
            path, _, fragment = target.partition("#")
            file = (root / doc).parent / path
            if path and not file.is_file():
                broken.append(f"{doc}: {target}: no file {path}")
            elif fragment and fragment not in anchors(file.read_text() if path else text):
                where = file.resolve().relative_to(root.resolve()).as_posix() if path else doc
                broken.append(f"{doc}: {target}: no heading #{fragment} in {where}")
    return broken


def test_docs_folder_holds_the_moved_documents():
    assert {"docs/signing.md", "docs/forward-auth.md", "docs/operations.md", "docs/security.md",
            "docs/configuration.md", "docs/admin-api.md", "docs/deploying.md"} <= set(DOCS)


def test_every_relative_link_in_the_docs_resolves():
    broken = [b for doc in DOCS for b in broken_links(doc, (ROOT / doc).read_text())]
    assert broken == []


def test_the_link_check_finds_a_missing_file_and_a_missing_heading(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A\n\n## The Settings -> API Keys page\n\n## Twice\n\n## Twice\n")
    text = ("[ok](a.md#the-settings---api-keys-page) [ok](a.md#twice-1) [ok](#local) ![img](a.md)\n\n"
            "## Local\n\n[gone](b.md) [no heading](a.md#nowhere) [no third](a.md#twice-2) `[code](c.md)`\n"
            "```sh\n[fenced](d.md)\n```\n[web](https://example.com/x)\n")
    assert broken_links("docs/index.md", text, root=tmp_path) == [
        "docs/index.md: b.md: no file b.md",
        "docs/index.md: a.md#nowhere: no heading #nowhere in docs/a.md",
        "docs/index.md: a.md#twice-2: no heading #twice-2 in docs/a.md",
    ]
