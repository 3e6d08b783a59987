"""The jobs: each entry point's work, one module each (train, evaluate, convert, benchmark, prune,
amc, resrep), at the top of the package graph. Only the entry points and the tests import them;
what two jobs share lives in the packages below."""
