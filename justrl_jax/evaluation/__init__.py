"""Evaluation: the nine JustRL benchmarks, avg@N and unbiased pass@k, resumable per-sample JSONL.

Modules: ``benchmarks`` (registry and file lookup), ``passk`` (estimators), ``samples`` (per-sample
JSONL store), ``report`` (scores and tables), ``config`` (EvalConfig), ``runner`` (generation +
verification; the only module that imports JAX). The CLI is ``python -m justrl_jax.evaluate``.
"""
