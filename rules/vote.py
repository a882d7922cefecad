"""k-out-of-N voting: gas detectors of one class on one hazard source confirm a leak together.

One detector above its first level may be a drifting cell or a local puff; k of them on the same
tank farm or process unit is a leak. A hazard source with two or more detectors of a class
(combustible; toxic of one gas) votes 2-out-of-N unless its ``vote_k`` says otherwise (0: off).
The vote is its own alarm on the hazard source (red by default), naming the source and the
detectors. It follows the threshold operator's level changes in time order across the whole
batch, so a backlog votes exactly as the same readings would have live.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from park.model import VOTE_K_DEFAULT
from park.site import SensorKind
from rules.base import Arrays, Context, Readings, arrays_nbytes
from rules.lifecycle import Alarm, Signal

VOTING_KINDS = (SensorKind.GAS_COMBUSTIBLE, SensorKind.GAS_TOXIC)


@dataclass(frozen=True, slots=True)
class VoteGroup:
    enterprise: str
    hazard_source: str
    name: str
    gas_class: str  # "gas_combustible", or "gas_toxic:H2S"
    k: int
    members: tuple[int, ...]  # dense sensor indices

    @property
    def key(self) -> str:
        return f"h:{self.enterprise}:{self.hazard_source}:vote:{self.gas_class}"


def gas_class(kind: SensorKind, gas: str | None) -> str:
    return kind.value if kind is SensorKind.GAS_COMBUSTIBLE else f"{kind.value}:{(gas or '').upper()}"


class Vote:
    name = "vote"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        park = ctx.park
        by_class: dict[tuple[str, str, str], list[int]] = {}
        for i, s in enumerate(ctx.specs):
            if s.kind in VOTING_KINDS and s.hazard_source and s.in_service:
                by_class.setdefault((s.enterprise, s.hazard_source, gas_class(s.kind, s.gas)), []).append(i)
        self.groups: list[VoteGroup] = []
        self.group_of: dict[int, int] = {}
        for (ent, code, cls), members in by_class.items():
            hs = next(h for h in park.enterprises[ent].hazard_sources if h.code == code)
            k = VOTE_K_DEFAULT if hs.vote_k is None else hs.vote_k
            if k < 1 or len(members) < max(k, 2):
                continue
            for m in members:
                self.group_of[m] = len(self.groups)
            self.groups.append(VoteGroup(ent, code, hs.name, cls, k, tuple(members)))
        self.above: list[set[int]] = [set() for _ in self.groups]
        self.on = np.zeros(len(self.groups), bool)
        self.by_key = {g.key: n for n, g in enumerate(self.groups)}

    def on_readings(self, r: Readings) -> list[Signal]:
        out: list[Signal] = []
        if not self.groups:
            return out
        for ts, i, old, new in r.level_changes:  # in time order across the batch
            g = self.group_of.get(i)
            if g is None or (old >= 1) == (new >= 1):
                continue
            if new >= 1:
                self.above[g].add(i)
            else:
                self.above[g].discard(i)
            self._judge(g, ts, out)
        return out

    def _judge(self, g: int, ts: int, out: list[Signal]) -> None:
        grp = self.groups[g]
        n_above = len(self.above[g])
        if n_above >= grp.k:
            specs = self.ctx.specs
            voters = sorted(self.above[g], key=lambda m: specs[m].tag)
            facts = {"hazard_source": grp.hazard_source, "hazard_source_name": grp.name, "gas_class": grp.gas_class,
                     "k": grp.k, "n": len(grp.members), "above": n_above,
                     "detectors": [specs[m].tag for m in voters],
                     "detector_names": [specs[m].display_name for m in voters],
                     "kind": specs[grp.members[0]].kind.value, "unit": specs[grp.members[0]].unit}
            self.on[g] = True
            out.append(Signal(ts, grp.key, "vote", True, grp.enterprise, severity=self.ctx.cfg.severity.vote,
                              value=float(n_above), limit=float(grp.k), facts=facts, order=4))
        elif self.on[g]:
            self.on[g] = False
            out.append(Signal(ts, grp.key, "vote", False, grp.enterprise, value=float(n_above), order=4))

    def on_tick(self, now_us: int) -> list[Signal]:
        return []

    def next_wakeup(self, now_us: int) -> int | None:
        return None

    def snapshot(self) -> Arrays:
        return {}

    def restore(self, snap: Arrays) -> None:
        pass

    def adopt(self, alarm: Alarm, i: int) -> None:
        if alarm.rule == "vote" and alarm.condition and alarm.key in self.by_key:
            self.on[self.by_key[alarm.key]] = True

    def recount(self, level: np.ndarray) -> None:
        """After a restart: who is above first level, from the restored threshold levels."""
        for g, grp in enumerate(self.groups):
            self.above[g] = {m for m in grp.members if level[m] >= 1}

    def nbytes(self) -> int:
        return arrays_nbytes(self.on) + 64 * len(self.group_of)
