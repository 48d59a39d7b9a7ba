"""Strict mode: JustRL's training reward (veRL DAPO ``compute_score`` with ``strict_box_verify``).

The prediction is the content of the last ``\\boxed{`` in the last 100 of the last 300 characters
(``extract.strict_box``), compared with the gold as raw strings: no stripping, no normalisation,
no SymPy. The gold is pre-processed (``extract.clean_gold``), which is the identity on
DAPO-Math-17k's integer golds. This is pure string work on at most 300 characters, so it runs
inline in the caller (no pool, no deadline is needed: its cost is bounded by the window).
"""

from __future__ import annotations

from justrl_jax.verifier.extract import clean_gold, strict_box
from justrl_jax.verifier.verdict import Verdict, VerdictStatus, make_verdict
from justrl_jax.verifier.verifier_config import VerifierConfig

_DEFAULT = VerifierConfig()


def strict_verdict(
    response: str, gold: str, cfg: VerifierConfig | None = None, response_length: int | None = None
) -> Verdict:
    """The strict (JustRL/DAPO) verdict of one decoded response.

    ``response`` is the decoded text with special tokens skipped and a trailing EOS string removed,
    as veRL's DAPO reward manager passes it. ``response_length`` (tokens) is needed only when
    ``cfg.overlong`` is set.

    Example::

        strict_verdict("... so \\\\boxed{34}", "34").reward    # 1.0
        strict_verdict("... so \\\\boxed{34.}", "34").reward   # -1.0 (raw string equality)
    """
    cfg = cfg or _DEFAULT
    pred = strict_box(response)
    if pred is None:
        return make_verdict(False, None, VerdictStatus.NO_ANSWER, cfg, response_length)
    return make_verdict(pred == clean_gold(gold), pred, VerdictStatus.OK, cfg, response_length)
