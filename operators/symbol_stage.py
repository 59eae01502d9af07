"""The per-symbol stage: bar validation, then indicators and signals.

Shaped like a Bytewax stateful operator: `SymbolState` is one symbol's state
and `step_symbol` applies a chunk of that symbol's bars in arrival order.
"""
from __future__ import annotations

from dataclasses import dataclass

from operators.bars import BarGate
from operators.signals import SignalEngine, SignalRules
from operators.types import Bar, DeadLetter, SymbolOutput


@dataclass(slots=True)
class SymbolState:
    gate: BarGate
    engine: SignalEngine  # every strategy type's state of this symbol

    @classmethod
    def new(cls, rules: SignalRules) -> "SymbolState":
        return cls(BarGate(), SignalEngine.new(rules))


def bar_payload(bar: Bar) -> str:
    return (
        f'{{"S":"{bar.symbol}","t":{bar.ts},"o":{bar.open!r},"h":{bar.high!r},'
        f'"l":{bar.low!r},"c":{bar.close!r},"v":{bar.volume!r}}}'
    )


def step_symbol(
    state: SymbolState, bars: list, origins: list, origin_prefix: str, out: SymbolOutput
) -> None:
    """Apply `bars` (one symbol, arrival order); bar i came from
    `origin_prefix` + `origins[i]` (a file row or a partition offset)."""
    gate = state.gate
    step = state.engine.step
    accepted = out.bars
    signals = out.signals
    filtered = out.filtered
    for bar, origin in zip(bars, origins):
        reason = gate.admit(bar)
        if reason is not None:
            out.dead_letters.append(
                DeadLetter(
                    str(bar.symbol), bar.ts, reason, f"{origin_prefix}{origin}", bar_payload(bar)
                )
            )
            continue
        accepted.append(bar)
        sigs = step(bar)
        if sigs:
            live = []
            for s in sigs:
                if s.filtered_reason is None:
                    live.append(s)
                else:
                    filtered.append(s)
            if live:
                signals[bar.ts] = live
