"""Content rules: every rule of the rule set that hits the message becomes a symbol.

The rules live in files (the shipped set and the admin's directory, see docs/rules.md), so the
symbols are not known in advance: `symbols` is empty and each finding carries its rule's score.
The set is loaded and compiled when the pipeline is built; a broken rule file raises
`ConfigError` naming the file and the rule, so filterd refuses to start and a reload keeps the
rules it had.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import ClassVar

from filterd.check import Check, CheckContext, CheckSettings, Cost, Finding, Output, Stage
from filterd.rules import load_rule_set
from filterd.settings import setting
from filterd.transaction import Transaction


@dataclass(frozen=True)
class RulesSettings(CheckSettings):
    default_dir: str = setting(
        "", "directory of the shipped rule files (empty: the set installed with filterd)"
    )
    local_dir: str = setting(
        "", "the admin's rule directory, read after the shipped one: new rules and overrides (empty: none)"
    )


class Rules(Check):
    name = "rules"
    stage = Stage.EOM
    cost = Cost.CONTENT
    description = "content rules from rule files: headers, body, URLs, MIME structure"
    symbols: ClassVar[Mapping[str, float]] = {}  # one symbol per rule, named by the rule files
    Settings = RulesSettings
    needs_body = True
    optional_content = True

    def __init__(self, ctx: CheckContext[RulesSettings]) -> None:
        super().__init__(ctx)
        settings = ctx.settings
        self.rules = load_rule_set(settings.default_dir, settings.local_dir, reserved=ctx.scores.defaults)

    def run(self, tx: Transaction) -> Iterable[Output]:
        for rule in self.rules.match(tx.message):
            if not rule.hidden:
                # [scores] may set a rule's score like any other symbol's (filterd.config checks the name)
                score = self.ctx.scores.overrides.get(rule.name, rule.score)
                yield Finding(rule.name, rule.description, score=score)
