"""The benchmark scripts, one module each, run from the checkout as ``python -m bench.NAME``.

They share ``bench._lib`` (a record's header, the command that reran it, a pipeline with its
scheduler) and ``bench.landscape_records`` (the landscape file and the pure functions over it);
``bench.tables`` turns any of their records into the markdown tables of docs/BENCHMARKS.md.
Nothing in ``accelopt`` imports this package.
"""
