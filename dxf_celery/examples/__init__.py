"""Real task types shipped with dxf-celery, used by the demo, the docs and the tests.

- :mod:`dxf_celery.examples.csv_import`: parallel import of a CSV into a SQL table, then a
  verification step (row counts and checksums); reverting deletes the imported rows.
- :mod:`dxf_celery.examples.noop`: N subtasks per step that sleep and record their runs,
  for tests and benchmarks.

Importing a module registers its task type in the process.
"""

from __future__ import annotations
