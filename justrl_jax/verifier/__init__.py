"""The reward verifier: JustRL's strict boxed-answer rule and a robust mode, never touching JAX.

Public API::

    from justrl_jax.verifier import Verifier, VerifierConfig, VerifierMode
    with Verifier(VerifierConfig(mode=VerifierMode.ROBUST, workers=4)) as verifier:
        verdicts = verifier.verify(responses, golds)            # list[Verdict]
        pending = verifier.submit(responses, golds)             # PendingVerdicts, .result()

    strict_verdict(response, gold, cfg)   # JustRL / DAPO strict box (inline, the default)
    robust_verdict(response, gold, cfg)   # extraction + normalisation + SymPy cascade (inline)

Importing this package loads neither SymPy nor JAX; SymPy is imported by robust judging only.
"""

from justrl_jax.verifier.robust import robust_verdict
from justrl_jax.verifier.scoring import PendingVerdicts, Verifier
from justrl_jax.verifier.strict import strict_verdict
from justrl_jax.verifier.verdict import Verdict, VerdictStatus
from justrl_jax.verifier.verifier_config import OverlongConfig, VerifierConfig, VerifierMode

__all__ = [
    "OverlongConfig",
    "PendingVerdicts",
    "Verdict",
    "VerdictStatus",
    "Verifier",
    "VerifierConfig",
    "VerifierMode",
    "robust_verdict",
    "strict_verdict",
]
