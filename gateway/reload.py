"""Holds the rules in force and swaps in a changed scopes.yaml; a bad file keeps the old rules."""

from __future__ import annotations

import asyncio
import logging
import os

from gateway.scopes import RuleSet, ScopesError, load_rules

log = logging.getLogger("gateway.rules")


class RulesHolder:
    """The current RuleSet plus what is needed to notice and load a new one."""

    def __init__(self, path: str, rules: RuleSet | None = None) -> None:
        self.path = path
        self.current: RuleSet = rules if rules is not None else load_rules(path)
        self._stamp = self._stat()
        self.rejected = 0  # rejected loads since the last good one (for the "recovered" line)
        self.on_reload = None  # optional callback(result: str): "reloaded" or "rejected"

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def reload(self, *, force: bool = False) -> str:
        """Load the file if it changed; return "unchanged", "reloaded" or "rejected"."""
        stamp = self._stat()
        if not force and stamp == self._stamp:
            return "unchanged"
        self._stamp = stamp
        try:
            rules = load_rules(self.path)
        except ScopesError as exc:
            # Fail safe: the last good rules stay in force.
            self.rejected += 1
            log.error("scopes file rejected, keeping the previous rules: %s", exc)
            result = "rejected"
        else:
            recovered, self.rejected = self.rejected, 0
            if rules.digest == self.current.digest:
                if recovered:  # the last good file restored: say the alarm is over
                    log.info("scopes file %s is valid again; the rules in force are unchanged "
                             "(recovered after %s)", self.path, _attempts(recovered))
                return "unchanged"
            self.current = rules
            if recovered:
                log.info("scopes file %s is valid again; rules reloaded: %d rules "
                         "(recovered after %s)", self.path, len(rules.rules), _attempts(recovered))
            else:
                log.info("scopes file reloaded: %d rules from %s", len(rules.rules), self.path)
            result = "reloaded"
        if self.on_reload:
            self.on_reload(result)
        return result

    async def watch(self, interval: float) -> None:
        """Poll for changes every ``interval`` seconds (0: never poll; SIGHUP still works)."""
        if interval <= 0:
            await asyncio.Event().wait()
        while True:
            await asyncio.sleep(interval)
            await asyncio.to_thread(self.reload)


def _attempts(n: int) -> str:
    return f"{n} rejected attempt" + ("" if n == 1 else "s")
