"""Component-by-component equivalence of s4kit with the official implementations.

``python -m benchmarks.official_equivalence`` (from the repository root) feeds s4kit and
the official code of ReCo, CSS, PRCL and AllSpark identical inputs and prints, per
component, the verdict (EQUAL, DIFFERS (deliberate, with the option that reproduces the
code), FAIL or SKIPPED) and the largest absolute and relative differences; the table is
also written to ``benchmarks/official_equivalence/RESULTS.md``.

The official repositories are read from local checkouts named by environment variables
(``S4KIT_OFFICIAL_RECO``, ``S4KIT_OFFICIAL_CSS``, ``S4KIT_OFFICIAL_PRCL``,
``S4KIT_OFFICIAL_ALLSPARK``); nothing of theirs is part of s4kit. See
``benchmarks/README.md`` ("official_equivalence").
"""
