"""Reliability-test semantics: DUTs, stress time, failure detection, events, life data and Weibull."""
