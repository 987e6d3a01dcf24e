"""The traffic simulator's side of canarylab: driving load and judging what it saw.

``loadtest.verifier`` turns counts of who answered (per version, per pod, per
time window) into a verdict on the declared v1/v2 split: "verified", "mismatch"
or "inconclusive", with the number of requests the verdict needs stated up
front. It is pure statistics over counts, so the Locust files, the CLI and the
tests can all use it without each other.
"""
