"""dxf-celery's benchmarks: ``python -m bench`` runs every row of docs/performance.md's table.

Parts: :mod:`bench.run` (stages and rounds), :mod:`bench.rows` (one function per
measurement), :mod:`bench.cluster` (real worker processes), :mod:`bench.app` (the Celery app
and task types the workers load), :mod:`bench.report` (table and JSON); the micro-benchmarks
``python -m bench.bench_storage``, ``bench.bench_executor`` and ``bench.bench_scheduler``
measure single layers in process.
"""
