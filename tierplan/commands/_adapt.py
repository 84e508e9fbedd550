"""`--adapt` options shared by `tierplan run` and `tierplan deploy`, and how a decision is printed."""

from __future__ import annotations

import typer

from tierplan.planner.adaptpolicy import POLICY_KEYS, AdaptPolicy

__all__ = ["adapt_option", "adapt_policy_option", "link_step_option", "policy_from", "event_line", "print_adapt"]

_DEFAULTS = ", ".join(f"{k}={AdaptPolicy.__dataclass_fields__[f].default}" for k, f in POLICY_KEYS.items())


def adapt_option():
    return typer.Option(False, "--adapt", help="Measure links and pieces while serving; on drift re-plan from the "
                        "running plan and move pieces live (no request lost). Thresholds: --adapt-policy.")


def adapt_policy_option():
    return typer.Option("", "--adapt-policy", metavar="KEY=VALUE[,...]", help=(
        "Thresholds of --adapt: threshold (relative drift), min-effect (ms a drift must change a request by), "
        "sustain and window (s), compute-threshold, compute-sustain and compute-window (the same for compute times), "
        "margin (share a re-plan must gain), move-cost (ms per moved piece in the adopt rule), segment-move-cost "
        "(ms per moved segment in the re-plan's objective), "
        f"replan-limit (s), cooldown (s), tick (s). Defaults: {_DEFAULTS}."))


def link_step_option():
    return typer.Option(None, "--link-step", metavar="SITE@SECONDS:up=MBPS[,down=MBPS]", help=(
        "Change SITE's emulated attach link that many seconds into the run (repeatable), e.g. "
        "midrange_phones@15:up=2."))


def policy_from(adapt: bool, text: str) -> AdaptPolicy | None:
    """The policy of `--adapt` (None without it); --adapt-policy alone is refused as a likely slip."""
    if not adapt:
        if text:
            from tierplan.errors import InputError
            raise InputError("--adapt-policy is given without --adapt. To fix: add --adapt (or drop --adapt-policy)")
        return None
    return AdaptPolicy.parse(text)


def event_line(e: dict) -> str:
    """One line per decision of the adaptation log."""
    drift = ", ".join(f"{f['key']} {f['planned']:g} -> {f['observed']:.3g}" for f in e.get("drifted", []))
    head = f"adapt t={e.get('t_s', 0):.1f}s: {drift or 'no drift'}"
    if "error" in e:
        return f"{head}; failed: {e['error']}"
    if "decision" not in e:
        return f"{head}; {e.get('action', '')}"
    d = e["decision"]
    moves = len(e.get("moves") or [])
    sw = e.get("switch") or {}
    comp = e.get("compile") or {}
    compiled = f"compiled {comp.get('built', 0)} piece(s) in {comp.get('compile_s', 0):.2f}s, " if comp else ""
    tail = (f"; switched at t={e.get('switch_t_s', 0):.1f}s ({compiled}loaded in {sw.get('load_s', 0):.2f}s)"
            if sw.get("switched")
            else f"; not switched: {sw.get('error')}" if sw else "")
    after = e.get("measured_after_p95_ms")
    return (f"{head}; re-planned in {e.get('replan_s', 0):.1f}s, {moves} move(s): "
            f"{'adopted' if d['adopt'] else 'kept the plan'} ({d['reason']}){tail}"
            + (f"; p95 after {after}" if after else ""))


def print_adapt(report: dict | None) -> None:
    if not report:
        return
    from tierplan.console import console
    decisions = report.get("decisions") or []
    console().print(f"adapt: {len(decisions)} decision(s), {len(report.get('switches') or [])} switch(es)", highlight=False)
    for e in decisions:
        console().print("  " + event_line(e), highlight=False)
