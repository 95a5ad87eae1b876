"""Literal references of the release arithmetic, independent of the code they check (tests, benchmarks)."""
