"""k-out-of-N voting: gas detectors of one class on one hazard source confirm a leak together.

One detector above its first level may be a drifting cell or a local puff; k of them on the same
tank farm or process unit is a leak. A hazard source with two or more detectors of a class
(combustible; toxic of one gas) votes 2-out-of-N unless its ``vote_k`` says otherwise (0: off).
The vote is its own alarm on the hazard source (red by default), naming the source and the
detectors. It follows the threshold operator's level changes in time order across the whole
batch, so a backlog votes exactly as the same readings would have live.
"""

from __future__ import annotations

import numpy as np

from park.model import VOTE_K_DEFAULT
from park.site import SensorKind
from rules.base import Arrays, Context, Readings, arrays_nbytes
from rules.lifecycle import Alarm, Signal

VOTING_KINDS = (SensorKind.GAS_COMBUSTIBLE, SensorKind.GAS_TOXIC)


def gas_class(kind: SensorKind, gas: str | None) -> str:
    return kind.value if kind is SensorKind.GAS_COMBUSTIBLE else f"{kind.value}:{(gas or '').upper()}"


class Vote:
    """Groups kept compactly: members of group g are ``members[start[g]:start[g + 1]]``."""

    name = "vote"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        park = ctx.park
        by_class: dict[tuple[str, str, str], list[int]] = {}
        for i, s in enumerate(ctx.specs):
            if s.kind in VOTING_KINDS and s.hazard_source and s.in_service:
                by_class.setdefault((s.enterprise, s.hazard_source, gas_class(s.kind, s.gas)), []).append(i)
        self.group_of = np.full(ctx.n, -1, np.int32)
        self.keys: list[str] = []
        self.where: list[tuple[str, str, str, str]] = []  # (enterprise, source code, source name, gas class)
        ks: list[int] = []
        members: list[int] = []
        starts = [0]
        for (ent, code, cls), group in by_class.items():
            hs = next(h for h in park.enterprises[ent].hazard_sources if h.code == code)
            k = VOTE_K_DEFAULT if hs.vote_k is None else hs.vote_k
            if k < 1 or len(group) < max(k, 2):
                continue
            self.group_of[group] = len(self.keys)
            self.keys.append(f"h:{ent}:{code}:vote:{cls}")
            self.where.append((ent, code, hs.name, cls))
            ks.append(k)
            members += group
            starts.append(len(members))
        self.k = np.array(ks, np.int16)
        self.members = np.array(members, np.int32)
        self.start = np.array(starts, np.int32)
        self.count = np.zeros(len(self.keys), np.int16)  # members at or above first level
        self.above = np.zeros(ctx.n, bool)
        self.on = np.zeros(len(self.keys), bool)
        self.by_key = {key: g for g, key in enumerate(self.keys)}

    def group(self, g: int) -> np.ndarray:
        return self.members[self.start[g]:self.start[g + 1]]

    def on_readings(self, r: Readings) -> list[Signal]:
        out: list[Signal] = []
        if not self.keys:
            return out
        for ts, i, old, new in r.level_changes:  # in time order across the batch
            g = int(self.group_of[i])
            if g < 0 or (old >= 1) == (new >= 1):
                continue
            self.above[i] = new >= 1
            self.count[g] += 1 if new >= 1 else -1
            self._judge(g, ts, out)
        return out

    def _judge(self, g: int, ts: int, out: list[Signal]) -> None:
        ent, code, name, cls = self.where[g]
        n_above, k = int(self.count[g]), int(self.k[g])
        if n_above >= k:
            specs = self.ctx.specs
            grp = self.group(g)
            voters = sorted((int(m) for m in grp[self.above[grp]]), key=lambda m: specs[m].tag)
            first = specs[int(grp[0])]
            facts = {"hazard_source": code, "hazard_source_name": name, "gas_class": cls, "k": k, "n": len(grp),
                     "above": n_above, "detectors": [specs[m].tag for m in voters],
                     "detector_names": [specs[m].display_name for m in voters],
                     "kind": first.kind.value, "unit": first.unit}
            self.on[g] = True
            out.append(Signal(ts, self.keys[g], "vote", True, ent, severity=self.ctx.cfg.severity.vote,
                              value=float(n_above), limit=float(k), facts=facts, order=4))
        elif self.on[g]:
            self.on[g] = False
            out.append(Signal(ts, self.keys[g], "vote", False, ent, value=float(n_above), order=4))

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
        self.above[:] = False
        self.above[self.members] = level[self.members] >= 1
        for g in range(len(self.keys)):
            self.count[g] = int(self.above[self.group(g)].sum())

    def nbytes(self) -> int:
        return arrays_nbytes(self.group_of, self.k, self.members, self.start, self.count, self.above, self.on)
