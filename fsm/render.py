"""Text renderings of the lifecycle: the Mermaid diagram and Markdown tables.

Everything here is derived from the tables of :mod:`fsm.lifecycle` at call
time, never copied, so the diagrams in ``diagrams/`` and the generated blocks
of ``docs/lifecycle.md`` cannot drift from the machine that runs (``procmond
diagram --check`` fails when the committed files differ from a fresh
render). Like the rest of ``fsm/``, this module does no I/O: it returns
strings, and :mod:`procmond.diagram` writes them.

The tables are read through the module (``lifecycle.TRANSITIONS``) rather than
imported by name, so a renderer always sees the table as it is now; the tests
rely on this to show that an edited table makes the check fail.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Literal

from transitions.extensions.diagrams import GraphMachine

from fsm import lifecycle
from fsm.vocabulary import Action, Activity, Operation, State

#: Title of the rendered diagrams (Mermaid front matter, Graphviz label).
TITLE: Final = "procmond lifecycle"

#: Cell text of an admitted operation in the acceptance table (protocol section 5).
YES: Final = "yes"

GraphEngine = Literal["mermaid", "graphviz"]


class _DiagramModel:
    """The object the diagram machine decorates; never fired, so it stays in
    the initial state and the rendering is stable (LIBRARY-NOTES: the
    rendered text marks the current and previous state)."""

    state: str


def graph_machine(graph_engine: GraphEngine = "mermaid") -> GraphMachine:
    """A fresh ``transitions`` diagram machine of the lifecycle, in its initial state.

    Built from :func:`fsm.lifecycle.machine_config`, the same keyword
    arguments the running :class:`~fsm.lifecycle.Lifecycle` uses, with guards
    shown as ``[name]``. The ``graphviz`` engine needs the ``graphviz``
    package (``transitions`` silently falls back to Mermaid without it);
    checking that is the caller's business.
    """
    return GraphMachine(
        model=_DiagramModel(),
        graph_engine=graph_engine,
        show_conditions=True,
        title=TITLE,
        **lifecycle.machine_config(),
    )


def mermaid() -> str:
    """The lifecycle as a Mermaid ``stateDiagram-v2``, ending in one newline."""
    text = graph_machine("mermaid").get_combined_graph().draw(None)
    if not isinstance(text, str):  # pragma: no cover - the mermaid engine returns text
        raise TypeError(f"mermaid graph rendered {type(text).__name__}, expected str")
    # transitions 0.9.3 writes the title as a bare YAML scalar between the
    # front-matter fences, which Mermaid ignores; give it its `title:` key.
    bare = f"---\n{TITLE}\n---\n"
    if text.startswith(bare):
        text = f"---\ntitle: {TITLE}\n---\n" + text[len(bare) :]
    # It also pads its blank separator lines with spaces; strip trailing
    # whitespace so the committed file and the docs block are clean.
    return "\n".join(line.rstrip() for line in text.strip("\n").splitlines()) + "\n"


def _cell(text: str) -> str:
    """Escape what would break a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def _code(name: str) -> str:
    return f"`{name}`"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(_cell(c) for c in row) + " |" for row in rows),
    ]
    return "\n".join(lines) + "\n"


def _admission_cell(state: State, operation: Operation) -> str:
    verdict = lifecycle.admission(state, operation)
    if isinstance(verdict, lifecycle.Refusal):
        return verdict.code.value
    return YES


def acceptance_table_markdown() -> str:
    """Which operation each state admits: ``yes`` or the refusal code.

    One row per :class:`~fsm.Operation` (the wire RPCs first, in
    the layout of protocol section 5, then the internal ticks), one column
    per state in declaration order.
    """
    states = [spec.state for spec in lifecycle.STATES]
    return _table(
        ("operation", *(s.value for s in states)),
        [(op.value, *(_admission_cell(s, op) for s in states)) for op in Operation],
    )


def transitions_table_markdown() -> str:
    """Every declared transition: trigger, sources, destination, guards, meaning."""
    rows = [
        (
            _code(spec.trigger.value),
            ", ".join(_code(s.value) for s in spec.sources),
            _code(spec.dest.value),
            ", ".join(_code(g.__name__) for g in spec.guards) or "none",
            spec.meaning,
        )
        for spec in lifecycle.TRANSITIONS
    ]
    return _table(("trigger", "from", "to", "guards", "meaning"), rows)


def states_table_markdown() -> str:
    """Every state: meaning, refusal code, admitted operations, triggers out."""
    rows = [
        (
            _code(spec.state.value) + (" (initial)" if spec.state is lifecycle.INITIAL else ""),
            spec.meaning,
            _code(spec.refusal.value),
            ", ".join(op.value for op in lifecycle.accepted_operations(spec.state)) or "nothing",
            ", ".join(_code(t.value) for t in lifecycle.triggers_from(spec.state))
            or "none (terminal)",
        )
        for spec in lifecycle.STATES
    ]
    return _table(("state", "meaning", "refuses with", "accepts", "triggers out"), rows)


def _actions(actions: Sequence[Action]) -> str:
    return ", ".join(a.value for a in actions) or "nothing"


def effects_table_markdown() -> str:
    """What each state means for the daemon: activities, entry and exit actions, systemd, health.

    The daemon performs exactly this (:func:`fsm.lifecycle.move`): on a change, the
    actions of the state left, then the activities that differ stopped and started,
    then the actions of the state entered.
    """
    order = list(Activity)
    rows = []
    for spec in lifecycle.STATES:
        effects = spec.effects
        health = effects.health
        rows.append(
            (
                _code(spec.state.value),
                ", ".join(a.value for a in sorted(effects.activities, key=order.index))
                or "nothing",
                _actions(effects.on_enter),
                _actions(effects.on_exit),
                " ".join([*effects.sd_notify, f"STATUS={effects.status}"]),
                "none"
                if health is None
                else f"{health.severity.value}: {health.reason.format(state=spec.state.value)}",
            )
        )
    return _table(
        ("state", "while in it", "on entering", "on leaving", "sd_notify", "health"), rows
    )
