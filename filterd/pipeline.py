"""The pipeline: one configuration's enabled checks, built and put in order, and the arithmetic
of a verdict.  `filterd.driver` walks a message through it stage by stage.

The pipeline knows nothing about any particular check.  For each stage it runs the enabled checks
of that stage and the transaction's direction, in the order `filterd.registry` computes, collects
what they yield, and stops at the first decision.  After the verdict it runs the finishers
(headers and signatures), which cannot change it.  An exception inside a check never escapes: it is logged with the queue id and
the check's `on_error` policy decides between skipping the check (fail-open, shown in the report
as CHECK_ERROR) and tempfailing the message (fail-closed).

Every check's CPU time on a message is measured (`Transaction.check_cpu`) and the checks of one
message share a CPU budget, ``[milter] cpu_budget``.  On the mail path checks run in libmilter's
threads: no signal can interrupt them and a Python thread cannot be killed, so the budget cannot
stop a check halfway (the checks bound their own work: MAX_PARTS, MAX_TAGS, linear-time regexes).
What it does is stop the work that is left: the check whose run crosses the budget is named in a
TIME_BUDGET finding (it scores -- an attacker can make a message slow on purpose), a warning is
logged with the queue id, and the optional content checks still to come are skipped, each with
TIME_BUDGET_SKIPPED.  CPU time of the thread, not wall time: waiting on DNS, Redis or clamd has
its own timeouts, and other threads holding the GIL do not count against this message.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from filterd.check import Check, CheckContext, CheckSettings, Finisher, ScoreTable, Site
from filterd.combination import BASE_SYMBOL, Combination
from filterd.config import ActionSettings, Config, registered_checks
from filterd.failures import R554_CHECK_FAILED, is_dependency_failure
from filterd.policy import Policy, PolicyTable, parse_policies, policy_of
from filterd.registry import known_symbols, run_order
from filterd.replies import R451_CHECK_FAILED, R451_GREYLISTED, R550_SPAM
from filterd.results import (
    Action,
    AddHeader,
    Decision,
    Direction,
    Finding,
    Output,
    Reject,
    Stage,
    Symbol,
    TempFail,
    Verdict,
    action_of,
)
from filterd.services import Services
from filterd.settings import Collector
from filterd.transaction import Transaction

log = logging.getLogger("filterd.pipeline")

# When two thresholds are equal the more severe action wins.
_SEVERITY = [Action.ADD_HEADER, Action.GREYLIST, Action.REWRITE_SUBJECT, Action.QUARANTINE, Action.REJECT]


def _thresholds(actions: ActionSettings) -> list[tuple[float, int, Action]]:
    """The score thresholds as (threshold, severity, action)."""
    return [
        (threshold, _SEVERITY.index(Action(name)), Action(name))
        for name, threshold in actions.thresholds().items()
    ]


def site_of(config: Config, services: Services | None = None) -> Site:
    """The site facts a check may read, from the configuration (and the SQL tables, with [sql])."""
    return Site(
        hostname=config.network.hostname,
        static_local_domains=config.network.local_domains,
        sql=services.sql if services is not None else None,
        internal_networks=tuple(
            ipaddress.ip_network(n, strict=False) for n in config.network.internal_networks
        ),
        key_prefix=config.redis.key_prefix,
        max_scan_bytes=config.milter.max_scan_bytes,
        oversize_action=config.milter.oversize_action,
        reject_score=config.actions.reject,
    )


def context_for(
    config: Config, name: str, services: Services, settings: CheckSettings | None = None
) -> CheckContext[Any]:
    """What the check called `name` is built from: its settings (``[checks.<name>]`` unless
    given), the site, the score table and the services."""
    return CheckContext(
        settings=settings if settings is not None else config.check_settings(name),
        site=site_of(config, services),
        scores=ScoreTable(known_symbols(), config.scores),
        services=services,
        dns=config.dns,
        settings_of=config.check_settings,
    )


C = TypeVar("C", bound=Check)


def build_check(
    cls: type[C], config: Config, services: Services | None = None, settings: CheckSettings | None = None
) -> C:
    """One check built from a configuration, outside a pipeline (tests, benchmarks, tools)."""
    return cls(context_for(config, cls.name, services or Services(config), settings))


class Pipeline:
    def __init__(self, config: Config, checks: Iterable[Check], services: Services) -> None:
        self.config = config
        self.services = services
        # the last [sql] policy rows seen and the table made of them with the file's (policy_for)
        self._sql_policies: tuple[Any, PolicyTable] | None = None
        self.checks = list(checks)
        self.by_stage = run_order(self.checks)
        self.scores = ScoreTable(known_symbols(), config.scores)
        self.internal_networks = site_of(config).internal_networks
        # Built once, not per message: the checks that learn from verdicts (the others' hook does
        # nothing), and the score thresholds as (threshold, severity, action).
        self.learners = [c for c in self.checks if type(c).after_verdict is not Check.after_verdict]
        self.combination = Combination(config.scoring)  # table or learned scores (filterd.combination)
        self.thresholds = _thresholds(config.actions)

    @classmethod
    def from_config(cls, config: Config, services: Services | None = None) -> Pipeline:
        """Build every enabled check; a check that cannot start raises here (so the daemon refuses to)."""
        services = services or Services(config)
        checks: list[Check] = []
        collector = Collector()  # every check that cannot start is named, not only the first
        for check_cls in registered_checks():
            if config.check_settings(check_cls.name).enabled:
                with collector.collect():
                    checks.append(check_cls(context_for(config, check_cls.name, services)))
        try:
            collector.raise_if_any()
            return cls(config, checks, services)
        except BaseException:
            for check in checks:
                check.close()
            raise

    def close(self) -> None:
        for check in self.checks:
            check.close()
        self.services.close()

    def policy_for(self, rcpt: str) -> Policy:
        """The recipient's policy: the ``[policy."..."]`` tables, and with [sql] the rows of
        ``filterd_policy`` under them (a key in the file wins over the same key in SQL; the most
        specific key wins across both).  SQL rows are validated as the file's tables are; a bad
        row is logged once per refresh and left out, never a reason to refuse mail."""
        sql = self.services.sql if self.config.sql.enabled else None
        if sql is None:
            return self.config.policies.lookup(rcpt)
        rows = sql.policy_rows()
        merged = self._sql_policies
        if merged is None or merged[0] is not rows:
            merged = (rows, self._merge_sql_policies(rows))
            self._sql_policies = merged  # one reference swap: a racing thread at worst parses twice
        return merged[1].lookup(rcpt)

    def _merge_sql_policies(self, rows: Any) -> PolicyTable:
        check_names = [c.name for c in registered_checks()]
        entries: dict[str, Policy] = {}
        for domain, row in rows.items():  # one row at a time: a bad one costs only itself
            table, problems = parse_policies({domain: dict(row)}, self.config.actions, check_names)
            for problem in problems:
                log.warning(
                    "sql: filterd_policy row of %s left out: %s: %s", domain, problem.key, problem.message
                )
            if not problems:
                entries.update(table.entries)
        return PolicyTable({**entries, **self.config.policies.entries})

    def may_decide(self, *stages: Stage) -> bool:
        """Could an enabled check at one of these stages refuse or hold the message?"""
        if Stage.RCPT in stages and (self.config.policies or self.config.sql.enabled):
            return True  # a recipient under another policy than the message's is refused (filterd.policy)
        return any(check.can_decide() for stage in stages for check in self.by_stage[stage])

    def direction_of(self, tx: Transaction) -> Direction:
        """Outbound: an authenticated SMTP client, or one in the configured internal networks."""
        if tx.auth_user:
            return Direction.OUTBOUND
        ip = tx.session.client_ip
        if ip is not None and any(ip in net for net in self.internal_networks):
            return Direction.OUTBOUND
        return Direction.INBOUND

    def run_stage(self, stage: Stage, tx: Transaction) -> Decision | None:
        """Run the stage's checks on `tx`; return the first decision, if any."""
        started = time.perf_counter()
        policy = policy_of(tx)  # the recipients' policy may turn checks off (filterd.policy)
        try:
            for check in self.by_stage[stage]:
                if tx.direction not in check.directions or not policy.runs(check.name):
                    continue
                if tx.oversized and check.needs_body:
                    continue  # the body passed max_scan_bytes and was not kept
                decision = self._run_check(check, tx)
                if decision is not None:
                    return decision
            return None
        finally:
            tx.timings[stage] = tx.timings.get(stage, 0.0) + time.perf_counter() - started

    def _run_check(self, check: Check, tx: Transaction) -> Decision | None:
        return self._guarded(check, tx, check.run)

    def _guarded(
        self, check: Check, tx: Transaction, run: Callable[[Transaction], Iterable[Output]]
    ) -> Decision | None:
        """Run one check's work, charged to the message's CPU budget; an exception follows the
        check's `on_error` policy (see the module docstring)."""
        budget = self.config.milter.cpu_budget
        if budget and check.optional_content and sum(tx.check_cpu.values()) > budget:
            tx.findings.append(
                Finding("TIME_BUDGET_SKIPPED", f"{check.name} not run: the message's CPU budget was spent")
            )
            return None
        started = time.thread_time()
        try:
            outputs = list(run(tx))
        except Exception as exc:  # a check's bug or its backend's failure must not reach libmilter
            log.warning(
                "%s: check %s failed: %s: %s",
                tx.queue_id or "NOQUEUE",
                check.name,
                type(exc).__name__,
                exc,
                exc_info=log.isEnabledFor(logging.DEBUG),
            )
            if check.settings.on_error == "closed":
                if not is_dependency_failure(exc):  # a retry would fail alike: see filterd.failures
                    return Reject(
                        R554_CHECK_FAILED, f"check {check.name} failed (fail-closed, not retryable)"
                    )
                return TempFail(R451_CHECK_FAILED, f"check {check.name} failed (fail-closed)")
            tx.findings.append(
                Finding("CHECK_ERROR", f"{check.name} skipped (fail-open): {type(exc).__name__}: {exc}")
            )
            return None
        finally:
            self._charge(check, tx, time.thread_time() - started, budget)
        for out in outputs:
            if isinstance(out, Finding):
                tx.findings.append(out)
            elif isinstance(out, AddHeader):
                tx.add_headers.append(out)
            else:
                return out
        return None

    def _charge(self, check: Check, tx: Transaction, spent: float, budget: float) -> None:
        """Add a check's CPU time to the message's; name the check whose run crossed the budget."""
        tx.check_cpu[check.name] = tx.check_cpu.get(check.name, 0.0) + spent
        total = sum(tx.check_cpu.values())
        if not budget or total <= budget or total - spent > budget:
            return  # within the budget, or crossed earlier by another check (already reported)
        reason = (
            f"{check.name} used {spent * 1000:.0f} ms of CPU; the checks used {total:.2f} s "
            f"on this message, over the {budget:g} s budget"
        )
        tx.findings.append(Finding("TIME_BUDGET", reason))
        log.warning("%s: %s; optional content checks left are skipped", tx.queue_id or "NOQUEUE", reason)

    def finish(self, tx: Transaction, verdict: Verdict) -> Decision | None:
        """Run the finishers on a message that is delivered or held, adding their headers to the
        verdict and their findings to its report, unscored.  Returns a TempFail when a
        fail-closed finisher failed (the only way this phase changes the outcome)."""
        policy = policy_of(tx)
        for check in self.by_stage[Stage.FINISH]:
            if tx.direction not in check.directions or (tx.oversized and check.needs_body):
                continue
            if not policy.runs(check.name):
                continue
            decision = self._finish_with(check, tx, verdict)
            if decision is not None:
                return decision
        return None

    def _finish_with(self, finisher: Check, tx: Transaction, verdict: Verdict) -> Decision | None:
        assert isinstance(finisher, Finisher)
        findings, headers = len(tx.findings), len(tx.add_headers)
        decision = self._guarded(finisher, tx, functools.partial(finisher.finish, verdict=verdict))
        verdict.symbols += [Symbol(f.symbol, 0.0, f.reason) for f in tx.findings[findings:]]
        verdict.add_headers += tx.add_headers[headers:]
        return decision

    def after_verdict(self, tx: Transaction, verdict: Verdict) -> None:
        """Tell the checks the final verdict (called by the driver once the action is taken).

        Checks that learn from verdicts (reputation) update their state here.  A failure is
        logged and never reaches the caller: the message's fate is already decided."""
        for check in self.learners:
            if tx.direction not in check.directions:
                continue
            try:
                check.after_verdict(tx, verdict)
            except Exception as exc:
                log.warning(
                    "%s: after_verdict of %s failed: %s: %s",
                    tx.queue_id or "NOQUEUE",
                    check.name,
                    type(exc).__name__,
                    exc,
                    exc_info=log.isEnabledFor(logging.DEBUG),
                )

    def verdict(self, tx: Transaction, decision: Decision | None = None) -> Verdict:
        """Add up the findings and choose the action (or report the decision a check took)."""
        # [scoring]: each finding's contribution and the total, from the table or the learned model
        scored = self.combination.score(tx.findings, [self.scores.of_finding(f) for f in tx.findings])
        symbols = [
            Symbol(f.symbol, c, f.reason) for f, c in zip(tx.findings, scored.contributions, strict=True)
        ]
        if scored.base is not None:
            symbols.insert(0, Symbol(BASE_SYMBOL, scored.base, "where the learned combination starts"))
        total = scored.total
        policy = policy_of(tx)  # the thresholds of the recipients' policy (filterd.policy)
        actions = policy.actions_over(self.config.actions)
        verdict = Verdict(
            score=total,
            required=actions.required,
            action=Action.ACCEPT,
            symbols=symbols,
            add_headers=list(tx.add_headers),
        )
        if decision is not None:
            verdict.decision = decision
            verdict.action = action_of(decision)
            return verdict
        if tx.direction is Direction.OUTBOUND:
            return verdict
        thresholds = self.thresholds if actions is self.config.actions else _thresholds(actions)
        reached = [t for t in thresholds if total >= t[0]]
        if reached:
            verdict.action = max(reached)[2]
        if verdict.action is Action.REJECT and policy.reject_action == "quarantine":
            verdict.action = Action.QUARANTINE  # held for review instead of the 5xx (filterd.policy)
        elif verdict.action is Action.REJECT:
            verdict.decision = Reject(R550_SPAM, f"score {total} >= {actions.reject}")
        elif verdict.action is Action.GREYLIST:
            verdict.decision = TempFail(R451_GREYLISTED, f"score {total} >= {actions.greylist}")
        return verdict
