"""What a `kbguard drill` run will spend on embedding, said before it starts.

A drill embeds what its scratch copy's cache lacks, through the KB's own providers, and a paid
API bills it like any rebuild. What the copies lack is what the live KB lacks: the corpus
changes not yet indexed (`rebuild --estimate`'s ``incremental``), and for the drills that
restore the newest snapshot what changed since it (``restore_latest``; for everything-lost,
which catches up with the corpus as committed rather than as it is here, an approximation).
A run embeds each of those texts once: what one drill embeds is carried into the next drills'
copies. Besides, every `kbguard verify` embeds each canary query, the outage drill's new
document is embedded by every space and its search query by the standby. Only providers with a
price count: a local model's tokens cost nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from kbguard.config import Config, SpaceConfig
from kbguard.core.progress import SILENT, Progress
from kbguard.operations.estimate import Scenario, estimate
from kbguard.providers import chain_for

# the `kbguard verify` runs of each drill, each embedding every canary query once (a repair
# checks twice); the detecting verify of a lost store or manifest may embed none
VERIFIES = {"killed-rebuild": 1, "provider-outage": 1, "store-corruption": 4, "store-lost": 2,
            "manifest-lost": 2, "everything-lost": 2}
# the drills whose copies embed the corpus changes not yet indexed, and those that restore the
# newest snapshot and so also embed what changed since it
PAYS_PENDING = ("killed-rebuild", "provider-outage", "store-lost")
PAYS_SINCE_SNAPSHOT = ("manifest-lost", "everything-lost")


@dataclass
class Spend:
    """Texts, tokens and USD of embedding through priced providers."""

    texts: int = 0
    tokens: int = 0
    cost_usd: float = 0.0

    def __add__(self, other: Spend) -> Spend:
        return Spend(self.texts + other.texts, self.tokens + other.tokens,
                     self.cost_usd + other.cost_usd)

    def __sub__(self, other: Spend) -> Spend:
        return Spend(max(0, self.texts - other.texts), max(0, self.tokens - other.tokens),
                     max(0.0, self.cost_usd - other.cost_usd))


@dataclass
class DrillSpend:
    """The estimated embedding spend of a drill run through priced providers, per drill in
    the order they run."""

    drills: dict[str, Spend] = field(default_factory=dict)

    @property
    def total(self) -> Spend:
        return sum(self.drills.values(), Spend())

    def to_dict(self) -> dict[str, Any]:
        return {**_rounded(self.total),
                "drills": {name: _rounded(s) for name, s in self.drills.items()}}


def _rounded(spend: Spend) -> dict[str, Any]:
    return {**asdict(spend), "cost_usd": round(spend.cost_usd, 6)}


def plan_spend(cfg: Config, scenarios: Sequence[str], arrival: str, search: str,
               progress: Progress = SILENT) -> DrillSpend:
    """The spend of running ``scenarios`` (those the KB can do) in this order. ``arrival`` and
    ``search``: the texts of the outage drill's new document and of its search. Reads only."""
    out = DrillSpend()
    if not scenarios:
        return out
    found = estimate(cfg, progress=progress)
    pending = _priced(cfg, found.scenarios["incremental"])
    since_snapshot = _priced(cfg, found.scenarios["restore_latest"])
    paid_pending = paid_since_snapshot = False
    for name in scenarios:
        spend = Spend()
        if name in PAYS_PENDING and not paid_pending:
            spend += pending
            paid_pending = True
        if name in PAYS_SINCE_SNAPSHOT and not paid_since_snapshot:
            spend += since_snapshot - pending if paid_pending else since_snapshot
            paid_pending = paid_since_snapshot = True
        for space, text, times in _queries(cfg, name, arrival, search):
            spend += _price(space, text, times)
        out.drills[name] = spend
    return out


def _priced(cfg: Config, scenario: Scenario) -> Spend:
    """An estimate scenario's texts, tokens and cost in the spaces whose provider bills them."""
    out = Spend()
    for space in cfg.spaces:
        got = scenario.spaces.get(space.name) or {}
        if _price_of(space) > 0:
            out += Spend(int(got.get("texts") or 0), int(got.get("tokens") or 0),
                         float(got.get("cost_usd") or 0.0))
    return out


def _queries(cfg: Config, scenario: str, arrival: str, search: str
             ) -> list[tuple[SpaceConfig, str, int]]:
    """(space, text, how many times) of what ``scenario`` embeds besides the corpus."""
    by_name = {s.name: s for s in cfg.spaces}
    out = [(by_name.get(c.space or cfg.spaces[0].name, cfg.spaces[0]), c.query,
            VERIFIES[scenario]) for c in cfg.canaries]
    if scenario == "provider-outage":
        out += [(space, arrival, 1) for space in cfg.spaces]
        out += [(space, search, 1) for space in cfg.spaces[1:]]
    return out


def _price(space: SpaceConfig, text: str, times: int) -> Spend:
    price = _price_of(space)
    if price <= 0:
        return Spend()
    tokens = times * sum(chain_for(space).providers[0].count_tokens([text]))
    return Spend(times, tokens, tokens * price / 1_000_000)


def _price_of(space: SpaceConfig) -> float:
    """USD per million tokens of the space's first provider, what the estimate prices with."""
    first = chain_for(space).providers[0]
    return float(getattr(getattr(first, "settings", None), "price_per_million_tokens", 0.0))
